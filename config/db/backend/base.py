"""Django's PostgreSQL backend, with the pool's round trips per checkout cut:

- Django builds the pool with psycopg_pool's check (CONN_HEALTH_CHECKS), an empty query on every
  checkout. A metered send checks a connection out twice (the provider's wait holds none), so
  under load that was two round trips a message to ask a connection that answered its check-in
  reset a few milliseconds earlier. Here a connection checked in less than
  RECENTLY_CHECKED_SECONDS ago is handed out as it is; one idle longer (the server restarted, a
  firewall dropped it) is pinged, and replaced if it does not answer.
- psycopg_pool runs the check-in reset (RESET ALL, config/db/rls.py) on one of its worker
  threads: each check-in woke a thread. Here it runs as Django gives the connection back, on the
  request's own thread, before the pool has it: the same round trip, no thread hand-off.
- A reset that is one SQL string (rls.pool_connection_reset.sql) goes with each transaction's
  COMMIT, in the same round trip ("COMMIT; RESET ALL"): a metered send commits twice and gives
  its connection back right after each commit, so the check-in reset was a round trip of its
  own, twice a message. The connection remembers when its session was last reset; anything it
  sends the server since (SessionTrackingConnection.wait) forgets it, and so does giving it back
  mid-transaction: the check-in then resets as before.
- A statement that is a transaction of its own (a metered send's finish) can go in one round
  trip with its BEGIN, its context, its COMMIT and the reset (DatabaseWrapper.run_alone, libpq's
  pipeline mode) instead of three; a transaction's first statement with its BEGIN and context
  (run_first), and its last with its COMMIT and the reset (run_last).
- Django loads every timestamptz with its own loader, a subclass of psycopg's pure-Python one
  (3.6 us a value, parsed with a regular expression); here it is parsed by psycopg's C loader
  (0.2 us) where psycopg has one, with Django's time zone put on it as Django does
  (FastTzLoader). A list page of 50 messages reads 100 of them."""

from __future__ import annotations

import functools
import logging
import select
from time import monotonic

import psycopg
from django.conf import settings
from django.db.backends.postgresql import base, psycopg_any
from django.db.backends.utils import debug_transaction
from psycopg import adapt, generators
from psycopg._preparing import Prepare
from psycopg._queries import PostgresQuery  # how psycopg's cursors turn %(name)s into $n and dump the values
from psycopg.adapt import AdaptersMap
from psycopg.pq import ExecStatus, Format, TransactionStatus
from psycopg_pool import ConnectionPool

logger = logging.getLogger("confab.db")

RECENTLY_CHECKED_SECONDS = 1.0
_CHECKED_IN_AT = "_confab_checked_in_at"  # set on the psycopg connection at check-in: when its session was last reset
# Set on the psycopg connection when its session was reset with a COMMIT (monotonic seconds);
# None once anything may have run on it since.
_RESET_AT = "_confab_reset_at"


TIMESTAMPTZ_OID = psycopg.postgres.types["timestamptz"].oid
# psycopg's own text loader: its C implementation when psycopg has one (psycopg-binary or -c).
_PSYCOPG_TIMESTAMPTZ = psycopg.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)


class FastTzLoader(psycopg_any.BaseTzLoader):
    """Django's timestamptz loader (a value in the connection's time zone, then given Django's
    `timezone` as is, as BaseTzLoader.load does), parsed by psycopg's C loader. Still a
    BaseTzLoader: Django's create_cursor reads `timezone` from it to decide whether to replace it."""

    def __init__(self, oid: int, context=None):
        # Not BaseTzLoader's __init__: its pure-Python parser is never used.
        psycopg.adapt.Loader.__init__(self, oid, context)
        self._parse = _PSYCOPG_TIMESTAMPTZ(oid, context).load

    def load(self, data):
        return self._parse(data).replace(tzinfo=self.timezone)


