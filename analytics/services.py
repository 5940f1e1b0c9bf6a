"""Analytics writes: the ledger, its rollups, product events, and (through buffer.py) the logs.

Other apps record usage only through `usage_record` / `usage_record_batch`.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from uuid import UUID, uuid4

from django.db import connections, transaction
from django.utils import timezone

from accounts import selectors as accounts_selectors
from analytics import buffer, counters
from analytics.errors import UsageInvalid
from analytics.models import KeySource, TokenUsage
from config.db import rls
from config.db.rows import prepared_cursor

COST_PLACES = Decimal("0.0000000001")  # the ledger's cost: numeric(20, 10)
MAX_COST = Decimal("9999999999.9999999999")
PRICE_PLACES = Decimal("0.000001")
MAX_PRICE = Decimal("999999.999999")  # numeric(12, 6): USD per million tokens
MAX_TOKENS = 2**31 - 1
PER_MILLION = Decimal("1000000")
ROLLUP_WATERMARK = "token_usage"
ROLLUP_LOCK = 0x636F6E666162  # pg advisory lock key for the rollup ("confab")
# A request id is remembered this long: a retry inside it records nothing twice (Stripe keeps
# idempotency keys 24 hours); older ids are pruned daily so analytics_usagerequest stays bounded.
USAGE_DEDUPE_WINDOW = timedelta(days=7)
PRUNE_BATCH = 10_000


CLASSES = ("cache_read", "cache_write_5m", "cache_write_1h")  # input classes with a rate of their own
KEY_SOURCES = tuple(KeySource.values)


def usage_cost(
    *,
    input_tokens: int,
    output_tokens: int,
    input_price: Decimal,
    output_price: Decimal,
    cache_read_tokens: int = 0,
    cache_write_5m_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    cache_read_price: Decimal | None = None,
    cache_write_5m_price: Decimal | None = None,
    cache_write_1h_price: Decimal | None = None,
) -> Decimal:
    """Cost in USD to 1e-10 from per-million-token prices: each input class at its own rate, the
    rest of the input at the input price (input_tokens is the total input); a class's price may
    be None only when it has no tokens."""
    cached = (
        (cache_read_tokens, cache_read_price),
        (cache_write_5m_tokens, cache_write_5m_price),
        (cache_write_1h_tokens, cache_write_1h_price),
    )
    raw = Decimal(input_tokens - sum(tokens for tokens, _ in cached)) * input_price + Decimal(output_tokens) * output_price
    raw += sum((Decimal(tokens) * price for tokens, price in cached if tokens), Decimal(0))
    return (raw / PER_MILLION).quantize(COST_PLACES, rounding=ROUND_HALF_UP)


# One ledger row as staged for COPY, in this column order.
_STAGED_COLUMNS = (
    "batch",
    "seq",
    "created_at",
    "user_id",
    "organization_id",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "input_price",
    "output_price",
    "cost",
    "conversation_id",
    "message_id",
    "request_id",
    "latency_ms",
    "success",
    "error",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "cache_read_price",
    "cache_write_5m_price",
    "cache_write_1h_price",
    "estimated",
    "cache_hit",
    "saved_tokens",
    "saved_cost",
    "key_source",
)
_LEDGER_COLUMNS = ", ".join(_STAGED_COLUMNS[2:])
_REQUEST_ID = _STAGED_COLUMNS.index("request_id")
# Binary COPY: each staged value is already of its column's type.
_STAGED_TYPES = ("int8", "int4", "timestamptz", "uuid", "uuid", "text", "text", "int4", "int4", "int4")
_STAGED_TYPES += ("numeric", "numeric", "numeric", "uuid", "uuid", "text", "int4", "bool", "text")
_STAGED_TYPES += ("int4", "int4", "int4", "int4", "numeric", "numeric", "numeric", "bool", "bool", "int4", "numeric", "text")
# Per connection; emptied at every commit (a truncate: DELETE would leave dead rows no vacuum visits).
_STAGING_SQL = """
CREATE TEMP TABLE IF NOT EXISTS usage_staging (
    batch bigint, seq integer, created_at timestamptz, user_id uuid, organization_id uuid, provider text, model text,
    input_tokens integer, output_tokens integer, total_tokens integer, input_price numeric, output_price numeric,
    cost numeric, conversation_id uuid, message_id uuid, request_id text, latency_ms integer, success boolean, error text,
    cache_read_tokens integer, cache_write_5m_tokens integer, cache_write_1h_tokens integer, reasoning_tokens integer,
    cache_read_price numeric, cache_write_5m_price numeric, cache_write_1h_price numeric, estimated boolean, cache_hit boolean,
    saved_tokens integer, saved_cost numeric, key_source text
) ON COMMIT DELETE ROWS
"""
_batches = itertools.count(1)  # one number per call: a transaction may stage several batches
_staging_ready: weakref.WeakSet = weakref.WeakSet()  # connections whose staging table is committed
# The write in one statement, under the caller's row-level security. `once` asks the ledger's insert
# trigger to record each request id and skip a row whose id is already recorded (analytics 0011: the
# app role cannot record ids itself); a batch is staged without repeats. The totals feed the live counters.
_RECORD_CTES = f""", once AS (
    SELECT set_config('confab.ledger_once', 'on', true)
), written AS (
    INSERT INTO analytics_tokenusage ({_LEDGER_COLUMNS})
    SELECT {_LEDGER_COLUMNS} FROM staged, once
    RETURNING id, organization_id, user_id, created_at, input_tokens, output_tokens, total_tokens, cost
)"""
_RECORD_TOTALS = """
SELECT organization_id, user_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date,
       sum(input_tokens), sum(output_tokens), sum(total_tokens), count(*), sum(cost), pg_current_xact_id()::text, array_agg(id)
