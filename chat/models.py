"""Conversations, messages, personas and the model catalog.

Portable to MongoDB (a later issue): no foreign keys to other apps' tables (`user_id`,
`organization_id` are plain UUIDs) and no PostgreSQL-only field types. Row-level security
(migration 0001): a user's conversations, messages and personas are theirs alone; the
catalog is read by everyone and written by staff.
"""

import unicodedata
import uuid
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

MONEY = {"max_digits": 20, "decimal_places": 10}  # USD, exact to 1e-10 as the ledger keeps it
MONEY_CEILING = Decimal(10) ** (MONEY["max_digits"] - MONEY["decimal_places"])  # a MONEY column holds less than this
MONEY_MAX = MONEY_CEILING - Decimal(10) ** -MONEY["decimal_places"]  # the most it holds
PRICE = {"max_digits": 12, "decimal_places": 6}  # USD per million tokens
# What a user may store, the same through the pages, the API and an import: a persona saved
# through one door must save unchanged through the other.
MAX_TAGS, MAX_TAG_LENGTH = 20, 40
MAX_SYSTEM_PROMPT = 20_000


def validate_one_line(value: str) -> None:
    """A title or tag is one line on every page, the public share page's too (import cleans them
    the same way: chat.porting.base.title_clean)."""
    from accounts.models import has_control_characters, shows_nothing  # the one list of such characters

    if has_control_characters(value):
        raise ValidationError("Remove the control characters (line breaks, tabs, text-direction marks).", code="control_characters")
    if shows_nothing(value):
        raise ValidationError("This shows nothing: use letters or symbols that can be seen.", code="invisible")


def tag_composed(tag: str) -> str:
    """A tag in Unicode's composed form (NFC: "café" typed and "café" pasted from macOS, with a
    combining accent, are one tag). A few characters take two in it (U+0958): lengths are checked after."""
    return unicodedata.normalize("NFC", tag)


def tags_kept(tags) -> list[str]:
    """Tags as stored and looked up: each composed (tag_composed), once, in the order given."""
    return list(dict.fromkeys(tag_composed(tag) for tag in tags))


class Persona(models.Model):
    """A saved system prompt with its default provider, model and temperature."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.UUIDField(db_index=True)
    name = models.CharField(max_length=100)
    system_prompt = models.TextField()
    provider = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100, blank=True)
    temperature = models.DecimalField(max_digits=3, decimal_places=2, null=True, blank=True)
    usage_count = models.PositiveIntegerField(default=0)
    # Identical calls with this persona may be answered from the response cache (if the plan allows).
    response_cache = models.BooleanField(default=False, db_default=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.UUIDField()
    organization_id = models.UUIDField(db_index=True)
    title = models.CharField(max_length=200, blank=True)
    summary = models.TextField(blank=True)
    persona = models.ForeignKey(Persona, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations")
    tags = models.JSONField(default=list, blank=True)
    is_archived = models.BooleanField(default=False)
    message_count = models.PositiveIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    total_cost = models.DecimalField(default=Decimal("0"), **MONEY)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    # Where an imported conversation came from and its id there: importing it again finds it (chat/porting/).
    imported_from = models.CharField(max_length=16, blank=True, default="", db_default="")
    external_id = models.CharField(max_length=200, blank=True, default="", db_default="")

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user_id", "-updated_at"], name="chat_conv_user_updated")]
        constraints = [
            models.UniqueConstraint(
                fields=["user_id", "imported_from", "external_id"],
                condition=~models.Q(imported_from=""),
                name="chat_conversation_imported_once",
            )
        ]

    def __str__(self):
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        SYSTEM = "system", "System"

    class Status(models.TextChoices):
        COMPLETE = "complete", "Complete"
        STREAMING = "streaming", "Streaming"
        INTERRUPTED = "interrupted", "Interrupted"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: chat_message_sequence_unique (conversation, sequence) serves every lookup by conversation.
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False)
    user_id = models.UUIDField()  # the conversation's owner, denormalized so the row policy is direct
    sequence = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    provider = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100, blank=True)
    input_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    cost = models.DecimalField(default=Decimal("0"), **MONEY)
    latency_ms = models.IntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    error = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Brought in by an import: no model call happened, so it was never metered.
    imported = models.BooleanField(default=False, db_default=False)

    class Meta:
        ordering = ["conversation", "sequence"]
        constraints = [models.UniqueConstraint(fields=["conversation", "sequence"], name="chat_message_sequence_unique")]
        # Only streaming rows, the ones streams_close_stale looks for: a reply's row leaves it as it is finished.
        indexes = [models.Index(fields=["created_at"], condition=models.Q(status="streaming"), name="chat_message_streaming_created")]

    def __str__(self):
        return f"{self.role} #{self.sequence}"


class ExportJob(models.Model):
    """A zip of all a user's conversations, built by a Celery task into a private file that expires."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.UUIDField(db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    conversation_count = models.PositiveIntegerField(default=0)
    size = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "expires_at"], name="chat_exportjob_status_expires")]
        constraints = [
            # One export building per user: each builds a zip of everything (a click-storm would queue hundreds).
            models.UniqueConstraint(fields=["user_id"], condition=models.Q(status="pending"), name="chat_exportjob_one_pending_per_user")
        ]

    def __str__(self):
        return f"export {self.pk} ({self.status})"