@functools.lru_cache
def adapters_with_fast_timestamptz(use_tz: bool, timezone) -> AdaptersMap:
    """Django's adapters for a connection (psycopg_any.get_adapters_template), with FastTzLoader."""
    adapters = AdaptersMap(psycopg_any.get_adapters_template(use_tz, timezone))
    adapters.register_loader("timestamptz", type("FastTzLoader", (FastTzLoader,), {"timezone": timezone}))
    return adapters


def check_unless_recent(connection) -> None:
    """psycopg_pool's check (a round trip), skipped for a connection checked in (and reset)
    moments ago unless its socket has something to read. The server sends an idle connection
    nothing, so a readable one has most likely been ended (a restart, a failover,
    pg_terminate_backend: its FATAL and end of file wait there), and a send's finish, after
    the provider was paid, must not be handed it."""
    checked_in_at = getattr(connection, _CHECKED_IN_AT, None)
    if checked_in_at is None or monotonic() - checked_in_at > RECENTLY_CHECKED_SECONDS or _has_unread(connection):
        ConnectionPool.check_connection(connection)


def _has_unread(connection) -> bool:
    """Whether the server has sent this idle connection anything, asked without waiting (no round trip)."""
    try:
        poller = select.poll()  # not select(): it refuses a descriptor past 1024, which a busy worker's sockets reach
        poller.register(connection.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):  # no socket any more
        return True


class SessionTrackingConnection(psycopg.Connection):
    """psycopg's connection, forgetting its last session reset whenever it talks to the server:
    every statement, fetch and copy of its cursors (Django's included) and its own commands go
    through wait(). Not when a cursor is made: one made before a COMMIT may run after it."""

    def wait(self, *args, **kwargs):
        setattr(self, _RESET_AT, None)
        return super().wait(*args, **kwargs)

    def set_autocommit(self, value: bool) -> None:
        # Only a setting on the client (psycopg refuses it mid-transaction), though it goes through
        # wait(): Django turns autocommit back on right after each COMMIT.
        reset_at = getattr(self, _RESET_AT, None)
        super().set_autocommit(value)
        setattr(self, _RESET_AT, reset_at)


PIPELINE_LIBPQ = 140000  # libpq's pipeline mode
RESET_WITH_COMMIT_MARK = "/* with COMMIT */"


