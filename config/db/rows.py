"""Model instances from one raw query that reads several tables (a hot path's single round trip)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.db import connections
from django.db.models.base import ModelState
from django.db.models.signals import post_init


def columns_of(model, table_alias: str) -> str:
    """`alias.col, ...` for every concrete field, in the order `model_from_row` expects."""
    return ", ".join(f"{table_alias}.{f.column}" for f in model._meta.concrete_fields)


def direct_connection_params(alias: str) -> dict:
    """psycopg.connect() arguments for a connection of one's own (outside Django and its pool)
    to an alias's database as its role."""
    params = connections[alias].get_connection_params()
    for name in ("context", "cursor_factory", "prepare_threshold"):
        params.pop(name, None)
    return params


def model_from_row(model, alias: str, values):
    """An instance from the values `columns_of(model)` selected, through each field's database
    converter (JSON): what `model.from_db` builds, without Model.__init__ (which sets each field
    through setattr, about 20 us a model in the bench's trace; three on every metered send). Every concrete
    field is given, so no default or deferred field is involved; post_init is sent as loading
    sends it (the audit log's snapshot: analytics/audit.py)."""
    connection = connections[alias]
    fields = model._meta.concrete_fields
    instance = model.__new__(model)
    instance.__dict__.update(
        (f.attname, f.from_db_value(v, None, connection) if hasattr(f, "from_db_value") else v) for f, v in zip(fields, values, strict=True)
    )
    instance._state = ModelState()
    instance._state.adding, instance._state.db = False, alias
    post_init.send(sender=model, instance=instance)
    return instance


def model_clone(instance, alias: str):
    """A new instance with the same field values, as loaded from `alias` (from_db), sharing no
    list or dict with `instance` and carrying no related object or cached property: what
    model_from_row would build again from the same row, without Model.__init__ (a tenth of a
    millisecond for a user and an API key, on every API request). post_init is sent as loading
    sends it (the audit log's snapshot of the values as loaded: analytics/audit.py)."""
    clone = instance.__class__.__new__(instance.__class__)
    clone.__dict__.update(
        (field.attname, copy.deepcopy(value) if isinstance(value, list | dict) else value)
        for field in instance._meta.concrete_fields
        for value in (instance.__dict__[field.attname],)
    )
    clone._state = ModelState()
    clone._state.adding, clone._state.db = False, alias
    post_init.send(sender=instance.__class__, instance=clone)
    return clone


class _PreparedCursor(psycopg.Cursor):
    """Binds on the server and prepares: the statement is parsed and planned once per connection."""

    def execute(self, query, params=None, *, prepare=True, binary=None):
        try:
            return super().execute(query, params, prepare=prepare, binary=binary)
        except psycopg.Error:
            self._prepared_forgotten()
            raise

    def _prepared_forgotten(self) -> None:
        """A statement that failed is prepared afresh next time, as the backend's pipelines do:
        psycopg forgets its prepared statements only at a rollback, so one a schema change made
        stale (a column's type changed) failed for good on a connection in autocommit. The old
        one is deallocated with the connection's next command."""
        if self._query is None:
            return
        cache = self._conn._prepared
        key = cache.key(self._query)
        cache._counts.pop(key, None)
        if name := cache._names.pop(key, None):
            cache._to_flush.append(name)

    def _send_query_prepared(self, name, pgq, *, binary=None):
        # psycopg keeps the query it ran only when it did not prepare it; Django's query log
        # (DEBUG, CaptureQueriesContext, the debug toolbar) reads it from there, and logged None.
        self._query = pgq
        super()._send_query_prepared(name, pgq, binary=binary)


@contextmanager
def prepared_cursor(alias: str) -> Iterator:
    """A cursor for a statement asked on every message, prepared per connection so PostgreSQL
    does not parse, rewrite (row-level security) and plan it again each time. Django's cursors
    bind on the client and never prepare. It goes through Django's cursor wrapper, so query
    logging and counting still see it. With DATABASE_PREPARED_STATEMENTS off (a pooler that
    cannot keep them), psycopg's prepare_threshold is None and nothing is prepared."""
    connection = connections[alias]
    connection.ensure_connection()
    with connection._prepare_cursor(_PreparedCursor(connection.connection)) as cur:
        yield cur


def fetch_one_prepared(alias: str, sql: str, params) -> tuple | None:
    """One row of a prepared statement (see prepared_cursor)."""
    with prepared_cursor(alias) as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def insert_rows(model, instances: list, *, before: tuple[str, list] | None = None, prepared: bool = False, last: bool = False) -> None:
    """INSERT the instances (defaults already set, as `Model()` sets them) in one VALUES
    statement. Django's bulk_create sends a few rows through UNNEST of typed arrays, whose
    adaptation cost the message path about 1 ms of Python for two rows. `before`, (sql, params)
    of another write, runs in the same statement as a data-modifying WITH: one round trip.
    `prepared` for a statement of the same shape on every call (see prepared_cursor); `last` for
    the transaction's last statement, sent prepared with its COMMIT where the backend can
    (run_last): nothing may run in the atomic block after it."""
    connection = connections[_alias_for(model)]
    fields = [f for f in model._meta.concrete_fields]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for obj in instances for f in fields]
    sql = f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({columns}) VALUES {', '.join([row] * len(instances))}"
    if before is not None:
        sql, params = f"WITH before AS ({before[0]}) {sql}", [*before[1], *params]
    run_last = getattr(connection, "run_last", None) if last else None
    if run_last is None or run_last(sql, params) is None:
        with prepared_cursor(connection.alias) if prepared or last else connection.cursor() as cur:
            cur.execute(sql, params)
    for obj in instances:
        obj._state.adding, obj._state.db = False, connection.alias


def update_row_sql(obj, field_names: list[str]) -> tuple[str, list]:
    """(sql, params) of an UPDATE of these fields of one saved instance (auto_now fields take the
    time now, as save() would), for `insert_rows(..., before=...)`."""
    connection = connections[_alias_for(type(obj))]
    fields = [obj._meta.get_field(name) for name in field_names]
    assignments = ", ".join(f"{connection.ops.quote_name(f.column)} = %s" for f in fields)
    params = [f.get_db_prep_save(f.pre_save(obj, add=False), connection) for f in fields]
    pk = obj._meta.pk
    table = connection.ops.quote_name(obj._meta.db_table)
    return f"UPDATE {table} SET {assignments} WHERE {connection.ops.quote_name(pk.column)} = %s", [*params, obj.pk]


def _alias_for(model) -> str:
    from django.db import router

    return router.db_for_write(model)