class ImportJob(models.Model):
    """One uploaded export file, imported by a Celery task from a private file; its report is kept here."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.UUIDField(db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    file_name = models.CharField(max_length=200, blank=True)
    size = models.BigIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"], name="chat_importjob_status_created")]
        constraints = [
            # One import at a time per user: each upload (up to CHAT_IMPORT_MAX_BYTES) waits on disk for its task.
            models.UniqueConstraint(
                fields=["user_id"], condition=models.Q(status__in=["pending", "running"]), name="chat_importjob_one_active_per_user"
            )
        ]

    def __str__(self):
        return f"import {self.pk} ({self.status})"


TIER_PRICES = (
    "long_context_input_price",
    "long_context_output_price",
    "long_context_cache_read_price",
    "long_context_cache_write_5m_price",
    "long_context_cache_write_1h_price",
)
CLASS_PRICES = ("cache_read_price", "cache_write_5m_price", "cache_write_1h_price", *TIER_PRICES)
# What a version fixes: a change to any of these is a new version (migration 0003's trigger refuses an edit).
PRICE_FIELDS = ("input_price", "output_price", *CLASS_PRICES, "long_context_threshold")


class ModelPrice(models.Model):
    """One version of a model's list price (USD per million tokens); versions, never edits in place."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=100)
    display_name = models.CharField(max_length=100)
    context_window = models.PositiveIntegerField(default=0)
    input_price = models.DecimalField(max_digits=12, decimal_places=6)
    output_price = models.DecimalField(max_digits=12, decimal_places=6)
    # Per-class prices; None means the class has no price of its own (charged at input, flagged estimated).
    cache_read_price = models.DecimalField(null=True, blank=True, **PRICE)
    cache_write_5m_price = models.DecimalField(null=True, blank=True, **PRICE)
    cache_write_1h_price = models.DecimalField(null=True, blank=True, **PRICE)
    # Above this many input tokens the tier's prices apply to the whole call (Gemini 2.5 Pro, Claude's 1M context).
    long_context_threshold = models.PositiveIntegerField(null=True, blank=True)
    long_context_input_price = models.DecimalField(null=True, blank=True, **PRICE)
    long_context_output_price = models.DecimalField(null=True, blank=True, **PRICE)
    long_context_cache_read_price = models.DecimalField(null=True, blank=True, **PRICE)
    long_context_cache_write_5m_price = models.DecimalField(null=True, blank=True, **PRICE)
    long_context_cache_write_1h_price = models.DecimalField(null=True, blank=True, **PRICE)
    effective_from = models.DateTimeField(default=timezone.now)
    effective_to = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["provider", "model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "model", "effective_from"], name="chat_modelprice_one_version_per_start"),
            models.CheckConstraint(condition=models.Q(input_price__gte=0, output_price__gte=0), name="chat_modelprice_not_negative"),
            models.CheckConstraint(
                condition=models.Q(**{f"{name}__gte": 0 for name in CLASS_PRICES}),
                name="chat_modelprice_class_prices_not_negative",
                violation_error_message="Prices cannot be negative.",
            ),
            models.CheckConstraint(
                condition=models.Q(long_context_threshold__isnull=True, **{f"{name}__isnull": True for name in TIER_PRICES})
                | models.Q(long_context_threshold__gt=0, long_context_input_price__isnull=False, long_context_output_price__isnull=False),
                name="chat_modelprice_tier_needs_threshold",
                violation_error_message="A long-context tier needs its threshold (above 0) and both its input and output prices.",
            ),
        ]

    def __str__(self):
        return f"{self.provider}/{self.model} from {self.effective_from:%Y-%m-%d}"


class ShareLink(models.Model):
    """A read-only link to one conversation. Only the SHA-256 of its token is kept, so a database
    read yields no working link; migration 0006's functions open it for a reader who is not the owner."""

    class Audience(models.TextChoices):
        ORGANIZATION = "organization", "Members of the organization (signed in)"
        ANYONE = "anyone", "Anyone with the link"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="share_links")
    user_id = models.UUIDField(db_index=True)
    organization_id = models.UUIDField()
    token_hash = models.CharField(max_length=64, unique=True)
    audience = models.CharField(max_length=16, choices=Audience.choices, default=Audience.ORGANIZATION)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(audience__in=["organization", "anyone"]), name="chat_sharelink_audience_known")
        ]

    def __str__(self):
        return f"{self.get_audience_display()} link to {self.conversation_id}"

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class PendingCall(models.Model):
    """A model call in progress that keeps no conversation (the gateway's default): written with
    its check, deleted with its ledger row, so a call whose worker died is still metered once by
    the stale pass (chat.services.streams_close_stale). It holds no messages, only what metering needs."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.UUIDField()
    organization_id = models.UUIDField()
    request_id = models.CharField(max_length=64, unique=True)
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=100)
    price_id = models.UUIDField()
    prompt_tokens_estimate = models.PositiveIntegerField()
    key_source = models.CharField(max_length=16)
    reservation = models.JSONField(default=dict, blank=True)  # what billing holds for it (chat.services.Reservation)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["created_at"]

    def __str__(self):
        return f"{self.provider}/{self.model} call {self.request_id}"
