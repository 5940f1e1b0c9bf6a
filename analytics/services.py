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
from analytics.models import TokenUsage
from config.db import rls

COST_PLACES = Decimal("0.000001")
MAX_PRICE = Decimal("999999.999999")  # numeric(12, 6): USD per million tokens
MAX_TOKENS = 2**31 - 1
PER_MILLION = Decimal("1000000")
ROLLUP_WATERMARK = "token_usage"
ROLLUP_LOCK = 0x636F6E666162  # pg advisory lock key for the rollup ("confab")
# A request id is remembered this long: a retry inside it records nothing twice (Stripe keeps
# idempotency keys 24 hours); older ids are pruned daily so analytics_usagerequest stays bounded.
USAGE_DEDUPE_WINDOW = timedelta(days=7)
PRUNE_BATCH = 10_000


def usage_cost(*, input_tokens: int, output_tokens: int, input_price: Decimal, output_price: Decimal) -> Decimal:
    """Cost in USD, 6 places, from per-million-token prices."""
    raw = (Decimal(input_tokens) * input_price + Decimal(output_tokens) * output_price) / PER_MILLION
    return raw.quantize(COST_PLACES, rounding=ROUND_HALF_UP)


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
)
_LEDGER_COLUMNS = ", ".join(_STAGED_COLUMNS[2:])
_REQUEST_ID = _STAGED_COLUMNS.index("request_id")
# Binary COPY: each staged value is already of its column's type.
_STAGED_TYPES = ("int8", "int4", "timestamptz", "uuid", "uuid", "text", "text", "int4", "int4", "int4")
_STAGED_TYPES += ("numeric", "numeric", "numeric", "uuid", "uuid", "text", "int4", "bool", "text")
# Per connection; emptied at every commit (a truncate: DELETE would leave dead rows no vacuum visits).
_STAGING_SQL = """
CREATE TEMP TABLE IF NOT EXISTS usage_staging (
    batch bigint, seq integer, created_at timestamptz, user_id uuid, organization_id uuid, provider text, model text,
    input_tokens integer, output_tokens integer, total_tokens integer, input_price numeric, output_price numeric,
    cost numeric, conversation_id uuid, message_id uuid, request_id text, latency_ms integer, success boolean, error text
) ON COMMIT DELETE ROWS
"""
_batches = itertools.count(1)  # one number per call: a transaction may stage several batches
_staging_ready: weakref.WeakSet = weakref.WeakSet()  # connections whose staging table is committed
# The dedupe and the write in one statement, under the caller's row-level security: a request
# id already recorded writes nothing (a batch is staged without repeats); the totals feed the live counters.
_RECORD_SQL = f"""
WITH staged AS (
    SELECT * FROM pg_temp.usage_staging WHERE batch = %(batch)s
), fresh AS (
    INSERT INTO analytics_usagerequest (request_id, created_at)
    SELECT request_id, %(now)s::timestamptz FROM staged
    ON CONFLICT DO NOTHING RETURNING request_id
), written AS (
    INSERT INTO analytics_tokenusage ({_LEDGER_COLUMNS})
    SELECT {_LEDGER_COLUMNS} FROM staged JOIN fresh USING (request_id)
    RETURNING id, organization_id, user_id, created_at, input_tokens, output_tokens, total_tokens, cost
)
SELECT organization_id, user_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date,
       sum(input_tokens), sum(output_tokens), sum(total_tokens), count(*), sum(cost), array_agg(id)
FROM written GROUP BY 1, 2, 3
"""


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


