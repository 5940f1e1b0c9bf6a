"""Staff admin for chat: conversations and messages read-only (their content is the user's),
personas, and the model catalog with its prices and effective dates.

Every view runs in ConfabAdminSite's audited privileged context (config/admin.py).
"""

from django.contrib import admin

from chat.models import Conversation, Message, ModelPrice, Persona
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
class PersonaAdmin(admin.ModelAdmin):
    list_display = ("name", "user_id", "provider", "model", "temperature", "usage_count", "updated_at")
    search_fields = ("name", "=user_id")
    readonly_fields = ("usage_count", "created_at", "updated_at")


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """A new price is a new version (effective from a date; the old one ends there), never an edit of the past."""

    list_display = (
        "provider",
        "model",
        "display_name",
        "input_price",
        "output_price",
        "context_window",
        "effective_from",
        "effective_to",
        "is_active",
    )
    list_filter = ("provider", "is_active")
    search_fields = ("model", "display_name")
    ordering = ("provider", "model", "-effective_from")
