"""Live usage counters in Redis: this month's tokens, calls and cost per organization and user.

Billing reads them on every message, so they must be cheap and right:
- increments happen after the ledger row commits, and only on a counter that exists;
- a missing counter (new month, Redis restarted or flushed) is rebuilt from the monthly
  rollup plus the ledger rows the rollup has not reached yet, in one SQL statement (one
  snapshot), never reset to zero;
- the hourly reconciliation compares every live counter with the ledger and adds the
  drift (never overwrites: increments landing meanwhile are kept).
Cost is kept in integer units of 1e-10 USD (the ledger's precision), so Redis arithmetic stays exact.
An increment that fails (Redis unreachable) marks its counters unsure: the next Redis call in
this process drops them, so they are rebuilt from the ledger instead of staying low.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

from django.db import connections
from django.utils import timezone

from config.cache import REDIS_ERRORS, redis_client, redis_script, redis_scripts_run
from config.db import rls
from config.db.partitions import month_add, month_start

logger = logging.getLogger("confab.analytics.counters")
KEY_PREFIX = "usage:v2"  # v2: cost in 1e-10 USD units (v1 held micro-dollars)
TTL_SECONDS = 40 * 24 * 3600
UNITS = Decimal("10000000000")  # cost units per USD
COST_PLACES = Decimal("0.0000000001")
FIELDS = ("input_tokens", "output_tokens", "total_tokens", "calls", "cost_units")
SCOPES = ("org", "user")
SETTLE_SECONDS = 1.0  # a drift still there after this is real, not an increment in flight

# Increment (or repair by a drift) only a counter that exists: a missing one is rebuilt whole from
# the database. A rebuilt counter keeps the snapshot its ledger read saw ('seen', xmin:xmax:xip as
# pg_current_snapshot gives it): an increment of a transaction that snapshot already saw committed
# (ARGV[1], its xact id; empty for a repair) was counted by the rebuild, and is not added again.
# KEYS: counters. ARGV: xact id or '', then field, amount pairs.
_INCR_IF_EXISTS = """
local function counted_by(snapshot, xact)
  local xmin, xmax, xip = string.match(snapshot, '^(%d+):(%d+):(.*)$')
  if not xmin then return false end
  xact = tonumber(xact)
  if xact < tonumber(xmin) then return true end
  if xact >= tonumber(xmax) then return false end
  for id in string.gmatch(xip, '%d+') do
    if tonumber(id) == xact then return false end
  end
  return true
end
local added = 0
for k = 1, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    local seen = redis.call('HGET', KEYS[k], 'seen')
    if ARGV[1] == '' or not seen or not counted_by(seen, ARGV[1]) then
      for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1]) end
      added = added + 1
    end
  end
end
return added
"""
# Add a repair's drift only if the counter still holds what the repair measured: of two repairs
# that measured the same drift (overlapping runs), the second finds it gone and adds nothing; an
# increment landing meanwhile also defers the repair to the next run. The counter then keeps the
# snapshot the repair's ledger read saw as 'seen', as a rebuild does: the drift counted the calls
# committed in it, so their increments still in flight are not added again.
# ARGV: the snapshot, then field, measured, delta triples.
_ADD_IF_UNCHANGED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV, 3 do
  if tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') ~= tonumber(ARGV[i + 1]) then return 0 end
end
for i = 2, #ARGV, 3 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 2]) end
redis.call('HSET', KEYS[1], 'seen', ARGV[1])
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
    cost_units: int = 0

    @property
    def cost(self) -> Decimal:
        return (Decimal(self.cost_units) / UNITS).quantize(COST_PLACES)

    def as_fields(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in FIELDS}


def month_of(moment: datetime | None = None) -> date:
    return month_start((moment or timezone.now()).astimezone(UTC).date())


def counter_key(scope: str, owner_id, month: date) -> str:
    return f"{KEY_PREFIX}:{month:%Y%m}:{scope}:{owner_id}"


def cost_units(cost: Decimal) -> int:
    return int((cost * UNITS).to_integral_value())


_unsure: set[str] = set()  # counter keys whose increment failed in this process: dropped at the next chance


def counters_drop_unsure(client=None) -> None:
    """Drop the counters an increment failed on (Redis was unreachable), so the next read
    rebuilds them from the ledger; a counter kept by a Redis that comes back with its old
    data would stay low and let a limit overshoot. Raises the Redis error when still down."""
    if not _unsure:
        return
    keys = list(_unsure)
    (client or redis_client()).delete(*keys)
    _unsure.difference_update(keys)
    logger.info("usage counters dropped after a lost increment, rebuilt from the ledger on next read: %s", keys)


@dataclass(frozen=True)
class Increment:
    """One call's addition to its organization's and its user's counters."""

    keys: tuple[str, ...]
    args: tuple

    def call(self) -> tuple[str, list, list]:
        return _INCR_IF_EXISTS, list(self.keys), list(self.args)


