"""Row-level security context: who the database thinks is asking.

The web app's role (`default` alias) sees only rows its transaction's context allows.
The context is one transaction-local setting, `app.user_id`, read by the policies
(config/db/operations.py); the user's organizations come from their memberships in the
database (app_organization_ids(), accounts migration 0010), never from the client. Celery tasks
and staff tools see everything only inside `privileged(reason=...)`, which routes the
ORM to the `privileged` alias (the BYPASSRLS worker role) and announces itself so the
access is audited. Scheduled system jobs pass `audited=False`: they are logged, not audited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from uuid import UUID

import psycopg
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.db import connections, transaction
from django.dispatch import Signal
from psycopg.pq import ExecStatus, TransactionStatus

from config.db.rows import prepared_cursor
from config.resolving import request_resolve

APP_ALIAS = "default"
PRIVILEGED_ALIAS = "privileged"
# What a connection's session is reset with before another request or task may have it.
SESSION_RESET_SQL = "RESET ALL"

logger = logging.getLogger("confab.rls")

# Sent on entering the privileged context; analytics writes it to the audit log when `audited`.
privileged_entered = Signal()
_privileged_reason: ContextVar[str | None] = ContextVar("rls_privileged_reason", default=None)


class ContextError(RuntimeError):
    """The context was set where it cannot hold (outside a transaction)."""


def current_alias() -> str:
    """The alias the ORM uses right now: the worker role inside privileged(), else the app role."""
    return PRIVILEGED_ALIAS if _privileged_reason.get() else APP_ALIAS


def atomic():
    """A transaction on the alias the ORM is using now (services call this, not transaction.atomic())."""
    return transaction.atomic(using=current_alias())


@contextmanager
def atomic_as(user_id: UUID | str | None) -> Iterator[None]:
    """A transaction under this user's context: for services that open their own (see own_transactions)."""
    with atomic():
        context_set(user_id=user_id)
        yield


# A transaction whose loss in a crash of PostgreSQL itself (not of a worker) costs little: it is
# acknowledged before its WAL reaches the disk, which follows within 3 x wal_writer_delay, or with
# the next durable commit. What it wrote is visible to every session at once either way.
ASYNCHRONOUS_COMMIT = "SET LOCAL synchronous_commit = off"


def context_set(*, user_id: UUID | str | None, using: str | None = None, asynchronous_commit: bool = False) -> None:
    """Set the context for the current transaction only (set_config(..., true)); with
    `asynchronous_commit`, the transaction commits asynchronously (ASYNCHRONOUS_COMMIT)."""
    connection = connections[using or current_alias()]
    if not connection.in_atomic_block:
        # Outside a transaction a local setting would vanish with the statement.
        raise ContextError("The row-level security context needs an open transaction (transaction.atomic).")
    value = str(user_id) if user_id else ""
    setup = (ASYNCHRONOUS_COMMIT,) if asynchronous_commit else ()
    if not _begun_with_context(connection, value, setup):
        with prepared_cursor(connection.alias) as cur:
            cur.execute("SELECT set_config('app.user_id', %s, true)", [value])
        for command in setup:
            with connection.cursor() as cur:
                cur.execute(command)


