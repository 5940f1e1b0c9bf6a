"""Chat writes, and the one path every message takes (pages, API, streaming or not).

`message_send` = `message_prepare` (entitlement, then the user message and a `streaming`
reply stored in one short transaction) → the provider call, outside any transaction →
`_reply_finish` (the reply, the conversation's totals and the ledger row in one short
transaction). `message_stream` is the same path for server-sent events: it yields deltas
and meters what was produced even when the client goes away or the provider drops.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import ProgrammingError, connections
from django.db.models import F, Value
from django.db.models.functions import Least
from django.utils import timezone

from accounts import selectors as accounts_selectors
from accounts.models import Membership, ProviderCredential, User
from analytics import counters
from analytics.models import KeySource
from analytics.services import Alongside, usage_record_alongside
from billing.selectors import SUBSCRIPTION_UNREAD, subscription_current_joined, subscription_from_row
from billing.services import CallHeld, entitlement_check, reservation_extend, reservation_settle
from chat import response_cache as response_caching
from chat import selectors
from chat.errors import ModelUnavailable, ProviderKeyMissing
from chat.models import MONEY_MAX, Conversation, Message, ModelPrice, PendingCall, Persona
from chat.porting.base import title_clean
from chat.pricing import COST_QUANTUM, CallCost, call_cost, call_cost_ceiling
from chat.providers import PROVIDERS, ChatMessage, ChatRequest, Counted, Delta, Done, ProviderError, Usage, provider_for
from chat.providers.base import connect_timeout, interrupted_usage, prompt_tokens_estimate, text_tokens_estimate, usage_recordable
from config.cache import REDIS_ERRORS, redis_client
from config.crypto import secret_decrypt
from config.db import rls
from config.db.rows import columns_of, insert_rows, model_from_row, prepared_cursor, update_row_sql
from config.errors import ApplicationError, NotFoundError
from config.text import text_clean
from config.threads import request_task_keep

logger = logging.getLogger("confab.chat")
TITLE_WORDS = 8
CLIENT_GONE = "The client stopped reading the reply."
MAX_CONTENT = 100_000
FINISH_REASON_LENGTH = 40  # a provider's finish reason, kept in the reply's metadata ("stop", "end_turn", "MAX_TOKENS")
Status = Message.Status


# --- Prices and usage ---------------------------------------------------------------


def model_price_for(*, provider: str, model: str) -> ModelPrice:
    """The price in force for a provider's model; ModelUnavailable (400) with the reason when there is none."""
    if provider not in PROVIDERS:
        raise ModelUnavailable(f"Unknown provider '{provider}'. Choose one of: {', '.join(PROVIDERS)}.", {"field": "provider"})
    if not model:
        raise ModelUnavailable("Choose a model.", {"field": "model"})
    price = selectors.model_price_current(provider=provider, model=model)
    if price is None:
        raise ModelUnavailable(
            f"The model '{model}' of {provider} has no price in the catalog, so it cannot be used. Choose a model from /api/v1/models.",
            {"field": "model", "provider": provider, "model": model},
        )
    return price


# --- Conversations and personas -----------------------------------------------------


def conversation_title(*, content: str) -> str:
    """The first words of the first message (a provider may summarize it later)."""
    words = title_clean(content[:1000]).split()  # one line without text-direction marks, as a typed title must be
    title = " ".join(words[:TITLE_WORDS])
    if len(words) > TITLE_WORDS:
        title += "…"
    return title[:200] or "New conversation"


def _personal_organization(user: User):
    # Its own: the personal workspace it created, not another's it may have been let into.
    organization = accounts_selectors.organization_list(user=user).filter(is_personal=True, created_by_id=user.pk).first()
    if organization is None:
        raise NotFoundError("You have no organization to bill this conversation to.")
    return organization


def conversation_create(
    *, user: User, title: str = "", persona: Persona | None = None, tags: list[str] | None = None, organization_id=None
) -> Conversation:
    with rls.atomic_as(user.pk):
        organization = (
            accounts_selectors.organization_get(user=user, organization_id=organization_id)
            if organization_id
            else _personal_organization(user)
        )
        if persona is not None:
            _persona_held(user, persona, count=True)
        return Conversation.objects.create(
            user_id=user.pk, organization_id=organization.pk, title=title, persona=persona, tags=list(tags or [])
        )


def conversation_update(*, user: User, conversation: Conversation, **fields) -> Conversation:
    """Change title, summary, tags, is_archived or persona (the caller validated them)."""
    allowed = {"title", "summary", "tags", "is_archived", "persona"}
    for name in fields:
        if name not in allowed:
            raise ApplicationError(f"The field '{name}' cannot be changed.", {"field": name})
    with rls.atomic_as(user.pk):
        # The persona before the conversation, the order its delete locks them in (the persona,
        # then, clearing it, each conversation that names it): the other order deadlocked.
        if fields.get("persona") is not None:
            _persona_held(user, fields["persona"])
        _still_there(Conversation, conversation, "No such conversation.")
        for name, value in fields.items():
            setattr(conversation, name, value)
        conversation.save(update_fields=[*fields, "updated_at"])
        # The answer shows the row as it is: a send this update waited for changed its count,
        # totals and perhaps its title since the caller read it.
        conversation.refresh_from_db()
    return conversation


def _still_there(model, instance, sentence: str) -> None:
    """Lock the row the caller read (outside this transaction) before changing it: deleted since,
    it is a 404, not a save that updates nothing (Django raises DatabaseError: a 500)."""
    if not model.objects.select_for_update().filter(pk=instance.pk).exists():
        raise NotFoundError(sentence)


def _persona_held(user: User, persona: Persona, *, count: bool = False) -> None:
    """The persona a conversation is about to name, locked until the caller's transaction ends
    (and its use counted); a 404 if it went since the caller read it. Its delete locks it first
    (persona_delete), so the two queue: a delete that comes second clears the conversation's
    persona as it clears the others'; one that came first leaves nothing to name."""
    found = Persona.objects.filter(pk=persona.pk, user_id=user.pk)
    # NO KEY, as an update of a column takes: it queues with the delete's lock, not an import's (FOR KEY SHARE).
    held = found.update(usage_count=F("usage_count") + 1) if count else len(found.select_for_update(no_key=True).values_list("pk"))
    if not held:
        raise NotFoundError("No such persona.")


def conversation_delete(*, user: User, conversation: Conversation) -> None:
    """Deleted with its messages. The row is locked first, so a send storing messages in it
    (which holds the row) finishes first and its messages go too; without the lock they came in
    after the messages were collected, and the delete failed on them."""
    with rls.atomic_as(user.pk):
        _still_there(Conversation, conversation, "No such conversation.")
        _calls_kept_from(conversation)
        conversation.delete()


