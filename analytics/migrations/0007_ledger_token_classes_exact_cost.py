"""The ledger per token class, cost exact to 1e-10 USD, and the rollups' per-class sums.

ALTER on the partitioned parent reaches every partition; partitions made later by
config/db/partitions.py (PARTITION OF, or LIKE ... INCLUDING DEFAULTS INCLUDING CONSTRAINTS
then ATTACH) take the new columns, defaults and checks from the parent. input_tokens stays
the total input (cache classes included) and output_tokens the total output (reasoning
included), so existing sums keep their meaning. Reversing rounds cost back to 6 places.
"""

from django.db import migrations, models

LEDGER_FORWARD = """
ALTER TABLE analytics_tokenusage
    ALTER COLUMN cost TYPE numeric(20, 10),
    ADD COLUMN cache_read_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN cache_write_5m_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN cache_write_1h_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN reasoning_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN cache_read_price numeric(12, 6) NULL,
    ADD COLUMN cache_write_5m_price numeric(12, 6) NULL,
    ADD COLUMN cache_write_1h_price numeric(12, 6) NULL,
    ADD COLUMN estimated boolean NOT NULL DEFAULT false,
    ADD COLUMN cache_hit boolean NOT NULL DEFAULT false,
    ADD COLUMN saved_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN saved_cost numeric(20, 10) NOT NULL DEFAULT 0,
    ADD COLUMN key_source varchar(16) NOT NULL DEFAULT 'none',
    ADD CONSTRAINT analytics_tokenusage_classes_nonnegative CHECK (
        cache_read_tokens >= 0 AND cache_write_5m_tokens >= 0 AND cache_write_1h_tokens >= 0
        AND reasoning_tokens >= 0 AND saved_tokens >= 0 AND saved_cost >= 0),
    ADD CONSTRAINT analytics_tokenusage_cache_within_input CHECK (
        cache_read_tokens::bigint + cache_write_5m_tokens + cache_write_1h_tokens <= input_tokens),
    ADD CONSTRAINT analytics_tokenusage_reasoning_within_output CHECK (reasoning_tokens <= output_tokens),
    ADD CONSTRAINT analytics_tokenusage_class_prices CHECK (
        (cache_read_tokens = 0 OR cache_read_price >= 0)
        AND (cache_write_5m_tokens = 0 OR cache_write_5m_price >= 0)
        AND (cache_write_1h_tokens = 0 OR cache_write_1h_price >= 0)),
    ADD CONSTRAINT analytics_tokenusage_cache_hit_costs_nothing CHECK (
        CASE WHEN cache_hit THEN cost = 0 ELSE saved_tokens = 0 AND saved_cost = 0 END),
    ADD CONSTRAINT analytics_tokenusage_key_source CHECK (key_source IN ('user', 'managed', 'free_tier', 'none'));
"""
LEDGER_REVERSE = """
ALTER TABLE analytics_tokenusage
    DROP CONSTRAINT analytics_tokenusage_classes_nonnegative,
    DROP CONSTRAINT analytics_tokenusage_cache_within_input,
    DROP CONSTRAINT analytics_tokenusage_reasoning_within_output,
    DROP CONSTRAINT analytics_tokenusage_class_prices,
    DROP CONSTRAINT analytics_tokenusage_cache_hit_costs_nothing,
    DROP CONSTRAINT analytics_tokenusage_key_source,
    DROP COLUMN cache_read_tokens,
    DROP COLUMN cache_write_5m_tokens,
    DROP COLUMN cache_write_1h_tokens,
    DROP COLUMN reasoning_tokens,
    DROP COLUMN cache_read_price,
    DROP COLUMN cache_write_5m_price,
    DROP COLUMN cache_write_1h_price,
    DROP COLUMN estimated,
    DROP COLUMN cache_hit,
    DROP COLUMN saved_tokens,
    DROP COLUMN saved_cost,
    DROP COLUMN key_source,
    ALTER COLUMN cost TYPE numeric(14, 6);
"""

KEY_SOURCES = [
    ("user", "User's own key"),
    ("managed", "Platform managed key"),
    ("free_tier", "Platform free-tier key"),
    ("none", "No provider key"),
]


def _price():
    return models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True)


LEDGER_STATE = [
    migrations.AlterField(
        model_name="tokenusage", name="cost", field=models.DecimalField(decimal_places=10, help_text="USD, exact to 1e-10", max_digits=20)
    ),
    *[
        migrations.AddField(model_name="tokenusage", name=name, field=models.IntegerField(default=0))
        for name in ("cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens")
    ],
    *[
        migrations.AddField(model_name="tokenusage", name=name, field=_price())
        for name in ("cache_read_price", "cache_write_5m_price", "cache_write_1h_price")
    ],
    migrations.AddField(
        model_name="tokenusage",
        name="estimated",
        field=models.BooleanField(default=False, help_text="Some of this call's usage was estimated, not reported"),
    ),
    migrations.AddField(
        model_name="tokenusage",
        name="cache_hit",
        field=models.BooleanField(default=False, help_text="Answered from Confab's response cache: provider cost $0"),
    ),
    migrations.AddField(model_name="tokenusage", name="saved_tokens", field=models.IntegerField(default=0)),
    migrations.AddField(model_name="tokenusage", name="saved_cost", field=models.DecimalField(decimal_places=10, default=0, max_digits=20)),
    migrations.AddField(
        model_name="tokenusage", name="key_source", field=models.CharField(choices=KEY_SOURCES, default="none", max_length=16)
    ),
]

ROLLUP_COUNTS = (
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "estimated_calls",
    "cache_hits",
    "saved_tokens",
)
# Database defaults kept (Django's AddField drops them): raw inserts that predate the classes still work.
ROLLUP_FORWARD = (
    "ALTER TABLE analytics_usagerollup ALTER COLUMN cost TYPE numeric(24, 10), "
    + ", ".join(f"ADD COLUMN {name} bigint NOT NULL DEFAULT 0" for name in ROLLUP_COUNTS)
    + ", ADD COLUMN saved_cost numeric(24, 10) NOT NULL DEFAULT 0;"
)
ROLLUP_REVERSE = (
    "ALTER TABLE analytics_usagerollup "
    + ", ".join(f"DROP COLUMN {name}" for name in (*ROLLUP_COUNTS, "saved_cost"))
    + ", ALTER COLUMN cost TYPE numeric(18, 6);"
)
ROLLUP_STATE = [
    migrations.AlterField(model_name="usagerollup", name="cost", field=models.DecimalField(decimal_places=10, default=0, max_digits=24)),
    *[migrations.AddField(model_name="usagerollup", name=name, field=models.BigIntegerField(default=0)) for name in ROLLUP_COUNTS],
    migrations.AddField(
        model_name="usagerollup", name="saved_cost", field=models.DecimalField(decimal_places=10, default=0, max_digits=24)
    ),
]


class Migration(migrations.Migration):
    dependencies = [("analytics", "0006_policies_initplan_org_ids")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=LEDGER_STATE, database_operations=[migrations.RunSQL(LEDGER_FORWARD, LEDGER_REVERSE)]
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=ROLLUP_STATE, database_operations=[migrations.RunSQL(ROLLUP_FORWARD, ROLLUP_REVERSE)]
        ),
    ]
