"""Plans, each organization's subscription, and the Stripe webhook idempotency record.

The organization is the billing account. Exactly one subscription per organization is
current (trialing, active or past due): a partial unique index allows at most one and a
deferred trigger refuses a commit that leaves an organization with none (0001).
"""

import uuid
from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization

CURRENT_STATUSES = ("trialing", "active", "past_due")


class Plan(models.Model):
    """What an organization may do. A limit left empty means unlimited; an empty list of
    providers or models means every one."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True)
    description = models.CharField(max_length=300, blank=True)
    monthly_price = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0.00"), validators=[MinValueValidator(0)])
    yearly_price = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0.00"), validators=[MinValueValidator(0)])
    currency = models.CharField(max_length=3, default="usd")
    features = models.JSONField(default=dict, blank=True)
    allowed_providers = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    allowed_models = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    monthly_tokens = models.BigIntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    monthly_messages = models.IntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    requests_per_minute = models.IntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    max_conversations = models.IntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    # USD a month the organization's calls may cost; empty means no spend budget.
    monthly_spend = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(0)])
    # The most output tokens one call may ask for; empty means the CHAT_MAX_OUTPUT_TOKENS setting.
    max_output_tokens = models.IntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    # Confab's cache of model replies (chat/response_cache.py) may answer this plan's calls.
    response_cache = models.BooleanField(
        default=False, db_default=False, help_text="Identical calls may be answered from the response cache."
    )
    cache_hits_count = models.BooleanField(
        default=True, db_default=True, help_text="A reply from the response cache counts its tokens against the monthly token limit."
    )
    trial_days = models.PositiveIntegerField(default=0)
    stripe_monthly_price_id = models.CharField(max_length=100, blank=True)
    stripe_yearly_price_id = models.CharField(max_length=100, blank=True)
    is_active = models.BooleanField(default=True)
    display_order = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["display_order", "monthly_price", "name"]
        constraints = [
            models.CheckConstraint(condition=Q(monthly_price__gte=0) & Q(yearly_price__gte=0), name="billing_plan_prices_not_negative")
        ]

    def __str__(self):
        return self.name

    @property
    def is_free(self) -> bool:
        return self.monthly_price == 0 and self.yearly_price == 0

    def allows_provider(self, provider: str) -> bool:
        return not self.allowed_providers or provider in self.allowed_providers

    def allows_model(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


class Subscription(models.Model):
    class Interval(models.TextChoices):
        MONTH = "month", "Monthly"
        YEAR = "year", "Yearly"

    class Status(models.TextChoices):
        TRIALING = "trialing", "Trialing"
        ACTIVE = "active", "Active"
        PAST_DUE = "past_due", "Past due"
        CANCELED = "canceled", "Canceled"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    interval = models.CharField(max_length=8, choices=Interval.choices, default=Interval.MONTH)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    current_period_start = models.DateTimeField(default=timezone.now)
    current_period_end = models.DateTimeField(null=True, blank=True)
    trial_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    # A downgrade chosen for the period's end (upgrades apply at once).
    scheduled_plan = models.ForeignKey(Plan, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    scheduled_interval = models.CharField(max_length=8, choices=Interval.choices, blank=True)
    # A paid plan an owner asked for while payment is not configured; staff act on it.
    requested_plan = models.ForeignKey(Plan, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    requested_at = models.DateTimeField(null=True, blank=True)
    past_due_since = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_from = models.CharField(
        max_length=16,
        choices=Status.choices,
        blank=True,
        default="",
        db_default="",
        help_text="The status the subscription ended from (blank: current, or ended before this was kept).",
    )
    stripe_customer_id = models.CharField(max_length=100, blank=True, db_index=True)
    stripe_subscription_id = models.CharField(max_length=100, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization"], condition=Q(status__in=CURRENT_STATUSES), name="billing_subscription_one_current"
            )
        ]

    def __str__(self):
        return f"{self.organization} on {self.plan} ({self.status})"

    @property
    def is_current(self) -> bool:
        return self.status in CURRENT_STATUSES

    @property
    def billed_by_stripe(self) -> bool:
        """A paid plan Stripe charges for: only Stripe may change it (the billing portal; its
        webhooks then write the change here), or Stripe would keep charging for the old one."""
        return bool(self.stripe_subscription_id) and not self.plan.is_free


class StripeEvent(models.Model):
    """One row per Stripe webhook event processed: the idempotency record."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=255, blank=True, db_index=True)
    # The event's `created`: an older version of an object never overwrites a newer one.
    object_version_at = models.DateTimeField()
    payload = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    # Empty until the task has applied the event; a replay of an unapplied event queues it again.
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self):
        return f"{self.type} {self.event_id}"


class RevenueSnapshot(models.Model):
    """Staff analytics taken by a task: organizations by plan and status, MRR and ARR, paying
    organizations, trial conversions and churn in the month. Staff-only (RLS, no web policy)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    taken_at = models.DateTimeField(default=timezone.now, db_index=True)
    # [{"plan": slug, "plan_name": name, "status": status, "organizations": n}, ...]
    by_plan_status = models.JSONField(default=list, blank=True)
    mrr = models.DecimalField(max_digits=14, decimal_places=2)
    arr = models.DecimalField(max_digits=16, decimal_places=2)
    paying_organizations = models.PositiveIntegerField(default=0)
    trial_conversions = models.PositiveIntegerField(default=0)
    churned_this_month = models.PositiveIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")

    class Meta:
        ordering = ["-taken_at"]

    def __str__(self):
        return f"Revenue at {self.taken_at:%Y-%m-%d %H:%M}: MRR {self.mrr} {self.currency}"