def _problems(
    *,
    user_id,
    organization_id,
    provider,
    model,
    input_tokens,
    output_tokens,
    input_price,
    output_price,
    request_id,
    cost,
    conversation_id,
    message_id,
    latency_ms,
    success,
    error,
    created_at,
) -> UsageInvalid:
    """The slow path: prices as Decimals, or UsageInvalid naming every bad field."""
    problems = {}
    for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens), ("latency_ms", latency_ms)):
        if type(value) is not int or not 0 <= value <= MAX_TOKENS:
            problems[name] = f"must be a whole number from 0 to {MAX_TOKENS}"
    prices = {}
    for name, value in (("input_price", input_price), ("output_price", output_price), ("cost", cost)):
        if value is None and name == "cost":
            prices[name] = None
            continue
        try:
            decimal = value if type(value) is Decimal else Decimal(str(value))
        except Exception:
            problems[name] = "must be a decimal amount"
            continue
        if not decimal.is_finite() or decimal < 0:
            problems[name] = "must be 0 or more"
        elif name != "cost" and decimal > MAX_PRICE:
            problems[name] = f"must be at most {MAX_PRICE} per million tokens"
        prices[name] = decimal
    if not provider or not model or type(provider) is not str or type(model) is not str:
        problems["model"] = "provider and model are required"
    if not request_id or type(request_id) is not str or len(request_id) > 64:
        problems["request_id"] = "is required (64 characters at most)"
    if not user_id or not organization_id:
        problems["user_id"] = "user and organization are required"
    for name, value in (
        ("user_id", user_id),
        ("organization_id", organization_id),
        ("conversation_id", conversation_id),
        ("message_id", message_id),
    ):
        if value and _as_uuid(value) is None:
            problems[name] = "must be a UUID"
    if type(success) is not bool:
        problems["success"] = "must be true or false"
    if type(error) is not str:
        problems["error"] = "must be text"
    if created_at is not None and not (isinstance(created_at, datetime) and created_at.utcoffset() is not None):
        problems["created_at"] = "must be a timezone-aware date and time"
    if problems:
        raise UsageInvalid("Usage not recorded: " + "; ".join(f"{k} {v}" for k, v in problems.items()) + ".", {"fields": problems})
    return prices["input_price"], prices["output_price"], prices["cost"]


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
) -> tuple:
    """One call, validated, as a staged row (see _STAGED_COLUMNS); UsageInvalid names every bad field."""
    user, organization = _as_uuid(user_id), _as_uuid(organization_id)
    conversation = None if conversation_id is None else _as_uuid(conversation_id)
    message = None if message_id is None else _as_uuid(message_id)
    # Ingestion runs this for every row: the common case is checked in one expression.
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
        and (cost is None or (type(cost) is Decimal and cost.is_finite() and cost >= 0))
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
        input_price, output_price, cost = _problems(
            user_id=user_id,
            organization_id=organization_id,
            provider=provider,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            input_price=input_price,
            output_price=output_price,
            request_id=request_id,
            cost=cost,
            conversation_id=conversation_id,
            message_id=message_id,
            latency_ms=latency_ms,
            success=success,
            error=error,
            created_at=created_at,
        )
    if cost is None:
        cost = usage_cost(input_tokens=input_tokens, output_tokens=output_tokens, input_price=input_price, output_price=output_price)
    else:
        cost = cost.quantize(COST_PLACES, rounding=ROUND_HALF_UP)
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
        input_price.quantize(COST_PLACES),
        output_price.quantize(COST_PLACES),
        cost,
        conversation,
        message,
        request_id,
        latency_ms,
        success,
        error[:2000],
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
) -> TokenUsage | None:
    """Write one ledger row with the prices used, and count it live once committed.

    `cost` (USD) is computed from the per-million-token prices when not given. Returns None
    when the request id was already recorded (a retry records nothing twice). Refuses
    negative tokens or prices (UsageInvalid). Runs under the caller's context: the app
    role may only record its own user's usage."""
    now = timezone.now()
    batch = next(_batches)
    row = _staged(
        batch,
        0,
        now,
        user_id=user_id,
        organization_id=organization_id,
        provider=provider,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_price=input_price,
        output_price=output_price,
        request_id=request_id,
        cost=cost,
        conversation_id=conversation_id,
        message_id=message_id,
        latency_ms=latency_ms,
        success=success,
        error=error,
        created_at=created_at,
    )
    ids = _ledger_write([row], batch=batch, now=now)
    if not ids:
        return None
    return TokenUsage(id=ids[0], **dict(zip(_STAGED_COLUMNS[2:], row[2:])))