def _calls_kept_from(conversation: Conversation) -> None:
    """A reply still `streaming` goes with its conversation, but its call is not over: it stays
    as a PendingCall (an unstored call's row), so that its own finish, or the stale pass for a
    worker that died, still meters it, once (the ledger takes a request id once). Deleted with
    the reply alone, the call of a worker that died went unmetered."""
    replies = list(Message.objects.filter(conversation_id=conversation.pk, status=Status.STREAMING, metadata__has_key="request_id"))
    if not replies:
        return
    # Privileged: a member who has left still deletes their own conversations, and the row is the
    # organization's, which their context no longer admits (its policy refused it: a 500).
    with rls.privileged(reason="keep a deleted conversation's call in progress for its metering", audited=False):
        PendingCall.objects.bulk_create(
            [
                PendingCall(
                    user_id=reply.user_id,
                    organization_id=conversation.organization_id,
                    request_id=reply.metadata["request_id"],
                    provider=reply.provider,
                    model=reply.model,
                    price_id=reply.metadata["price_id"],
                    prompt_tokens_estimate=reply.metadata.get("prompt_tokens_estimate", 0),
                    key_source=reply.metadata.get("key_source", KeySource.NONE),
                    reservation=Reservation.from_metadata(conversation.organization_id, reply.metadata).as_metadata(),
                    created_at=reply.created_at,
                )
                for reply in replies
            ],
            ignore_conflicts=True,
        )


def _persona_model_check(fields: dict, *, stored: Persona | None = None) -> None:
    """The persona's model (as it will be stored: `fields` over `stored`) must be in the catalog;
    a model given without its provider is the default provider's, and is stored so: a persona
    stored with a model and no provider had its model ignored by every send."""
    provider = fields.get("provider", stored.provider if stored else "")
    model = fields.get("model", stored.model if stored else "")
    if stored is not None and (provider, model) == (stored.provider, stored.model):
        return  # untouched: a rename is not refused because the model has left the catalog since
    if provider or model:
        model_price_for(provider=provider or settings.CHAT_DEFAULT_PROVIDER, model=model or "")
    if model and not provider:
        fields["provider"] = settings.CHAT_DEFAULT_PROVIDER


def _persona_temperature_plain(fields: dict) -> None:
    """A temperature of -0 becomes 0: PostgreSQL's numeric stores it so, and the answer built from
    the instance (not read back) would show "-0.00" until the next read."""
    if fields.get("temperature") is not None and fields["temperature"] == 0:
        fields["temperature"] = abs(fields["temperature"])


def persona_create(*, user: User, **fields) -> Persona:
    _persona_model_check(fields)
    _persona_temperature_plain(fields)
    with rls.atomic_as(user.pk):
        return Persona.objects.create(user_id=user.pk, **fields)


def persona_update(*, user: User, persona: Persona, **fields) -> Persona:
    """The pair is checked over the row as locked, not as the caller read it: a concurrent edit of
    the provider and one of the model alone would otherwise store a pair the catalog lacks."""
    _persona_temperature_plain(fields)
    with rls.atomic_as(user.pk):
        # NO KEY: an import holding the persona (FOR KEY SHARE, to its end) does not hold its edits up.
        current = Persona.objects.select_for_update(no_key=True).filter(pk=persona.pk, user_id=user.pk).first()
        if current is None:
            raise NotFoundError("No such persona.")
        _persona_model_check(fields, stored=current)
        for name, value in fields.items():
            setattr(current, name, value)
        current.save(update_fields=[*fields, "updated_at"])
    return current


def persona_delete(*, user: User, persona: Persona) -> None:
    """Locked first, so it queues with a conversation taking the persona (_persona_held)."""
    with rls.atomic_as(user.pk):
        _still_there(Persona, persona, "No such persona.")
        persona.delete()


# --- Credentials --------------------------------------------------------------------


def _credential_resolve(*, user: User, provider: str, paid_plan: bool) -> tuple[str | None, str | None, str]:
    """(api key, base url, whose key): the user's own key; else the platform's managed key on
    a paid plan; else the free-tier key (free limits apply through the plan); else refused."""
    if provider == "echo":
        return None, None, KeySource.NONE
    credential = accounts_selectors.provider_credential_list(user=user).filter(provider=provider, is_active=True).first()
    if credential is not None and credential.access_type == ProviderCredential.AccessType.USER_API_KEY:
        return secret_decrypt(credential.api_key_encrypted), credential.base_url or None, KeySource.USER
    managed = getattr(settings, f"{provider.upper()}_API_KEY", None) if paid_plan else None
    if managed:
        return managed, None, KeySource.MANAGED
    free_tier = getattr(settings, f"{provider.upper()}_FREE_TIER_API_KEY", None)
    if free_tier:
        return free_tier, None, KeySource.FREE_TIER
    upgrade = "" if paid_plan else ", or upgrade to a paid plan that includes it"
    raise ProviderKeyMissing(
        f"There is no {provider} API key to use: add yours in Settings → Provider keys{upgrade}.", {"provider": provider}
    )


# --- Sending ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reservation:
    """What the entitlement check set aside for this call in the organization's monthly
    budget (billing), released once the call is metered; `id` None when nothing was held in
    Redis. `tokens` and `cost_units`, the call's most, are kept with the call while it runs: with
    Redis down they are what it holds (_calls_in_progress)."""

    organization_id: uuid.UUID
    id: str | None
    month: date | None
    tokens: int = 0
    cost_units: int = 0

    def release(self, counted: counters.HeldIncrements | None = None) -> None:
        reservation_settle(organization_id=self.organization_id, reservation=self.id, month=self.month, counted=counted)

    def extend(self) -> None:
        reservation_extend(organization_id=self.organization_id, reservation=self.id, month=self.month)

    def as_metadata(self) -> dict:
        return {
            "reservation": self.id,
            "reservation_month": self.month.isoformat() if self.month else None,
            "reserved_tokens": self.tokens,
            "reserved_cost_units": self.cost_units,
        }

    @classmethod
    def from_metadata(cls, organization_id, metadata: dict) -> Reservation:
        month = metadata.get("reservation_month")
        return cls(
            organization_id,
            metadata.get("reservation"),
            date.fromisoformat(month) if month else None,
            metadata.get("reserved_tokens") or 0,
            metadata.get("reserved_cost_units") or 0,
        )


@dataclass(frozen=True)
class PendingReply:
    """A send that passed every check and is stored: the call to make and where its reply goes."""

    user_id: uuid.UUID
    organization_id: uuid.UUID
    conversation: Conversation
    user_message: Message
    message: Message  # the assistant's, `streaming` until finished
    request: ChatRequest
    price: ModelPrice
    request_id: str
    reservation: Reservation
    key_source: str  # whose provider key pays (analytics.models.KeySource)
    cache_key: str | None = None  # set when the response cache applies to this call
    cache_hits_count: bool = True  # the plan counts a cached reply's tokens against its limit
    stored: bool = True  # False: a SuppliedHistory call kept only on the ledger (no ids; a PendingCall row while it runs)
    streamed: dict = field(default_factory=dict)  # "started" once message_stream runs (stream_close_unstarted)


@dataclass(frozen=True)
class SuppliedHistory:
    """A send whose client brings the conversation so far (the OpenAI-compatible gateway): its
    messages come before `content` in place of a stored conversation's, with its own sampling and
    output cap (never above the plan's). Stored as a new conversation only when `store`; otherwise
    only metered: the ledger row, with its request id, names no conversation or message."""

    messages: tuple[ChatMessage, ...] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    store: bool = False


@dataclass(frozen=True)
class Reply:
    conversation: Conversation
    user_message: Message
    message: Message