class HeldIncrements:
    """The increments made inside increments_held(), for its caller to send."""

    def __init__(self) -> None:
        self._increments: list[Increment] = []

    def add(self, increment: Increment) -> None:
        self._increments.append(increment)

    def take(self) -> list[Increment]:
        taken, self._increments = self._increments, []
        return taken


_held: ContextVar[HeldIncrements | None] = ContextVar("counter_increments_held", default=None)


@contextmanager
def increments_held() -> Iterator[HeldIncrements]:
    """Hold the counter increments made inside (a ledger row's run on its commit), so that the
    caller sends them with its own next Redis call (`increments_send(held.take(), then=...)`):
    one round trip for both. What the caller did not take goes at the exit, as it would have."""
    held = HeldIncrements()
    token = _held.set(held)
    try:
        yield held
    finally:
        _held.reset(token)
        if leftover := held.take():
            with suppress(*REDIS_ERRORS):  # increments_send marked their counters unsure
                increments_send(leftover)


def increments_send(increments: list[Increment], *, then: tuple[str, list, list] | None = None):
    """Send the increments, and the caller's script `then` (source, keys, args) behind them in the
    same round trip, so what they count is counted before `then` runs. Returns `then`'s result, or
    the error Redis answered it with. An increment that fails (Redis unreachable, raised here) is
    lost, but its counters are marked unsure and dropped at this process's next Redis call
    (rebuilt from the ledger); the hourly reconciliation is the backstop if the process ends first."""
    calls = [increment.call() for increment in increments] + ([then] if then else [])
    if not calls:
        return None
    try:
        counters_drop_unsure(redis_client())
        results = redis_scripts_run(calls)
    except REDIS_ERRORS:
        _lost([*increments])
        raise
    _lost([increment for increment, result in zip(increments, results, strict=False) if isinstance(result, Exception)])
    return results[-1] if then else None


def _lost(increments: list[Increment]) -> None:
    for increment in increments:
        _unsure.update(increment.keys)
        logger.error("live usage counter increment lost (%s); dropped when Redis answers", ", ".join(increment.keys))


def counters_increment(*, organization_id, user_id, month: date, usage: Usage, xact: str = "") -> None:
    """Add to both live counters in one script call (an outage: see increments_send); inside
    increments_held(), the increment is held for the caller to send. `xact`: the id of the
    transaction that wrote the ledger rows counted (see _INCR_IF_EXISTS)."""
    args = (xact, *(x for pair in usage.as_fields().items() for x in pair))
    increment = Increment(tuple(counter_key(scope, owner, month) for scope, owner in (("org", organization_id), ("user", user_id))), args)
    if (held := _held.get()) is not None:
        held.add(increment)
        return
    with suppress(*REDIS_ERRORS):  # marked unsure by increments_send
        increments_send([increment])


