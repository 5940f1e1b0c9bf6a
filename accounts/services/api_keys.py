"""API keys: create, revoke, authenticate."""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime

from django.core.cache import cache
from django.db import connections
from django.utils import timezone
from django.utils.crypto import get_random_string

from accounts import api_key_cache
from accounts.errors import InvalidScopes, NotAllowed
from accounts.models import ApiKey, User
from accounts.services.organizations import user_held_active
from accounts.services.sessions import ACTIVITY_WRITE_INTERVAL
from config.cache import REDIS_ERRORS
from config.crypto import token_digest
from config.db import rls
from config.db.rows import columns_of, model_clone, model_from_row, prepared_cursor
from config.errors import ApplicationError

API_KEY_PREFIX = "ck_"


def api_key_create(
    *, user: User, name: str, scopes: list[str], expires_at: datetime | None = None, by_key: ApiKey | None = None
) -> tuple[ApiKey, str]:
    """A new key; the returned secret is the only time it exists outside the caller. Asked for by
    an API key (`by_key`), that key is held to the write: revoked before it, ApiKeyRejected."""
    name = (name or "").strip()
    if not name:
        raise ApplicationError("Give the key a name, so you can tell it apart later.", {"field": "name"})
    valid = set(ApiKey.Scope.values)
    unknown = sorted(set(scopes) - valid)
    if unknown:
        raise InvalidScopes(unknown)
    if not scopes:
        raise ApplicationError("Choose at least one scope.", {"field": "scopes"})
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("The expiry date must be in the future.", {"field": "expires_at"})
    prefix = get_random_string(10, allowed_chars="abcdefghijkmnopqrstuvwxyz23456789")
    secret = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with rls.atomic():
        if by_key is not None:
            _api_key_held(by_key)  # a key before its user, as user_deactivate locks them
        user_held_active(user.pk)  # a deactivation revokes this key, or comes first and refuses it
        key = ApiKey.objects.create(
            user=user, name=name[:100], prefix=prefix, key_hash=token_digest(secret), scopes=sorted(set(scopes)), expires_at=expires_at
        )
    _security_event("api_key_created", user_id=user.pk, detail={"api_key_id": str(key.pk), "name": key.name, "scopes": key.scopes})
    return key, secret


def api_key_revoke(*, user: User, api_key: ApiKey) -> ApiKey:
    if api_key.user_id != user.pk:
        raise NotAllowed("That API key is not yours.")
    with rls.atomic():
        api_key.is_active = False
        api_key.revoked_at = api_key.revoked_at or timezone.now()
        api_key.save(update_fields=["is_active", "revoked_at"])
    _security_event("api_key_revoked", user_id=user.pk, detail={"api_key_id": str(api_key.pk), "name": api_key.name})
    return api_key


def _api_key_held(api_key: ApiKey) -> None:
    """Lock the key a request signed in with until its transaction ends, and refuse if it no
    longer signs in: it was checked when the request began, and a revoke may have committed since
    (FOR SHARE: a revoke waits for this write, so the key acts first or not at all)."""
    held = next(iter(ApiKey.objects.raw(f"SELECT * FROM {ApiKey._meta.db_table} WHERE id = %s FOR SHARE", [api_key.pk])), None)
    if held is None:
        raise ApiKeyRejected("Unknown API key.")
    held.user = api_key.user  # deactivating the owner revokes its keys in its transaction: the key's row says it
    problem = _api_key_problem(held)
    if problem:
        raise ApiKeyRejected(problem)


def _security_event(event: str, *, user_id, detail: dict) -> None:
    from accounts.signals import security_event  # signals imports this module

    security_event.send(sender=None, event=event, user_id=user_id, ip=None, detail=detail)


API_KEY_PATTERN = re.compile(r"^ck_([a-z0-9]{10})_[A-Za-z0-9_\-]{20,}$")


class ApiKeyRejected(Exception):
    """Why a presented key does not sign anyone in (a sentence for the 401)."""


def _api_key_problem(key: ApiKey) -> str | None:
    if not key.is_active or key.revoked_at:
        return "This API key has been revoked."
    if key.is_expired:
        return "This API key has expired."
    if not (key.user.is_active and key.user.deleted_at is None):
        return "The account that owns this API key is deactivated."
    return None


_recorded_use: dict = {}  # key id -> monotonic time this process last recorded its use


def _first_use_in_interval(key: ApiKey) -> bool:
    """Whether to write last_used_at now: once per interval per key, decided in Redis across
    processes; each process remembers its own answer, so most requests ask nothing at all."""
    now = time.monotonic()
    if now - _recorded_use.get(key.pk, -ACTIVITY_WRITE_INTERVAL) < ACTIVITY_WRITE_INTERVAL:
        return False
    if len(_recorded_use) > 10_000:
        _recorded_use.clear()
    _recorded_use[key.pk] = now
    try:
        return cache.add(f"apikey-used:{key.pk}", 1, ACTIVITY_WRITE_INTERVAL)
    except REDIS_ERRORS:
        return False  # Redis down: last_used_at waits for it rather than a write per request


# The key and its owner in one round trip (accounts migration 0013), outside any context.
_SIGNIN_SQL = (
    f"SELECT {columns_of(ApiKey, 'k')}, {columns_of(User, 'u')} "
    "FROM accounts_api_key_row(%s, %s) k JOIN accounts_api_key_owner(%s, %s) u ON u.id = k.user_id"
)


def api_key_authenticate(*, raw_key: str) -> tuple[User, ApiKey]:
    """The user and key behind `ck_...`; ApiKeyRejected otherwise. Inside the request's
    transaction (views that keep one) the context becomes the key's user."""
    match = API_KEY_PATTERN.match(raw_key or "")
    if not match:
        raise ApiKeyRejected("Malformed API key: expected 'Authorization: Bearer ck_...'.")
    alias = rls.current_alias()
    digest = token_digest(raw_key)
    remembered = api_key_cache.remembered(digest)
    if remembered is None:
        read_at_epoch = api_key_cache.epoch()
        with prepared_cursor(alias) as cur:
            cur.execute(_SIGNIN_SQL, [match.group(1), digest, match.group(1), digest])
            row = cur.fetchone()
        if row is None:
            raise ApiKeyRejected("Unknown API key.")  # never remembered: unknown keys would fill the cache
        split = len(ApiKey._meta.concrete_fields)
        remembered = (model_from_row(ApiKey, alias, row[:split]), model_from_row(User, alias, row[split:]))
        api_key_cache.keep(digest, remembered[0].user_id, remembered, read_at_epoch=read_at_epoch)
    # This request's own instances: what it changes on them, no other request sees.
    key, key.user = model_clone(remembered[0], alias), model_clone(remembered[1], alias)
    problem = _api_key_problem(key)
    if problem:
        raise ApiKeyRejected(problem)
    if connections[alias].in_atomic_block:
        rls.context_set(user_id=key.user_id)
    if _first_use_in_interval(key):
        with rls.atomic_as(key.user_id):
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    return key.user, key
