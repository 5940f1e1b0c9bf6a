"""Reservations in the entitlement check: a call's most is held from check to settle, so
racing senders cannot overshoot a limit and a refusal always means there was no room;
settling is idempotent, an unsettled reservation (a killed worker) expires, and counters a
lost increment left low are rebuilt when Redis returns. Real PostgreSQL, Redis, processes."""

import multiprocessing
import os
import random
import signal
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connections
from django_redis import get_redis_connection

from accounts.tests.factories import make_user
from analytics import counters
from analytics.services import usage_record
from billing import services
from billing.models import Plan
from billing.services import entitlement_check, reservation_settle, reservations_expire
from billing.tests.factories import organization_of, plan_with_limits, put_on_plan
from config import embedded
from config.db import rls
from config.errors import ApplicationError

pytestmark = pytest.mark.django_db(transaction=True)
FORK = multiprocessing.get_context("fork")


def _member(plan: Plan):
    user = make_user()
    org = organization_of(user)
    put_on_plan(org, plan)
    return user, org


def _record(user, org, *, input_tokens: int, output_tokens: int = 0, cost: Decimal = Decimal("0")) -> None:
    """One ledger row for the organization, written as the web role under the user's context."""
    with rls.atomic_as(user.pk):
        usage_record(
            user_id=user.pk,
            organization_id=org.pk,
            provider="echo",
            model="echo-1",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            input_price=Decimal("0"),
            output_price=Decimal("0"),
            cost=cost,
            request_id=uuid.uuid4().hex,
        )


def _check(user, org, **kwargs):
    with rls.atomic_as(user.pk):
        return entitlement_check(user=user, organization_id=org.pk, provider="echo", model="echo-1", **kwargs)


def _open(org) -> dict:
    """The organization's open reservations this month, as Redis holds them."""
    client = get_redis_connection("default")
    held, due, every_due, prefix = services._reservation_keys(org.pk, counters.month_of())
    sums = {k.decode(): int(v) for k, v in client.hgetall(held).items() if k in (b"tokens", b"cost")}
    everywhere = [m for m in client.zrange(every_due, 0, -1) if m.decode().startswith(prefix)]
    return {"tokens": sums.get("tokens", 0), "cost": sums.get("cost", 0), "calls": client.zcard(due), "global": len(everywhere)}


NOTHING_OPEN = {"tokens": 0, "cost": 0, "calls": 0, "global": 0}


def _counters_equal_ledger(user, org) -> None:
    for scope, owner in (("org", org.pk), ("user", user.pk)):
        with rls.privileged(reason="test: compare"):
            assert counters.counters_read(scope=scope, owner_id=owner) == counters.usage_from_database(
                scope=scope, owner_id=owner, month=counters.month_of()
            )


# --- 50 real processes racing for the last 1% -----------------------------------------

SENDERS, TRIES = 50, 4
EST, OUT = 500, 1_500  # each call reserves 2,000 tokens
MAX_COST = Decimal("0.020000")


