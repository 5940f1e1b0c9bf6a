"""The ledger, rollups and the three logs. The four logs are monthly-partitioned: Django's
CreateModel records their state while RunSQL creates the partitioned tables (primary key
(id, created_at), id from the table's own sequence, a default partition)."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

# Frozen SQL (a migration never calls live helpers): forward and reverse for each partitioned table.
PARTITIONED = {
    "TokenUsage": (
        """CREATE SEQUENCE analytics_tokenusage_id_seq;
CREATE TABLE analytics_tokenusage (
    id bigint NOT NULL DEFAULT nextval('analytics_tokenusage_id_seq'),
    created_at timestamptz NOT NULL DEFAULT now(),
    user_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    provider varchar(32) NOT NULL,
    model varchar(100) NOT NULL,
    input_tokens integer NOT NULL CHECK (input_tokens >= 0),
    output_tokens integer NOT NULL CHECK (output_tokens >= 0),
    total_tokens integer NOT NULL CHECK (total_tokens = input_tokens + output_tokens),
    input_price numeric(12, 6) NOT NULL CHECK (input_price >= 0),
    output_price numeric(12, 6) NOT NULL CHECK (output_price >= 0),
    cost numeric(14, 6) NOT NULL CHECK (cost >= 0),
    conversation_id uuid NULL,
    message_id uuid NULL,
    request_id varchar(64) NOT NULL,
    latency_ms integer NOT NULL DEFAULT 0,
    success boolean NOT NULL DEFAULT true,
    error text NOT NULL DEFAULT '',
    -- the writing transaction: the rollup's watermark (see analytics/services.py)
    xact_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE analytics_tokenusage_id_seq OWNED BY analytics_tokenusage.id;
CREATE TABLE analytics_tokenusage_default PARTITION OF analytics_tokenusage DEFAULT;
CREATE INDEX analytics_tokenusage_org_created ON analytics_tokenusage (organization_id, created_at);
CREATE INDEX analytics_tokenusage_user_created ON analytics_tokenusage (user_id, created_at);
CREATE INDEX analytics_tokenusage_xact ON analytics_tokenusage (xact_id);""",
        "DROP TABLE IF EXISTS analytics_tokenusage CASCADE;",
    ),
    "ApiLog": (
        """CREATE SEQUENCE analytics_apilog_id_seq;
CREATE TABLE analytics_apilog (
    id bigint NOT NULL DEFAULT nextval('analytics_apilog_id_seq'),
    created_at timestamptz NOT NULL DEFAULT now(),
    request_uuid uuid NOT NULL,
    user_id uuid NULL,
    api_key_id uuid NULL,
    route varchar(200) NOT NULL,
    method varchar(10) NOT NULL,
    status smallint NOT NULL,
    duration_ms integer NOT NULL,
    ip inet NULL,
    user_agent text NOT NULL DEFAULT '',
    error text NOT NULL DEFAULT '',
    UNIQUE (request_uuid, created_at),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE analytics_apilog_id_seq OWNED BY analytics_apilog.id;
CREATE TABLE analytics_apilog_default PARTITION OF analytics_apilog DEFAULT;
CREATE INDEX analytics_apilog_user_created ON analytics_apilog (user_id, created_at);
CREATE INDEX analytics_apilog_created ON analytics_apilog (created_at);""",
        "DROP TABLE IF EXISTS analytics_apilog CASCADE;",
    ),
    "Event": (
        """CREATE SEQUENCE analytics_event_id_seq;
CREATE TABLE analytics_event (
    id bigint NOT NULL DEFAULT nextval('analytics_event_id_seq'),
    created_at timestamptz NOT NULL DEFAULT now(),
    event_uuid uuid NOT NULL,
    user_id uuid NULL,
    organization_id uuid NULL,
    name varchar(100) NOT NULL,
    properties jsonb NOT NULL DEFAULT '{}',
    source varchar(8) NOT NULL DEFAULT 'server',
    session_id varchar(64) NOT NULL DEFAULT '',
    UNIQUE (event_uuid, created_at),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE analytics_event_id_seq OWNED BY analytics_event.id;
CREATE TABLE analytics_event_default PARTITION OF analytics_event DEFAULT;
CREATE INDEX analytics_event_name_created ON analytics_event (name, created_at);
CREATE INDEX analytics_event_user_created ON analytics_event (user_id, created_at);""",
        "DROP TABLE IF EXISTS analytics_event CASCADE;",
    ),
    "AuditLog": (
        """CREATE SEQUENCE analytics_auditlog_id_seq;
CREATE TABLE analytics_auditlog (
    id bigint NOT NULL DEFAULT nextval('analytics_auditlog_id_seq'),
    created_at timestamptz NOT NULL DEFAULT now(),
    entry_uuid uuid NOT NULL,
    user_id uuid NULL,
    organization_id uuid NULL,
    action varchar(40) NOT NULL,
    table_name varchar(100) NOT NULL DEFAULT '',
    record_id varchar(64) NOT NULL DEFAULT '',
    old_values jsonb NULL,
    new_values jsonb NULL,
    ip inet NULL,
    user_agent text NOT NULL DEFAULT '',
    detail jsonb NOT NULL DEFAULT '{}',
    UNIQUE (entry_uuid, created_at),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE analytics_auditlog_id_seq OWNED BY analytics_auditlog.id;
CREATE TABLE analytics_auditlog_default PARTITION OF analytics_auditlog DEFAULT;
CREATE INDEX analytics_auditlog_user_created ON analytics_auditlog (user_id, created_at);
CREATE INDEX analytics_auditlog_table_record ON analytics_auditlog (table_name, record_id);""",
        "DROP TABLE IF EXISTS analytics_auditlog CASCADE;",
    ),
}


class Migration(migrations.Migration):
    initial = True

    dependencies = [("accounts", "0004_row_level_security_for_account_data"), migrations.swappable_dependency(settings.AUTH_USER_MODEL)]

    operations = [
        migrations.CreateModel(
            name="RollupWatermark",
            fields=[
                ("name", models.CharField(max_length=50, primary_key=True, serialize=False)),
                ("horizon", models.CharField(default="0", max_length=24)),
                ("rows_total", models.BigIntegerField(default=0)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={"db_table": "analytics_rollupwatermark"},
        ),
        migrations.CreateModel(
            name="UsageRequest",
            fields=[
                ("request_id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={"db_table": "analytics_usagerequest"},
        ),
        migrations.CreateModel(
            name="ApiLog",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("request_uuid", models.UUIDField()),
                ("api_key_id", models.UUIDField(blank=True, null=True)),
                ("route", models.CharField(max_length=200)),
                ("method", models.CharField(max_length=10)),
                ("status", models.SmallIntegerField()),
                ("duration_ms", models.IntegerField()),
                ("ip", models.GenericIPAddressField(blank=True, null=True)),
                ("user_agent", models.TextField(blank=True, default="")),
                ("error", models.TextField(blank=True, default="")),
                (
                    "user",
                    models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"verbose_name": "API log entry", "db_table": "analytics_apilog", "ordering": ["-created_at"]},
        ),
        migrations.CreateModel(
            name="AuditLog",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("entry_uuid", models.UUIDField()),
                ("action", models.CharField(max_length=40)),
                ("table_name", models.CharField(blank=True, default="", max_length=100)),
                ("record_id", models.CharField(blank=True, default="", max_length=64)),
                ("old_values", models.JSONField(blank=True, null=True)),
                ("new_values", models.JSONField(blank=True, null=True)),
                ("ip", models.GenericIPAddressField(blank=True, null=True)),
                ("user_agent", models.TextField(blank=True, default="")),
                ("detail", models.JSONField(blank=True, default=dict)),
                (
                    "organization",
                    models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="accounts.organization",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"db_table": "analytics_auditlog", "ordering": ["-created_at"]},
        ),
        migrations.CreateModel(
            name="Event",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("event_uuid", models.UUIDField()),
                ("name", models.CharField(max_length=100)),
                ("properties", models.JSONField(blank=True, default=dict)),
                ("source", models.CharField(choices=[("client", "Client"), ("server", "Server")], default="server", max_length=8)),
                ("session_id", models.CharField(blank=True, default="", max_length=64)),
                (
                    "organization",
                    models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="accounts.organization",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"db_table": "analytics_event", "ordering": ["-created_at"]},
        ),
        migrations.CreateModel(
            name="TokenUsage",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("provider", models.CharField(max_length=32)),
                ("model", models.CharField(max_length=100)),
                ("input_tokens", models.IntegerField()),
                ("output_tokens", models.IntegerField()),
                ("total_tokens", models.IntegerField()),
                ("input_price", models.DecimalField(decimal_places=6, help_text="USD per million input tokens", max_digits=12)),
                ("output_price", models.DecimalField(decimal_places=6, help_text="USD per million output tokens", max_digits=12)),
                ("cost", models.DecimalField(decimal_places=6, max_digits=14)),
                ("conversation_id", models.UUIDField(blank=True, null=True)),
                ("message_id", models.UUIDField(blank=True, null=True)),
                ("request_id", models.CharField(max_length=64)),
                ("latency_ms", models.IntegerField(default=0)),
                ("success", models.BooleanField(default=True)),
                ("error", models.TextField(blank=True, default="")),
                (
                    "organization",
                    models.ForeignKey(
                        db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name="+", to="accounts.organization"
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name="+", to=settings.AUTH_USER_MODEL
                    ),
                ),
            ],
            options={
                "verbose_name": "token usage",
                "verbose_name_plural": "token usage ledger",
                "db_table": "analytics_tokenusage",
                "ordering": ["-created_at"],
            },
        ),
        migrations.CreateModel(
            name="UsageRollup",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("period", models.CharField(choices=[("day", "Day"), ("month", "Month")], max_length=5)),
                ("period_start", models.DateField()),
                ("provider", models.CharField(max_length=32)),
                ("model", models.CharField(max_length=100)),
                ("input_tokens", models.BigIntegerField(default=0)),
                ("output_tokens", models.BigIntegerField(default=0)),
                ("total_tokens", models.BigIntegerField(default=0)),
                ("calls", models.BigIntegerField(default=0)),
                ("errors", models.BigIntegerField(default=0)),
                ("cost", models.DecimalField(decimal_places=6, default=0, max_digits=18)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "organization",
                    models.ForeignKey(
                        db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name="+", to="accounts.organization"
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name="+", to=settings.AUTH_USER_MODEL
                    ),
                ),
            ],
            options={
                "db_table": "analytics_usagerollup",
                "ordering": ["-period_start"],
                "indexes": [
                    models.Index(fields=["organization", "period", "period_start"], name="analytics_rollup_org_idx"),
                    models.Index(fields=["user", "period", "period_start"], name="analytics_rollup_user_idx"),
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("period", "period_start", "organization", "user", "provider", "model"), name="analytics_usagerollup_key"
                    )
                ],
            },
        ),
    ]
    # The partitioned models: state from CreateModel, tables from RunSQL.
    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[op], database_operations=[migrations.RunSQL(*PARTITIONED[op.name])])
        if isinstance(op, migrations.CreateModel) and op.name in PARTITIONED
        else op
        for op in operations
    ]