def usage_record_batch(*, records: list[dict]) -> int:
    """Record many calls (each as usage_record's arguments) in one statement; request ids
    already recorded, or repeated in the batch, are skipped. Returns how many were recorded."""
    now, batch = timezone.now(), next(_batches)
    rows = [_staged(batch, seq, now, **record) for seq, record in enumerate(records)]
    first = {}
    for row in rows:  # a request id repeated in the batch: its first call counts
        first.setdefault(row[_REQUEST_ID], row)
    return len(_ledger_write(list(first.values()), batch=batch, now=now)) if rows else 0


def _ledger_write(rows: list[tuple], *, batch: int, now: datetime) -> list[int]:
    """COPY the staged rows into a temporary table, then dedupe and write them with one
    INSERT ... SELECT (COPY cannot write to a table under row-level security); returns the ids."""
    alias = rls.current_alias()
    connection, ids, totals = connections[alias], [], []
    # No savepoint (two round trips fewer): a failed write rolls the caller's transaction back whole.
    with transaction.atomic(using=alias, savepoint=False), connection.cursor() as cur:
        if connection.connection not in _staging_ready:
            cur.execute(_STAGING_SQL)
            link = connection.connection
            transaction.on_commit(lambda: _staging_ready.add(link), using=alias)
        with cur.copy(f"COPY pg_temp.usage_staging ({', '.join(_STAGED_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_STAGED_TYPES)
            for row in rows:
                copy.write_row(row)
        cur.execute(_RECORD_SQL, {"now": now, "batch": batch})
        for organization_id, user_id, month, i, o, t, calls, cost, row_ids in cur.fetchall():
            ids.extend(row_ids)
            totals.append((organization_id, user_id, month, counters.Usage(i, o, t, calls, counters.cost_units(cost))))
        transaction.on_commit(lambda: _count_live(totals), using=alias)
    return ids


def _count_live(totals: list[tuple]) -> None:
    for organization_id, user_id, month, usage in totals:
        counters.counters_increment(organization_id=organization_id, user_id=user_id, month=month, usage=usage)


@dataclass(frozen=True)
class RollupResult:
    ran: bool
    rows: int = 0
    horizon: str = ""


_ROLLUP_SQL = """
INSERT INTO analytics_usagerollup AS r
    (period, period_start, organization_id, user_id, provider, model,
     input_tokens, output_tokens, total_tokens, calls, errors, cost, updated_at)
SELECT p.period,
       CASE p.period WHEN 'day' THEN (t.created_at AT TIME ZONE 'UTC')::date
                     ELSE date_trunc('month', t.created_at AT TIME ZONE 'UTC')::date END,
       t.organization_id, t.user_id, t.provider, t.model,
       sum(t.input_tokens), sum(t.output_tokens), sum(t.total_tokens), count(*),
       count(*) FILTER (WHERE NOT t.success), sum(t.cost), now()
FROM analytics_tokenusage t CROSS JOIN (VALUES ('day'), ('month')) AS p(period)
WHERE t.xact_id >= %(old)s::xid8 AND t.xact_id < %(new)s::xid8
GROUP BY 1, 2, 3, 4, 5, 6
ON CONFLICT (period, period_start, organization_id, user_id, provider, model) DO UPDATE SET
    input_tokens = r.input_tokens + EXCLUDED.input_tokens,
    output_tokens = r.output_tokens + EXCLUDED.output_tokens,
    total_tokens = r.total_tokens + EXCLUDED.total_tokens,
    calls = r.calls + EXCLUDED.calls,
    errors = r.errors + EXCLUDED.errors,
    cost = r.cost + EXCLUDED.cost,
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