def _sender(user, org, seed: int, start, results) -> None:
    """One sender in its own process (own database and Redis connections): check, call (a
    short wait), write the ledger row with real usage between half and all of the
    reservation, commit, settle; each decision is sent back with the state it was made on."""
    rng = random.Random(seed)
    out = []
    try:
        start.wait(60)
        for _ in range(TRIES):
            decision = _check(user, org, estimated_tokens=EST, max_output_tokens=OUT, max_cost=MAX_COST)
            real_tokens = real_cost = 0
            if decision.allowed:
                time.sleep(rng.uniform(0, 0.02))  # the provider call
                real_tokens = rng.randint((EST + OUT) // 2, EST + OUT)
                real_cost = Decimal(rng.randint(10_000, 20_000)) / Decimal(1_000_000)
                _record(user, org, input_tokens=EST, output_tokens=real_tokens - EST, cost=real_cost)
                reservation_settle(organization_id=org.pk, reservation=decision.reservation, month=decision.month)
            refused = decision.refusal.extra["code"] if decision.refusal else None
            out.append((decision.allowed, refused, decision.usage, real_tokens, str(real_cost)))
    finally:
        results.put((seed, out))
        connections.close_all()


def _race(user, org) -> list[tuple]:
    connections.close_all()  # a forked child must not share the parent's database sockets
    start, results = FORK.Event(), FORK.Queue()
    children = [FORK.Process(target=_sender, args=(user, org, seed, start, results)) for seed in range(SENDERS)]
    for child in children:
        child.start()
    start.set()
    decisions = {}
    for _ in children:
        seed, out = results.get(timeout=300)
        decisions[seed] = out
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert all(len(out) == TRIES for out in decisions.values()), decisions
    return [d for out in decisions.values() for d in out]


@pytest.mark.parametrize("budget", ["tokens", "spend"])
def test_50_processes_racing_for_the_last_percent_never_exceed_it_and_leave_nothing_open(budget):
    if budget == "tokens":
        plan = plan_with_limits("race-tokens", monthly_tokens=1_000_000)
        limit, used = 1_000_000, 990_000  # 10,000 left: five reservations at a time
    else:
        plan = plan_with_limits("race-spend", monthly_spend=Decimal("10.00"))
        limit, used = counters.cost_units(Decimal("10.00")), counters.cost_units(Decimal("9.90"))  # $0.10 left
    user, org = _member(plan)
    if budget == "tokens":
        _record(user, org, input_tokens=used)
    else:
        _record(user, org, input_tokens=1, cost=Decimal("9.90"))
    for scope, owner in (("org", org.pk), ("user", user.pk)):
        counters.counters_read(scope=scope, owner_id=owner)  # live, as every earlier message leaves them

    decisions = _race(user, org)

    settled_field, want_field, held_field = (
        ("tokens", "reserved_tokens", "held_tokens") if budget == "tokens" else ("cost_units", "reserved_cost_units", "held_cost_units")
    )
    allowed = [d for d in decisions if d[0]]
    refused = [d for d in decisions if not d[0]]
    assert len(allowed) >= 5 and refused, (len(allowed), len(refused))  # the race was real: both answers came
    for _, code, state, _, _ in allowed:  # each allowed call fit with every call then in progress
        assert state[settled_field] + state[held_field] + state[want_field] <= limit, state
    for _, code, state, _, _ in refused:  # and each refusal was made with no room left for it
        assert code == f"monthly_{budget}" and state[settled_field] + state[held_field] + state[want_field] > limit, (code, state)

    truth = counters.usage_from_database(scope="org", owner_id=org.pk, month=counters.month_of())
    settled = truth.total_tokens if budget == "tokens" else truth.cost_units
    assert settled <= limit, (settled, limit)
    real = sum(d[3] for d in allowed) if budget == "tokens" else sum(counters.cost_units(Decimal(d[4])) for d in allowed)
    assert settled == used + real  # every allowed call is in the ledger
    _counters_equal_ledger(user, org)
    assert _open(org) == NOTHING_OPEN


# --- a worker killed between check and settle -----------------------------------------


def _killed_worker(user, org, pipe) -> None:
    decision = _check(user, org, estimated_tokens=4_000, max_output_tokens=4_000)
    pipe.send((decision.allowed, decision.reservation))
    time.sleep(600)  # the provider call it never returns from


def _reserve_and_die(user, org) -> str:
    connections.close_all()
    parent, child_end = FORK.Pipe()
    child = FORK.Process(target=_killed_worker, args=(user, org, child_end))
    child.start()
    assert parent.poll(60)
    allowed, reservation = parent.recv()
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    assert allowed and reservation and child.exitcode == -signal.SIGKILL
    return reservation


def test_a_killed_workers_reservation_is_released_after_the_timeout(settings):
    settings.ENTITLEMENT_RESERVATION_TIMEOUT = 1
    user, org = _member(plan_with_limits("killed", monthly_tokens=10_000))
    _record(user, org, input_tokens=1_000)

    _reserve_and_die(user, org)
    held = _check(user, org, estimated_tokens=4_000, max_output_tokens=4_000)
    assert not held.allowed and held.refusal.extra["held"] == 8_000  # the dead call still holds its most
    assert reservations_expire() == 0  # not before its deadline
    time.sleep(1.2)
    assert reservations_expire() == 1
    assert reservations_expire() == 0
    assert _open(org) == NOTHING_OPEN
    _counters_equal_ledger(user, org)  # dropped with the reservation, rebuilt from the ledger
    free_again = _check(user, org, estimated_tokens=4_000, max_output_tokens=4_000)
    assert free_again.allowed
    reservation_settle(organization_id=org.pk, reservation=free_again.reservation, month=free_again.month)

    # Without the periodic task, the next check releases an expired reservation itself.
    _reserve_and_die(user, org)
    time.sleep(1.2)
    assert _check(user, org, estimated_tokens=4_000, max_output_tokens=4_000).allowed


# --- refusals, settling, the output cap, bad input -----------------------------------


def test_a_refused_check_reserves_nothing_and_settling_twice_releases_once():
    user, org = _member(plan_with_limits("small", monthly_tokens=10_000))
    first = _check(user, org, estimated_tokens=2_000, max_output_tokens=4_000)
    assert first.allowed and _open(org) == {"tokens": 6_000, "cost": 0, "calls": 1, "global": 1}
    second = _check(user, org, estimated_tokens=0, max_output_tokens=4_000)  # exactly the rest
    assert second.allowed and _open(org)["tokens"] == 10_000
    for _ in range(3):
        refused = _check(user, org, estimated_tokens=1, max_output_tokens=1)
        assert not refused.allowed and refused.reservation is None
        assert refused.usage == {**refused.usage, "tokens": 0, "held_tokens": 10_000, "held_calls": 2, "reserved_tokens": 2}
        assert "replies in progress hold 10,000" in refused.reason
    assert _open(org) == {"tokens": 10_000, "cost": 0, "calls": 2, "global": 2}

    assert reservation_settle(organization_id=org.pk, reservation=first.reservation, month=first.month)
    assert not reservation_settle(organization_id=org.pk, reservation=first.reservation, month=first.month)
    assert _open(org) == {"tokens": 4_000, "cost": 0, "calls": 1, "global": 1}
    assert reservation_settle(organization_id=org.pk, reservation=second.reservation, month=second.month)
    assert _open(org) == NOTHING_OPEN
    assert _check(user, org, estimated_tokens=6_000, max_output_tokens=4_000).allowed


def test_open_reservations_count_against_the_message_limit():
    user, org = _member(plan_with_limits("two-messages", monthly_messages=2))
    first, second = _check(user, org), _check(user, org)
    assert first.allowed and second.allowed
    refused = _check(user, org)
    assert refused.refusal.extra == {**refused.refusal.extra, "code": "monthly_messages", "used": 0, "held": 2}
    _record(user, org, input_tokens=10)
    reservation_settle(organization_id=org.pk, reservation=first.reservation, month=first.month)
    assert not _check(user, org).allowed  # one sent, one in progress
    reservation_settle(organization_id=org.pk, reservation=second.reservation, month=second.month)
    assert _check(user, org).allowed


def test_the_output_cap_is_the_plans_or_the_setting_and_the_caller_may_ask_less(settings):
    settings.CHAT_MAX_OUTPUT_TOKENS = 3_000
    user, org = _member(plan_with_limits("capped", monthly_tokens=10**9, max_output_tokens=2_000))
    assert _check(user, org, estimated_tokens=10).max_output_tokens == 2_000
    assert _check(user, org, estimated_tokens=10, max_output_tokens=50_000).usage["reserved_tokens"] == 2_010
    assert _check(user, org, estimated_tokens=10, max_output_tokens=500).max_output_tokens == 500
    other, other_org = _member(plan_with_limits("uncapped", monthly_tokens=10**9))
    assert _check(other, other_org).max_output_tokens == 3_000


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": "100"}, "max_output_tokens"),
        ({"max_cost": Decimal("-0.01")}, "max_cost"),
        ({"max_cost": Decimal("NaN")}, "max_cost"),
        ({"max_cost": 0.5}, "max_cost"),
        ({"estimated_tokens": -1}, "estimated_tokens"),
    ],
)
def test_bad_reservation_input_is_a_clear_400(kwargs, field):
    user, org = _member(plan_with_limits("small", monthly_tokens=10_000))
    with pytest.raises(ApplicationError) as raised:
        _check(user, org, **kwargs)
    assert raised.value.status_code == 400 and raised.value.extra["field"] == field
    assert _open(org) == NOTHING_OPEN


