"""Usage facts. The four logs are monthly-partitioned tables whose database primary key
is (id, created_at); Django sees `id` (unique by its sequence) as the key, which keeps
admin and DRF working. The tables are created by RunSQL (config/db/partitions.py)."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


def _user_fk(**kwargs):
    # No database constraint: the ledger outlives accounts (erasure anonymizes, never cascades).
    return models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+", **kwargs)


def _organization_fk(**kwargs):
    return models.ForeignKey("accounts.Organization", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+", **kwargs)


class KeySource(models.TextChoices):
    """Whose provider key paid for a call."""

    USER = "user", "User's own key"
    MANAGED = "managed", "Platform managed key"
    FREE_TIER = "free_tier", "Platform free-tier key"
    NONE = "none", "No provider key"


class TokenUsage(models.Model):
    """One model call: the append-only ledger everything else is computed from."""

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    user = _user_fk()
    organization = _organization_fk()
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=100)
    input_tokens = models.IntegerField()
    output_tokens = models.IntegerField()
    total_tokens = models.IntegerField()
    input_price = models.DecimalField(max_digits=12, decimal_places=6, help_text="USD per million input tokens")
    output_price = models.DecimalField(max_digits=12, decimal_places=6, help_text="USD per million output tokens")
    cost = models.DecimalField(max_digits=20, decimal_places=10, help_text="USD, exact to 1e-10")
    # Token classes, parts of the totals above: input_tokens includes the cache classes, output_tokens the reasoning.
    cache_read_tokens = models.IntegerField(default=0)
    cache_write_5m_tokens = models.IntegerField(default=0)
    cache_write_1h_tokens = models.IntegerField(default=0)
    reasoning_tokens = models.IntegerField(default=0)
    # The rates used (USD per million tokens); null when that class did not occur.
    cache_read_price = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    cache_write_5m_price = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    cache_write_1h_price = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    estimated = models.BooleanField(default=False, help_text="Some of this call's usage was estimated, not reported")
    cache_hit = models.BooleanField(default=False, help_text="Answered from Confab's response cache: provider cost $0")
    saved_tokens = models.IntegerField(default=0)
    saved_cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    key_source = models.CharField(max_length=16, choices=KeySource.choices, default=KeySource.NONE)
    conversation_id = models.UUIDField(null=True, blank=True)
    message_id = models.UUIDField(null=True, blank=True)
    request_id = models.CharField(max_length=64)
    latency_ms = models.IntegerField(default=0)
    success = models.BooleanField(default=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "analytics_tokenusage"
        ordering = ["-created_at"]
        verbose_name = "token usage"
        verbose_name_plural = "token usage ledger"

    def __str__(self):
        return f"{self.provider}/{self.model} {self.total_tokens} tokens ${self.cost}"


class UsageRequest(models.Model):
    """Request ids already in the ledger: recording one twice records it once. Written only by the
    ledger's insert trigger (analytics 0011); the app role has no grant on it."""

    request_id = models.CharField(max_length=64, primary_key=True, db_collation="C")  # compared bytewise: see 0005
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "analytics_usagerequest"

    def __str__(self):
        return self.request_id


class UsageRollup(models.Model):
    """Daily and monthly totals per organization, user, provider and model; always equal to the ledger."""

    class Period(models.TextChoices):
        DAY = "day", "Day"
        MONTH = "month", "Month"

    id = models.BigAutoField(primary_key=True)
    period = models.CharField(max_length=5, choices=Period.choices)
    period_start = models.DateField()
    organization = _organization_fk()
    user = _user_fk()
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=100)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    calls = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cache_write_5m_tokens = models.BigIntegerField(default=0)
    cache_write_1h_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    estimated_calls = models.BigIntegerField(default=0)
    cache_hits = models.BigIntegerField(default=0)
    saved_tokens = models.BigIntegerField(default=0)
    saved_cost = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "analytics_usagerollup"
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["period", "period_start", "organization", "user", "provider", "model"], name="analytics_usagerollup_key"
            )
        ]
        indexes = [
            models.Index(fields=["organization", "period", "period_start"], name="analytics_rollup_org_idx"),
            models.Index(fields=["user", "period", "period_start"], name="analytics_rollup_user_idx"),
        ]

    def __str__(self):
        return f"{self.period} {self.period_start} {self.provider}/{self.model}"


class RollupWatermark(models.Model):
    """How far the rollups have read the ledger: every row of a transaction id below `horizon`."""

    name = models.CharField(max_length=50, primary_key=True)
    horizon = models.CharField(max_length=24, default="0")  # an xid8, as text
    rows_total = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "analytics_rollupwatermark"

    def __str__(self):
        return f"{self.name} at {self.horizon}"