# The send's reads as plain SQL: through the ORM (query building, model instances) they were
# 14% of a metered POST's GIL samples under py-spy, about 3% as plain SQL (docs/performance.md).
# They run under the caller's row-level security context, as the ORM's queries did.
def _history_where(conversation_id: str, user_id: str) -> str:
    """Which of a conversation's messages (table alias m) a prompt takes: not empty or failed replies."""
    return (
        f"m.conversation_id = {conversation_id} AND m.user_id = {user_id} "
        f"AND NOT (m.role = '{Message.Role.ASSISTANT}' AND m.content = '') AND m.status <> '{Status.FAILED}'"
    )


_HISTORY_SQL = f"SELECT m.role, m.content FROM {Message._meta.db_table} m WHERE {_history_where('%s', '%s')} ORDER BY m.sequence"
# The locking read also brings the organization's current subscription for the entitlement check,
# and the history, optimistically: one round trip for all three. A statement's snapshot is taken
# when it starts, before the lock, so a send that waited for the lock would read the history
# without what the holder committed meanwhile. Every send commits an update of the conversation's
# row with its messages, so the row the lock returns (the newest version) is then not the one the
# snapshot sees: `current` compares the two versions' ctid, and a send whose history is not
# current reads it again (_HISTORY_SQL), now under the lock. A plan change committed while this
# send waited for the lock applies from the next send (the Redis counters and rate are decided after).
_SUBSCRIPTION_COLUMNS, _SUBSCRIPTION_JOINS = subscription_current_joined("c.organization_id")
_SEND_TARGET_SQL = (
    f"SELECT {columns_of(Conversation, 'c')}, {columns_of(Persona, 'p')}, {_SUBSCRIPTION_COLUMNS}, "
    f"(SELECT s.ctid FROM {Conversation._meta.db_table} s WHERE s.id = c.id) = c.ctid AS current, "
    f"(SELECT json_agg(json_build_array(m.role, m.content) ORDER BY m.sequence) FROM {Message._meta.db_table} m "
    f"WHERE {_history_where('c.id', 'c.user_id')}) AS history "
    f"FROM {Conversation._meta.db_table} c LEFT JOIN {Persona._meta.db_table} p ON p.id = c.persona_id {_SUBSCRIPTION_JOINS} "
    "WHERE c.user_id = %s AND c.id = %s FOR UPDATE OF c"
)


def _history(conversation: Conversation | None, persona: Persona | None, read: list | None) -> list[ChatMessage]:
    """The persona's prompt, then the conversation's messages in order, without empty or failed
    replies: `read` with the lock if it was current (_send_target), else read again now."""
    messages = [ChatMessage("system", persona.system_prompt)] if persona and persona.system_prompt else []
    if conversation is None or not conversation.message_count:
        return messages
    if read is None:
        with prepared_cursor(rls.current_alias()) as cur:
            cur.execute(_HISTORY_SQL, [conversation.pk, conversation.user_id])
            read = cur.fetchall()
    messages.extend(ChatMessage(role, content) for role, content in read)
    return messages


def _send_target(
    user: User, conversation_id: uuid.UUID | None
) -> tuple[Conversation | None, Persona | None, uuid.UUID, object, list | None]:
    """(conversation locked for the send, its persona, the organization billed, its current
    subscription or SUBSCRIPTION_UNREAD, its history as [role, content] pairs if the read was
    current, else None); a new conversation (None) goes to the user's personal organization;
    another user's is a 404. It begins the caller's atomic block's transaction, under the user's
    context, with the locking read (one round trip: rls.first_statement_as)."""
    if conversation_id is None:
        rls.context_set(user_id=user.pk, asynchronous_commit=True)
        return None, None, _personal_organization(user).pk, SUBSCRIPTION_UNREAD, []
    try:
        conversation_id = uuid.UUID(str(conversation_id))
    except ValueError:
        raise NotFoundError("No such conversation.") from None
    alias = rls.current_alias()
    rows = rls.first_statement_as(user.pk, _SEND_TARGET_SQL, [user.pk, conversation_id], asynchronous_commit=True)
    if not rows:
        raise NotFoundError("No such conversation.")
    row = rows[0]
    split = len(Conversation._meta.concrete_fields)
    persona_end = split + len(Persona._meta.concrete_fields)
    conversation = model_from_row(Conversation, alias, row[:split])
    persona = model_from_row(Persona, alias, row[split:persona_end]) if row[split] is not None else None
    if conversation.persona_id is not None and (persona is None or persona.pk != conversation.persona_id):
        # The row changed while this read waited for its lock (its persona switched): PostgreSQL
        # checks the join again with the new row but the persona row read before, which no longer
        # matches, so the send had no persona at all. Read under the lock, it is the new one.
        persona = Persona.objects.filter(pk=conversation.persona_id).first()
    if persona is not None:
        conversation.persona = persona  # cached: no query when something reads it
    current, history = row[-2], row[-1]  # psycopg parses the json
    subscription = subscription_from_row(alias, row[persona_end:-2])
    return conversation, persona, conversation.organization_id, subscription, (history or []) if current else None


def _messages_store(
    conversation: Conversation,
    *,
    content: str,
    provider: str,
    model: str,
    reply_metadata: dict,
    earlier: tuple[ChatMessage, ...] = (),
    save: bool = True,
) -> tuple[Message, Message]:
    """The user message and its `streaming` reply, numbered after the conversation's last
    (whose row the caller locked), and the conversation's count and title: one statement, two
    for a new conversation.
    `earlier` (a client's own history) goes in first, in the same insert. Unless `save`, nothing
    is written (a call kept only on the ledger) and none of them has an id."""
    if not save:
        conversation.pk = None
    before = [
        Message(
            conversation=conversation, user_id=conversation.user_id, sequence=conversation.message_count + n, role=m.role, content=m.content
        )
        for n, m in enumerate(earlier, start=1)
    ]
    sequence = conversation.message_count + len(before)
    conversation.message_count = sequence + 2
    if not conversation.title:
        conversation.title = conversation_title(content=content)
    user_message = Message(
        conversation=conversation, user_id=conversation.user_id, sequence=sequence + 1, role=Message.Role.USER, content=content
    )
    reply = Message(
        conversation=conversation,
        user_id=conversation.user_id,
        sequence=sequence + 2,
        role=Message.Role.ASSISTANT,
        provider=provider,
        model=model,
        status=Status.STREAMING,
        metadata=reply_metadata,
    )
    if save:
        # The transaction's last statement, sent with its COMMIT (insert_rows `last`), unless a
        # supplied history makes its shape vary.
        if conversation._state.adding:
            # Its own statement first: the messages' row policy looks their conversation up, and
            # a row inserted in the same statement is not yet visible to that lookup.
            conversation.save()
            insert_rows(Message, [*before, user_message, reply], last=not before)
        else:  # one statement: the update under the row lock, then the messages
            insert_rows(
                Message,
                [*before, user_message, reply],
                before=update_row_sql(conversation, ["message_count", "title", "updated_at"]),
                prepared=not before,  # the same statement on every send; a supplied history varies
                last=not before,
            )
    else:
        user_message.pk = reply.pk = None
    return user_message, reply