def first_statement_as(user_id: UUID | str | None, sql: str, params, *, asynchronous_commit: bool = False) -> list[tuple]:
    """Open the atomic block's transaction under this user's context (as context_set) with `sql`
    as its first statement: its rows. One round trip for BEGIN, the context and the statement
    (the backend's run_first) where the connection can; otherwise the context is set, then the
    statement runs, prepared."""
    connection = connections[current_alias()]
    command = _context_command(str(user_id) if user_id else "")
    run_first = getattr(connection, "run_first", None)
    if command is not None and run_first is not None:
        rows = run_first([command, *([ASYNCHRONOUS_COMMIT] if asynchronous_commit else [])], sql, params)
        if rows is not None:
            return rows
    context_set(user_id=user_id, asynchronous_commit=asynchronous_commit)
    with prepared_cursor(connection.alias) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _begun_with_context(connection, value: str, setup: tuple[str, ...] = ()) -> bool:
    """Start the transaction and set its context in one round trip, when nothing has started it on
    the server yet: psycopg would send BEGIN on its own first, and each round trip costs the web
    server's CPU (docs/performance.md). One simple-protocol string, so no parameters: the value is
    a UUID, checked here, or empty. libpq returns the last result, or the first error, which is
    raised here and rolls the transaction back with its atomic block. False when the transaction
    has begun, or the value is not a UUID: the caller sets it with a bound parameter instead."""
    raw = connection.connection
    if raw is None or raw.autocommit or raw.pgconn.transaction_status != TransactionStatus.IDLE:
        return False
    if raw.isolation_level is not None or raw.read_only is not None or raw.deferrable is not None:
        return False  # psycopg's BEGIN would carry these; ours does not
    sql = _context_command(value)
    if sql is None:
        return False
    started = time.monotonic()
    with connection.wrap_database_errors:
        result = raw.pgconn.exec_("; ".join(["BEGIN", sql, *setup]).encode())
        if result.status != ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(result, encoding=raw.info.encoding)
    if connection.queries_logged:  # as a cursor would log it (DEBUG, CaptureQueriesContext); Django logged BEGIN
        connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})
    return True


def _context_command(value: str) -> str | None:
    """The context as a command with its value inline (a simple-protocol string takes no
    parameters): a UUID, checked here, or empty; None for anything else. SET LOCAL, not SELECT
    set_config(..., true): the same setting, and a utility statement that PostgreSQL does not plan
    (a simple-protocol SELECT is planned every time)."""
    if value:
        try:
            value = str(UUID(value))
        except ValueError:
            return None
    return f"SET LOCAL app.user_id = '{value}'"


def statement_alone(user_id: UUID | str | None, sql: str, params) -> list[tuple] | None:
    """`sql` as a transaction of its own under this user's context, sent in one round trip with
    its BEGIN, the context, its COMMIT and the pool's reset (the backend's run_alone): its rows.
    None when the connection cannot (in a transaction already, no prepared statements): the
    caller then runs it in atomic_as."""
    command = _context_command(str(user_id) if user_id else "")
    run_alone = getattr(connections[current_alias()], "run_alone", None)
    if command is None or run_alone is None:
        return None
    return run_alone([command], sql, params)


INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's code for a row a policy refuses


def refused_by_policy(exc: Exception) -> bool:
    """A database error (Django's, wrapping psycopg's) that is a row policy refusing a row."""
    return getattr(exc.__cause__, "sqlstate", None) == INSUFFICIENT_PRIVILEGE


def context_clear(*, using: str | None = None) -> None:
    context_set(user_id=None, using=using)


def context_get(*, using: str = APP_ALIAS) -> str:
    """The context's user id ('' when none)."""
    with connections[using].cursor() as cur:
        cur.execute("SELECT current_setting('app.user_id', true)")
        return cur.fetchone()[0] or ""


@contextmanager
def privileged(*, reason: str, audited: bool = True) -> Iterator[None]:
    """See every row: route the ORM to the worker role for this block, and say why.

    A person's access is audited; a scheduled system job (rollups, counters, log flush)
    passes audited=False and is only logged, or it would fill the audit log by itself."""
    if not reason or not reason.strip():
        raise ValueError("A privileged context needs a reason; it is written to the audit log.")
    # A command's argument (a file name that is not UTF-8) can carry surrogates no log or row can store.
    reason = reason.encode("utf-8", "backslashreplace").decode()
    token = _privileged_reason.set(reason)
    try:
        with transaction.atomic(using=PRIVILEGED_ALIAS):
            logger.info("privileged access%s: %s", "" if audited else " (system job, not audited)", reason)
            privileged_entered.send(sender=None, reason=reason, audited=audited)
            yield
    finally:
        _privileged_reason.reset(token)


def privileged_reason() -> str | None:
    return _privileged_reason.get()


