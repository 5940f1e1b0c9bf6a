"""Staff admin for analytics: the ledger, the rollups and the logs, all read-only.

Every view runs in ConfabAdminSite's audited privileged context. The ledger and the three
logs are large monthly-partitioned tables, so their pages never count every row
(show_full_result_count), search by exact ids, sort by time only, and take filter choices
from the small monthly rollups instead of a DISTINCT over the ledger.
"""

from django.contrib import admin

from analytics.models import ApiLog, AuditLog, Event, ReconciliationLine, ReconciliationReport, RollupWatermark, TokenUsage, UsageRollup
from config import admin as config_admin


class ReadOnlyAdmin(config_admin.ReadOnlyAdmin):
    # The logs are large: no full counts, short pages.
    show_full_result_count = False
    list_per_page = 50


class RollupValueFilter(admin.SimpleListFilter):
    """Choices from the monthly rollups (one row per user, model and month) rather than the ledger."""

    field = ""

    def lookups(self, request, model_admin):
        values = (
            UsageRollup.objects.filter(period=UsageRollup.Period.MONTH).order_by(self.field).values_list(self.field, flat=True).distinct()
        )
        return [(value, value) for value in values]

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class ProviderFilter(RollupValueFilter):
    title = parameter_name = field = "provider"


class ModelFilter(RollupValueFilter):
    title = parameter_name = field = "model"


class StatusClassFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status_class"

    def lookups(self, request, model_admin):
        return [(str(n), f"{n}xx") for n in (2, 3, 4, 5)]

    def queryset(self, request, queryset):
        if self.value() in ("2", "3", "4", "5"):
            low = int(self.value()) * 100
            return queryset.filter(status__gte=low, status__lt=low + 100)
        return queryset


@admin.register(TokenUsage)
class TokenUsageAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "user",
        "organization",
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cache_read_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "reasoning_tokens",
        "cost",
        "key_source",
        "estimated",
        "cache_hit",
        "success",
        "latency_ms",
        "request_id",
    )
    list_filter = (ProviderFilter, ModelFilter, "success", "key_source", "estimated", "cache_hit")
    list_select_related = ("user", "organization")
    search_fields = ("=request_id",)
    search_help_text = "The exact request id."
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    sortable_by = ("created_at",)


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    list_display = (
        "period",
        "period_start",
        "user",
        "organization",
        "provider",
        "model",
        "calls",
        "errors",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cost",
        "updated_at",
    )
    list_filter = ("period", ProviderFilter, ModelFilter)
    list_select_related = ("user", "organization")
    search_fields = ("=user__email", "=model")
    search_help_text = "A user's exact email, or a model's exact name."
    date_hierarchy = "period_start"
    ordering = ("-period_start", "period", "-cost")


@admin.register(RollupWatermark)
class RollupWatermarkAdmin(ReadOnlyAdmin):
    list_display = ("name", "horizon", "rows_total", "updated_at")


@admin.register(ApiLog)
class ApiLogAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "method", "route", "status", "duration_ms", "user", "api_key_id", "ip")
    list_filter = (StatusClassFilter, "method")
    list_select_related = ("user",)
    search_fields = ("=request_uuid", "^route")
    search_help_text = "The exact request id, or the start of a route."
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    sortable_by = ("created_at",)


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "name", "source", "user", "organization", "session_id")
    list_filter = ("source",)
    list_select_related = ("user", "organization")
    search_fields = ("=event_uuid", "^name")
    search_help_text = "The exact event id, or the start of an event name."
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    sortable_by = ("created_at",)


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "action", "table_name", "record_id", "user", "organization", "ip")
    list_select_related = ("user", "organization")
    search_fields = ("=entry_uuid", "=record_id", "^action")
    search_help_text = "The exact entry or record id, or the start of an action."
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    sortable_by = ("created_at",)


class ReconciliationLineInline(admin.TabularInline):
    model = ReconciliationLine
    fields = (
        "day",
        "model",
        "token_class",
        "status",
        "ledger_tokens",
        "provider_tokens",
        "drift_tokens",
        "rate",
        "ledger_cost",
        "drift_cost",
        "over_tolerance",
    )
    readonly_fields = fields
    can_delete = False
    extra = 0

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ReconciliationReport)
class ReconciliationReportAdmin(ReadOnlyAdmin):
    """The provider's bill against the ledger, per day, model and token class (manage.py usage_reconcile)."""

    list_display = (
        "created_at",
        "provider",
        "date_from",
        "date_to",
        "within_tolerance",
        "ledger_tokens",
        "provider_tokens",
        "drift_cost",
        "source",
    )
    list_filter = ("provider", "within_tolerance")
    readonly_fields = ("summary",)
    inlines = [ReconciliationLineInline]
    ordering = ("-created_at",)
