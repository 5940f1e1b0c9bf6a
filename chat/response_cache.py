"""Confab's cache of model replies (opt-in): an identical call answered again without the provider.

Identical means the same organization, provider, model, messages and sampling parameters:
the key is the SHA-256 of those, under the organization's own prefix, so no organization is
ever answered from another's entries. A reply made with a member's own provider key came from
wherever that member pointed it (their own base URL, their own account): it answers only that
member, at that endpoint, never the rest of the organization. Only calls at temperature 0 are cached unless the
caller asks for any temperature (a reply at a higher temperature is one draw of many).
Entries live in Redis for CHAT_RESPONSE_CACHE_TTL seconds; with Redis unreachable the cache
is skipped (the call goes to the provider), never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from chat.providers import ChatRequest, Usage
from config.cache import REDIS_ERRORS, redis_client
from config.errors import ApplicationError

logger = logging.getLogger("confab.chat.cache")
KEY_PREFIX = "respcache:v1"
HEADER = "X-Response-Cache"
# The header's values: opt in (temperature 0 only), opt in at any temperature, opt out.
HEADER_VALUES = {"on": "on", "1": "on", "any": "any", "off": "off", "0": "off"}


@dataclass(frozen=True)
class CachedReply:
    text: str
    usage: Usage  # what the original call used: the tokens a hit saves
    cost: Decimal  # what the original call cost: the money a hit saves
    finish_reason: str | None = None  # how the original reply ended: a reply cut at its cap says so again


def header_choice(value: str | None) -> str | None:
    """The request header's choice ('on', 'any', 'off'), None when absent; a 400 when unknown."""
    if value is None:
        return None
    choice = HEADER_VALUES.get(value.strip().lower())
    if choice is None:
        raise ApplicationError(
            f"The {HEADER} header takes 'on' (temperature 0 only), 'any' (any temperature) or 'off'; got '{value[:40]}'.",
            {"field": HEADER, "code": "invalid"},
        )
    return choice


def cache_applies(*, plan_allows: bool, persona_opted_in: bool, choice: str | None, temperature: float | None) -> bool:
    """The plan allows it; the request asks (its header wins) or the persona opts in; and the call
    is deterministic (temperature 0) unless the request asked for any temperature."""
    if not plan_allows or choice == "off" or not (choice in ("on", "any") or persona_opted_in):
        return False
    return choice == "any" or temperature == 0


def cache_key(*, organization_id, provider: str, request: ChatRequest, own_key_of=None) -> str:
    """The entry's key; `own_key_of` is the user whose own provider key makes the call (None for
    the platform's keys and echo): their entries are theirs alone."""
    call = {
        "provider": provider,
        "model": request.model,
        "messages": [[m.role, m.content] for m in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "base_url": request.base_url,
    }
    digest = hashlib.sha256(json.dumps(call, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    scope = f"{organization_id}:user:{own_key_of}" if own_key_of else str(organization_id)
    return f"{KEY_PREFIX}:{scope}:{digest}"


def cached_reply_get(key: str) -> CachedReply | None:
    try:
        raw = redis_client().get(key)
    except REDIS_ERRORS as exc:
        logger.warning("response cache skipped (Redis unreachable: %s)", exc)
        return None
    if raw is None:
        return None
    entry = json.loads(raw)
    # An estimated usage replays as estimated (entries written before the flag was kept: counted).
    usage = Usage(**entry["usage"], estimated=entry.get("estimated", False))
    return CachedReply(entry["text"], usage, Decimal(entry["cost"]), entry.get("finish_reason"))


def cached_reply_put(key: str, *, text: str, usage: Usage, cost: Decimal, finish_reason: str | None) -> None:
    entry = {"text": text, "usage": usage.classes(), "estimated": usage.estimated, "cost": str(cost), "finish_reason": finish_reason}
    try:
        redis_client().set(key, json.dumps(entry), ex=settings.CHAT_RESPONSE_CACHE_TTL)
    except REDIS_ERRORS as exc:
        logger.warning("reply not cached (Redis unreachable: %s)", exc)
