"""Billing in admin: plans editable; subscriptions changed only through actions (which go
through the services, so the one-current rule and its lock hold); Stripe events and revenue
snapshots read-only (staff only, like all of admin)."""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm

from billing import services
from billing.models import Plan, RevenueSnapshot, StripeEvent, Subscription
from config.admin import ReadOnlyAdmin, StorableJSONForm
from config.errors import ApplicationError


class PlanForm(StorableJSONForm):
    """The plan's change form (the admin gives it its model and fields)."""

    def clean_max_output_tokens(self):
        # Every call is capped at the platform's ceiling too (billing.services.entitlement_check):
        # a plan above it would promise what no call gets.
        cap = self.cleaned_data.get("max_output_tokens")
        ceiling = settings.CHAT_MAX_OUTPUT_TOKENS
        if cap is not None and cap > ceiling:
            raise forms.ValidationError(
                f"At most {ceiling:,}: no call asks a provider for more output tokens than the platform's "
                "ceiling (the CHAT_MAX_OUTPUT_TOKENS setting). Raise the setting first, or leave this empty for the ceiling."
            )
        return cap


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    form = PlanForm
    list_display = [
        "name",
        "slug",
        "monthly_price",
        "yearly_price",
        "monthly_tokens",
        "monthly_messages",
        "requests_per_minute",
        "monthly_spend",
        "max_output_tokens",
        "is_active",
    ]
    list_filter = ["is_active"]
    search_fields = ["name", "slug"]
    ordering = ["display_order"]

    def has_delete_permission(self, request, obj=None):
        return False  # subscriptions keep their history: retire a plan with is_active

    def get_readonly_fields(self, request, obj=None):
        # The code finds plans by slug (the Free plan by "free", in a trigger too): renamed, every
        # new organization would get a Free plan of its own making. Add a plan; retire one.
        return ("slug",) if obj else ()


class SubscriptionActionForm(ActionForm):
    plan = forms.ModelChoiceField(queryset=Plan.objects.filter(is_active=True), required=False, help_text="For “Change plan”.")
    days = forms.IntegerField(min_value=1, max_value=365, required=False, initial=14, help_text="For “Extend trial”.")


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = [
        "organization",
        "plan",
        "status",
        "interval",
        "current_period_end",
        "trial_end",
        "cancel_at_period_end",
        "requested_plan",
    ]
    list_filter = ["status", "plan", "requested_plan", "cancel_at_period_end"]
    search_fields = ["organization__name", "organization__slug", "stripe_customer_id", "stripe_subscription_id"]
    list_select_related = ["organization", "plan", "requested_plan"]
    action_form = SubscriptionActionForm
    actions = ["change_plan", "extend_trial", "cancel_now"]
    readonly_fields = [f.name for f in Subscription._meta.fields]

    def has_add_permission(self, request):
        return False  # organizations get theirs from the database; plans change through actions

    def has_delete_permission(self, request, obj=None):
        return False

    def _each_current(self, request, queryset, act) -> None:
        done = 0
        for subscription in queryset.select_related("organization"):
            if not subscription.is_current:
                continue
            try:
                if subscription.billed_by_stripe:
                    # Changed here alone, Stripe would go on charging (and its next event undo it).
                    raise ApplicationError("paid through Stripe: change or cancel it in Stripe's dashboard; its webhook changes it here.")
                act(subscription)
                done += 1
            except ApplicationError as exc:
                self.message_user(request, f"{subscription.organization}: {exc.message}", messages.ERROR)
        self.message_user(request, f"{done} current subscription(s) changed.", messages.SUCCESS if done else messages.WARNING)

    @admin.action(description="Change plan (now)")
    def change_plan(self, request, queryset):
        try:
            plan = SubscriptionActionForm.base_fields["plan"].clean(request.POST.get("plan") or None)
        except forms.ValidationError:
            plan = None
        if plan is None:
            self.message_user(request, "Choose a plan to change to.", messages.ERROR)
            return
        self._each_current(
            request, queryset, lambda s: services.subscription_plan_set(organization=s.organization, plan=plan, interval=s.interval)
        )

    @admin.action(description="Extend trial")
    def extend_trial(self, request, queryset):
        try:
            days = int(request.POST.get("days") or 14)
        except ValueError:
            self.message_user(request, "Give the number of days as a whole number.", messages.ERROR)
            return
        self._each_current(request, queryset, lambda s: services.subscription_trial_extend(subscription=s, days=days))

    @admin.action(description="Cancel now (move to Free)")
    def cancel_now(self, request, queryset):
        self._each_current(request, queryset, lambda s: services.subscription_end_now(subscription=s))


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "object_id", "object_version_at", "processed_at"]
    list_filter = ["type"]
    search_fields = ["event_id", "object_id"]


@admin.register(RevenueSnapshot)
class RevenueSnapshotAdmin(ReadOnlyAdmin):
    list_display = ["taken_at", "mrr", "arr", "currency", "paying_organizations", "trial_conversions", "churned_this_month"]
    date_hierarchy = "taken_at"
