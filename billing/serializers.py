from rest_framework import serializers

from billing.models import Plan, Subscription
from config.api.inputs import StrictBooleanField, StringField


class PlanOut(serializers.ModelSerializer):
    class Meta:
        model = Plan
        fields = [
            "slug",
            "name",
            "description",
            "monthly_price",
            "yearly_price",
            "currency",
            "features",
            "allowed_providers",
            "allowed_models",
            "monthly_tokens",
            "monthly_messages",
            "monthly_spend",
            "max_output_tokens",
            "requests_per_minute",
            "max_conversations",
            "trial_days",
        ]


class LimitOut(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()
    limit = serializers.IntegerField(allow_null=True, help_text="Empty: unlimited.")
    used = serializers.IntegerField(allow_null=True, help_text="This month's usage; empty where billing does not count it.")


class SpendOut(serializers.Serializer):
    limit = serializers.DecimalField(
        max_digits=12, decimal_places=2, allow_null=True, help_text="The plan's monthly spend budget; empty: none."
    )
    used = serializers.DecimalField(max_digits=22, decimal_places=10, help_text="This month's model spend so far, as metered.")
    currency = serializers.CharField(help_text="The plan's currency (lower case).")


class SubscriptionOut(serializers.Serializer):
    organization = serializers.UUIDField(source="subscription.organization_id")
    plan = PlanOut(help_text="The plan in force now (after grace periods and ended terms).")
    subscribed_plan = serializers.SlugField(source="subscription.plan.slug")
    status = serializers.ChoiceField(source="subscription.status", choices=Subscription.Status.choices)
    interval = serializers.ChoiceField(source="subscription.interval", choices=Subscription.Interval.choices)
    current_period_start = serializers.DateTimeField(source="subscription.current_period_start")
    current_period_end = serializers.DateTimeField(source="subscription.current_period_end", allow_null=True)
    trial_end = serializers.DateTimeField(source="subscription.trial_end", allow_null=True)
    cancel_at_period_end = serializers.BooleanField(source="subscription.cancel_at_period_end")
    scheduled_plan = serializers.SlugField(source="subscription.scheduled_plan.slug", allow_null=True, default=None)
    requested_plan = serializers.SlugField(source="subscription.requested_plan.slug", allow_null=True, default=None)
    grace_ends_at = serializers.DateTimeField(allow_null=True)
    resets_on = serializers.DateField(help_text="When monthly limits reset (the first of next month, UTC).")
    limits = LimitOut(many=True)
    spend = SpendOut(help_text="Model spend this month beside the plan's spend budget (money: apart from `limits`).")
    payment_configured = serializers.BooleanField()


class SlugStringField(StringField, serializers.SlugField):
    """A slug, as a JSON string only (config/api/inputs.StringField)."""


class SubscriptionChangeIn(serializers.Serializer):
    plan = SlugStringField(max_length=50)
    interval = serializers.ChoiceField(choices=Subscription.Interval.choices, default=Subscription.Interval.MONTH)
    immediately = StrictBooleanField(default=False, help_text="Downgrades apply at the period's end unless this is true.")


class CheckoutOut(serializers.Serializer):
    checkout_url = serializers.URLField(help_text="Stripe Checkout's page for the plan; the plan changes once the payment there succeeds.")