# --- Redis stopped and restarted with its old data ------------------------------------


def test_redis_stopped_then_back_with_its_old_data_decides_from_the_ledger_then_rebuilds(settings):
    user, org = _member(plan_with_limits("outage", monthly_tokens=10_000))
    with tempfile.TemporaryDirectory(prefix="confab-r-") as tmp:
        sock = embedded.redis_start(Path(tmp), persist=True)
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": f"unix://{sock}?db=0"}}
        try:
            counters.counters_read(scope="org", owner_id=org.pk)
            _record(user, org, input_tokens=1_000)  # counted live: 1,000
            embedded.redis_stop(Path(tmp))  # saves its data on the way down

            _record(user, org, input_tokens=5_000)  # the ledger has it; the live increment is lost
            fits = _check(user, org, max_output_tokens=4_000)
            too_much = _check(user, org, max_output_tokens=4_001)
            assert fits.allowed and fits.degraded and fits.reservation is None
            assert not too_much.allowed and too_much.degraded and too_much.usage["tokens"] == 6_000

            embedded.redis_start(Path(tmp), persist=True)
            key = counters.counter_key("org", org.pk, counters.month_of())
            assert int(get_redis_connection("default").hget(key, "total_tokens")) == 1_000  # back with the stale count
            after = _check(user, org, max_output_tokens=4_001)
            assert not after.allowed and not after.degraded and after.usage["tokens"] == 6_000, after.usage
            _counters_equal_ledger(user, org)
            assert _check(user, org, max_output_tokens=4_000).reservation is not None  # reservations resume
        finally:
            embedded.redis_stop(Path(tmp))