FROM written GROUP BY 1, 2, 3
"""
_RECORD_SQL = "WITH staged AS (SELECT * FROM pg_temp.usage_staging WHERE batch = %(batch)s)" + _RECORD_CTES + _RECORD_TOTALS
# One call (the message path) needs no staging table: its row goes in as typed VALUES, one round trip.
_STAGED_NAMES = ", ".join(_STAGED_COLUMNS)
_STAGED_VALUES = "(" + ", ".join(f"%(c{i})s::{kind}" for i, kind in enumerate(_STAGED_TYPES)) + ")"
_RECORD_ONE_SQL = f"WITH staged ({_STAGED_NAMES}) AS (VALUES {_STAGED_VALUES})" + _RECORD_CTES + _RECORD_TOTALS


@dataclass(frozen=True)
class Alongside:
    """A caller's own writes, run in the ledger row's statement (a round trip fewer):
    data-modifying CTEs with named parameters `%(aN)s`, the last named `alongside`, whose rows
    are counted in the answer. The ledger row is written either way (a request id already
    recorded is skipped, as always). The names staged, once, written and recorded are the ledger's."""

    sql: str
    params: dict


@functools.lru_cache(maxsize=64)
def _record_one_alongside_sql(alongside_sql: str) -> str:
    """_RECORD_ONE_SQL after the caller's CTEs, answering one row: how many rows `alongside`
    returned, then the totals (NULLs when nothing was written)."""
    return (
        f"WITH {alongside_sql}, staged ({_STAGED_NAMES}) AS (VALUES {_STAGED_VALUES}){_RECORD_CTES}, recorded AS ({_RECORD_TOTALS}) "
        "SELECT (SELECT count(*) FROM alongside), recorded.* FROM (SELECT 1) AS one LEFT JOIN recorded ON true"
    )


