"""Staff admin for chat: conversations, messages and personas read-only (their content is the
user's, and a persona belongs to one user: moved to another, the conversations naming it could no
longer read it), and the model catalog with its prices and effective dates.

Every view runs in ConfabAdminSite's audited privileged context (config/admin.py).
"""

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.utils import timezone

from chat import pricing
from chat.errors import PriceVersionRefused
from chat.models import PRICE_FIELDS, Conversation, ExportJob, ImportJob, Message, ModelPrice, PendingCall, Persona, ShareLink
from config import admin as config_admin


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("sequence", "role", "status", "content", "provider", "model", "input_tokens", "output_tokens", "cost", "error")
    readonly_fields = fields
    ordering = ("sequence",)
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(config_admin.ReadOnlyAdmin):
    list_display = ("title", "user_id", "organization_id", "message_count", "total_tokens", "total_cost", "is_archived", "updated_at")
    list_filter = ("is_archived",)
    search_fields = ("=id", "=user_id", "=organization_id", "title")
    search_help_text = "An exact conversation, user or organization id, or words of the title."
    date_hierarchy = "created_at"
    show_full_result_count = False
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(config_admin.ReadOnlyAdmin):
    list_display = (
        "conversation",
        "sequence",
        "role",
        "excerpt",
        "status",
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
        "cost",
        "created_at",
    )
    list_filter = ("status", "role", "provider")
    list_select_related = ("conversation",)
    search_fields = ("=id", "=conversation__id", "=user_id")
    search_help_text = "An exact message, conversation or user id."
    date_hierarchy = "created_at"
    show_full_result_count = False

    @admin.display(description="content")
    def excerpt(self, message: Message) -> str:
        return message.content[:80] + ("…" if len(message.content) > 80 else "")


@admin.register(Persona)
class PersonaAdmin(config_admin.ReadOnlyAdmin):
    list_display = ("name", "user_id", "provider", "model", "temperature", "usage_count", "updated_at")
    search_fields = ("name", "=user_id")


# The admin's "Now" and the time it takes to submit the form.
START_LEEWAY = timedelta(minutes=1)


class ModelPriceForm(forms.ModelForm):
    """On a version in force, changing a price adds a new version (from now, or from the
    start given here) and ends this one; display fields change in place."""

    class Meta:
        model = ModelPrice
        fields = ("provider", "model", "display_name", "context_window", *PRICE_FIELDS, "effective_from", "is_active")
        help_texts = {
            "effective_from": "When this price takes effect. When you change a price, leave it as it is for now, or give a later time.",
            "long_context_threshold": "Input tokens above which the long-context prices apply to the whole call. Empty: no tier.",
        }

    def clean(self):
        cleaned = super().clean()
        adding = self.instance._state.adding  # clean() runs before the form's values reach the instance
        self.new_version = adding or any(name in self.changed_data for name in PRICE_FIELDS)
        if not self.new_version and "effective_from" in self.changed_data:
            self.add_error("effective_from", "A version's start does not move. Change a price to add a version from this time.")
        elif self.new_version and not adding and self.instance.effective_to is not None:
            raise forms.ValidationError("This version has ended: change the version in force instead.")
        if self.new_version and not self.errors:
            # Left as it was, the start means now, read again under the service's lock when saved
            # (start_given None): a version another writer adds meanwhile is then ended, not refused.
            self.start_given = cleaned["effective_from"] if adding or "effective_from" in self.changed_data else None
            self.start = self.start_given or timezone.now()
            if self.start < timezone.now() - START_LEEWAY:
                # Started in the past, it would say the calls metered since were charged at it.
                self.add_error(
                    "effective_from", "A new price starts now or later: calls already metered keep the price they were charged at."
                )
                return cleaned
            provider, model = cleaned.get("provider", self.instance.provider), cleaned.get("model", self.instance.model)
            try:
                pricing.model_price_version_start_check(provider=provider, model=model, at=self.start)
            except PriceVersionRefused as refused:
                self.add_error("effective_from", refused.message)
        return cleaned


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """A new price is a new version (effective from a time; the old one ends there), never an edit of the past."""

    form = ModelPriceForm
    list_display = (
        "provider",
        "model",
        "display_name",
        "input_price",
        "output_price",
        "cache_read_price",
        "cache_write_5m_price",
        "cache_write_1h_price",
        "long_context_threshold",
        "context_window",
        "effective_from",
        "effective_to",
        "is_active",
    )
    list_filter = ("provider", "is_active")
    search_fields = ("model", "display_name")
    ordering = ("provider", "model", "-effective_from")

    def get_readonly_fields(self, request, obj=None):
        return ("provider", "model", "effective_to") if obj else ("effective_to",)

    def has_delete_permission(self, request, obj=None):
        return False  # ledger rows name the version they were charged at: retire a model with is_active

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except PriceVersionRefused as refused:
            # A start given here that another writer's version, added since the form's check, now precedes.
            self.message_user(request, refused.message, level=messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request, obj, form, change):
        if not form.new_version:
            # Only the display fields changed (clean() refuses a moved start): saving the start the page
            # posts, to the second, would move one stored with microseconds, which the trigger refuses.
            obj.save(update_fields=config_admin.changed_columns(obj, form))
            return
        fixed = {"id", "provider", "model", "effective_from", "effective_to"}
        fields = {field.name: getattr(obj, field.name) for field in ModelPrice._meta.concrete_fields if field.name not in fixed}
        version = pricing.model_price_version_add(provider=obj.provider, model=obj.model, fields=fields, effective_from=form.start_given)
        # The admin logs and links the object it saved: the new version, not the one it ended.
        obj.pk, obj.effective_from, obj.effective_to = version.pk, version.effective_from, version.effective_to
        obj._state.adding = False


@admin.register(ShareLink)
class ShareLinkAdmin(config_admin.ReadOnlyAdmin):
    """Who shared what, with whom, until when; the token's hash is never shown."""

    list_display = ("conversation", "user_id", "organization_id", "audience", "created_at", "expires_at", "revoked_at")
    list_filter = ("audience",)
    list_select_related = ("conversation",)
    search_fields = ("=id", "=conversation__id", "=user_id", "=organization_id")
    search_help_text = "An exact link, conversation, user or organization id."
    exclude = ("token_hash",)
    date_hierarchy = "created_at"


@admin.register(ExportJob)
class ExportJobAdmin(config_admin.ReadOnlyAdmin):
    """Exports of all a user's conversations (chat/porting/): staff see their status, never the file."""

    list_display = ("id", "user_id", "status", "conversation_count", "size", "created_at", "expires_at")
    list_filter = ("status",)
    search_fields = ("=id", "=user_id")
    show_full_result_count = False


@admin.register(ImportJob)
class ImportJobAdmin(config_admin.ReadOnlyAdmin):
    """Imports of uploaded exports (chat/porting/jobs.py): staff see their status and report, never the file."""

    list_display = ("id", "user_id", "status", "size", "created_at", "started_at", "finished_at")
    list_filter = ("status",)
    search_fields = ("=id", "=user_id")
    show_full_result_count = False


@admin.register(PendingCall)
class PendingCallAdmin(config_admin.ReadOnlyAdmin):
    """Unstored calls in progress (the gateway's default): one older than CHAT_STREAM_STALE_MINUTES lost its worker."""

    list_display = ("request_id", "user_id", "organization_id", "provider", "model", "prompt_tokens_estimate", "key_source", "created_at")
    list_filter = ("provider",)
    search_fields = ("=request_id", "=user_id", "=organization_id")
    search_help_text = "An exact request, user or organization id."
