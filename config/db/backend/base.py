"""Django's PostgreSQL backend, with the pool's two per-checkout costs cut:

- Django builds the pool with psycopg_pool's check (CONN_HEALTH_CHECKS), an empty query on every
  checkout. A metered send checks a connection out twice (the provider's wait holds none), so
  under load that was two round trips a message to ask a connection that answered its check-in
  reset a few milliseconds earlier. Here a connection checked in less than
  RECENTLY_CHECKED_SECONDS ago is handed out as it is; one idle longer (the server restarted, a
  firewall dropped it) is pinged, and replaced if it does not answer.
- psycopg_pool runs the check-in reset (RESET ALL, config/db/rls.py) on one of its worker
  threads: each check-in woke a thread. Here it runs as Django gives the connection back, on the
  request's own thread, before the pool has it: the same round trip, no thread hand-off."""

from __future__ import annotations

from time import monotonic

import psycopg
from django.db.backends.postgresql import base
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

RECENTLY_CHECKED_SECONDS = 1.0
_CHECKED_IN_AT = "_confab_checked_in_at"  # set on the psycopg connection at its check-in reset


def check_unless_recent(connection) -> None:
    """psycopg_pool's check, skipped for a connection checked in (and reset) moments ago."""
    checked_in_at = getattr(connection, _CHECKED_IN_AT, None)
    if checked_in_at is None or monotonic() - checked_in_at > RECENTLY_CHECKED_SECONDS:
        ConnectionPool.check_connection(connection)


class DatabaseWrapper(base.DatabaseWrapper):
    def _pool_options(self) -> dict | None:
        options = self.settings_dict["OPTIONS"].get("pool")
        return ({} if options is True else options) if options else None

    @property
    def pool(self):
        options = self._pool_options()
        if options is not None and self.alias not in self._connection_pools:
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django's pool: it sets autocommit itself later
            pool = ConnectionPool(
                kwargs=connect_kwargs,
                open=False,  # opened on first use, as Django's
                configure=self._configure_connection,
                check=check_unless_recent if self.settings_dict["CONN_HEALTH_CHECKS"] else None,
                **{name: value for name, value in options.items() if name != "reset"},  # reset: see _close
            )
            self._connection_pools.setdefault(self.alias, pool)  # threads racing here: the first wins
        return super().pool

    def _close(self):
        reset = (self._pool_options() or {}).get("reset")
        connection = self.connection
        if connection is not None and reset is not None and self.pool is not None:
            try:
                if connection.pgconn.transaction_status != TransactionStatus.IDLE:
                    connection.rollback()
                reset(connection)
                setattr(connection, _CHECKED_IN_AT, monotonic())
            except psycopg.Error:
                connection.close()  # the pool discards a closed connection and opens another
        return super()._close()