@functools.lru_cache(maxsize=4096)
def _uuid_from_text(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


def _as_uuid(value) -> UUID | None:
    """A UUID from a UUID or its text (cached: a batch repeats a few ids); None when neither."""
    if type(value) is UUID:
        return value
    return _uuid_from_text(str(value)) if value else None


def _problems(fields: dict) -> tuple[Decimal, Decimal, Decimal | None, dict]:
    """The slow path: prices as Decimals, or UsageInvalid naming every bad field."""
    problems = {}
    counts = ("input_tokens", "output_tokens", "latency_ms", *(f"{c}_tokens" for c in CLASSES), "reasoning_tokens", "saved_tokens")
    for name in counts:
        value = fields[name]
        if type(value) is not int or not 0 <= value <= MAX_TOKENS:
            problems[name] = f"must be a whole number from 0 to {MAX_TOKENS}"
    amounts = {}
    for name in ("input_price", "output_price", *(f"{c}_price" for c in CLASSES), "cost", "saved_cost"):
        value = fields[name]
        if value is None and name not in ("input_price", "output_price", "saved_cost"):
            amounts[name] = None
            continue
        try:
            decimal = value if type(value) is Decimal else Decimal(str(value))
        except Exception:
            problems[name] = "must be a decimal amount"
            continue
        if not decimal.is_finite() or decimal < 0:
            problems[name] = "must be 0 or more"
        elif name.endswith("_price") and decimal > MAX_PRICE:
            problems[name] = f"must be at most {MAX_PRICE} per million tokens"
        elif decimal > MAX_COST:
            problems[name] = f"must be at most {MAX_COST} USD"
        amounts[name] = decimal
    if "input_tokens" not in problems and all(f"{c}_tokens" not in problems for c in CLASSES):
        if sum(fields[f"{c}_tokens"] for c in CLASSES) > fields["input_tokens"]:
            problems["cache_read_tokens"] = "cache read and cache write tokens are part of input_tokens: their sum must not exceed it"
    if "output_tokens" not in problems and "reasoning_tokens" not in problems and fields["reasoning_tokens"] > fields["output_tokens"]:
        problems["reasoning_tokens"] = "are part of output_tokens: must not exceed it"
    for c in CLASSES:
        if type(fields[f"{c}_tokens"]) is int and fields[f"{c}_tokens"] > 0 and fields[f"{c}_price"] is None:
            problems[f"{c}_price"] = (
                f"is required when {c}_tokens is above 0 (a class without a price of its own is charged at the input price)"
            )
    if fields["key_source"] not in KEY_SOURCES:
        problems["key_source"] = "must be one of " + ", ".join(KEY_SOURCES)
    for name in ("success", "estimated", "cache_hit"):
        if type(fields[name]) is not bool:
            problems[name] = "must be true or false"
    if fields["cache_hit"] is True and amounts.get("cost"):
        problems["cost"] = "must be 0 for a cache hit (the provider was not called)"
    if fields["cache_hit"] is False and (fields["saved_tokens"] or amounts.get("saved_cost")):
        problems["saved_tokens"] = "only a cache hit saves tokens"
    provider, model, request_id = fields["provider"], fields["model"], fields["request_id"]
    if not provider or not model or type(provider) is not str or type(model) is not str:
        problems["model"] = "provider and model are required"
    if not request_id or type(request_id) is not str or len(request_id) > 64:
        problems["request_id"] = "is required (64 characters at most)"
    if not fields["user_id"] or not fields["organization_id"]:
        problems["user_id"] = "user and organization are required"
    for name in ("user_id", "organization_id", "conversation_id", "message_id"):
        if fields[name] and _as_uuid(fields[name]) is None:
            problems[name] = "must be a UUID"
    if type(fields["error"]) is not str:
        problems["error"] = "must be text"
    created_at = fields["created_at"]
    if created_at is not None and not (isinstance(created_at, datetime) and created_at.utcoffset() is not None):
        problems["created_at"] = "must be a timezone-aware date and time"
    if problems:
        raise UsageInvalid("Usage not recorded: " + "; ".join(f"{k} {v}" for k, v in problems.items()) + ".", {"fields": problems})
    return amounts["input_price"], amounts["output_price"], amounts["cost"], amounts


def _class_price(tokens: int, price: Decimal | None) -> Decimal | None:
    """A class's rate as stored: None when the class did not occur."""
    return price.quantize(PRICE_PLACES) if tokens and price is not None else None


def _staged(
    batch: int,
    seq: int,
    now: datetime,
    *,
    user_id: UUID,
    organization_id: UUID,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    input_price: Decimal,
    output_price: Decimal,
    request_id: str,
    cost: Decimal | None = None,
    conversation_id: UUID | None = None,
    message_id: UUID | None = None,
    latency_ms: int = 0,
    success: bool = True,
    error: str = "",
    created_at: datetime | None = None,
    cache_read_tokens: int = 0,
    cache_write_5m_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    reasoning_tokens: int = 0,
    cache_read_price: Decimal | None = None,
    cache_write_5m_price: Decimal | None = None,
    cache_write_1h_price: Decimal | None = None,
    estimated: bool = False,
    cache_hit: bool = False,
    saved_tokens: int = 0,
    saved_cost: Decimal = Decimal(0),
    key_source: str = KeySource.NONE,
) -> tuple:
    """One call, validated, as a staged row (see _STAGED_COLUMNS); UsageInvalid names every bad field."""
    user, organization = _as_uuid(user_id), _as_uuid(organization_id)
    conversation = None if conversation_id is None else _as_uuid(conversation_id)
    message = None if message_id is None else _as_uuid(message_id)
    # Ingestion runs this for every row: the common case (no cache classes, no cache hit) is checked in one expression.
    if not (
        type(input_tokens) is int
        and type(output_tokens) is int
        and type(latency_ms) is int
        and 0 <= input_tokens <= MAX_TOKENS
        and 0 <= output_tokens <= MAX_TOKENS
        and 0 <= latency_ms <= MAX_TOKENS
        and type(input_price) is Decimal
        and type(output_price) is Decimal
        and input_price.is_finite()
        and output_price.is_finite()
        and 0 <= input_price <= MAX_PRICE
        and 0 <= output_price <= MAX_PRICE
        and (cost is None or (type(cost) is Decimal and cost.is_finite() and 0 <= cost <= MAX_COST))
        and type(cache_read_tokens) is type(cache_write_5m_tokens) is type(cache_write_1h_tokens) is int
        and type(reasoning_tokens) is type(saved_tokens) is int
        and cache_read_tokens == cache_write_5m_tokens == cache_write_1h_tokens == reasoning_tokens == saved_tokens == 0
        and cache_hit is False
        and type(saved_cost) in (Decimal, int)
        and saved_cost == 0
        and type(estimated) is bool
        and key_source in KEY_SOURCES
        and type(provider) is str
        and type(model) is str
        and type(request_id) is str
        and type(error) is str
        and type(success) is bool
        and provider
        and model
        and request_id
        and len(request_id) <= 64
        and user
        and organization
        and (conversation_id is None or conversation)
        and (message_id is None or message)
        and (created_at is None or (isinstance(created_at, datetime) and created_at.utcoffset() is not None))
    ):
        input_price, output_price, cost, amounts = _problems(dict(locals()))
        cache_read_price, cache_write_5m_price, cache_write_1h_price = (amounts[f"{c}_price"] for c in CLASSES)
        saved_cost = amounts["saved_cost"]
    if cost is None:
        cost = (
            Decimal(0)
            if cache_hit
            else usage_cost(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                input_price=input_price,
                output_price=output_price,
                cache_read_tokens=cache_read_tokens,
                cache_write_5m_tokens=cache_write_5m_tokens,
                cache_write_1h_tokens=cache_write_1h_tokens,
                cache_read_price=cache_read_price,
                cache_write_5m_price=cache_write_5m_price,
                cache_write_1h_price=cache_write_1h_price,
            )
        )
    return (
        batch,
        seq,
        created_at or now,
        user,
        organization,
        provider,
        model,
        input_tokens,
        output_tokens,
        input_tokens + output_tokens,
        input_price.quantize(PRICE_PLACES),
        output_price.quantize(PRICE_PLACES),
        cost.quantize(COST_PLACES, rounding=ROUND_HALF_UP),
        conversation,
        message,
        request_id,
        latency_ms,
        success,
        error[:2000],
        cache_read_tokens,
        cache_write_5m_tokens,
        cache_write_1h_tokens,
        reasoning_tokens,
        _class_price(cache_read_tokens, cache_read_price),
        _class_price(cache_write_5m_tokens, cache_write_5m_price),
        _class_price(cache_write_1h_tokens, cache_write_1h_price),
        estimated,
        cache_hit,
        saved_tokens,
        Decimal(saved_cost).quantize(COST_PLACES, rounding=ROUND_HALF_UP),
        key_source,
    )


def usage_record(
    *,
    user_id: UUID,
    organization_id: UUID,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    input_price: Decimal,
    output_price: Decimal,
    request_id: str,
    cost: Decimal | None = None,
    conversation_id: UUID | None = None,
    message_id: UUID | None = None,
    latency_ms: int = 0,
    success: bool = True,
    error: str = "",
    created_at: datetime | None = None,
    cache_read_tokens: int = 0,
    cache_write_5m_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    reasoning_tokens: int = 0,
    cache_read_price: Decimal | None = None,
    cache_write_5m_price: Decimal | None = None,
    cache_write_1h_price: Decimal | None = None,
    estimated: bool = False,
    cache_hit: bool = False,
    saved_tokens: int = 0,
    saved_cost: Decimal = Decimal(0),
    key_source: str = KeySource.NONE,
) -> TokenUsage | None:
    """Write one ledger row with the token classes and the prices used, and count it live once committed.

    input_tokens is the total input (cache read and writes included), output_tokens the total
    output (reasoning included). `cost` (USD, kept to 1e-10) is computed from the per-million-token
    prices when not given: each cache class at its own price, the rest of the input at the input
    price; a cache hit costs $0 and records what it saved. Returns None when the request id was
    already recorded (a retry records nothing twice). Refuses impossible values (UsageInvalid).
    Runs under the caller's context: the app role may only record its own user's usage."""
    fields = dict(locals())  # the arguments, as given
    _counted, row_id, row = _record_one(None, None, fields)
    return None if row_id is None else TokenUsage(id=row_id, **dict(zip(_STAGED_COLUMNS[2:], row[2:])))


def usage_record_alongside(alongside: Alongside | None, *, alone_as: UUID | None = None, **fields) -> tuple[int, bool]:
    """usage_record (its arguments in `fields`) in one statement with the caller's own writes:
    (how many rows `alongside` returned, whether the ledger row was written: not when its request
    id was recorded already). With `alone_as`, a user id, the statement is a transaction of its
    own under that user's context, committed in the same round trip (rls.statement_alone); the
    caller has none open. No TokenUsage instance is built (a model of 30 fields: tens of
    microseconds on every metered send, which needs none)."""
    counted, row_id, _row = _record_one(alongside, alone_as, fields)
    return counted, row_id is not None


def _record_one(alongside: Alongside | None, alone_as: UUID | None, fields: dict) -> tuple[int, int | None, tuple]:
    """One call's ledger row written: (what `alongside` counted, the row's id or None, the staged row)."""
    now, batch = timezone.now(), next(_batches)
    row = _staged(batch, 0, now, **fields)
    counted, ids = _ledger_write([row], batch=batch, alongside=alongside, alone_as=alone_as)
    return counted, (ids[0] if ids else None), row


def usage_record_batch(*, records: list[dict]) -> int:
    """Record many calls (each as usage_record's arguments) in one statement; request ids
    already recorded, or repeated in the batch, are skipped. Returns how many were recorded."""
    now, batch = timezone.now(), next(_batches)
    rows = [_staged(batch, seq, now, **record) for seq, record in enumerate(records)]
    first = {}
    for row in rows:  # a request id repeated in the batch: its first call counts
        first.setdefault(row[_REQUEST_ID], row)
    return len(_ledger_write(list(first.values()), batch=batch)[1]) if rows else 0


def _ledger_write(
    rows: list[tuple], *, batch: int, alongside: Alongside | None = None, alone_as: UUID | None = None
) -> tuple[int, list[int]]:
    """Dedupe and write the staged rows with one INSERT ... SELECT: a batch from a temporary
    table it was COPYed into (COPY cannot write to a table under row-level security), a single
    call from VALUES, with a caller's `alongside` writes if given; returns (how many rows
    `alongside` returned, 0 without it; the ids). A single call with `alone_as` is a transaction
    of its own under that user (usage_record_alongside)."""
    alias = rls.current_alias()
    connection = connections[alias]
    single = len(rows) == 1
    if single:  # one call: the same statement every time, prepared per connection
        params = {f"c{i}": value for i, value in enumerate(rows[0])}
        sql = _RECORD_ONE_SQL if alongside is None else _record_one_alongside_sql(alongside.sql)
        params = params if alongside is None else params | alongside.params
        if alone_as is not None:
            returned = rls.statement_alone(alone_as, sql, params)
            if returned is not None:  # committed: the counters now, as on_commit would
                counted, written = _ledger_answer(returned, alongside)
                _count_live(_ledger_totals(written))
                return counted, [i for *_, row_ids in written for i in row_ids]
            with rls.atomic_as(alone_as):
                return _ledger_write(rows, batch=batch, alongside=alongside)
    # No savepoint (two round trips fewer): a failed write rolls the caller's transaction back whole.
    with transaction.atomic(using=alias, savepoint=False), prepared_cursor(alias) if single else connection.cursor() as cur:
        if single:
            cur.execute(sql, params)
            counted, written = _ledger_answer(cur.fetchall(), alongside)
        else:
            _staged_copy(cur, connection, alias, rows)
            cur.execute(_RECORD_SQL, {"batch": batch})
            counted, written = 0, cur.fetchall()
        totals = _ledger_totals(written)
        transaction.on_commit(lambda: _count_live(totals), using=alias)
    return counted, [i for *_, row_ids in written for i in row_ids]


def _ledger_answer(returned: list[tuple], alongside: Alongside | None) -> tuple[int, list[tuple]]:
    """(how many rows `alongside` returned, the totals rows written) from a single call's answer."""
    if alongside is None:
        return 0, returned
    [(counted, *recorded)] = returned
    return counted, [recorded] if recorded[0] is not None else []


def _ledger_totals(written: list[tuple]) -> list[tuple]:
    """The live counters' increments for the written rows' totals, with the writing transaction's id."""
    return [
        (organization_id, user_id, month, counters.Usage(i, o, t, calls, counters.cost_units(cost)), xact)
        for organization_id, user_id, month, i, o, t, calls, cost, xact, _row_ids in written
    ]


def _staged_copy(cur, connection, alias: str, rows: list[tuple]) -> None:
    """COPY a batch's rows into the connection's staging table (created once per connection)."""
    if connection.connection not in _staging_ready:
        cur.execute(_STAGING_SQL)
        link = connection.connection
        transaction.on_commit(lambda: _staging_ready.add(link), using=alias)
    with cur.copy(f"COPY pg_temp.usage_staging ({', '.join(_STAGED_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_STAGED_TYPES)
        for row in rows:
            copy.write_row(row)


def _count_live(totals: list[tuple]) -> None:
    for organization_id, user_id, month, usage, xact in totals:
        counters.counters_increment(organization_id=organization_id, user_id=user_id, month=month, usage=usage, xact=xact)


@dataclass(frozen=True)
class RollupResult:
    ran: bool
    rows: int = 0
    horizon: str = ""


# The ledger columns the rollups sum under the same names; calls and the flags are counted.
_ROLLUP_SUMS = ("input_tokens", "output_tokens", "total_tokens", "cost", "cache_read_tokens", "cache_write_5m_tokens")
_ROLLUP_SUMS += ("cache_write_1h_tokens", "reasoning_tokens", "saved_tokens", "saved_cost")
_ROLLUP_SQL = f"""
INSERT INTO analytics_usagerollup AS r
    (period, period_start, organization_id, user_id, provider, model,
     {", ".join(_ROLLUP_SUMS)}, calls, errors, estimated_calls, cache_hits, updated_at)
SELECT p.period,
       CASE p.period WHEN 'day' THEN (t.created_at AT TIME ZONE 'UTC')::date
                     ELSE date_trunc('month', t.created_at AT TIME ZONE 'UTC')::date END,
       t.organization_id, t.user_id, t.provider, t.model,
       {", ".join(f"sum(t.{name})" for name in _ROLLUP_SUMS)}, count(*),
       count(*) FILTER (WHERE NOT t.success), count(*) FILTER (WHERE t.estimated), count(*) FILTER (WHERE t.cache_hit), now()
FROM analytics_tokenusage t CROSS JOIN (VALUES ('day'), ('month')) AS p(period)
WHERE t.xact_id >= %(old)s::xid8 AND t.xact_id < %(new)s::xid8
GROUP BY 1, 2, 3, 4, 5, 6
ON CONFLICT (period, period_start, organization_id, user_id, provider, model) DO UPDATE SET
    {", ".join(f"{c} = r.{c} + EXCLUDED.{c}" for c in (*_ROLLUP_SUMS, "calls", "errors", "estimated_calls", "cache_hits"))},
    updated_at = EXCLUDED.updated_at
"""


def usage_rollup() -> RollupResult:
    """Fold new ledger rows into the daily and monthly rollups, exactly once.

    The watermark is a transaction id: every ledger row carries the id of the transaction
    that wrote it (xact_id), and a run takes the rows of all transactions below the
    oldest one still running (pg_snapshot_xmin) — those are all committed or gone, so no
    row can appear below the watermark later, whatever order ids were handed out in.
    Rollups and watermark move in one transaction (a killed run changes nothing), under
    an advisory lock (an overlapping run does nothing).
    """
    with rls.privileged(reason="usage rollup", audited=False), connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
        cur.execute("SELECT pg_try_advisory_xact_lock(%s)", [ROLLUP_LOCK])
        if not cur.fetchone()[0]:
            return RollupResult(ran=False)
        cur.execute(
            "INSERT INTO analytics_rollupwatermark (name, horizon, rows_total, updated_at) VALUES (%s, '0', 0, now()) "
            "ON CONFLICT (name) DO NOTHING",
            [ROLLUP_WATERMARK],
        )
        cur.execute("SELECT horizon FROM analytics_rollupwatermark WHERE name = %s FOR UPDATE", [ROLLUP_WATERMARK])
        old = cur.fetchone()[0]
        cur.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        new = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM analytics_tokenusage WHERE xact_id >= %s::xid8 AND xact_id < %s::xid8", [old, new])
        rows = cur.fetchone()[0]
        if rows:
            cur.execute(_ROLLUP_SQL, {"old": old, "new": new})
        cur.execute(
            "UPDATE analytics_rollupwatermark SET horizon = %s, rows_total = rows_total + %s, updated_at = now() WHERE name = %s",
            [new, rows, ROLLUP_WATERMARK],
        )
    return RollupResult(ran=True, rows=rows, horizon=new)


def usage_requests_prune() -> int:
    """Forget the request ids older than USAGE_DEDUPE_WINDOW, in short batches; returns how many."""
    cutoff = timezone.now() - USAGE_DEDUPE_WINDOW
    pruned = 0
    while True:
        with rls.privileged(reason="usage request ids: prune", audited=False), connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
            cur.execute(
                "DELETE FROM analytics_usagerequest WHERE request_id IN "
                "(SELECT request_id FROM analytics_usagerequest WHERE created_at < %s LIMIT %s)",
                [cutoff, PRUNE_BATCH],
            )
            pruned += cur.rowcount
        if cur.rowcount < PRUNE_BATCH:
            return pruned


# --- Product events ----------------------------------------------------------------


def _event_row(
    *, name: str, user_id, organization_id, properties: dict | None, source: str, session_id: str, occurred_at: datetime | None
) -> dict:
    return {
        "event_uuid": str(uuid4()),
        "created_at": (occurred_at or timezone.now()).isoformat(),
        "user_id": str(user_id) if user_id else None,
        "organization_id": str(organization_id) if organization_id else None,
        "name": name,
        "properties": properties or {},
        "source": source,
        "session_id": session_id or "",
    }


def event_track(
    *,
    name: str,
    user=None,
    organization_id: UUID | None = None,
    properties: dict | None = None,
    source: str = "server",
    session_id: str = "",
    occurred_at: datetime | None = None,
) -> UUID | None:
    """Queue one product event for the event log (written by the log flush, not here).
    Returns its uuid, or None when the user opted out of analytics (nothing is kept).
    The opt-out is read under the caller's context: the user's own, or privileged."""
    if user is not None and accounts_selectors.analytics_opted_out(user=user):
        return None
    row = _event_row(
        name=name,
        user_id=getattr(user, "pk", None),
        organization_id=organization_id,
        properties=properties,
        source=source,
        session_id=session_id,
        occurred_at=occurred_at,
    )
    buffer.buffer_push("event", row)
    return UUID(row["event_uuid"])


def event_track_batch(*, user, events: list[dict], source: str = "client") -> int:
    """Queue a user's validated events (name, properties, occurred_at, session_id);
    returns how many were kept: 0 when the user opted out of analytics."""
    if accounts_selectors.analytics_opted_out(user=user):
        return 0
    for event in events:
        buffer.buffer_push(
            "event",
            _event_row(
                name=event["name"],
                user_id=user.pk,
                organization_id=None,
                properties=event.get("properties"),
                source=source,
                session_id=event.get("session_id", ""),
                occurred_at=event.get("occurred_at"),
            ),
        )
    return len(events)
