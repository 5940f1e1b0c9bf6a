"""The ledger per token class: each class's count and rate on the row, cost exact to 1e-10 USD,
rollups summing every class, and the database refusing impossible classes on every partition."""

from datetime import UTC, date, datetime
from decimal import Decimal

import psycopg
import pytest
from django.db import IntegrityError, connections, transaction
from django.db.migrations.executor import MigrationExecutor

from analytics import counters, services
from analytics.errors import UsageInvalid
from analytics.models import TokenUsage, UsageRollup
from analytics.tests.factories import make_member, usage_fields
from config.db import partitions, rls

pytestmark = pytest.mark.django_db(transaction=True)


def _record(user, **fields):
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        return services.usage_record(**fields)


def _owner_scalar(sql, params=()):
    with connections["owner"].cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def test_ten_thousand_calls_of_a_fraction_of_a_micro_dollar_sum_exactly_in_the_ledger_and_rollups():
    user, org = make_member()
    # 1 token at $0.075 per million: $0.0000000750 a call (6 places would record $0.000000).
    records = [
        usage_fields(user, org, model="cheap-1", input_tokens=1, output_tokens=0, input_price=Decimal("0.075"), output_price=Decimal("0.3"))
        for _ in range(10_000)
    ]
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        assert services.usage_record_batch(records=records) == 10_000
    services.usage_rollup()
    assert _owner_scalar("SELECT sum(cost) FROM analytics_tokenusage WHERE user_id = %s", [user.pk]) == Decimal("0.0007500000")
    assert _owner_scalar("SELECT DISTINCT cost FROM analytics_tokenusage WHERE user_id = %s", [user.pk]) == Decimal("0.0000000750")
    rollups = UsageRollup.objects.using("privileged").filter(user_id=user.pk)
    assert sorted((r.period, r.cost, r.calls) for r in rollups) == [
        ("day", Decimal("0.0007500000"), 10_000),
        ("month", Decimal("0.0007500000"), 10_000),
    ]


def test_each_class_is_stored_with_its_rate_and_priced_at_it_and_the_rollups_sum_every_class():
    user, org = make_member()
    row = _record(
        user,
        **usage_fields(
            user,
            org,
            provider="anthropic",
            model="claude-test",
            input_tokens=10_000,  # 1,000 uncached + 6,000 read + 2,000 written for 5m + 1,000 for 1h
            output_tokens=700,
            reasoning_tokens=300,
            cache_read_tokens=6_000,
            cache_write_5m_tokens=2_000,
            cache_write_1h_tokens=1_000,
            input_price=Decimal("3"),
            output_price=Decimal("15"),
            cache_read_price=Decimal("0.3"),
            cache_write_5m_price=Decimal("3.75"),
            cache_write_1h_price=Decimal("6"),
            key_source="managed",
        ),
    )
    stored = TokenUsage.objects.using("privileged").get(pk=row.pk)
    # (1000*3 + 6000*0.3 + 2000*3.75 + 1000*6 + 700*15) / 1e6
    assert stored.cost == Decimal("0.0288000000")
    assert (stored.cache_read_tokens, stored.cache_write_5m_tokens, stored.cache_write_1h_tokens, stored.reasoning_tokens) == (
        6000,
        2000,
        1000,
        300,
    )
    assert (stored.cache_read_price, stored.cache_write_5m_price, stored.cache_write_1h_price) == (
        Decimal("0.3"),
        Decimal("3.75"),
        Decimal("6"),
    )
    assert (stored.input_tokens, stored.output_tokens, stored.total_tokens, stored.key_source) == (10_000, 700, 10_700, "managed")
    plain = _record(user, **usage_fields(user, org, provider="anthropic", model="claude-test", input_tokens=10, output_tokens=1))
    stored_plain = TokenUsage.objects.using("privileged").get(pk=plain.pk)
    assert (stored_plain.cache_read_price, stored_plain.key_source, stored_plain.estimated) == (None, "none", False)
    services.usage_rollup()
    day = UsageRollup.objects.using("privileged").get(user_id=user.pk, period="day")
    assert (day.cache_read_tokens, day.cache_write_5m_tokens, day.cache_write_1h_tokens, day.reasoning_tokens) == (6000, 2000, 1000, 300)
    assert (day.input_tokens, day.calls, day.cost) == (10_010, 2, Decimal("0.0288000000") + stored_plain.cost)