def _conversations_counted(organization_id: uuid.UUID) -> int:
    """The organization's conversations with messages, whichever member started them, for a new
    one's plan limit (the plan is the organization's). First sends to two new conversations lock
    different rows, so each would count without the other and both pass the limit: the count
    waits for the organization's other first send in progress to commit (a lock held to the end
    of this transaction, taken only where the plan limits conversations). The other members'
    conversations are not the user's to read: counted through the privileged context. Only its
    current members' count: a member removed keeps their conversations, which the organization
    can neither see nor delete."""
    with connections[rls.current_alias()].cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"chat-new-conversation:{organization_id}"])
    with rls.privileged(reason="plan limit: the organization's members' conversations", audited=False):
        members = accounts_selectors.member_user_ids(organization_id=organization_id)
        return Conversation.objects.filter(organization_id=organization_id, user_id__in=members, message_count__gt=0).count()


# The organization's calls in progress in a month, and what they may still use: its members'
# replies still streaming, and the calls kept only on the ledger (PendingCall) still running.
_IN_PROGRESS_SQL = f"""
SELECT held->>'reservation', held->>'request_id', coalesce((held->>'reserved_tokens')::bigint, 0),
       coalesce((held->>'reserved_cost_units')::bigint, 0)
FROM (
    SELECT m.metadata AS held FROM {Message._meta.db_table} m JOIN {Conversation._meta.db_table} c ON c.id = m.conversation_id
    WHERE c.organization_id = %(organization)s AND m.status = '{Status.STREAMING}' AND m.created_at >= %(start)s
    UNION ALL
    SELECT p.reservation || jsonb_build_object('request_id', p.request_id)
    FROM {PendingCall._meta.db_table} p WHERE p.organization_id = %(organization)s AND p.created_at >= %(start)s
) calls
"""


def _calls_in_progress(organization_id: uuid.UUID, month: date) -> list[CallHeld]:
    """The organization's calls in progress, for billing's check when Redis cannot say (down, or
    its counter lost): the members' rows are not the user's to read, so through the privileged
    context. A call begun before the month and still running is metered in this one (as Redis
    counts last month's open reservations, for as long as a reservation lasts)."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC) - timedelta(seconds=settings.ENTITLEMENT_RESERVATION_TIMEOUT)
    with (
        rls.privileged(reason="entitlement without Redis's count: the organization's calls in progress", audited=False),
        connections[rls.PRIVILEGED_ALIAS].cursor() as cur,
    ):
        cur.execute(_IN_PROGRESS_SQL, {"organization": organization_id, "start": start})
        rows = cur.fetchall()
    return [
        CallHeld(reservation or f"call:{request_id}", int(tokens), int(cost_units)) for reservation, request_id, tokens, cost_units in rows
    ]


def message_prepare(
    *,
    user: User,
    content: str,
    conversation_id: uuid.UUID | None = None,
    provider: str | None = None,
    model: str | None = None,
    api_key_id: uuid.UUID | None = None,
    response_cache: str | None = None,
    supplied: SuppliedHistory | None = None,
) -> PendingReply:
    """Check and store a send, in one short transaction: the model has a price, the plan
    allows it now, a key exists; then the user message and a `streaming` reply take the
    conversation's next two sequence numbers. The conversation's row is locked from the first
    read, so concurrent sends to it queue and each takes the numbers after the last committed.
    A refusal raises before anything is written; another user's conversation is a 404.
    `response_cache` is the request's choice ('on', 'any', 'off'; see chat/response_cache.py);
    `supplied`, a client's own history for a new conversation (see SuppliedHistory)."""
    content = (content or "").strip()
    if not content:
        raise ApplicationError("Write a message first.", {"field": "content"})
    if len(content) > MAX_CONTENT:
        raise ApplicationError(f"A message is at most {MAX_CONTENT:,} characters.", {"field": "content"})
    reservation = None
    try:
        # Asynchronous commit (rls.ASYNCHRONOUS_COMMIT): a worker that dies after it leaves its
        # rows for the stale pass; a crash of PostgreSQL itself in the next 0.6 s loses them, and
        # the finish fails as well (docs/performance.md, "What has been cut").
        with rls.atomic():
            conversation, persona, organization_id, subscription, read = _send_target(user, conversation_id)
            provider = provider or (persona.provider if persona else "") or settings.CHAT_DEFAULT_PROVIDER
            # A persona stored before its provider was filled in names the default provider's model.
            persona_provider = (persona.provider or settings.CHAT_DEFAULT_PROVIDER) if persona else ""
            model = model or (persona.model if persona and persona_provider == provider else "") or _default_model(provider)
            price = model_price_for(provider=provider, model=model)
            stored = supplied is None or supplied.store
            new_conversation = (conversation is None or conversation.message_count == 0) and stored
            history = _history(conversation, persona, read) if supplied is None else list(supplied.messages)
            history.append(ChatMessage("user", content))
            estimated = prompt_tokens_estimate(tuple(history))
            output_cap = settings.CHAT_MAX_OUTPUT_TOKENS  # the plan may lower it; the ceiling below holds either way
            if supplied is not None and supplied.max_tokens:
                output_cap = min(output_cap, supplied.max_tokens)
            entitlement = entitlement_check(
                user=user,
                organization_id=organization_id,
                provider=provider,
                model=model,
                estimated_tokens=estimated,
                max_output_tokens=output_cap,
                # Priced at the output cap the check settles on: the plan's may be lower than ours.
                max_cost=lambda output_tokens: call_cost_ceiling(input_tokens=estimated, output_tokens=output_tokens, price=price),
                api_key_id=api_key_id,
                conversations=functools.partial(_conversations_counted, organization_id) if new_conversation else None,
                subscription=subscription,
                in_progress=functools.partial(_calls_in_progress, organization_id),
            )
            entitlement.raise_if_refused()
            reservation = Reservation(
                organization_id,
                entitlement.reservation,
                entitlement.month,
                entitlement.usage.get("reserved_tokens", 0),
                entitlement.usage.get("reserved_cost_units", 0),
            )
            api_key, base_url, key_source = _credential_resolve(user=user, provider=provider, paid_plan=not entitlement.plan.is_free)
            conversation = conversation or Conversation(user_id=user.pk, organization_id=organization_id)
            request_id = uuid.uuid4().hex
            reply_metadata = _reply_metadata(
                request_id=request_id, price_id=price.pk, prompt_tokens_estimate=estimated, key_source=key_source, reservation=reservation
            )
            user_message, message = _messages_store(
                conversation,
                content=content,
                provider=provider,
                model=model,
                reply_metadata=reply_metadata,
                earlier=supplied.messages if supplied and stored else (),  # an unstored call builds no rows
                save=stored,
            )
            if not stored:  # no reply row to close if the worker dies: this row stands in for it (streams_close_stale)
                PendingCall.objects.create(
                    user_id=user.pk,
                    organization_id=organization_id,
                    request_id=request_id,
                    provider=provider,
                    model=model,
                    price_id=price.pk,
                    prompt_tokens_estimate=estimated,
                    key_source=key_source,
                    reservation=reservation.as_metadata(),
                )
    except BaseException:
        if reservation is not None:  # no key, a database error: what the check reserved goes back
            reservation.release()
        raise
    temperature = float(persona.temperature) if persona and persona.temperature is not None else None
    if supplied is not None:
        temperature = supplied.temperature
    request = ChatRequest(
        model=model,
        messages=tuple(history),
        max_tokens=entitlement.max_output_tokens,
        temperature=temperature,
        api_key=api_key,
        base_url=base_url,
    )
    cached = response_caching.cache_applies(
        plan_allows=entitlement.plan.response_cache,
        persona_opted_in=bool(persona and persona.response_cache),
        choice=response_cache,
        temperature=temperature,
    )
    return PendingReply(
        user.pk,
        organization_id,
        conversation,
        user_message,
        message,
        request,
        price,
        request_id,
        reservation,
        key_source,
        response_caching.cache_key(
            organization_id=organization_id,
            provider=provider,
            request=request,
            own_key_of=user.pk if key_source == KeySource.USER else None,
        )
        if cached
        else None,
        entitlement.plan.cache_hits_count,
        stored,
    )


