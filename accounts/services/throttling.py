"""Throttles: sign-in failures, password-reset mail, API requests.

Each throttle is a fixed window counted in Redis with one atomic script (INCR, and
EXPIRE when the key has no expiry yet), so concurrent requests on every web process
share one count. While Redis is unreachable each process counts alone, in memory, with
the same numbers: guessing stays throttled (per process) and nobody is locked out by
the outage. Numbers: settings.THROTTLES; README "Redis outages and throttles".
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time

from django.conf import settings

from accounts.errors import LoginThrottled, MailThrottled, PasswordResetThrottled
from accounts.models import User
from config.cache import REDIS_ERRORS, redis_client, redis_script
from config.crypto import token_digest

logger = logging.getLogger("confab.accounts.throttling")
KEY_PREFIX = "throttle:v1"
LOCAL_MAX_KEYS = 100_000

# KEYS: counters; ARGV: their windows, their limits, then "1" to count nothing when any
# counter is already at its limit (an attempt the throttle refused). Returns count, ttl per key.
_HIT = """
local n = #KEYS
local out = {}
local refused = false
if ARGV[2 * n + 1] == '1' then
    for i, key in ipairs(KEYS) do
        if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[n + i]) then refused = true end
    end
end
for i, key in ipairs(KEYS) do
    local count
    if refused then count = tonumber(redis.call('GET', key) or '0') else count = redis.call('INCR', key) end
    local ttl = redis.call('TTL', key)
    if ttl < 0 and count > 0 then
        ttl = tonumber(ARGV[i])
        redis.call('EXPIRE', key, ttl)
    end
    out[2 * i - 1] = count
    out[2 * i] = ttl
end
out[2 * n + 1] = refused and 1 or 0
return out
"""
# KEYS: counters; each above 0 counts one fewer (an attempt taken back).
_TAKE_BACK = """
for _, key in ipairs(KEYS) do
    if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0
"""
_PEEK = """
local out = {}
for i, key in ipairs(KEYS) do
    out[2 * i - 1] = tonumber(redis.call('GET', key) or '0')
    out[2 * i] = redis.call('TTL', key)
