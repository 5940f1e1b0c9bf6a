"""Live usage counters in Redis: this month's tokens, calls and cost per organization and user.

Billing reads them on every message, so they must be cheap and right:
- increments happen after the ledger row commits, and only on a counter that exists;
- a missing counter (new month, Redis restarted or flushed) is rebuilt from the monthly
  rollup plus the ledger rows the rollup has not reached yet, in one SQL statement (one
  snapshot), never reset to zero;
- the hourly reconciliation compares every live counter with the ledger and repairs drift.
Cost is kept in micro-dollars (integers), so Redis arithmetic stays exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from django.db import connections
from django.utils import timezone
from django_redis import get_redis_connection

from config.cache import REDIS_ERRORS
from config.db import rls
from config.db.partitions import month_add, month_start

logger = logging.getLogger("confab.analytics.counters")
KEY_PREFIX = "usage:v1"
TTL_SECONDS = 40 * 24 * 3600
MICROS = Decimal("1000000")
FIELDS = ("input_tokens", "output_tokens", "total_tokens", "calls", "cost_micros")
SCOPES = ("org", "user")

# Increment only a counter that exists: a missing one is rebuilt whole from the database.
_INCR_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
# Write a rebuilt counter unless another process already has.
_SET_IF_MISSING = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    calls: int = 0
    cost_micros: int = 0

    @property
    def cost(self) -> Decimal:
        return (Decimal(self.cost_micros) / MICROS).quantize(Decimal("0.000001"))

    def as_fields(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in FIELDS}


def _redis():
    return get_redis_connection("default")


def month_of(moment: datetime | None = None) -> date:
    return month_start((moment or timezone.now()).astimezone(UTC).date())


def counter_key(scope: str, owner_id, month: date) -> str:
    return f"{KEY_PREFIX}:{month:%Y%m}:{scope}:{owner_id}"


def cost_micros(cost: Decimal) -> int:
    return int((cost * MICROS).to_integral_value())


def counters_increment(*, organization_id, user_id, month: date, usage: Usage) -> None:
    """Add to both live counters. With Redis unreachable the increment is logged and lost:
    the ledger row is written, and the rebuild or hourly reconciliation restores the count."""
    args = [x for pair in usage.as_fields().items() for x in pair]
    try:
        client = _redis()
        script = client.register_script(_INCR_IF_EXISTS)
        for scope, owner in (("org", organization_id), ("user", user_id)):
            script(keys=[counter_key(scope, owner, month)], args=args)
    except REDIS_ERRORS:
        logger.exception(
            "live usage counter increment lost for org %s user %s (%s); reconciliation repairs it", organization_id, user_id, month
        )


_TRUTH_SQL = """
WITH w AS (
    SELECT COALESCE((SELECT horizon::xid8 FROM analytics_rollupwatermark WHERE name = %(watermark)s), '0'::xid8) AS h
), rolled AS (
    SELECT COALESCE(sum(input_tokens), 0) AS i, COALESCE(sum(output_tokens), 0) AS o, COALESCE(sum(total_tokens), 0) AS t,
           COALESCE(sum(calls), 0) AS c, COALESCE(sum(cost), 0) AS cost
    FROM analytics_usagerollup
    WHERE period = 'month' AND period_start = %(month)s AND {owner_column} = %(owner)s
), tail AS (
    SELECT COALESCE(sum(input_tokens), 0) AS i, COALESCE(sum(output_tokens), 0) AS o, COALESCE(sum(total_tokens), 0) AS t,
           count(*) AS c, COALESCE(sum(cost), 0) AS cost
    FROM analytics_tokenusage, w
    WHERE created_at >= %(start)s AND created_at < %(end)s AND {owner_column} = %(owner)s AND xact_id >= w.h
)
SELECT rolled.i + tail.i, rolled.o + tail.o, rolled.t + tail.t, rolled.c + tail.c, rolled.cost + tail.cost FROM rolled, tail
"""


def usage_from_database(*, scope: str, owner_id, month: date) -> Usage:
    """The month's exact usage: the monthly rollup plus the ledger rows past its watermark,
    read in one statement so both come from the same snapshot."""
    from analytics.services import ROLLUP_WATERMARK  # the rollup owns the watermark's name

    owner_column = {"org": "organization_id", "user": "user_id"}[scope]
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end_month = month_add(month, 1)
    end = datetime(end_month.year, end_month.month, 1, tzinfo=UTC)
    with rls.privileged(reason=f"usage counters: rebuild {scope} {owner_id}"), connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
        cur.execute(
            _TRUTH_SQL.format(owner_column=owner_column),
            {"watermark": ROLLUP_WATERMARK, "month": month, "owner": owner_id, "start": start, "end": end},
        )
        i, o, t, c, cost = cur.fetchone()
    return Usage(int(i), int(o), int(t), int(c), cost_micros(cost))


def _parse(raw) -> Usage:
    values = {}
    items = raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2]))
    for key, value in items.items():
        values[key.decode() if isinstance(key, bytes) else key] = int(value)
    return Usage(**{name: values.get(name, 0) for name in FIELDS})


def counters_read(*, scope: str, owner_id, month: date | None = None) -> Usage:
    """The live counter, rebuilt from the database when Redis does not have it."""
    month = month or month_of()
    key = counter_key(scope, owner_id, month)
    try:
        raw = _redis().hgetall(key)
    except REDIS_ERRORS:
        logger.warning("Redis unreachable; usage counter %s read from the ledger", key)
        return usage_from_database(scope=scope, owner_id=owner_id, month=month)
    if raw:
        return _parse(raw)
    usage = usage_from_database(scope=scope, owner_id=owner_id, month=month)
    args = [TTL_SECONDS, *[x for pair in usage.as_fields().items() for x in pair]]
    try:
        stored = _redis().register_script(_SET_IF_MISSING)(keys=[key], args=args)
    except REDIS_ERRORS:
        return usage  # Redis went away between the read and the write: the ledger's answer stands
    return _parse(stored)


def counters_reconcile(*, month: date | None = None) -> list[dict]:
    """Compare every live counter of the month with the database; repair and report drift."""
    month = month or month_of()
    client = _redis()
    repaired = []
    for key in client.scan_iter(match=f"{KEY_PREFIX}:{month:%Y%m}:*", count=500):
        key = key.decode() if isinstance(key, bytes) else key
        _, _, _, scope, owner_id = key.split(":")
        live = _parse(client.hgetall(key))
        truth = usage_from_database(scope=scope, owner_id=owner_id, month=month)
        if live != truth:
            client.hset(key, mapping=truth.as_fields())
            client.expire(key, TTL_SECONDS)
            drift = {"key": key, "live": live.as_fields(), "ledger": truth.as_fields()}
            logger.warning("usage counter drift repaired: %s", drift)
            repaired.append(drift)
    return repaired