def _reply_metadata(*, request_id: str, price_id, prompt_tokens_estimate: int, key_source: str, reservation: Reservation) -> dict:
    """What a `streaming` reply carries for its metering (by _reply_finish, or by the stale pass)."""
    return {
        "request_id": request_id,
        "price_id": str(price_id),
        "prompt_tokens_estimate": prompt_tokens_estimate,
        "key_source": key_source,
        **reservation.as_metadata(),
    }


def _default_model(provider: str) -> str:
    if provider == settings.CHAT_DEFAULT_PROVIDER:
        return settings.CHAT_DEFAULT_MODEL
    prices = [p for p in selectors.model_price_list() if p.provider == provider]
    return prices[0].model if prices else ""


def _reply_finish(
    pending: PendingReply,
    *,
    text: str,
    usage: Usage,
    status: str,
    error: str = "",
    latency_ms: int,
    finish_reason: str | None = None,
    failure: ProviderError | None = None,
    cached: response_caching.CachedReply | None = None,
) -> Message:
    """Store the reply and meter it, in one short transaction: the message, the
    conversation's totals and the ledger row agree or none is written. A provider's failure
    (`failure`) is a failed ledger row (a client going away is not), its kind kept on the reply
    for the gateway's status. A reply from the response cache
    (`cached`) costs nothing and records what it saved; a complete reply the cache may keep is
    kept. A reply already closed (by the stale-stream task) is left as it is; for an unstored call
    that task deleted its PendingCall row, so the ledger row is the task's and none is written here."""
    message = pending.message
    # What a provider sent, as PostgreSQL and the ledger can keep it (a server at a user's base
    # URL may send anything): never a reason to lose the reply or leave it unmetered.
    text = text_clean(text)
    usage = usage_recordable(usage, request=pending.request, text=text)
    finish_reason = text_clean(finish_reason)[:FINISH_REASON_LENGTH] if isinstance(finish_reason, str) else None
    charge = call_cost(usage=usage, price=pending.price)
    counted = usage if cached is None or pending.cache_hits_count else Usage()
    metadata = {
        **message.metadata,
        "usage": usage.classes(),
        "usage_raw": usage.raw,
        "estimated": usage.estimated or charge.estimated,
        "finish_reason": finish_reason,
    }
    if failure is not None:
        error = error or failure.message
        metadata.update(error_kind=failure.kind, retry_after=failure.retry_after)
    if cached is not None:
        metadata.update(cached=True, saved_tokens=usage.input_total + usage.output, saved_cost=str(cached.cost))
    fields = {
        "content": text,
        "input_tokens": counted.input_total,
        "output_tokens": counted.output,
        "cost": Decimal(0).quantize(COST_QUANTUM) if cached is not None else charge.cost,
        "latency_ms": latency_ms,
        "status": status,
        "error": error,
        "metadata": metadata,
    }
    now = timezone.now()
    metering = {
        "usage": counted,
        "charge": charge,
        "key_source": pending.key_source,
        "latency_ms": latency_ms,
        "success": failure is None,
        "error": error,
        "cached": cached,
        "saved_tokens": usage.input_total + usage.output,
        "now": now,
    }
    # The ledger row's counter increment, held from its commit, goes with the reservation's
    # settlement in one Redis round trip, first: the usage is never uncounted.
    with counters.increments_held() as increments:
        for name, value in fields.items():
            setattr(message, name, value)
        if pending.stored:
            # The reply, its conversation's totals and the ledger row: one statement, its own
            # transaction, one round trip with its BEGIN and COMMIT (reads its conversation from
            # the message, cached when the send stored it).
            reply_update = _reply_update(message, fields, tokens=counted.input_total + counted.output, now=now)
            try:
                closed = not _meter(message=message, reply_update=reply_update, alone_as=pending.user_id, **metering)
            except ProgrammingError as exc:
                if not rls.refused_by_policy(exc) or _still_member(pending.user_id, message.conversation.organization_id):
                    raise
                # The user left the organization, or was removed, while the call ran: the ledger's
                # policy takes only their organizations now, but the call was checked and reserved
                # while they belonged, so it is stored and metered to it, once, as any other.
                with rls.privileged(reason="a reply metered to the organization its call was checked for; its user has left it since"):
                    closed = not _meter(message=message, reply_update=reply_update, **metering)
            if closed:
                with rls.atomic_as(pending.user_id):
                    try:
                        message.refresh_from_db()
                    except Message.DoesNotExist:  # deleted with its conversation while it streamed: metered, not stored
                        PendingCall.objects.filter(request_id=pending.request_id).delete()  # its stand-in (_calls_kept_from)
        else:
            with rls.atomic_as(pending.user_id):  # one DELETE; waits for a stale pass that holds the row, then finds it gone
                closed = not PendingCall.objects.filter(request_id=pending.request_id).delete()[0]
                if not closed:
                    _meter(message=message, **metering)
        pending.reservation.release(increments)
    if not closed and cached is None and status == Status.COMPLETE and pending.cache_key:
        response_caching.cached_reply_put(pending.cache_key, text=text, usage=usage, cost=charge.cost, finish_reason=finish_reason)
    return message


def _still_member(user_id: uuid.UUID, organization_id: uuid.UUID) -> bool:
    with rls.privileged(reason="whether a user is still a member of the organization their call was checked for", audited=False):
        return Membership.objects.filter(user_id=user_id, organization_id=organization_id).exists()


