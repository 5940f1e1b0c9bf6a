"""Plans, subscriptions and Stripe events, with their row-level security and the database
rules that keep exactly one current subscription per organization.

Members read their organization's subscriptions; only its owners and admins change
them (billing_caller_manages). Plans are read by everyone and written by staff (the
worker or owner role). Stripe events are staff-only. Every new organization gets a free
subscription from a trigger, so no code path can forget it.
"""

import uuid
from decimal import Decimal

import django.contrib.postgres.fields
import django.core.validators
import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

from config.db.operations import CreatePolicy, EnableRowLevelSecurity

CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"
IN_ORGANIZATION = "organization_id = ANY ((SELECT app_organization_ids())::uuid[])"  # once per query, not per row

FUNCTIONS = f"""
-- Is the context's user an owner or admin of this organization.
CREATE OR REPLACE FUNCTION billing_caller_manages(p_organization uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    SELECT EXISTS (
        SELECT 1 FROM accounts_membership
        WHERE organization_id = p_organization AND user_id = {CURRENT_USER} AND role IN ('owner', 'admin')
    )
    $$;
REVOKE ALL ON FUNCTION billing_caller_manages(uuid) FROM PUBLIC;

-- Every organization starts on the free plan. The free plan is recreated if missing
-- (a flushed test database); the seed migration holds the same values.
CREATE OR REPLACE FUNCTION billing_organization_starts_free() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
DECLARE
    free_plan uuid;
BEGIN
    SELECT id INTO free_plan FROM billing_plan WHERE slug = 'free';
    IF free_plan IS NULL THEN
        INSERT INTO billing_plan (
            id, name, slug, description, monthly_price, yearly_price, currency, features, allowed_providers,
            allowed_models, monthly_tokens, monthly_messages, requests_per_minute, max_conversations, trial_days,
            stripe_monthly_price_id, stripe_yearly_price_id, is_active, display_order, created_at, updated_at
        ) VALUES (
            gen_random_uuid(), 'Free', 'free', 'Try Confab with the smaller models.', 0, 0, 'usd', '{{}}'::jsonb,
            ARRAY['echo', 'openai', 'anthropic', 'gemini'],
            ARRAY['echo-1', 'gpt-4o-mini', 'claude-3-5-haiku-latest', 'gemini-2.5-flash'],
            100000, 1000, 10, 20, 0, '', '', true, 0, now(), now()
        ) ON CONFLICT (slug) DO NOTHING;
        SELECT id INTO free_plan FROM billing_plan WHERE slug = 'free';
    END IF;
    INSERT INTO billing_subscription (
        id, organization_id, plan_id, interval, status, current_period_start, current_period_end, trial_end,
        cancel_at_period_end, scheduled_plan_id, scheduled_interval, requested_plan_id, requested_at,
        past_due_since, ended_at, stripe_customer_id, stripe_subscription_id, created_at, updated_at
    ) VALUES (
        gen_random_uuid(), NEW.id, free_plan, 'month', 'active', now(), NULL, NULL,
        false, NULL, '', NULL, NULL, NULL, NULL, '', '', now(), now()
    );
    RETURN NULL;
END $$;
CREATE TRIGGER billing_organization_starts_free AFTER INSERT ON accounts_organization
    FOR EACH ROW EXECUTE FUNCTION billing_organization_starts_free();

-- At commit, an organization that still exists has a current subscription (the partial
-- unique index already allows at most one).
CREATE OR REPLACE FUNCTION billing_subscription_keeps_one_current() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM accounts_organization WHERE id = OLD.organization_id)
       AND NOT EXISTS (
           SELECT 1 FROM billing_subscription
           WHERE organization_id = OLD.organization_id AND status IN ('trialing', 'active', 'past_due')
       ) THEN
        RAISE EXCEPTION 'organization % would be left without a current subscription', OLD.organization_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER billing_subscription_keeps_one_current AFTER UPDATE OR DELETE ON billing_subscription
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION billing_subscription_keeps_one_current();
"""
DROP_FUNCTIONS = """
DROP TRIGGER IF EXISTS billing_subscription_keeps_one_current ON billing_subscription;
DROP FUNCTION IF EXISTS billing_subscription_keeps_one_current();
DROP TRIGGER IF EXISTS billing_organization_starts_free ON accounts_organization;
DROP FUNCTION IF EXISTS billing_organization_starts_free();
DROP FUNCTION IF EXISTS billing_caller_manages(uuid);
"""
MANAGES = "billing_caller_manages(organization_id)"


def _role(schema_editor, alias):
    from django.conf import settings

    return schema_editor.quote_name(settings.DATABASES[alias]["USER"])


def grants(apps, schema_editor):
    app = _role(schema_editor, "default")
    for role in (app, _role(schema_editor, "privileged")):
        schema_editor.execute(f"GRANT EXECUTE ON FUNCTION billing_caller_manages(uuid) TO {role}")
    # Plans are staff-written; Stripe events are the webhook's (worker role) alone.
    schema_editor.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON billing_plan FROM {app}")
    schema_editor.execute(f"REVOKE TRUNCATE ON billing_subscription FROM {app}")
    schema_editor.execute(f"REVOKE ALL ON billing_stripeevent FROM {app}")


def grants_reverse(apps, schema_editor):
    app = _role(schema_editor, "default")
    for table in ("billing_plan", "billing_subscription", "billing_stripeevent"):
        schema_editor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {app}")