class ApiLog(models.Model):
    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    request_uuid = models.UUIDField()
    user = _user_fk(null=True, blank=True)
    api_key_id = models.UUIDField(null=True, blank=True)
    route = models.CharField(max_length=200)
    method = models.CharField(max_length=10)
    status = models.SmallIntegerField()
    duration_ms = models.IntegerField()
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "analytics_apilog"
        ordering = ["-created_at"]
        verbose_name = "API log entry"

    def __str__(self):
        return f"{self.method} {self.route} {self.status}"


class Event(models.Model):
    class Source(models.TextChoices):
        CLIENT = "client", "Client"
        SERVER = "server", "Server"

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    event_uuid = models.UUIDField()
    user = _user_fk(null=True, blank=True)
    organization = _organization_fk(null=True, blank=True)
    name = models.CharField(max_length=100)
    properties = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.SERVER)
    session_id = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        db_table = "analytics_event"
        ordering = ["-created_at"]

    def __str__(self):
        return self.name


class AuditLog(models.Model):
    """Who changed what, and security events. Immutable (a trigger refuses UPDATE and DELETE)."""

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    entry_uuid = models.UUIDField()
    user = _user_fk(null=True, blank=True)  # the actor; None for the system
    organization = _organization_fk(null=True, blank=True)
    action = models.CharField(max_length=40)
    table_name = models.CharField(max_length=100, blank=True, default="")
    record_id = models.CharField(max_length=64, blank=True, default="")
    old_values = models.JSONField(null=True, blank=True)
    new_values = models.JSONField(null=True, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.TextField(blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "analytics_auditlog"
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.action} {self.table_name} {self.record_id}"


class TokenClass(models.TextChoices):
    """The classes a provider bills apart; uncached input is the input outside the cache classes."""

    INPUT_UNCACHED = "input_uncached", "Uncached input"
    CACHE_READ = "cache_read", "Cache read"
    CACHE_WRITE_5M = "cache_write_5m", "Cache write (5 minutes)"
    CACHE_WRITE_1H = "cache_write_1h", "Cache write (1 hour)"
    OUTPUT = "output", "Output"


class ReconciliationReport(models.Model):
    """The provider's usage report for the platform's keys against the ledger, for staff (platform data, no user's rows)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    provider = models.CharField(max_length=32)
    date_from = models.DateField()
    date_to = models.DateField()
    source = models.CharField(max_length=300, help_text="The provider's API, or the file read")
    tolerance = models.DecimalField(max_digits=12, decimal_places=10, help_text="Largest drift allowed, as a fraction of the ledger")
    within_tolerance = models.BooleanField()
    ledger_tokens = models.BigIntegerField(default=0)
    provider_tokens = models.BigIntegerField(default=0)
    ledger_cost = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    drift_cost = models.DecimalField(max_digits=24, decimal_places=10, default=0, help_text="Priced drift only (provider minus ledger)")
    days_missing_in_ledger = models.JSONField(default=list, blank=True)
    days_missing_at_provider = models.JSONField(default=list, blank=True)
    summary = models.TextField()

    class Meta:
        db_table = "analytics_reconciliationreport"
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.provider} {self.date_from} to {self.date_to}: {'within' if self.within_tolerance else 'beyond'} tolerance"


class ReconciliationLine(models.Model):
    """One day, model and token class: the ledger's tokens and dollars beside the provider's."""

    class Status(models.TextChoices):
        MATCHED = "matched", "Matched"
        DRIFT = "drift", "Drift"
        MISSING_IN_LEDGER = "missing_in_ledger", "Missing in the ledger"
        MISSING_AT_PROVIDER = "missing_at_provider", "Missing at the provider"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    report = models.ForeignKey(ReconciliationReport, on_delete=models.CASCADE, related_name="lines")
    day = models.DateField()
    model = models.CharField(max_length=100)
    token_class = models.CharField(max_length=16, choices=TokenClass.choices)
    ledger_tokens = models.BigIntegerField()
    provider_tokens = models.BigIntegerField()
    drift_tokens = models.BigIntegerField(help_text="Provider minus ledger")
    rate = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True, help_text="USD per million tokens; null: unpriced")
    ledger_cost = models.DecimalField(max_digits=24, decimal_places=10)
    drift_cost = models.DecimalField(max_digits=24, decimal_places=10, null=True, blank=True, help_text="Null when no rate is known")
    status = models.CharField(max_length=20, choices=Status.choices)
    over_tolerance = models.BooleanField()

    class Meta:
        db_table = "analytics_reconciliationline"
        ordering = ["day", "model", "token_class"]
        constraints = [models.UniqueConstraint(fields=["report", "day", "model", "token_class"], name="analytics_reconciliationline_key")]

    def __str__(self):
        return f"{self.day} {self.model} {self.token_class}: {self.drift_tokens:+d}"