def _reply_update(message: Message, fields: dict, *, tokens: int, now) -> Alongside:
    """The writes that store a `streaming` reply's final fields and add it to its conversation's
    totals, run in its ledger row's statement (_meter): one round trip for all three. A reply no
    longer `streaming` (the stale pass closed it, or it went with its conversation) is left as
    it is, and its conversation's totals too; `alongside` counts the reply updated."""
    connection = connections[rls.current_alias()]
    quote = connection.ops.quote_name
    columns = [Message._meta.get_field(name) for name in fields]
    assignments = ", ".join(f"{quote(field.column)} = %(a{n})s" for n, field in enumerate(columns))
    params = {f"a{n}": field.get_db_prep_save(fields[field.name], connection) for n, field in enumerate(columns)}
    params.update(
        a_id=message.pk,
        a_conversation=message.conversation_id,
        a_streaming=Status.STREAMING,
        a_tokens=tokens,
        a_cost=fields["cost"],
        a_cost_max=MONEY_MAX,
        a_now=now,
    )
    # The conversation is locked before the reply (the reply's UPDATE joins the locked row), the
    # order conversation_delete and the sends take: the other order deadlocked with a delete.
    sql = (
        f"held AS (SELECT id FROM {quote(Conversation._meta.db_table)} WHERE id = %(a_conversation)s FOR NO KEY UPDATE), "
        f"reply AS (UPDATE {quote(Message._meta.db_table)} AS m SET {assignments} FROM held "
        "WHERE m.id = %(a_id)s AND m.conversation_id = held.id AND m.status = %(a_streaming)s "
        f"RETURNING m.conversation_id), conversation_totals AS (UPDATE {quote(Conversation._meta.db_table)} AS c SET "
        "total_tokens = c.total_tokens + %(a_tokens)s, total_cost = LEAST(c.total_cost + %(a_cost)s, %(a_cost_max)s), updated_at = %(a_now)s "
        "FROM reply WHERE c.id = reply.conversation_id RETURNING c.id), alongside AS (SELECT 1 FROM reply)"
    )
    return Alongside(sql, params)


def _total_cost_added(total: F, cost: Decimal) -> Least:
    """A conversation's total with a reply's cost added, stopping at the most its column holds: an
    imported history may have brought it near, and the total (a summary) must never be the
    reason a reply is not stored and metered. The ledger keeps every cent either way."""
    return Least(total + cost, Value(MONEY_MAX), output_field=Conversation._meta.get_field("total_cost"))


def _meter(
    *,
    message: Message,
    usage: Usage,
    charge: CallCost,
    key_source: str,
    latency_ms: int,
    success: bool,
    error: str,
    cached: response_caching.CachedReply | None = None,
    saved_tokens: int = 0,
    reply_update: Alongside | None = None,
    alone_as: uuid.UUID | None = None,
    now=None,
) -> bool:
    """The conversation's totals and the ledger row for one reply (inside the caller's
    transaction): each token class with the rate it was charged at, whose key paid, and for
    a cached reply no cost and what it saved. The message carries its final fields. With
    `reply_update` (_reply_update), the reply's own UPDATE adds the totals, in the ledger row's
    statement; False when that reply was no longer `streaming`. The ledger row is written either
    way unless its request id was recorded already (by the stale pass that closed the reply), so
    the call is metered once, also when its conversation was deleted while it streamed. With
    `alone_as` (the reply's user) and `reply_update`, that one statement is the transaction, sent
    in one round trip with its BEGIN and COMMIT; the caller has none open."""
    tokens, now = usage.input_total + usage.output, now or timezone.now()
    if message.conversation_id is not None and reply_update is None:  # an unstored call (SuppliedHistory) has no conversation row
        Conversation.objects.filter(pk=message.conversation_id).update(
            total_tokens=F("total_tokens") + tokens, total_cost=_total_cost_added(F("total_cost"), message.cost), updated_at=now
        )
    conversation = message.conversation
    rates = charge.rates
    updated, _written = usage_record_alongside(
        reply_update,
        alone_as=alone_as,
        user_id=message.user_id,
        organization_id=conversation.organization_id,
        provider=message.provider,
        model=message.model,
        input_tokens=usage.input_total,
        output_tokens=usage.output,
        cache_read_tokens=usage.cache_read,
        cache_write_5m_tokens=usage.cache_write_5m,
        cache_write_1h_tokens=usage.cache_write_1h,
        reasoning_tokens=usage.reasoning,
        input_price=rates["input_uncached"],
        output_price=rates["output"],
        cache_read_price=rates["cache_read"] if usage.cache_read else None,
        cache_write_5m_price=rates["cache_write_5m"] if usage.cache_write_5m else None,
        cache_write_1h_price=rates["cache_write_1h"] if usage.cache_write_1h else None,
        cost=message.cost,
        estimated=bool(message.metadata.get("estimated")),
        cache_hit=cached is not None,
        saved_tokens=saved_tokens if cached is not None else 0,
        saved_cost=cached.cost if cached is not None else Decimal(0),
        key_source=key_source,
        request_id=message.metadata["request_id"],
        conversation_id=message.conversation_id,
        message_id=message.pk,
        latency_ms=latency_ms,
        success=success,
        error=error,
    )
    if reply_update is None or updated:  # the caller's copy follows (it answers the API without reading the row again)
        conversation.total_tokens += tokens
        conversation.total_cost = min(conversation.total_cost + message.cost, MONEY_MAX)
        conversation.updated_at = now
    return reply_update is None or updated > 0


def _failure(exc: Exception, request: ChatRequest, text: str) -> tuple[str, Usage, ProviderError]:
    """(status, usage, the failure as a ProviderError) for a call that raised: what the provider reported, or the
    part received (estimated), is metered; an unexpected error is the provider being unavailable."""
    if not isinstance(exc, ProviderError):
        # The traceback's messages may quote what a provider sent back, the key included.
        trace = "".join(traceback.format_exception(exc))
        logger.error("provider call failed unexpectedly\n%s", trace.replace(request.api_key, "[key]") if request.api_key else trace)
        exc = ProviderError("unavailable", detail=type(exc).__name__)
    text = text or exc.partial_text
    usage = exc.usage
    if usage is None and (text or (exc.kind == "timeout" and not connect_timeout(exc))):
        # A timeout while waiting for the answer: the provider had the prompt, and bills it.
        usage = interrupted_usage(None, request=request, unreported_text=text, output_final=False)
    usage = usage or Usage()
    status = Status.INTERRUPTED if exc.kind == "interrupted" or text else Status.FAILED
    return status, usage, exc


async def _complete(pending: PendingReply) -> tuple[str, Usage, str, ProviderError | None, str | None]:
    adapter = provider_for(pending.message.provider)
    try:
        text, usage, reason = await adapter.complete(pending.request)
    except Exception as exc:  # every failure is metered and shown: see _failure
        status, usage, failure = _failure(exc, pending.request, "")
        return "", usage, status, failure, None
    if reason:  # the provider's own ("content_filter", "max_tokens", "SAFETY"...): the gateway maps it
        return text, usage, Status.COMPLETE, None, reason
    # None given (some compatible servers): a reply that used its whole output cap was cut.
    cut = pending.request.max_tokens is not None and usage.output >= pending.request.max_tokens
    return text, usage, Status.COMPLETE, None, "length" if cut else "stop"


def message_send(
    *,
    user: User,
    content: str,
    conversation_id: uuid.UUID | None = None,
    provider: str | None = None,
    model: str | None = None,
    api_key_id: uuid.UUID | None = None,
    response_cache: str | None = None,
    supplied: SuppliedHistory | None = None,
) -> Reply:
    """Send a message and wait for the whole reply: entitlement, store, call, store, meter.

    Refusals (plan, quota, rate, no price, no key) raise before anything is stored. A
    provider failure is not raised: the reply is stored `failed` (or `interrupted` with the
    part received) with the provider's sentence, and metered with the tokens it reported."""
    pending = message_prepare(
        user=user,
        content=content,
        conversation_id=conversation_id,
        provider=provider,
        model=model,
        api_key_id=api_key_id,
        response_cache=response_cache,
        supplied=supplied,
    )
    started = time.monotonic()
    hit = response_caching.cached_reply_get(pending.cache_key) if pending.cache_key else None
    if hit is not None:
        message = _reply_finish(
            pending, text=hit.text, usage=hit.usage, status=Status.COMPLETE, latency_ms=0, finish_reason=hit.finish_reason, cached=hit
        )
        return Reply(pending.conversation, pending.user_message, message)
    rls.connection_release()  # the provider may take a minute: the pool gets the connection back meanwhile
    text, usage, status, failure, finish = async_to_sync(_complete)(pending)
    latency_ms = int((time.monotonic() - started) * 1000)
    message = _reply_finish(pending, text=text, usage=usage, status=status, latency_ms=latency_ms, finish_reason=finish, failure=failure)
    return Reply(pending.conversation, pending.user_message, message)