def test_a_cache_hit_costs_nothing_records_what_it_saved_and_is_counted():
    user, org = make_member()
    fields = usage_fields(user, org, input_tokens=500, output_tokens=100, cache_hit=True, saved_tokens=600, saved_cost=Decimal("0.00225"))
    row = _record(user, **fields)
    stored = TokenUsage.objects.using("privileged").get(pk=row.pk)
    assert (stored.cost, stored.cache_hit, stored.saved_tokens, stored.saved_cost) == (Decimal(0), True, 600, Decimal("0.0022500000"))
    services.usage_rollup()
    day = UsageRollup.objects.using("privileged").get(user_id=user.pk, period="day")
    assert (day.cache_hits, day.saved_tokens, day.saved_cost, day.cost) == (1, 600, Decimal("0.0022500000"), Decimal(0))
    assert counters.counters_read(scope="user", owner_id=user.pk).calls == 1


@pytest.mark.parametrize(
    "override,field",
    [
        ({"cache_read_tokens": -1}, "cache_read_tokens"),
        ({"reasoning_tokens": "3"}, "reasoning_tokens"),
        (
            {
                "input_tokens": 10,
                "cache_read_tokens": 8,
                "cache_read_price": Decimal("1"),
                "cache_write_1h_tokens": 3,
                "cache_write_1h_price": Decimal("1"),
            },
            "cache_read_tokens",
        ),
        ({"output_tokens": 5, "reasoning_tokens": 6}, "reasoning_tokens"),
        ({"cache_read_tokens": 5}, "cache_read_price"),
        ({"cache_write_5m_tokens": 1, "cache_write_5m_price": Decimal("-1")}, "cache_write_5m_price"),
        ({"cache_write_1h_tokens": 1, "cache_write_1h_price": "x"}, "cache_write_1h_price"),
        ({"key_source": "borrowed"}, "key_source"),
        ({"estimated": "no"}, "estimated"),
        ({"cache_hit": 1}, "cache_hit"),
        ({"cache_hit": True, "cost": Decimal("0.01")}, "cost"),
        ({"saved_tokens": 10}, "saved_tokens"),
        ({"cache_hit": True, "saved_cost": Decimal("-0.5")}, "saved_cost"),
        ({"cost": Decimal("10000000000")}, "cost"),
        ({"reasoning_tokens": False}, "reasoning_tokens"),
        ({"cache_write_5m_tokens": 0.0}, "cache_write_5m_tokens"),
        ({"cache_hit": True, "saved_cost": None}, "saved_cost"),
    ],
)
def test_impossible_classes_are_refused_with_the_field_named(override, field):
    user, org = make_member()
    with pytest.raises(UsageInvalid) as error:
        _record(user, **usage_fields(user, org, **override))
    assert field in error.value.extra["fields"]
    assert "Usage not recorded" in str(error.value)
    assert TokenUsage.objects.using("privileged").count() == 0


_INSERT = (
    "INSERT INTO analytics_tokenusage (created_at, user_id, organization_id, provider, model, input_tokens, output_tokens, "
    "total_tokens, input_price, output_price, cost, request_id, cache_read_tokens, cache_read_price, reasoning_tokens, key_source) "
    "VALUES (%s, gen_random_uuid(), gen_random_uuid(), 'p', 'm', 10, 5, 15, 1, 1, 0, 'r', %s, 1, %s, %s)"
)


