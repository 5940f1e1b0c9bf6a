"""Share links: an owner shares one conversation as a read-only page at /s/<token>/.

Writes (`share_link_create`, `share_link_revoke`) and the owner's reads run under the owner's
row-level security context. A reader is not the owner: `share_link_open` and
`shared_conversation_get` reach the link only through migration 0006's SECURITY DEFINER
functions, given the token, and get that conversation's title and messages and nothing else.
Only the token's SHA-256 is stored; the link itself exists in the create response only.
The rendered page is cached per link for PAGE_SECONDS; the link is checked on every request,
so a revoke, an expiry or a deleted conversation ends it at once.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from django.core.cache import cache
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from chat.models import Conversation, ShareLink
from chat.services import _still_there
from config.cache import REDIS_ERRORS
from config.crypto import token_digest
from config.db import rls
from config.db.rows import prepared_cursor
from config.errors import ApplicationError, NotFoundError

logger = logging.getLogger("confab.chat.sharing")
PAGE_SECONDS = 60
# secrets.token_urlsafe(32): 43 characters of the URL-safe alphabet; anything else is no link.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
NO_SUCH_LINK = "This link does not exist, has expired or was revoked."


@dataclass(frozen=True)
class OpenedLink:
    id: UUID
    audience: str
    permitted: bool  # audience `anyone`, or the caller is a member of the conversation's organization


@dataclass(frozen=True)
class SharedMessage:
    role: str
    content: str
    model: str


@dataclass(frozen=True)
class SharedConversation:
    title: str
    messages: list[SharedMessage] = field(default_factory=list)


# --- Writes (the owner) --------------------------------------------------------------


def share_link_create(
    *, user: User, conversation: Conversation, audience: str = ShareLink.Audience.ORGANIZATION, expires_at: datetime | None = None
) -> tuple[ShareLink, str]:
    """A new link to the user's conversation; the returned token is the only time it exists outside the caller."""
    if audience not in ShareLink.Audience.values:
        raise ApplicationError(f"The audience must be one of: {', '.join(ShareLink.Audience.values)}.", {"field": "audience"})
    if expires_at is not None and (timezone.is_naive(expires_at) or expires_at <= timezone.now()):
        raise ApplicationError("The expiry must be a time in the future, with its time zone.", {"field": "expires_at"})
    token = secrets.token_urlsafe(32)
    with rls.atomic_as(user.pk):
        # Deleted since the caller read it: a 404, not an insert the row policy refuses (a 500).
        _still_there(Conversation, conversation, "No such conversation.")
        link = ShareLink.objects.create(
            conversation=conversation,
            user_id=user.pk,
            organization_id=conversation.organization_id,
            token_hash=token_digest(token),
            audience=audience,
            expires_at=expires_at,
        )
    return link, token


def share_link_revoke(*, user: User, share_link: ShareLink) -> ShareLink:
    """The link 404s from now on (revoking twice keeps the first time)."""
    with rls.atomic_as(user.pk):
        # Locked first: gone since the caller read it (its conversation deleted) is a 404, not a
        # save that updates nothing (a 500).
        locked = ShareLink.objects.select_for_update().filter(pk=share_link.pk).first()
        if locked is None:
            raise NotFoundError("No such share link.")
        # As the locked row has it: a revoke that waited for another keeps the first one's time.
        share_link.revoked_at = locked.revoked_at or timezone.now()
        share_link.save(update_fields=["revoked_at"])
    share_page_forget(link_id=share_link.pk)
    return share_link


# --- Reads (the owner) ---------------------------------------------------------------


def share_link_list(*, user: User, conversation_id=None) -> QuerySet[ShareLink]:
    links = ShareLink.objects.filter(user_id=user.pk).select_related("conversation")
    if conversation_id is not None:
        links = links.filter(conversation_id=conversation_id)
    return links.order_by("-created_at", "id")


def share_link_get(*, user: User, share_link_id) -> ShareLink:
    link = ShareLink.objects.filter(user_id=user.pk, pk=share_link_id).select_related("conversation").first()
    if link is None:
        raise NotFoundError("No such share link.")
    return link


# --- Reads (whoever holds the link) --------------------------------------------------


def share_link_open(*, token: str) -> OpenedLink:
    """The live link this token names, and whether the caller (the request's context) may see it; else NotFoundError."""
    if not TOKEN_SHAPE.fullmatch(token or ""):
        raise NotFoundError(NO_SUCH_LINK)
    # Bound on the server (a prepared cursor): a token in the statement's text would show in
    # pg_stat_activity to every connection of the web role while it runs.
    with prepared_cursor(connection.alias) as cur:
        cur.execute("SELECT link_id, audience, permitted FROM chat_share_link_open(%s)", [token])
        row = cur.fetchone()
    if row is None:
        raise NotFoundError(NO_SUCH_LINK)
    return OpenedLink(*row)


def shared_conversation_get(*, token: str) -> SharedConversation:
    """The title and the user and assistant messages of the conversation a permitted link shows."""
    with prepared_cursor(connection.alias) as cur:  # the token bound on the server, as above
        cur.execute("SELECT title, role, content, model FROM chat_share_messages(%s)", [token])
        rows = cur.fetchall()
    if not rows:
        raise NotFoundError(NO_SUCH_LINK)
    messages = [SharedMessage(role, content, model or "") for _, role, content, model in rows if role is not None]
    return SharedConversation(title=rows[0][0] or "Shared conversation", messages=messages)


# --- The rendered page's cache -------------------------------------------------------


def _page_key(link_id) -> str:
    return f"chat:share-page:{link_id}"


def share_page_cached(*, link_id) -> str | None:
    try:
        return cache.get(_page_key(link_id))
    except REDIS_ERRORS as exc:
        logger.warning("share page cache skipped (Redis unreachable: %s)", exc)
        return None


def share_page_cache(*, link_id, html: str) -> None:
    try:
        cache.set(_page_key(link_id), html, PAGE_SECONDS)
    except REDIS_ERRORS as exc:
        logger.warning("share page not cached (Redis unreachable: %s)", exc)


def share_page_forget(*, link_id) -> None:
    # The link is checked on every request anyway: this only drops a page no one may see.
    try:
        cache.delete(_page_key(link_id))
    except REDIS_ERRORS as exc:
        logger.warning("share page left in the cache until it expires (Redis unreachable: %s)", exc)