def connections_reset() -> None:
    """RESET ALL on every open connection kept between requests/tasks without the pool (CONN_MAX_AGE)."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is None or connection.in_atomic_block or connection.vendor != "postgresql":
            continue
        try:
            with connection.cursor() as cur:
                cur.execute(SESSION_RESET_SQL)
        except Exception:  # a broken connection is closed instead
            logger.warning("RESET ALL failed on %s; closing the connection", connection.alias, exc_info=True)
            connection.close()


def pool_connection_reset(connection) -> None:
    """The pool's check-in hook: a connection goes back with no session state (SET, set_config(..., false))."""
    connection.execute(SESSION_RESET_SQL)


# One SQL string: the backend may send it with a transaction's COMMIT instead (config/db/backend).
pool_connection_reset.sql = SESSION_RESET_SQL


def _is_exempt(path: str) -> bool:
    return any(path.startswith(prefix) for prefix in getattr(settings, "RLS_EXEMPT_PATHS", ("/health/", "/static/")))


def own_transactions(*methods: str):
    """Mark a view whose `methods` open their own short transactions because they wait on
    something slow (a model provider): the middleware then holds no transaction, and so
    no pooled connection, open across the wait. Such a view sets the context in each
    of its transactions; the signed-in user is loaded before it runs."""

    def mark(view):
        view.rls_own_transactions = frozenset(m.upper() for m in methods)
        return view

    return mark


def _owns_transactions(request) -> bool:
    match = request_resolve(request)  # kept for the handler, which would resolve it again
    if match is None:
        return False
    func = match.func
    marked = getattr(func, "rls_own_transactions", None) or getattr(getattr(func, "view_class", None), "rls_own_transactions", ())
    return request.method in marked


class RLSContextMiddleware:
    """One transaction per request, with the session user's context set before any query.

    Placed after AuthenticationMiddleware: the session names the user, the context is
    set from it, and only then is the user row loaded (under its own policy). DRF's
    token/API-key authentication sets the context itself once it knows the user.
    Responses of 500 and above roll the transaction back.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if _is_exempt(request.path):
            return self.get_response(request)
        if _owns_transactions(request):
            if request.session.get(SESSION_KEY):  # an API key's request has none: no transaction to open
                with transaction.atomic(using=APP_ALIAS):
                    self._session_user(request)  # loaded and cached now, under the context
            return _async_body_released(self.get_response(request))
        with transaction.atomic(using=APP_ALIAS):
            self._session_user(request)
            response = self.get_response(request)
            if response.status_code >= 500:
                transaction.set_rollback(True, using=APP_ALIAS)
            context = context_get() if response.streaming else None
        # An async body (chat's server-sent events) opens its own short transactions with its own context.
        if response.streaming and not response.is_async:
            response.streaming_content = _stream_in_context(response.streaming_content, context)
        return _async_body_released(response)

    @staticmethod
    def _session_user(request) -> None:
        user_id = request.session.get(SESSION_KEY)
        if user_id:
            context_set(user_id=user_id)
            if not request.user.is_authenticated:
                context_clear()


def connection_release() -> None:
    """Give this thread's connections back to the pool before a long wait that needs none (a
    provider answering): Django keeps them checked out until the request ends, so a worker's
    pool would cap how many replies it can wait on at once. Every alias's: a send that took a
    privileged one (a plan's conversation count, counters read while Redis is down) held it
    across the wait, and two such sends, each holding the connection the other's finish needed,
    deadlocked until the pool's timeout. One inside a transaction stays."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.in_atomic_block:
            connection.close()


def _async_body_released(response):
    """An async body (a reply streaming while the provider answers) outlives the view by
    seconds or minutes and opens its own short transactions: the view's connection goes back
    to the pool now, not when the body ends (Django would close it only then)."""
    if response.streaming and response.is_async:
        connection_release()
    return response


def _stream_in_context(content, user_id: str):
    """Streaming bodies run after the view's transaction: they open their own, same context."""
    with transaction.atomic(using=APP_ALIAS):
        context_set(user_id=user_id or None)
        yield from content
