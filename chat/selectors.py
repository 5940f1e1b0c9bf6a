"""Chat reads. Under the caller's row-level security context: another user's rows are invisible, so 404."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q, QuerySet
from django.utils import timezone

from chat.models import Conversation, Message, ModelPrice, Persona
from config.errors import NotFoundError


def conversation_list(
    *, user, archived: bool | None = None, q: str = "", tag: str = "", persona_id=None, organization_id=None
) -> QuerySet[Conversation]:
    conversations = Conversation.objects.filter(user_id=user.pk)
    if archived is not None:
        conversations = conversations.filter(is_archived=archived)
    if q:
        conversations = conversations.filter(Q(title__icontains=q) | Q(summary__icontains=q))
    if tag:
        conversations = conversations.filter(tags__contains=[tag])
    if persona_id:
        conversations = conversations.filter(persona_id=persona_id)
    if organization_id:
        conversations = conversations.filter(organization_id=organization_id)
    return conversations.order_by("-updated_at", "id")


def conversation_get(*, user, conversation_id) -> Conversation:
    conversation = Conversation.objects.filter(user_id=user.pk, pk=conversation_id).first()
    if conversation is None:
        raise NotFoundError("No such conversation.")
    return conversation


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return Message.objects.filter(conversation_id=conversation.pk, user_id=conversation.user_id).order_by("sequence")


def persona_list(*, user) -> QuerySet[Persona]:
    return Persona.objects.filter(user_id=user.pk).order_by("name", "id")


def persona_get(*, user, persona_id) -> Persona:
    persona = Persona.objects.filter(user_id=user.pk, pk=persona_id).first()
    if persona is None:
        raise NotFoundError("No such persona.")
    return persona


def _in_force(at: datetime) -> Q:
    return Q(is_active=True, effective_from__lte=at) & (Q(effective_to__isnull=True) | Q(effective_to__gt=at))


def model_price_list(*, at: datetime | None = None) -> list[ModelPrice]:
    """The catalog: each model's price version in force at `at` (now by default)."""
    prices = ModelPrice.objects.filter(_in_force(at or timezone.now())).order_by("provider", "model", "-effective_from")
    current: dict[tuple[str, str], ModelPrice] = {}
    for price in prices:
        current.setdefault((price.provider, price.model), price)
    return list(current.values())


def model_price_current(*, provider: str, model: str, at: datetime | None = None) -> ModelPrice | None:
    """The price version in force for this model at `at`, or None (the model cannot be used)."""
    return ModelPrice.objects.filter(_in_force(at or timezone.now()), provider=provider, model=model).order_by("-effective_from").first()