# Every asked-for counter's month in one statement (one snapshot): the monthly rollup plus
# the ledger rows its watermark has not reached, per organization and per user.
_TRUTH_SQL = """
WITH w AS (
    SELECT COALESCE((SELECT horizon::xid8 FROM analytics_rollupwatermark WHERE name = %(watermark)s), '0'::xid8) AS h
), usage AS (
    SELECT 'org' AS scope, organization_id AS owner, input_tokens AS i, output_tokens AS o, total_tokens AS t, calls AS c, cost
    FROM analytics_usagerollup
    WHERE period = 'month' AND period_start = %(month)s AND organization_id = ANY(%(orgs)s::uuid[])
    UNION ALL
    SELECT 'user', user_id, input_tokens, output_tokens, total_tokens, calls, cost
    FROM analytics_usagerollup
    WHERE period = 'month' AND period_start = %(month)s AND user_id = ANY(%(users)s::uuid[])
    UNION ALL
    SELECT 'org', organization_id, input_tokens, output_tokens, total_tokens, 1, cost
    FROM analytics_tokenusage, w
    WHERE created_at >= %(start)s AND created_at < %(end)s AND organization_id = ANY(%(orgs)s::uuid[]) AND xact_id >= w.h
    UNION ALL
    SELECT 'user', user_id, input_tokens, output_tokens, total_tokens, 1, cost
    FROM analytics_tokenusage, w
    WHERE created_at >= %(start)s AND created_at < %(end)s AND user_id = ANY(%(users)s::uuid[]) AND xact_id >= w.h
)
SELECT scope, owner, sum(i), sum(o), sum(t), sum(c), sum(cost) FROM usage GROUP BY 1, 2
"""


def _month_bounds(month: date) -> tuple[datetime, datetime]:
    end_month = month_add(month, 1)
    return datetime(month.year, month.month, 1, tzinfo=UTC), datetime(end_month.year, end_month.month, 1, tzinfo=UTC)


def _truth_params(*, owners: list[tuple[str, UUID]], month: date, start: datetime, end: datetime) -> dict:
    from analytics.services import ROLLUP_WATERMARK  # the rollup owns the watermark's name

    return {
        "watermark": ROLLUP_WATERMARK,
        "month": month,
        "start": start,
        "end": end,
        "orgs": [owner for scope, owner in owners if scope == "org"],
        "users": [owner for scope, owner in owners if scope == "user"],
    }


# The counters' truth and the snapshot it was read in (one statement: the same snapshot).
_TRUTH_AND_SNAPSHOT_SQL = (
    f"WITH truth AS ({_TRUTH_SQL}) SELECT pg_current_snapshot()::text, t.* FROM (SELECT 1) AS one LEFT JOIN truth t ON true"
)


def _usages_and_snapshot(*, owners: list[tuple[str, UUID]], month: date) -> tuple[dict[tuple[str, UUID], Usage], str]:
    """usages_from_database, and the snapshot it saw: a rebuild or a repair keeps it as 'seen',
    which later increments are compared with."""
    start, end = _month_bounds(month)
    params = _truth_params(owners=owners, month=month, start=start, end=end)
    with rls.privileged(reason="usage counters: read the ledger", audited=False), connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
        cur.execute(_TRUTH_AND_SNAPSHOT_SQL, params)
        rows = cur.fetchall()
    found = {
        (scope, owner): Usage(int(i), int(o), int(t), int(c), cost_units(cost))
        for _seen, scope, owner, i, o, t, c, cost in rows
        if scope is not None  # the one row with NULLs when no counter has usage
    }
    return {key: found.get(key, Usage()) for key in owners}, rows[0][0]


def usages_from_database(*, owners: list[tuple[str, UUID]], month: date) -> dict[tuple[str, UUID], Usage]:
    """The month's exact usage of each (scope, owner id): the monthly rollup plus the ledger
    rows past its watermark, all read in one statement so they come from the same snapshot."""
    return _usages_and_snapshot(owners=owners, month=month)[0]


def _usage_and_snapshot(*, scope: str, owner_id, month: date) -> tuple[Usage, str]:
    """A rebuild's usage and the snapshot it saw."""
    key = (scope, UUID(str(owner_id)))
    usages, seen = _usages_and_snapshot(owners=[key], month=month)
    return usages[key], seen


def usage_from_database(*, scope: str, owner_id, month: date) -> Usage:
    """One counter's exact usage for the month (see usages_from_database)."""
    key = (scope, UUID(str(owner_id)))
    return usages_from_database(owners=[key], month=month)[key]