# Stream endings run as their own tasks, shielded from the client's cancellation. The loop
# keeps only weak references to tasks, so this set holds them until they finish; and a
# caller that must know every reply is stored (a test, a shutdown) can await them. The
# request's thread context waits for them too (their sync calls run on its thread).
_stream_endings: set[asyncio.Task] = set()


async def _shielded(coroutine) -> Message:
    task = asyncio.ensure_future(coroutine)
    _stream_endings.add(task)
    task.add_done_callback(_stream_endings.discard)
    request_task_keep(task)
    return await asyncio.shield(task)


async def stream_endings_wait() -> None:
    """Wait until every stream ending started on this loop has stored and metered its reply."""
    loop = asyncio.get_running_loop()
    while running := [task for task in _stream_endings if task.get_loop() is loop]:
        await asyncio.gather(*running, return_exceptions=True)


async def message_stream(*, pending: PendingReply) -> AsyncIterator[dict]:
    """Stream a prepared send's reply as events: `delta` (text), then `done` (status,
    tokens, cost, error). A client that goes away (CancelledError, or the generator
    closed) leaves the part produced stored `interrupted` and metered; the metering is
    shielded from the cancellation, and the cancellation is re-raised."""
    pending.streamed["started"] = True
    # Alive while this runs, whether or not the client reads: the stale pass leaves it alone.
    heartbeat = asyncio.ensure_future(_stream_heartbeat(pending))
    finish_async = sync_to_async(_reply_finish)
    try:
        if pending.cache_key:
            try:
                hit = await sync_to_async(response_caching.cached_reply_get)(pending.cache_key)
            except asyncio.CancelledError:  # gone while Redis answered: closed as any stream the client left
                await _shielded(finish_async(pending, text="", usage=Usage(), status=Status.INTERRUPTED, error=CLIENT_GONE, latency_ms=0))
                raise
            if hit is not None:
                message = await _shielded(
                    finish_async(
                        pending,
                        text=hit.text,
                        usage=hit.usage,
                        status=Status.COMPLETE,
                        latency_ms=0,
                        finish_reason=hit.finish_reason,
                        cached=hit,
                    )
                )
                yield {"type": "delta", "text": hit.text}
                yield _done_event(pending, message)
                return
        adapter = provider_for(pending.message.provider)
        parts: list[str] = []
        usage: Usage | None = None
        counted, counted_parts = None, 0  # the last Counted, and how many parts it covered
        finish: str | None = None
        status, failure = Status.COMPLETE, None
        started = time.monotonic()
        events = adapter.stream(pending.request)

        async def close(status: str, usage: Usage, error: str = "", failure: ProviderError | None = None) -> Message:
            latency_ms = int((time.monotonic() - started) * 1000)
            text = "".join(parts)
            return await finish_async(
                pending, text=text, usage=usage, status=status, error=error, latency_ms=latency_ms, finish_reason=finish, failure=failure
            )

        async def end(status: str, usage: Usage, error: str = "", failure: ProviderError | None = None) -> Message:
            await events.aclose()
            return await close(status, usage, error, failure)

        cap = _StreamCap(None if getattr(adapter, "STOPS_AT_MAX_TOKENS", False) else pending.request.max_tokens)
        try:
            async for event in events:
                if isinstance(event, Delta):
                    text = cap.within(event.text)
                    if text:
                        parts.append(text)
                        yield {"type": "delta", "text": text}
                    if cap.reached:
                        # A server that ignores max_tokens (at a user's base URL) is cut where any
                        # provider stops: what arrived within the cap is the reply, its usage estimated.
                        finish = "length"
                        after = "".join(parts[counted_parts:])
                        usage = interrupted_usage(counted, request=pending.request, unreported_text=after, output_final=False)
                        break
                elif isinstance(event, Counted):
                    counted, counted_parts = event.usage, len(parts)
                elif isinstance(event, Done):
                    usage, finish = event.usage, event.finish_reason
        except (asyncio.CancelledError, GeneratorExit):
            # What the provider counted before the reader left, and the text after it estimated.
            after = "".join(parts[counted_parts:])
            gone = interrupted_usage(
                counted, request=pending.request, unreported_text=after, output_final=counted is not None and not after
            )
            await _shielded(end(Status.INTERRUPTED, usage or gone, CLIENT_GONE))
            raise
        except Exception as exc:  # a provider failure: metered and shown (see _failure)
            status, usage, failure = _failure(exc, pending.request, "".join(parts))
        # Shielded too: a client that goes away after the last delta, while the reply is stored,
        # must not leave it `streaming` and unmetered.
        message = await _shielded(end(status, usage or Usage(), failure=failure))
        yield _done_event(pending, message)
    finally:
        heartbeat.cancel()


class _StreamCap:
    """Whether a stream's reply has gone past the output cap it was asked for. Every delta with
    text holds at least one token, so more of them than the cap is past it for any tokenizer;
    characters bound a server sending the reply in a few huge deltas (no tokenizer averages
    OUTPUT_CHARS_PER_TOKEN_MAX over a whole reply). A reply within its cap is never cut."""

    def __init__(self, max_tokens: int | None):
        self.max_tokens, self.deltas, self.chars, self.reached = max_tokens, 0, 0, False

    def within(self, text: str) -> str:
        """The part of a delta within the cap (all of it, or the characters left, or nothing);
        `reached` once the stream has gone past it."""
        if self.max_tokens is None or not text:
            return text
        self.deltas += 1
        if self.deltas > self.max_tokens:
            self.reached = True
            return ""
        room = self.max_tokens * OUTPUT_CHARS_PER_TOKEN_MAX - self.chars
        self.chars += min(len(text), room)
        if len(text) > room:
            self.reached = True
            return text[:room]
        return text


OUTPUT_CHARS_PER_TOKEN_MAX = 32

STREAM_ALIVE_KEY = "chat:stream-alive:v1:{}"
STREAM_HEARTBEAT_SECONDS = 30  # the mark lasts four beats: a worker that died loses it within two minutes


def _stream_alive(request_id: str) -> None:
    with suppress(*REDIS_ERRORS):  # Redis down: the stale pass goes by age alone, as it did
        redis_client().set(STREAM_ALIVE_KEY.format(request_id), 1, px=int(4000 * STREAM_HEARTBEAT_SECONDS))


def _stream_beat(pending: PendingReply) -> None:
    _stream_alive(pending.request_id)
    pending.reservation.extend()


