"""Sign-in throttling."""

from __future__ import annotations

from django.core.cache import cache

from accounts.errors import LoginThrottled
from accounts.models import User
from config.crypto import token_digest

LOGIN_FAILURE_LIMIT_EMAIL = 5
LOGIN_FAILURE_LIMIT_IP = 20
LOGIN_FAILURE_WINDOW = 15 * 60


def _throttle_keys(email: str, ip: str | None) -> list[tuple[str, int]]:
    keys = [(f"login-fail:email:{token_digest(User.objects.normalize_email(email))}", LOGIN_FAILURE_LIMIT_EMAIL)]
    if ip:
        keys.append((f"login-fail:ip:{ip}", LOGIN_FAILURE_LIMIT_IP))
    return keys


def login_throttle_check(*, email: str, ip: str | None) -> None:
    """Refuse (LoginThrottled) while an email or IP has too many recent failures."""
    for key, limit in _throttle_keys(email or "", ip):
        if (cache.get(key) or 0) >= limit:
            ttl = cache.ttl(key) if hasattr(cache, "ttl") else LOGIN_FAILURE_WINDOW
            raise LoginThrottled(retry_after=int(ttl or LOGIN_FAILURE_WINDOW))


def login_failure_record(*, email: str, ip: str | None) -> None:
    for key, _ in _throttle_keys(email or "", ip):
        cache.add(key, 0, LOGIN_FAILURE_WINDOW)  # the window starts at the first failure
        cache.incr(key)


def login_failures_clear(*, email: str) -> None:
    cache.delete(_throttle_keys(email, None)[0][0])