# --- the counter increments held for the settlement's round trip ----------------------


def test_increments_held_and_not_taken_are_sent_as_the_block_ends():
    user, org = _member(plan_with_limits("held", monthly_tokens=10_000))
    counters.counters_read(scope="org", owner_id=org.pk)  # the counter exists: increments apply
    key = counters.counter_key("org", org.pk, counters.month_of())
    client = get_redis_connection("default")
    with counters.increments_held():
        _record(user, org, input_tokens=1_000)  # committed: its increment is held
        assert int(client.hget(key, "total_tokens")) == 0
    assert int(client.hget(key, "total_tokens")) == 1_000


def test_a_settlement_redis_does_not_answer_marks_the_held_increments_counters_unsure(settings, tmp_path):
    """The increments and the settlement go in one round trip: with Redis unreachable neither is
    known to have run, so the increments' counters are dropped at the next Redis call (rebuilt
    from the ledger) and the reservation is left to expire."""
    user, org = _member(plan_with_limits("held-outage", monthly_tokens=10_000))
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": f"unix://{tmp_path}/no-redis.sock?db=0"}}
    held = counters.HeldIncrements()
    held.add(counters.Increment(("usage:test:org", "usage:test:user"), ("total_tokens", 5)))
    try:
        assert not reservation_settle(organization_id=org.pk, reservation="r-1", month=counters.month_of(), counted=held)
        assert {"usage:test:org", "usage:test:user"} <= counters._unsure
        assert held.take() == []  # taken by the settlement, not sent again as the block ends
    finally:
        counters._unsure.difference_update({"usage:test:org", "usage:test:user"})


def test_a_settlement_redis_refuses_with_an_error_is_left_to_expire_and_its_increments_unsure(own_redis):
    """A Redis that answers but refuses writes (a replica after a failover: READONLY) must not
    fail the call after its ledger row committed: the reservation is left to expire and the
    increments' counters are dropped at the next Redis call."""
    user, org = _member(plan_with_limits("held-readonly", monthly_tokens=10_000))
    entitlement = _check(user, org, estimated_tokens=10)
    assert entitlement.allowed and entitlement.reservation
    held = counters.HeldIncrements()
    held.add(counters.Increment(("usage:ro:org", "usage:ro:user"), ("total_tokens", 5)))
    client = get_redis_connection("default")
    for key in ("usage:ro:org", "usage:ro:user"):
        client.hset(key, "total_tokens", 0)  # there, so the increments write (and are refused)
    client.replicaof("127.0.0.1", 1)  # no such primary: a replica refusing every write
    try:
        settled = reservation_settle(organization_id=org.pk, reservation=entitlement.reservation, month=entitlement.month, counted=held)
        assert settled is False
        assert {"usage:ro:org", "usage:ro:user"} <= counters._unsure
    finally:
        client.replicaof("no", "one")
        counters._unsure.difference_update({"usage:ro:org", "usage:ro:user"})
    assert _open(org)  # still held: it expires after ENTITLEMENT_RESERVATION_TIMEOUT


def _refusing_writes(client, how: str) -> None:
    if how == "replica":
        client.replicaof("127.0.0.1", 1)  # no such primary: a replica refusing every write
    else:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # full: writes that need memory are refused (OOM)


def _writing_again(client, how: str) -> None:
    if how == "replica":
        client.replicaof("no", "one")
    else:
        client.config_set("maxmemory", 0)


@pytest.mark.parametrize("warm", [False, True], ids=["counter missing", "counter there"])
@pytest.mark.parametrize("how", ["replica", "out of memory"])
def test_an_entitlement_redis_refuses_writes_is_decided_from_the_database_never_waved_through(own_redis, how, warm):
    """Redis answers but cannot store the counter rebuilt from the ledger (missing), or the
    reservation (there): the limits are decided from the database (degraded), not skipped for
    want of a counter, and the check does not fail."""
    user, org = _member(plan_with_limits(f"refusing-{how[:3]}-{warm}", monthly_tokens=10_000))
    _record(user, org, input_tokens=9_000)
    if warm:
        counters.counters_read(scope="org", owner_id=org.pk)
    client = get_redis_connection("default")
    _refusing_writes(client, how)
    try:
        fits, too_much = _check(user, org, max_output_tokens=1_000), _check(user, org, max_output_tokens=1_001)
    finally:
        _writing_again(client, how)
    assert fits.allowed and fits.degraded and fits.reservation is None
    assert not too_much.allowed and too_much.usage["tokens"] == 9_000, too_much
    assert too_much.degraded is not warm  # a counter there refuses in Redis before any write