@pytest.mark.parametrize(
    "cache_read,reasoning,key_source,constraint",
    [
        (11, 0, "none", "cache_within_input"),
        (0, 6, "none", "reasoning_within_output"),
        (-1, 0, "none", "classes_nonnegative"),
        (0, 0, "someone", "key_source"),
    ],
)
def test_the_database_refuses_impossible_classes_on_partitions_made_after_the_migration(cache_read, reasoning, key_source, constraint):
    """Rows in a month whose partition the upkeep creates later: the checks come from the parent."""
    partitions.partition_ensure("analytics_tokenusage", months_ahead=0, today=date(2031, 5, 1))  # PARTITION OF
    stray = datetime(2032, 7, 3, tzinfo=UTC)
    with connections["owner"].cursor() as cur:
        cur.execute(_INSERT, [stray, 0, 0, "user"])  # lands in the default partition
    partitions.partition_ensure("analytics_tokenusage", months_ahead=0, today=date(2031, 5, 1))  # LIKE + ATTACH
    made = ["analytics_tokenusage_p203105", "analytics_tokenusage_p203207"]
    try:
        assert set(made) <= {p.name for p in partitions.partitions_list("analytics_tokenusage")}
        for moment in (datetime(2031, 5, 2, tzinfo=UTC), stray):
            refused = pytest.raises(IntegrityError, match=f"analytics_tokenusage_{constraint}")
            with refused, transaction.atomic(using="owner"), connections["owner"].cursor() as cur:
                cur.execute(_INSERT, [moment, cache_read, reasoning, key_source])
            with transaction.atomic(using="owner"), connections["owner"].cursor() as cur:
                cur.execute(_INSERT, [moment, 10, 5, "free_tier"])
    finally:
        with connections["owner"].cursor() as cur:
            for name in made:
                cur.execute(f"DROP TABLE IF EXISTS {name}")


def test_the_app_role_reads_only_its_own_classes_and_cannot_forge_another_users(raw_app_connection):
    alice, alice_org = make_member()
    bob, bob_org = make_member()
    _record(alice, **usage_fields(alice, alice_org, cache_read_tokens=50, cache_read_price=Decimal("0.25"), key_source="managed"))
    _record(bob, **usage_fields(bob, bob_org, cache_read_tokens=60, cache_read_price=Decimal("0.25"), key_source="managed"))
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, true)", [str(alice.pk)])
        cur.execute("SELECT user_id, cache_read_tokens, key_source FROM analytics_tokenusage")
        assert cur.fetchall() == [(alice.pk, 50, "managed")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("UPDATE analytics_tokenusage SET cache_read_tokens = 0, key_source = 'user'")
    raw_app_connection.rollback()


def test_the_migration_reverses_and_reapplies_keeping_the_rows():
    user, org = make_member()
    row = _record(user, **usage_fields(user, org, input_tokens=3, output_tokens=0, input_price=Decimal("0.5")))
    executor = MigrationExecutor(connections["owner"])
    leaf = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "analytics"]
    executor.migrate([("analytics", "0006_policies_initplan_org_ids")])
    try:
        assert _owner_scalar("SELECT cost FROM analytics_tokenusage WHERE id = %s", [row.pk]) == Decimal("0.000002")  # 0.0000015, 6 places
        assert _owner_scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'cache_read_tokens'") == 0
    finally:
        MigrationExecutor(connections["owner"]).migrate(leaf)
    assert _owner_scalar("SELECT cache_read_tokens FROM analytics_tokenusage WHERE id = %s", [row.pk]) == 0


def test_the_usage_page_shows_each_class_and_what_the_cache_saved(client):
    user, org = make_member()
    _record(
        user,
        **usage_fields(
            user,
            org,
            model="m-classes",
            input_tokens=9_000,
            output_tokens=800,
            reasoning_tokens=300,
            cache_read_tokens=7_000,
            cache_read_price=Decimal("0.25"),
            cache_write_1h_tokens=1_000,
            cache_write_1h_price=Decimal("5"),
        ),
    )
    _record(
        user,
        **usage_fields(
            user, org, model="m-classes", input_tokens=10, output_tokens=5, cache_hit=True, saved_tokens=15, saved_cost=Decimal("0.0000625")
        ),
    )
    services.usage_rollup()
    client.force_login(user)
    content = client.get("/usage/").content.decode()
    assert "of which cache read 7,000, cache write 0 (5 min) and 1,000 (1 hour)" in content
    assert "of which reasoning 300" in content
    assert "the response cache answered 1 and saved $0.0000625000" in content
    assert "The response cache answered 1 of them and saved" in content and "(15 tokens)" in content
