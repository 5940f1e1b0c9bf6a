"""Benchmark of the entitlement check, the question asked before every model call.

Goal (issues #9, #16): p50 <= 1 ms, with the reservation. Measured in-process as the web role
would ask it: inside a transaction with the user's row-level security context, one database
read (subscription and plan) and one Redis script (expired reservations, monthly counters plus
open reservations, per-minute windows for the organization and the API key, the reservation);
each allowed call's settle (one more script) is timed apart. Figures only; each asserts its
answers are right.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection

from accounts.tests.factories import make_user
from analytics import counters
from billing.models import Plan
from billing.services import entitlement_check, reservation_settle
from billing.tests.factories import make_plans, organization_of, put_on_plan
from config.db import rls
from config.tests import benchkit as bk

CALLS, WARMUP = 5_000, 200


def _timed_checks(user, org, n: int, **kwargs) -> tuple[list[float], list[float], int]:
    """(check times, settle times, allowed count) of n checks, each allowed one settled."""
    times_ms, settle_ms, allowed = [], [], 0
    with rls.atomic():
        rls.context_set(user_id=user.pk)
        for _ in range(n):
            t = time.perf_counter()
            decision = entitlement_check(user=user, organization_id=org.pk, **kwargs)
            times_ms.append((time.perf_counter() - t) * 1000)
            allowed += decision.allowed
            if decision.reservation:
                t = time.perf_counter()
                assert reservation_settle(organization_id=org.pk, reservation=decision.reservation, month=decision.month)
                settle_ms.append((time.perf_counter() - t) * 1000)
    return times_ms, settle_ms, allowed


@pytest.mark.bench
@pytest.mark.django_db(transaction=True)
def test_bench_entitlement_check():
    plans = make_plans()
    with rls.privileged(reason="bench: a plan whose rate limit the loop cannot reach"):
        roomy, _ = Plan.objects.update_or_create(
            slug="bench-roomy",
            defaults={
                "name": "Bench",
                "monthly_tokens": 10**12,
                "monthly_messages": 10**9,
                "monthly_spend": Decimal("1000000.00"),
                "requests_per_minute": 10**7,
            },
        )
    user = make_user()
    org = organization_of(user)
    put_on_plan(org, roomy)
    key = uuid.uuid4()
    args = {"provider": "openai", "model": "gpt-4o", "estimated_tokens": 1_000, "max_cost": Decimal("0.05"), "api_key_id": key}

    _timed_checks(user, org, WARMUP, **args)
    with CaptureQueriesContext(connections["default"]) as queries, rls.atomic():
        rls.context_set(user_id=user.pk)
        n_before = len(queries.captured_queries)
        entitlement_check(user=user, organization_id=org.pk, **args)
        per_check = len(queries.captured_queries) - n_before
    allowed_ms, settle_ms, allowed = _timed_checks(user, org, CALLS, **args)
    assert allowed == CALLS and len(settle_ms) == CALLS

    # The refusal path: the Free plan with its monthly tokens used up.
    other = make_user()
    other_org = organization_of(other)
    put_on_plan(other_org, plans["free"])
    counters.counters_read(scope="org", owner_id=other_org.pk)
    counters.counters_increment(
        organization_id=other_org.pk, user_id=other.pk, month=counters.month_of(), usage=counters.Usage(total_tokens=100_000)
    )
    refused_args = {"provider": "echo", "model": "echo-1", "estimated_tokens": 10}
    _timed_checks(other, other_org, WARMUP, **refused_args)
    refused_ms, _, refused_allowed = _timed_checks(other, other_org, CALLS, **refused_args)
    assert refused_allowed == 0

    # The floor under it on this machine now: one PostgreSQL and one Redis round trip.
    floor = {"SELECT 1 (app role)": [], "Redis PING": []}
    redis = get_redis_connection("default")
    with connections["default"].cursor() as cur:
        for _ in range(CALLS):
            t = time.perf_counter()
            cur.execute("SELECT 1")
            cur.fetchone()
            floor["SELECT 1 (app role)"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            redis.ping()
            floor["Redis PING"].append((time.perf_counter() - t) * 1000)

    a, st, r = bk.summary(allowed_ms), bk.summary(settle_ms), bk.summary(refused_ms)
    f = {name: bk.summary(values) for name, values in floor.items()}
    bk.say(f"\n### entitlement_check: {CALLS:,} calls each after {WARMUP} warm-up; {per_check} database query per check")
    bk.say(
        bk.table(
            "entitlement_check (ms, in-process, web role with RLS context, embedded PostgreSQL + Redis over unix sockets)",
            ["path", "p50 ms", "p95 ms", "p99 ms", "mean ms", "max ms"],
            [
                [
                    "allowed + reserved (plan, tokens, messages, spend, org + API key windows)",
                    a["p50"],
                    a["p95"],
                    a["p99"],
                    a["mean"],
                    a["max"],
                ],
                ["its reservation_settle (apart)", st["p50"], st["p95"], st["p99"], st["mean"], st["max"]],
                ["refused (monthly tokens used up)", r["p50"], r["p95"], r["p99"], r["mean"], r["max"]],
                *[[f"floor: {name}", v["p50"], v["p95"], v["p99"], v["mean"], v["max"]] for name, v in f.items()],
            ],
        )
    )
    bk.report_write(
        "entitlement_check",
        {"calls": CALLS, "queries_per_check": per_check, "allowed_ms": a, "settle_ms": st, "refused_ms": r, "floor_ms": f},
    )