def _parse(raw) -> Usage:
    values = {}
    items = raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2]))
    for key, value in items.items():
        values[key.decode() if isinstance(key, bytes) else key] = value
    return Usage(**{name: int(values.get(name, 0)) for name in FIELDS})  # not 'seen', the rebuild's snapshot


def counters_read(*, scope: str, owner_id, month: date | None = None) -> Usage:
    """The live counter, rebuilt from the database when Redis does not have it."""
    month = month or month_of()
    key = counter_key(scope, owner_id, month)
    try:
        client = redis_client()
        counters_drop_unsure(client)
        raw = client.hgetall(key)
    except REDIS_ERRORS:
        logger.warning("Redis unreachable; usage counter %s read from the ledger", key)
        return usage_from_database(scope=scope, owner_id=owner_id, month=month)
    if raw:
        return _parse(raw)
    usage, seen = _usage_and_snapshot(scope=scope, owner_id=owner_id, month=month)
    args = [TTL_SECONDS, *[x for pair in usage.as_fields().items() for x in pair], "seen", seen]
    try:
        stored = redis_script(_SET_IF_MISSING)(keys=[key], args=args)
    except REDIS_ERRORS:
        return usage  # Redis went away between the read and the write: the ledger's answer stands
    return _parse(stored)


def _drifts(client, month: date, keys: dict[str, tuple[str, UUID]]) -> tuple[dict[str, tuple[Usage, Usage, Usage]], str]:
    """(live, ledger, ledger - live) of each key that differs, and the snapshot the ledger was
    read in. Live values are read just before the ledger, so an increment landing meanwhile is
    in both or in the live one only."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    lives = dict(zip(keys, pipe.execute()))
    truths, seen = _usages_and_snapshot(owners=list(keys.values()), month=month)
    drifts = {}
    for key, owner in keys.items():
        if not lives[key]:
            continue  # expired meanwhile: the next read rebuilds it whole
        live, truth = _parse(lives[key]), truths[owner]
        if live != truth:
            delta = Usage(**{name: getattr(truth, name) - getattr(live, name) for name in FIELDS})
            drifts[key] = (live, truth, delta)
    return drifts, seen


def counters_reconcile(*, month: date | None = None) -> list[dict]:
    """Compare every live counter of the month with the database; repair and report drift.

    Never overwrites a counter: the drift is added to it atomically, and only while the counter
    still holds what was measured (_ADD_IF_UNCHANGED), so an overlapping run cannot add the same
    drift twice. A call between its ledger commit and its increment shows as a passing drift, so
    only a drift seen twice, SETTLE_SECONDS apart, is repaired; an increment later still (a
    stalled worker) is not added on top of the repair that counted its call (the repair's 'seen')."""
    month = month or month_of()
    client = redis_client()
    keys = {}
    for key in client.scan_iter(match=f"{KEY_PREFIX}:{month:%Y%m}:*", count=500):
        key = key.decode() if isinstance(key, bytes) else key
        _, _, _, scope, owner_id = key.split(":")
        try:
            keys[key] = (scope, UUID(owner_id))
        except ValueError:
            logger.warning("usage counter with a malformed owner id skipped: %s", key)
    first = _drifts(client, month, keys)[0] if keys else {}
    if not first:
        return []
    time.sleep(SETTLE_SECONDS)
    second, seen = _drifts(client, month, {key: keys[key] for key in first})
    add = redis_script(_ADD_IF_UNCHANGED)
    repaired = []
    for key, (live, truth, delta) in second.items():
        if delta != first[key][2]:
            logger.info("usage counter %s still moving; reconciled on the next run", key)
            continue
        measured = live.as_fields()
        if add(keys=[key], args=[seen, *(x for name, change in delta.as_fields().items() for x in (name, measured[name], change))]):
            drift = {"key": key, "live": live.as_fields(), "ledger": truth.as_fields()}
            logger.warning("usage counter drift repaired: %s", drift)
            repaired.append(drift)
    return repaired
