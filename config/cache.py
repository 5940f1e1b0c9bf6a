"""Redis: what an outage raises, and the process's one client and its scripts."""

from django.core.signals import setting_changed
from django.dispatch import receiver
from django_redis import get_redis_connection
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError

REDIS_ERRORS = (RedisError, ConnectionInterrupted)

_clients: dict[str, object] = {}
_scripts: dict[str, object] = {}


def redis_client():
    """The process's raw Redis client for the `default` cache. Django's cache handler is local to
    each request's context under ASGI, so get_redis_connection() built a new client on every
    request (2.6% of the metered POST's GIL samples in one call), and billing kept a script
    registered on each. The client is thread-safe, and its pool reconnects after a fork or an
    outage by itself."""
    client = _clients.get("default")
    if client is None:
        client = _clients["default"] = get_redis_connection("default")
    return client


def redis_script(source: str):
    """A Lua script registered on the process's client, once (its SHA is computed once)."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = redis_client().register_script(source)
    return script


def redis_scripts_run(calls: list[tuple[str, list, list]]) -> list:
    """Several Lua scripts, (source, keys, args) each, in one round trip, run in order: a
    pipeline, not a transaction, so each runs once and on its own. Returns each one's result,
    or the error Redis answered it with; a connection error raises (which ran is then unknown).
    Each goes with its source (EVAL), not its SHA: redis-py's pipeline would first ask SCRIPT
    EXISTS, a round trip of its own, and a script Redis had forgotten (NOSCRIPT) could only
    be sent again after the ones behind it had run, out of order."""
    pipe = redis_client().pipeline(transaction=False)
    for source, keys, args in calls:
        pipe.eval(source, len(keys), *keys, *args)
    return pipe.execute(raise_on_error=False)


@receiver(setting_changed)
def _forget_on_caches_change(*, setting, **kwargs):
    if setting == "CACHES":  # a test pointing the cache elsewhere
        _clients.clear()
        _scripts.clear()
