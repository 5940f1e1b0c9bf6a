"""Signed-in sessions: start, touch, end, revoke."""

from __future__ import annotations

import user_agents
from django.contrib.auth import SESSION_KEY
from django.utils import timezone

from accounts.errors import NotAllowed
from accounts.models import User, UserSession
from accounts.session_store import SessionStore, session_cache_call, session_delete_by_digest, session_digest
from config.db import rls
from config.http import client_ip

ACTIVITY_WRITE_INTERVAL = 60


def user_session_start(*, request, user: User) -> UserSession:
    """Record the browser session a sign-in opened (device, browser, OS from the user agent)."""
    ua_string = request.META.get("HTTP_USER_AGENT", "")[:1000]
    ua = user_agents.parse(ua_string)
    device = "mobile" if ua.is_mobile else "tablet" if ua.is_tablet else "bot" if ua.is_bot else "desktop" if ua.is_pc else "other"
    if not request.session.session_key:
        request.session.save()
    digest = session_digest(request.session)
    with rls.atomic():
        # Signed in again as the same user, Django keeps the session's key: its record goes on.
        kept = UserSession.objects.filter(user=user, session_key_digest=digest, ended_at__isnull=True).first()
        if kept is not None:
            return kept
        return UserSession.objects.create(
            user=user,
            session_key_digest=digest,
            ip_address=client_ip(request),
            user_agent=ua_string,
            device_type=device,
            # Parsed from a header anyone sets: cut to the columns (a 150-digit version was a 500 at sign-in).
            browser=f"{ua.browser.family} {ua.browser.version_string}".strip()[: UserSession._meta.get_field("browser").max_length],
            os=f"{ua.os.family} {ua.os.version_string}".strip()[: UserSession._meta.get_field("os").max_length],
        )


def user_session_touch(*, request) -> None:
    """Last activity, written at most once a minute per session (skipped while Redis is unreachable).
    Under the user's context of its own: a view that opens its own transactions (own_transactions)
    runs with none held, and the update saw no row."""
    digest = session_digest(request.session)
    if not digest or not session_cache_call("add", f"session-touch:{digest}", 1, ACTIVITY_WRITE_INTERVAL, default=False):
        return
    with rls.atomic_as(request.user.pk):
        UserSession.objects.filter(session_key_digest=digest, ended_at__isnull=True).update(last_activity_at=timezone.now())


def user_session_end(*, session_key_digest: str) -> None:
    if session_key_digest:
        UserSession.objects.filter(session_key_digest=session_key_digest, ended_at__isnull=True).update(ended_at=timezone.now())


def user_sessions_end_all(*, user: User, keep: tuple[str, ...] = ()) -> int:
    """End every session of the user at once (a password reset), but those whose digests `keep`
    names (a password changed from a signed-in page keeps its own): each one's data is deleted,
    so its browser is signed out, and its record ended, so the sessions page does not list it as
    signed in. Under the user's own context. The number ended."""
    sessions = list(UserSession.objects.filter(user_id=user.pk, ended_at__isnull=True).exclude(session_key_digest__in=keep))
    for user_session in sessions:
        session_delete_by_digest(digest=user_session.session_key_digest)
    with rls.atomic():
        UserSession.objects.filter(pk__in=[s.pk for s in sessions]).update(ended_at=timezone.now())
    return len(sessions)


def user_session_revoke(*, user: User, user_session: UserSession) -> None:
    """End a session at once: its data is deleted, so its browser is signed out."""
    if user_session.user_id != user.pk:
        raise NotAllowed("That session is not yours.")
    session_delete_by_digest(digest=user_session.session_key_digest)
    with rls.atomic():
        user_session.ended_at = user_session.ended_at or timezone.now()
        user_session.save(update_fields=["ended_at"])


def caller_signed_in(*, session_key: str | None, authorization: str) -> bool:
    """Whether a request comes from someone signed in: a live API key (`Bearer ck_...`) or a
    session with a user in it. Asked before an upload's body is read (config/asgi.py), so only
    a known caller can make the server take a large file; the view still authenticates as ever."""
    from accounts.services.api_keys import ApiKeyRejected, api_key_authenticate  # that module imports this one

    parts = authorization.split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        try:
            api_key_authenticate(raw_key=parts[1])
            return True
        except ApiKeyRejected:
            pass  # not a live key (a proxy's own token, say): the session may still be signed in
    return bool(session_key) and SessionStore(session_key).get(SESSION_KEY) is not None
