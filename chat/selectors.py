"""Chat reads. Under the caller's row-level security context: another user's rows are invisible, so 404."""

from __future__ import annotations

import time
from datetime import datetime

from django.db.models import Q, QuerySet
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
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


# Each process keeps the catalog's active versions for a few seconds (it is small, and read
# before every model call); a version saved or deleted here clears it at once, elsewhere within
# CATALOG_SECONDS. Versions starting later are kept too, so a scheduled price applies on time.
CATALOG_SECONDS = 10.0
_catalog: dict = {"loaded_at": None, "versions": {}}


def _catalog_versions() -> dict[tuple[str, str], list[ModelPrice]]:
    loaded_at = _catalog["loaded_at"]
    if loaded_at is None or time.monotonic() - loaded_at > CATALOG_SECONDS:
        versions: dict[tuple[str, str], list[ModelPrice]] = {}
        for price in ModelPrice.objects.filter(is_active=True).order_by("-effective_from"):
            versions.setdefault((price.provider, price.model), []).append(price)
        _catalog["versions"], _catalog["loaded_at"] = versions, time.monotonic()
    return _catalog["versions"]


@receiver([post_save, post_delete], sender=ModelPrice)
def _catalog_clear(**kwargs) -> None:
    _catalog["loaded_at"] = None


def model_price_current(*, provider: str, model: str, at: datetime | None = None) -> ModelPrice | None:
    """The price version in force for this model at `at`, or None (the model cannot be used)."""
    at = at or timezone.now()
    for price in _catalog_versions().get((provider, model), ()):  # newest start first
        if price.effective_from <= at and (price.effective_to is None or price.effective_to > at):
            return price
    return None
