"""Django's PostgreSQL backend with one change: the pool pings a connection at checkout only when
it has been idle for a while.

With CONN_HEALTH_CHECKS, Django builds the pool with psycopg_pool's check, an empty query on
every checkout. A metered send checks a connection out twice (the provider's wait holds none),
so under load that was two round trips a message to ask a connection that answered its check-in
reset (RESET ALL, config/db/rls.py) a few milliseconds earlier. Here a connection back from
check-in less than RECENTLY_CHECKED_SECONDS ago is handed out as it is; one idle longer (the
server restarted, a firewall dropped it) is pinged, and replaced if it does not answer."""

from __future__ import annotations

from time import monotonic

from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

RECENTLY_CHECKED_SECONDS = 1.0
_CHECKED_IN_AT = "_confab_checked_in_at"  # set on the psycopg connection by the pool's reset


def _reset_and_stamp(reset):
    def reset_then_stamp(connection) -> None:
        if reset is not None:
            reset(connection)  # raises for a broken connection, which the pool then discards
        setattr(connection, _CHECKED_IN_AT, monotonic())

    return reset_then_stamp


def check_unless_recent(connection) -> None:
    """psycopg_pool's check, skipped for a connection checked in (and reset) moments ago."""
    checked_in_at = getattr(connection, _CHECKED_IN_AT, None)
    if checked_in_at is None or monotonic() - checked_in_at > RECENTLY_CHECKED_SECONDS:
        ConnectionPool.check_connection(connection)


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self):
        options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias not in self._connection_pools and options and self.settings_dict["CONN_HEALTH_CHECKS"]:
            options = {} if options is True else dict(options)
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django's pool: it sets autocommit itself later
            pool = ConnectionPool(
                kwargs=connect_kwargs,
                open=False,  # opened on first use, as Django's
                configure=self._configure_connection,
                check=check_unless_recent,
                reset=_reset_and_stamp(options.pop("reset", None)),
                **options,
            )
            self._connection_pools.setdefault(self.alias, pool)  # threads racing here: the first wins
        return super().pool
