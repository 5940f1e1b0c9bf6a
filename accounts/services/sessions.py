"""Signed-in sessions: start, touch, end, revoke."""

from __future__ import annotations

import user_agents
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.utils import timezone
from django.utils.module_loading import import_string

from accounts.errors import NotAllowed
from accounts.models import User, UserSession
from accounts.session_store import session_cache_call
from config.crypto import token_digest
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
    with rls.atomic():
        return UserSession.objects.create(
            user=user,
            session_key=request.session.session_key,
            ip_address=client_ip(request),
            user_agent=ua_string,
            device_type=device,
            browser=f"{ua.browser.family} {ua.browser.version_string}".strip(),
            os=f"{ua.os.family} {ua.os.version_string}".strip(),
        )


def user_session_touch(*, request) -> None:
    """Last activity, written at most once a minute per session (skipped while Redis is unreachable)."""
    key = request.session.session_key
    if not key or not session_cache_call("add", f"session-touch:{token_digest(key)}", 1, ACTIVITY_WRITE_INTERVAL, default=False):
        return
    UserSession.objects.filter(session_key=key, ended_at__isnull=True).update(last_activity_at=timezone.now())


def user_session_end(*, session_key: str | None) -> None:
    if session_key:
        UserSession.objects.filter(session_key=session_key, ended_at__isnull=True).update(ended_at=timezone.now())


def user_session_revoke(*, user: User, user_session: UserSession) -> None:
    """End a session at once: its data is deleted, so its browser is signed out."""
    if user_session.user_id != user.pk:
        raise NotAllowed("That session is not yours.")
    engine = import_string(f"{settings.SESSION_ENGINE}.SessionStore")
    store: SessionBase = engine(session_key=user_session.session_key)
    store.delete()
    with rls.atomic():
        user_session.ended_at = user_session.ended_at or timezone.now()
        user_session.save(update_fields=["ended_at"])
