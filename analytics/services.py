"""Analytics writes: the ledger, its rollups, product events, and (through buffer.py) the logs.

Other apps record usage only through `usage_record` / `usage_record_batch`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
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


def usage_cost(*, input_tokens: int, output_tokens: int, input_price: Decimal, output_price: Decimal) -> Decimal:
    """Cost in USD, 6 places, from per-million-token prices."""
    raw = (Decimal(input_tokens) * input_price + Decimal(output_tokens) * output_price) / PER_MILLION
    return raw.quantize(COST_PLACES, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class UsageRecord:
    """One model call, validated."""

    user_id: UUID
    organization_id: UUID
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    input_price: Decimal
    output_price: Decimal
    cost: Decimal
    request_id: str
    conversation_id: UUID | None = None
    message_id: UUID | None = None
    latency_ms: int = 0
    success: bool = True
    error: str = ""
    created_at: datetime | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _validated(
    *,
    user_id,
    organization_id,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    input_price,
    output_price,
    request_id: str,
    cost=None,
    **optional,
) -> UsageRecord:
    problems = {}
    for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens), ("latency_ms", optional.get("latency_ms", 0))):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOKENS:
            problems[name] = f"must be a whole number from 0 to {MAX_TOKENS}"
    prices = {}
    for name, value in (("input_price", input_price), ("output_price", output_price), ("cost", cost)):
        if value is None and name == "cost":
            continue
        try:
            decimal = value if isinstance(value, Decimal) else Decimal(str(value))
        except Exception:
            problems[name] = "must be a decimal amount"
            continue
        if not decimal.is_finite() or decimal < 0:
            problems[name] = "must be 0 or more"
        elif name != "cost" and decimal > MAX_PRICE:
            problems[name] = f"must be at most {MAX_PRICE} per million tokens"
        prices[name] = decimal
    if not provider or not model:
        problems["model"] = "provider and model are required"
    if not request_id or len(request_id) > 64:
        problems["request_id"] = "is required (64 characters at most)"
    if not user_id or not organization_id:
        problems["user_id"] = "user and organization are required"
    if problems:
        raise UsageInvalid("Usage not recorded: " + "; ".join(f"{k} {v}" for k, v in problems.items()) + ".", {"fields": problems})
    computed = usage_cost(
        input_tokens=input_tokens, output_tokens=output_tokens, input_price=prices["input_price"], output_price=prices["output_price"]
    )
    return UsageRecord(
        user_id=user_id,
        organization_id=organization_id,
        provider=provider,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_price=prices["input_price"].quantize(COST_PLACES),
        output_price=prices["output_price"].quantize(COST_PLACES),
        cost=prices["cost"].quantize(COST_PLACES, rounding=ROUND_HALF_UP) if "cost" in prices else computed,
        request_id=request_id,
        **optional,
    )


def usage_record(**fields) -> TokenUsage | None:
    """Write one ledger row and count it live. Returns None when the request id was already
    recorded (a retry records nothing twice). Refuses negative tokens or prices (UsageInvalid).
    Runs under the caller's context: the app role may only record its own user's usage."""
    rows = usage_record_batch([fields])
    return rows[0] if rows else None


def usage_record_batch(records: list[dict]) -> list[TokenUsage]:
    """Record many calls in one transaction (ingestion); duplicates by request id are skipped."""
    validated = [_validated(**r) for r in records]
    if not validated:
        return []
    alias = rls.current_alias()
    now = timezone.now()
    with transaction.atomic(using=alias), connections[alias].cursor() as cur:
        cur.execute(
            "INSERT INTO analytics_usagerequest (request_id, created_at) SELECT unnest(%s::text[]), %s "
            "ON CONFLICT DO NOTHING RETURNING request_id",
            [[r.request_id for r in validated], now],
        )
        fresh = {row[0] for row in cur.fetchall()}
        to_write, seen = [], set()
        for r in validated:
            if r.request_id in fresh and r.request_id not in seen:
                seen.add(r.request_id)
                to_write.append(r)
        rows = TokenUsage.objects.using(alias).bulk_create(
            [
                TokenUsage(
                    created_at=r.created_at or now,
                    user_id=r.user_id,
                    organization_id=r.organization_id,
                    provider=r.provider,
                    model=r.model,
                    input_tokens=r.input_tokens,
                    output_tokens=r.output_tokens,
                    total_tokens=r.total_tokens,
                    input_price=r.input_price,
                    output_price=r.output_price,
                    cost=r.cost,
                    conversation_id=r.conversation_id,
                    message_id=r.message_id,
                    request_id=r.request_id,
                    latency_ms=r.latency_ms,
                    success=r.success,
                    error=r.error[:2000],
                )
                for r in to_write
            ]
        )
        transaction.on_commit(lambda: _count_live(rows), using=alias)
    return rows


def _count_live(rows: list[TokenUsage]) -> None:
    totals: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for row in rows:
        t = totals[(row.organization_id, row.user_id, counters.month_of(row.created_at))]
        t[0] += row.input_tokens
        t[1] += row.output_tokens
        t[2] += row.total_tokens
        t[3] += 1
        t[4] += counters.cost_micros(row.cost)
    for (organization_id, user_id, month), t in totals.items():
        counters.counters_increment(organization_id=organization_id, user_id=user_id, month=month, usage=counters.Usage(*t))


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


def usage_rollup(*, pause_before_commit: float = 0.0) -> RollupResult:
    """Fold new ledger rows into the daily and monthly rollups, exactly once.

    The watermark is a transaction id: every ledger row carries the id of the transaction
    that wrote it (xact_id), and a run takes the rows of all transactions below the
    oldest one still running (pg_snapshot_xmin) — those are all committed or gone, so no
    row can appear below the watermark later, whatever order ids were handed out in.
    Rollups and watermark move in one transaction (a killed run changes nothing), under
    an advisory lock (an overlapping run does nothing). `pause_before_commit` exists for
    the test that kills a worker mid-rollup.
    """
    with rls.privileged(reason="usage rollup"), connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
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
        if pause_before_commit:
            time.sleep(pause_before_commit)  # idle in transaction: a killed process aborts it
    return RollupResult(ran=True, rows=rows, horizon=new)


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