def _pipeline_round_trip(pgconn, expected: int):
    """Send what the pipeline holds, then read one result a command (a command after a failed
    one: PIPELINE_ABORTED) and the sync's: one generator, so one wait() for the round trip
    instead of one a result (each about 10 us of CPU, eight in a send's longest round trip)."""
    yield from generators.send(pgconn)
    results = []
    for _ in range(expected):
        results.append((yield from generators.fetch_many(pgconn))[-1])
    yield from generators.fetch(pgconn)
    return results


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self):
        params = super().get_connection_params()
        params["context"] = adapters_with_fast_timestamptz(settings.USE_TZ, self.timezone)
        return params

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
                connection_class=SessionTrackingConnection,
                configure=self._configure_connection,
                check=check_unless_recent if self.settings_dict["CONN_HEALTH_CHECKS"] else None,
                **{name: value for name, value in options.items() if name != "reset"},  # reset: see _close
            )
            self._connection_pools.setdefault(self.alias, pool)  # threads racing here: the first wins
        return super().pool

    def run_alone(self, setup: list[str], sql: str, params) -> list[tuple] | None:
        """`sql` as a transaction of its own, its rows returned, in one round trip: BEGIN, the
        `setup` commands (SET LOCAL ...), the statement (prepared on this connection the first
        time), COMMIT and the pool's session reset go together in libpq's pipeline mode and are
        read back together; three round trips otherwise (BEGIN with the setup, the statement,
        COMMIT with the reset). None when it cannot be done here and the caller runs the statement
        in a transaction as usual: in a transaction already, with autocommit off, or without
        prepared statements (a pooler in transaction mode). An error in any command rolls the
        whole back and raises as the statement would; a reset that fails after its COMMIT is left
        to the check-in, as in _commit."""
        self.ensure_connection()
        if self.in_atomic_block or not self.connection.autocommit or not self._can_pipeline(TransactionStatus.IDLE):
            return None
        return self._pipelined(["BEGIN", *setup], sql, params, commit=True)

    def run_first(self, setup: list[str], sql: str, params) -> list[tuple] | None:
        """The first statement of the atomic block's transaction, sent with its BEGIN and the
        `setup` commands in one round trip (psycopg would send BEGIN alone first): its rows. None
        when it cannot be done here (the transaction has begun, no prepared statements): the
        caller then runs the setup and the statement as usual. An error raises as the statement
        would, and the atomic block rolls back."""
        self.ensure_connection()
        if not self.in_atomic_block or self.connection.autocommit or not self._can_pipeline(TransactionStatus.IDLE):
            return None
        return self._pipelined(["BEGIN", *setup], sql, params, commit=False)

    def run_last(self, sql: str, params) -> list[tuple] | None:
        """The last statement of the outermost atomic block, sent with its COMMIT and the pool's
        session reset in one round trip: its rows. The block then ends with nothing left to commit
        (_commit sends nothing); nothing may run in it after this. None when it cannot be done here
        (inside a savepoint, a transaction not begun or failed, no prepared statements): the caller
        runs the statement as usual and the block commits it. An error, in the statement or at its
        COMMIT, raises as the statement would, and the block rolls back what is left."""
        self.ensure_connection()
        if len(self.atomic_blocks) != 1 or self.needs_rollback or not self._can_pipeline(TransactionStatus.INTRANS):
            return None
        return self._pipelined([], sql, params, commit=True)

    def _can_pipeline(self, status: TransactionStatus) -> bool:
        raw = self.connection
        return (
            raw.prepare_threshold is not None
            and raw.pgconn.transaction_status == status
            and psycopg.pq.version() >= PIPELINE_LIBPQ
            and (raw.isolation_level, raw.read_only, raw.deferrable) == (None, None, None)  # psycopg's BEGIN would carry these
        )

    def _pipelined(self, before: list[str], sql: str, params, *, commit: bool) -> list[tuple]:
        """The `before` commands, `sql` as a prepared statement, then if `commit` COMMIT and the
        session reset, in libpq's pipeline mode: one round trip. The statement is prepared through
        psycopg's own cache of prepared statements, so it goes when psycopg deallocates them all
        (after a ROLLBACK, say) and is prepared again on its next use."""
        self.validate_thread_sharing()
        raw = self.connection
        pgconn = raw.pgconn
        transformer = adapt.Transformer(raw)
        query = PostgresQuery(transformer)
        with self.wrap_database_errors:  # a value psycopg cannot send raises as through a cursor
            query.convert(sql, params)
        cache = raw._prepared
        prepare, name = cache.get(query, prepare=True)
        new = prepare is Prepare.SHOULD
        reset_sql = self._reset_sql() if commit else None
        after = [b"COMMIT"] if commit else []
        if reset_sql is not None:  # marked, so pg_stat_activity tells it from a check-in's reset
            after.append(f"{RESET_WITH_COMMIT_MARK} {reset_sql}".encode())
        started = monotonic()
        with self.wrap_database_errors, raw.lock:  # the lock psycopg's cursors take around each statement
            pgconn.enter_pipeline_mode()
            try:
                for command in before:
                    pgconn.send_query_params(command.encode(), None)
                if new:
                    pgconn.send_prepare(name, query.query, param_types=query.types)
                pgconn.send_query_prepared(name, query.params, param_formats=query.formats)
                for command in after:
                    pgconn.send_query_params(command, None)
                pgconn.pipeline_sync()
                results = raw.wait(_pipeline_round_trip(pgconn, len(before) + new + 1 + len(after)))
            except BaseException:
                raw.close()  # left mid-pipeline (the server gone, say): no one may take it over
                raise
            pgconn.exit_pipeline_mode()
            statement_at = len(before) + new
            checked = results[: statement_at + 1 + commit]  # the reset's result is not the statement's
            failed = next((r for r in checked if r.status not in (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK)), None)
            added = cache.maybe_add_to_cache(query, prepare, name)
            if failed is not None and checked.index(failed) <= statement_at:
                # Not prepared, or failing as prepared: dropped from the cache and prepared afresh next
                # time (a statement a schema change made stale: "cached plan must not change result type").
                cache.validate(cache.key(query), prepare, name, [failed])
            elif added is not None:
                cache.validate(added, prepare, name, [results[statement_at]])
            if failed is not None:
                if before and commit and pgconn.transaction_status != TransactionStatus.IDLE:
                    pgconn.send_query(b"ROLLBACK")  # a transaction of its own, failed before its COMMIT
                    raw.wait(generators.execute(pgconn))
                raise psycopg.errors.error_from_result(failed, encoding=raw.info.encoding)
        if self.queries_logged:  # as a cursor would log it (DEBUG, CaptureQueriesContext)
            self.queries_log.append({"sql": sql, "time": f"{monotonic() - started:.3f}"})
        if reset_sql is not None:
            if results[-1].status == ExecStatus.COMMAND_OK:
                setattr(raw, _RESET_AT, monotonic())
            else:
                logger.warning("the session reset sent with COMMIT failed on %s; resetting at check-in", self.alias)
        result = results[statement_at]
        transformer.set_pgresult(result)
        return transformer.load_rows(0, result.ntuples, tuple) if result.status == ExecStatus.TUPLES_OK else []

    def _reset_sql(self) -> str | None:
        """The check-in reset as one SQL string, if it is one (it then goes with each COMMIT)."""
        return getattr((self._pool_options() or {}).get("reset"), "sql", None)

    def _commit(self):
        connection, reset_sql = self.connection, self._reset_sql()
        if connection is not None and connection.pgconn.transaction_status == TransactionStatus.IDLE:
            return  # nothing begun, or committed already with its last statement (run_last): psycopg would send nothing either
        if connection is None or reset_sql is None or connection.pgconn.transaction_status != TransactionStatus.INTRANS:
            return super()._commit()  # nothing begun, or a failed transaction (its COMMIT rolls back): as Django does
        with debug_transaction(self, "COMMIT"), self.wrap_database_errors:
            # One simple-protocol string, a result per statement; after an error the rest do not run.
            connection.pgconn.send_query(f"COMMIT; {reset_sql}".encode())
            committed, *reset = connection.wait(generators.execute(connection.pgconn))
            if committed.status != ExecStatus.COMMAND_OK:
                raise psycopg.errors.error_from_result(committed, encoding=connection.info.encoding)
        if any(result.status != ExecStatus.COMMAND_OK for result in reset):
            # Committed all the same, so no error for the caller: the check-in resets the
            # session (wait() above forgot any earlier reset), or drops a broken connection.
            logger.warning("the session reset sent with COMMIT failed on %s; resetting at check-in", self.alias)
            return
        setattr(connection, _RESET_AT, monotonic())

    def _close(self):
        reset = (self._pool_options() or {}).get("reset")
        connection = self.connection
        if connection is not None and reset is not None and self.pool is not None:
            try:
                reset_at = getattr(connection, _RESET_AT, None)
                if connection.pgconn.transaction_status != TransactionStatus.IDLE:
                    connection.rollback()
                    reset_at = None
                if not connection.autocommit:
                    # Else the reset opens a transaction that the pool, finding it open, rolls back:
                    # the reset undone, the connection handed on as if reset.
                    connection.autocommit = True
                if reset_at is None:  # else reset with its last COMMIT, and nothing has run since
                    reset(connection)
                    reset_at = monotonic()
                if connection.pgconn.transaction_status != TransactionStatus.IDLE:
                    connection.close()  # as psycopg_pool's own reset: a connection it cannot vouch for goes
                    return super()._close()
                setattr(connection, _CHECKED_IN_AT, reset_at)
                setattr(connection, _RESET_AT, reset_at)
            except psycopg.Error:
                connection.close()  # the pool discards a closed connection and opens another
        return super()._close()