async def _stream_heartbeat(pending: PendingReply) -> None:
    """Mark a stream alive in Redis every STREAM_HEARTBEAT_SECONDS until it ends, and keep its
    reservation: a slow reader can keep a stream open past CHAT_STREAM_STALE_MINUTES, and the
    stale pass closed it as dead (metering nothing of what it went on to deliver, and dropping its
    real finish); past ENTITLEMENT_RESERVATION_TIMEOUT its reservation expired, and what it held
    was free for other calls while it still ran."""
    while True:
        await sync_to_async(_stream_beat, thread_sensitive=False)(pending)
        await asyncio.sleep(STREAM_HEARTBEAT_SECONDS)


def _streams_alive(request_ids: list[str]) -> set[str]:
    """Which of these streams a worker still marks alive; none known while Redis is down."""
    if not request_ids:
        return set()
    try:
        marks = redis_client().mget([STREAM_ALIVE_KEY.format(request_id) for request_id in request_ids])
    except REDIS_ERRORS as exc:
        logger.warning("stale streams judged by age alone (Redis: %s)", exc)
        return set()
    return {request_id for request_id, mark in zip(request_ids, marks, strict=True) if mark is not None}


def stream_close_unstarted(pending: PendingReply) -> None:
    """Close a prepared stream whose body never ran (its response closed unsent: the client left
    before the first event): no provider call was made, so the reply is closed `interrupted` with
    nothing used, and the reservation goes back now, not when the stale pass finds it. A stream
    that started is message_stream's to close."""
    if not pending.streamed.get("started"):
        pending.streamed["started"] = True  # once
        _reply_finish(pending, text="", usage=Usage(), status=Status.INTERRUPTED, error=CLIENT_GONE, latency_ms=0)


def _done_event(pending: PendingReply, message: Message) -> dict:
    return {
        "type": "done",
        "message_id": str(message.pk),
        "conversation_id": str(pending.conversation.pk),
        "status": message.status,
        "error": message.error,
        "input_tokens": message.input_tokens,
        "output_tokens": message.output_tokens,
        "cost": f"{message.cost:f}",  # fixed-point: a 1e-10 cost would print as 0E-10
        "cached": bool(message.metadata.get("cached")),
    }


# --- Replies whose worker died ----------------------------------------------------


def _pending_call_reply(call: PendingCall) -> Message:
    """An unstored call's reply as _reply_finish would have metered it: no conversation, no rows, no text."""
    conversation = Conversation(user_id=call.user_id, organization_id=call.organization_id)
    conversation.pk = None  # as for any unstored call (_messages_store), before the reply takes its id
    reservation = Reservation.from_metadata(call.organization_id, call.reservation)
    metadata = _reply_metadata(
        request_id=call.request_id,
        price_id=call.price_id,
        prompt_tokens_estimate=call.prompt_tokens_estimate,
        key_source=call.key_source,
        reservation=reservation,
    )
    reply = Message(conversation=conversation, user_id=call.user_id, provider=call.provider, model=call.model, metadata=metadata)
    reply.pk = None
    return reply


def _stale_close(message: Message) -> None:
    """Close one stale reply as `interrupted` and meter it, estimated from what is stored."""
    price = ModelPrice.objects.filter(pk=message.metadata.get("price_id")).first()
    if price is None:  # a price version deleted since: the one in force now
        price = selectors.model_price_current(provider=message.provider, model=message.model)
    usage = Usage(
        input_uncached=int(message.metadata.get("prompt_tokens_estimate", 0)), output=text_tokens_estimate(message.content), estimated=True
    )
    charge = call_cost(usage=usage, price=price) if price else None
    sentence = "The reply was cut off because the server handling it stopped. The part that arrived is kept."
    message.status, message.error, message.cost = Status.INTERRUPTED, sentence, charge.cost if charge else Decimal(0)
    message.input_tokens, message.output_tokens = usage.input_total, usage.output
    message.metadata = {**message.metadata, "usage": usage.classes(), "estimated": True, "closed_by": "streams_close_stale"}
    if message.pk is not None:  # an unstored call has no reply row; its PendingCall goes below
        message.save(update_fields=["status", "error", "cost", "input_tokens", "output_tokens", "metadata"])
    if charge is not None:
        key_source = message.metadata.get("key_source", KeySource.NONE)
        _meter(message=message, usage=usage, charge=charge, key_source=key_source, latency_ms=0, success=True, error=sentence)


def _stale_reply_held(pk) -> Message | None:
    """A stale reply, locked with its conversation first (the order the sends, their finish and a
    delete take: the other order deadlocked with a delete); None when it is gone, no longer
    `streaming`, or a send, finish or delete holds either row (the next pass looks again)."""
    conversation_id = Message.objects.filter(pk=pk).values_list("conversation_id", flat=True).first()
    held = Conversation.objects.select_for_update(no_key=True, skip_locked=True).filter(pk=conversation_id)
    if conversation_id is None or not held.exists():
        return None
    replies = Message.objects.select_for_update(skip_locked=True, of=("self",)).select_related("conversation")
    return replies.filter(pk=pk, status=Status.STREAMING).first()


def streams_close_stale(*, older_than_minutes: int | None = None) -> int:
    """Close replies still `streaming` long after they started (their worker died) as
    `interrupted`, metered from what is stored (estimated), each exactly once: the row is
    locked and re-checked, and the ledger skips a request id it already has. Unstored calls
    (PendingCall rows) as old are metered the same way, from their prompt estimate, and deleted."""
    minutes = older_than_minutes if older_than_minutes is not None else settings.CHAT_STREAM_STALE_MINUTES
    cutoff = timezone.now() - timezone.timedelta(minutes=minutes)
    closed, reservations = 0, []
    with rls.privileged(reason="close stale chat streams", audited=False):
        found = list(Message.objects.filter(status=Status.STREAMING, created_at__lt=cutoff).values_list("pk", "metadata__request_id"))
        found_calls = list(PendingCall.objects.filter(created_at__lt=cutoff).values_list("pk", "request_id"))
    # Asked before any row is locked: no lock is held while Redis answers.
    alive = _streams_alive([request_id or "" for _, request_id in [*found, *found_calls]])
    with rls.privileged(reason="close stale chat streams", audited=False):
        # A live stream, however old, is left to its own end, which meters it.
        replies = (_stale_reply_held(pk) for pk, request_id in found if request_id not in alive)
        # A row locked by its finishing call is skipped: that call meters it.
        calls = list(PendingCall.objects.select_for_update(skip_locked=True).filter(pk__in=[pk for pk, r in found_calls if r not in alive]))
        failed = set()
        for message in [*replies, *map(_pending_call_reply, calls)]:
            if message is None:
                continue
            try:
                # Each in a savepoint: one that cannot be closed (logged) must not keep every other
                # tenant's stale stream open and unmetered on every pass.
                with rls.atomic():
                    _stale_close(message)
            except Exception:
                logger.exception("could not close the stale reply of request %s", message.metadata.get("request_id"))
                failed.add(message.metadata.get("request_id"))
                continue
            reservations.append(Reservation.from_metadata(message.conversation.organization_id, message.metadata))
            closed += 1
        PendingCall.objects.filter(pk__in=[call.pk for call in calls if call.request_id not in failed]).delete()
    for reservation in reservations:  # after the commit, as for any metered reply
        reservation.release()
    return closed
