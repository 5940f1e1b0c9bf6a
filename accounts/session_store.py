"""Sessions kept under the SHA-256 of their key, cached in Redis, and served from the
database alone while Redis is unreachable.

The table (`accounts_session`, migration 0007) is closed to both roles: the store calls
SECURITY DEFINER functions that take the key and hash it themselves, so reading a
session needs its key. Revoking a listed session deletes it by that hash, and only the
owner's (accounts_session_delete_digest, migration 0011). Redis names a session by the same hash. The database is the
copy; a cache error is logged and costs one round trip, never a 500.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.sessions.backends.base import VALID_KEY_CHARS, CreateError, SessionBase, UpdateError
from django.core.cache import caches
from django.db import connections, transaction
from django.utils.crypto import get_random_string
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError

from config.crypto import token_digest
from config.db.rls import APP_ALIAS, PRIVILEGED_ALIAS, current_alias
from config.db.rows import prepared_cursor

logger = logging.getLogger("confab.sessions")

CACHE_KEY_PREFIX = "session:"
# Bounds how long another process's cached copy may outlive a change it missed while Redis was unreachable.
CACHE_SECONDS = 300
CACHE_ERRORS = (ConnectionInterrupted, RedisError, OSError)

# Cached in a deleted session's place for CACHE_SECONDS: a request that read the session from the
# database before the delete, and fills the cache as it commits after it, must not bring it back.
DELETED = "deleted"
# Cache keys whose update or delete failed: never read from Redis until deleted there.
_missed: set[str] = set()
_FAILED = object()


def session_cache_call(method, *args, default=None):
    """One call on the session cache (a method's name, or a function of the cache and `args`);
    when Redis is unreachable, log it and return `default`."""
    cache = caches[settings.SESSION_CACHE_ALIAS]
    try:
        if _missed:
            missed = set(_missed)
            cache.delete_many(list(missed))
            _missed.difference_update(missed)
        return method(cache, *args) if callable(method) else getattr(cache, method)(*args)
    except CACHE_ERRORS as exc:
        logger.warning("session cache unavailable, using the database: %s %s", method, exc)
        return default


def _cache_key(session_key: str) -> str:
    return CACHE_KEY_PREFIX + token_digest(session_key)


def session_digest(session: SessionBase) -> str:
    """What a UserSession keeps for this browser session ('' while it has no key: that matches no row)."""
    return token_digest(session.session_key) if session.session_key else ""


# A save's write: SET unless a delete left DELETED there. A save committed just before a revoke
# (its data in the database, its cache write after the revoke's) brought the revoked session back
# for CACHE_SECONDS: a stolen cookie that kept writing its session stayed signed in.
_SET_UNLESS_DELETED = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) return 1"
)


def _set_unless_deleted(cache, cache_key: str, data: dict, timeout: int) -> bool:
    if timeout <= 0:
        return False  # expiring now: nothing to keep
    client = cache.client
    raw = client.get_client(write=True)
    return bool(raw.eval(_SET_UNLESS_DELETED, 1, client.make_key(cache_key), client.encode(DELETED), client.encode(data), int(timeout)))


def _cache_write(method, cache_key: str, *args) -> None:
    if session_cache_call(method, cache_key, *args, default=_FAILED) is _FAILED:
        _missed.add(cache_key)


def _after_commit(method, cache_key: str, *args) -> None:
    """The cache follows what the database committed (at once outside a transaction)."""
    transaction.on_commit(lambda: _cache_write(method, cache_key, *args), using=APP_ALIAS)


def _cache_evict(cache_key: str, *, using: str) -> None:
    """Replace the cached copy with DELETED now and, inside a transaction, again at commit (a
    concurrent request may have cached it meanwhile); a fill (load's `add`) cannot replace it."""
    _cache_write("set", cache_key, DELETED, CACHE_SECONDS)
    if connections[using].in_atomic_block:
        transaction.on_commit(lambda: _cache_write("set", cache_key, DELETED, CACHE_SECONDS), using=using)


def _call(function: str, *args):
    # Bound on the server (a prepared cursor): a session key in the statement's text would show in
    # pg_stat_activity to every connection of the web role while it runs, and sign anyone in.
    with prepared_cursor(APP_ALIAS) as cur:
        cur.execute(f"SELECT {function}({', '.join(['%s'] * len(args))})", args)
        return cur.fetchone()[0]


def session_delete_by_digest(*, digest: str) -> bool:
    """Delete the session named by `digest` (a UserSession's): the context user's own, or any in staff tools."""
    alias = current_alias()
    function = "accounts_session_delete_digest_staff" if alias == PRIVILEGED_ALIAS else "accounts_session_delete_digest"
    with connections[alias].cursor() as cur:
        cur.execute(f"SELECT {function}(%s)", [digest])
        deleted = cur.fetchone()[0]
    _cache_evict(CACHE_KEY_PREFIX + digest, using=alias)
    return deleted


_KEY_CHARS = frozenset(VALID_KEY_CHARS)


class SessionStore(SessionBase):
    """Django's session interface over the accounts_session_* functions."""

    def _validate_session_key(self, key) -> bool:
        """Only a key this store could have made: a cookie's value is anyone's text, and one with
        a NUL in it (`"\\000..."`, which Django's cookie parser unquotes) made the lookup a 500."""
        return isinstance(key, str) and 8 <= len(key) <= 64 and _KEY_CHARS.issuperset(key)

    def load(self):
        cache_key = _cache_key(self.session_key)
        data = None if cache_key in _missed else session_cache_call("get", cache_key)
        if data == DELETED:
            self._session_key = None  # revoked or ended: a new key on the next save
            return {}
        if data is not None:
            return data
        with prepared_cursor(APP_ALIAS) as cur:  # the key bound on the server, as in _call
            cur.execute("SELECT session_data, expire_date FROM accounts_session_load(%s)", [self.session_key])
            row = cur.fetchone()
        if row is None:
            self._session_key = None  # unknown or expired: a new key on the next save
            return {}
        data = self.decode(row[0])
        # `add`: a delete committed since this read left DELETED there, which must stay.
        _after_commit("add", cache_key, data, min(CACHE_SECONDS, self.get_expiry_age(expiry=row[1])))
        return data

    def exists(self, session_key):
        return bool(session_key) and _call("accounts_session_exists", session_key)

    def _get_new_session_key(self):
        return get_random_string(32, VALID_KEY_CHARS)  # no exists() round trip: create() retries a taken key

    def create(self):
        while True:
            self._session_key = self._get_new_session_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue  # the key was taken
            self.modified = True
            return

    def save(self, must_create=False):
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create)
        function = "accounts_session_create" if must_create else "accounts_session_update"
        if not _call(function, self.session_key, self.encode(data), self.get_expiry_date()):
            raise CreateError if must_create else UpdateError
        _after_commit(_set_unless_deleted, _cache_key(self.session_key), dict(data), min(CACHE_SECONDS, self.get_expiry_age()))

    def delete(self, session_key=None):
        session_key = session_key or self.session_key
        if session_key is None:
            return
        _call("accounts_session_delete", session_key)
        _cache_evict(_cache_key(session_key), using=APP_ALIAS)

    @classmethod
    def clear_expired(cls):
        _call("accounts_session_clear_expired")