end
return out
"""

_local: dict[str, tuple[int, float]] = {}  # key: (count, monotonic expiry); used only while Redis is down
_local_lock = threading.Lock()


def _ip_bucket(ip: str | None) -> str:
    """One IPv6 host owns a whole /64, so a /64 is counted as one address."""
    if not ip:
        return "unknown"
    address = ipaddress.ip_address(ip)  # client_ip() validated it
    address = getattr(address, "ipv4_mapped", None) or address  # client_ip() unmaps; an address from elsewhere may not
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _email_digest(email: str) -> str:
    return token_digest(User.objects.normalize_email(email or "").lower())


def _local_counts(
    keys: list[str], windows: list[int], limits: list[int], *, hit: bool, unless_over: bool
) -> tuple[list[tuple[int, int]], bool]:
    """The same counts as the Redis scripts, in this process only, and whether the hit was refused."""
    now = time.monotonic()
    with _local_lock:
        if len(_local) > LOCAL_MAX_KEYS:  # bounded memory: forget expired windows, then everything
            for key in [k for k, (_, expires) in _local.items() if expires <= now]:
                del _local[key]
            if len(_local) > LOCAL_MAX_KEYS:
                _local.clear()
        current = []
        for key, window in zip(keys, windows):
            count, expires = _local.get(key, (0, 0.0))
            current.append((0, now + window) if expires <= now else (count, expires))
        refused = unless_over and any(count >= limit for (count, _), limit in zip(current, limits))
        if hit and not refused:
            current = [(count + 1, expires) for count, expires in current]
            _local.update(zip(keys, current))
        return [(count, max(1, math.ceil(expires - now))) for count, expires in current], hit and refused


def _counts(names_subjects: list[tuple[str, str]], *, hit: bool, unless_over: bool = False) -> list[tuple[int, int, int]]:
    """(count, seconds left in the window, limit) per (throttle name, subject). With `hit` each
    counts one more, unless `unless_over` and one of them is already at its limit."""
    return _counted(names_subjects, hit=hit, unless_over=unless_over)[0]


def _counted(names_subjects: list[tuple[str, str]], *, hit: bool, unless_over: bool = False) -> tuple[list[tuple[int, int, int]], bool]:
    """_counts, and whether the hit was refused (`unless_over` and one already at its limit)."""
    keys = [f"{KEY_PREFIX}:{name}:{subject}" for name, subject in names_subjects]
    limits = [settings.THROTTLES[name][0] for name, _ in names_subjects]
    windows = [settings.THROTTLES[name][1] for name, _ in names_subjects]
    try:
        if hit:
            raw = redis_script(_HIT)(keys=keys, args=[*windows, *limits, "1" if unless_over else "0"])
            refused = int(raw[2 * len(keys)]) == 1
        else:
            raw, refused = redis_script(_PEEK)(keys=keys), False
        counts = [(int(raw[2 * i]), int(raw[2 * i + 1]) if int(raw[2 * i + 1]) > 0 else window) for i, window in enumerate(windows)]
    except REDIS_ERRORS as exc:
        logger.warning("Redis unreachable (%s); throttles count per process", type(exc).__name__)
        counts, refused = _local_counts(keys, windows, limits, hit=hit, unless_over=unless_over)
    return [(count, ttl, limit) for (count, ttl), limit in zip(counts, limits)], refused


def _retry_after(counts: list[tuple[int, int, int]], *, over) -> int | None:
    waits = [ttl for count, ttl, limit in counts if over(count, limit)]
    return max(waits) if waits else None


def _login_subjects(email: str, ip: str | None) -> list[tuple[str, str]]:
    digest, bucket = _email_digest(email), _ip_bucket(ip)
    subjects = [("login_email_ip", f"{digest}:{bucket}"), ("login_email", digest)]
    return [*subjects, ("login_ip", bucket)] if ip else subjects  # no address known: no shared "unknown" bucket


def login_throttle_check(*, email: str, ip: str | None) -> None:
    """Refuse (LoginThrottled) while this email from this IP, this IP, or (a far higher
    ceiling) this email from anywhere has too many recent failures."""
    wait = _retry_after(_counts(_login_subjects(email, ip), hit=False), over=lambda count, limit: count >= limit)
    if wait is not None:
        raise LoginThrottled(retry_after=wait)


def login_failure_record(*, email: str, ip: str | None) -> bool:
    """Count a password attempt: False, counted nowhere, when the throttle refuses it (one of its
    counts already at its limit), so a locked-out guesser cannot push the victim's per-email
    ceiling. Counted before the password is checked (login_attempt_take): counted after, every
    guess sent at once passed the check of a count none of them had added to yet."""
    return not _counted(_login_subjects(email, ip), hit=True, unless_over=True)[1]


def login_attempt_take(*, email: str, ip: str | None) -> None:
    """Count this sign-in attempt now, in one atomic step with the check; refuse (LoginThrottled)
    past the limit. A success takes it back (login_failures_clear)."""
    if not login_failure_record(email=email, ip=ip):
        wait = _retry_after(_counts(_login_subjects(email, ip), hit=False), over=lambda count, limit: count >= limit)
        raise LoginThrottled(retry_after=wait or 1)


def login_failures_clear(*, email: str, ip: str | None) -> None:
    """A successful sign-in clears its own (email, IP) count and takes its own attempt back from
    the IP and per-email ceilings (counted before its password was checked); earlier failures
    there run out with their window."""
    key, *ceilings = [f"{KEY_PREFIX}:{name}:{subject}" for name, subject in _login_subjects(email, ip)]
    try:
        redis_client().delete(key)
        redis_script(_TAKE_BACK)(keys=ceilings)
    except REDIS_ERRORS:
        pass  # nothing to clear in Redis while it is down
    with _local_lock:
        _local.pop(key, None)
        for ceiling in ceilings:
            count, expires = _local.get(ceiling, (0, 0.0))
            if count > 0:
                _local[ceiling] = (count - 1, expires)


def password_reset_throttle(*, email: str, ip: str | None) -> None:
    """Count one password-reset request; refuse (PasswordResetThrottled) past the per-email or per-IP limit."""
    subjects = [("password_reset_email", _email_digest(email))] + ([("password_reset_ip", _ip_bucket(ip))] if ip else [])
    wait = _retry_after(_counts(subjects, hit=True), over=lambda count, limit: count > limit)
    if wait is not None:
        raise PasswordResetThrottled(retry_after=wait)


def verification_email_throttle(*, user_id) -> None:
    """Count one confirmation mail asked for again; refuse (MailThrottled) past the limit."""
    _mail_counted([("verification_email", str(user_id))])


def invitation_throttle(*, inviter: User, organization_id, email: str) -> None:
    """Count one invitation mail, per organization and address and per inviter (far fewer while
    the inviter's own address is unconfirmed: a fresh sign-up is not a mailing list)."""
    per_inviter = "invitations_inviter" if inviter.email_verified else "invitations_unconfirmed_inviter"
    _mail_counted([("invitation_address", _email_digest(f"{organization_id}.{email}")), (per_inviter, str(inviter.pk))])


def _mail_counted(subjects: list[tuple[str, str]]) -> None:
    # unless_over: an ask refused is not counted, on any of the subjects
    counts, refused = _counted(subjects, hit=True, unless_over=True)
    if refused:
        raise MailThrottled(retry_after=_retry_after(counts, over=lambda count, limit: count >= limit) or 60)


# KEYS: the API counter; ARGV: limit, window, most to take. Takes up to that many of what is
# left in the window (fewer near the limit, at least one while any is left), counts them at
# once, and returns how many it took and the seconds left in the window.
_API_LEASE = """
local limit, window, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local left = limit - tonumber(redis.call('GET', KEYS[1]) or '0')
local take = math.max(0, math.min(most, left, math.max(1, math.floor(left / 16))))
if take > 0 then redis.call('INCRBY', KEYS[1], take) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
    ttl = window
    if take > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
end
return {take, ttl}
"""
API_LEASE_MOST = 8
_api_leases: dict[str, tuple[int, float]] = {}  # subject: (requests left, monotonic end of their window)
_api_leases_lock = threading.Lock()


def api_request_throttle(*, subject: str) -> int | None:
    """Count one API request by `subject` (an API key or user); the seconds to wait past the limit, else None.

    A process takes its requests from the window's count in Redis a few at a time (a lease: at
    most API_LEASE_MOST, a sixteenth of what is left, one at a time in the last 31) and spends
    them without asking Redis again. Every request served was counted before it was served, so
    the limit is never passed; the price is that a request can be refused while another process
    still holds a few of the window's requests unspent (fewer than API_LEASE_MOST per process:
    at most 14 of 1,200 a minute with two web processes). A lease ends with its window."""
    limit, window = settings.THROTTLES["api"]
    if limit <= 0:
        return None
    now = time.monotonic()
    with _api_leases_lock:
        left, ends = _api_leases.get(subject, (0, 0.0))
        if left > 0 and now < ends:
            _api_leases[subject] = (left - 1, ends)
            return None
    key = f"{KEY_PREFIX}:api:{subject}"
    try:
        took, ttl = (int(v) for v in redis_script(_API_LEASE)(keys=[key], args=[limit, window, API_LEASE_MOST]))
    except REDIS_ERRORS as exc:
        logger.warning("Redis unreachable (%s); throttles count per process", type(exc).__name__)
        counts, _ = _local_counts([key], [window], [limit], hit=True, unless_over=False)
        return _retry_after([(count, ttl, limit) for count, ttl in counts], over=lambda count, limit: count > limit)
    if took == 0:
        return max(1, ttl)
    with _api_leases_lock:
        if len(_api_leases) > LOCAL_MAX_KEYS:
            _api_leases.clear()  # bounded memory: the unspent requests stay counted, only unused
        left, ends = _api_leases.get(subject, (0, 0.0))
        # One of them is this request's. Another thread's lease taken meanwhile is of the same
        # window (a lease ends no later than its window): both are kept, none is left unspent.
        _api_leases[subject] = (left + took - 1, ends) if ends > now else (took - 1, now + ttl)
    return None