class Migration(migrations.Migration):
    initial = True

    dependencies = [("accounts", "0010_organization_ids_from_memberships"), ("config", "0001_roles_grants_and_rls_functions")]

    operations = [
        migrations.CreateModel(
            name="StripeEvent",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("event_id", models.CharField(max_length=255, unique=True)),
                ("type", models.CharField(max_length=100)),
                ("object_id", models.CharField(blank=True, db_index=True, max_length=255)),
                ("object_version_at", models.DateTimeField()),
                ("payload", models.JSONField(blank=True, default=dict)),
                ("processed_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={"ordering": ["-processed_at"]},
        ),
        migrations.CreateModel(
            name="Plan",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=100)),
                ("slug", models.SlugField(unique=True)),
                ("description", models.CharField(blank=True, max_length=300)),
                (
                    "monthly_price",
                    models.DecimalField(
                        decimal_places=2, default=Decimal("0.00"), max_digits=10, validators=[django.core.validators.MinValueValidator(0)]
                    ),
                ),
                (
                    "yearly_price",
                    models.DecimalField(
                        decimal_places=2, default=Decimal("0.00"), max_digits=10, validators=[django.core.validators.MinValueValidator(0)]
                    ),
                ),
                ("currency", models.CharField(default="usd", max_length=3)),
                ("features", models.JSONField(blank=True, default=dict)),
                (
                    "allowed_providers",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.CharField(max_length=32), blank=True, default=list, size=None
                    ),
                ),
                (
                    "allowed_models",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.CharField(max_length=100), blank=True, default=list, size=None
                    ),
                ),
                ("monthly_tokens", models.BigIntegerField(blank=True, null=True, validators=[django.core.validators.MinValueValidator(0)])),
                ("monthly_messages", models.IntegerField(blank=True, null=True, validators=[django.core.validators.MinValueValidator(0)])),
                (
                    "requests_per_minute",
                    models.IntegerField(blank=True, null=True, validators=[django.core.validators.MinValueValidator(0)]),
                ),
                ("max_conversations", models.IntegerField(blank=True, null=True, validators=[django.core.validators.MinValueValidator(0)])),
                ("trial_days", models.PositiveIntegerField(default=0)),
                ("stripe_monthly_price_id", models.CharField(blank=True, max_length=100)),
                ("stripe_yearly_price_id", models.CharField(blank=True, max_length=100)),
                ("is_active", models.BooleanField(default=True)),
                ("display_order", models.PositiveIntegerField(default=0)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "ordering": ["display_order", "monthly_price", "name"],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("monthly_price__gte", 0), ("yearly_price__gte", 0)), name="billing_plan_prices_not_negative"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="Subscription",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("interval", models.CharField(choices=[("month", "Monthly"), ("year", "Yearly")], default="month", max_length=8)),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("trialing", "Trialing"),
                            ("active", "Active"),
                            ("past_due", "Past due"),
                            ("canceled", "Canceled"),
                            ("expired", "Expired"),
                        ],
                        default="active",
                        max_length=16,
                    ),
                ),
                ("current_period_start", models.DateTimeField(default=django.utils.timezone.now)),
                ("current_period_end", models.DateTimeField(blank=True, null=True)),
                ("trial_end", models.DateTimeField(blank=True, null=True)),
                ("cancel_at_period_end", models.BooleanField(default=False)),
                ("scheduled_interval", models.CharField(blank=True, choices=[("month", "Monthly"), ("year", "Yearly")], max_length=8)),
                ("requested_at", models.DateTimeField(blank=True, null=True)),
                ("past_due_since", models.DateTimeField(blank=True, null=True)),
                ("ended_at", models.DateTimeField(blank=True, null=True)),
                ("stripe_customer_id", models.CharField(blank=True, db_index=True, max_length=100)),
                ("stripe_subscription_id", models.CharField(blank=True, db_index=True, max_length=100)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "organization",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="subscriptions", to="accounts.organization"
                    ),
                ),
                ("plan", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="subscriptions", to="billing.plan")),
                (
                    "requested_plan",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="billing.plan"
                    ),
                ),
                (
                    "scheduled_plan",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="billing.plan"
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at"],
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("status__in", ("trialing", "active", "past_due"))),
                        fields=("organization",),
                        name="billing_subscription_one_current",
                    )
                ],
            },
        ),
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
        migrations.RunPython(grants, grants_reverse),
        EnableRowLevelSecurity("billing_plan"),
        CreatePolicy("billing_plan", "billing_plan_read", using="true", command="SELECT"),
        EnableRowLevelSecurity("billing_subscription"),
        CreatePolicy("billing_subscription", "billing_subscription_member_read", using=IN_ORGANIZATION, command="SELECT"),
        CreatePolicy("billing_subscription", "billing_subscription_manager_insert", check=MANAGES, command="INSERT"),
        CreatePolicy("billing_subscription", "billing_subscription_manager_update", using=MANAGES, command="UPDATE"),
        # Deleting an organization deletes its subscriptions (the deferred trigger keeps the current one otherwise).
        CreatePolicy("billing_subscription", "billing_subscription_manager_delete", using=MANAGES, command="DELETE"),
        EnableRowLevelSecurity("billing_stripeevent"),
        CreatePolicy("billing_stripeevent", "billing_stripeevent_staff_only", using="false"),
    ]
