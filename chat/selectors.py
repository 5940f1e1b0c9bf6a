"""Chat reads. Under the caller's row-level security context: another user's rows are invisible, so 404."""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from django.db import connections
from django.db.models import Q, QuerySet
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from chat.errors import SearchQueryInvalid
from chat.models import Conversation, Message, ModelPrice, Persona, tags_kept
from config.db import rls
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
        conversations = conversations.filter(tags__contains=tags_kept([tag]))
    if persona_id:  # another user's persona is a 404, not an empty page that confirms nothing
        conversations = conversations.filter(persona_id=persona_get(user=user, persona_id=persona_id).pk)
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


# --- Search --------------------------------------------------------------------------
# Behind this one function so another store can answer it later. PostgreSQL: migration 0005's
# generated tsvectors (not model fields), each row queried and ranked with its own configuration.

SEARCH_MAX_LENGTH = 500
SEARCH_LIMIT_MAX = 100
SEARCH_PAGES_MAX = 100  # deeper than anyone pages; keeps the offset small
# ts_headline's markers: private-use characters, stripped from the text first, so every marker
# in a snippet is the search's and the text around them is escaped. ts_headline drops what looks
# like an HTML tag, so "<" travels as LESS_THAN and comes back after escaping.
MARK_START, MARK_STOP, LESS_THAN = "\ue000", "\ue001", "\ue002"
HEADLINE = f"StartSel={MARK_START}, StopSel={MARK_STOP}, MaxWords=35, MinWords=15"
TITLE_HEADLINE = f"StartSel={MARK_START}, StopSel={MARK_STOP}, HighlightAll=true"
INDEXED_CHARS = 100_000  # as migration 0005 indexes


@dataclass(frozen=True)
class SearchHit:
    conversation_id: UUID
    conversation_title: str
    message_id: UUID | None  # None: the title matched, no message did
    role: str
    created_at: datetime
    rank: float
    snippet_text: str

    @property
    def snippet(self) -> SafeString:
        """The snippet as HTML: the text escaped, the matched words in <mark>."""
        return _marked(self.snippet_text)

    @property
    def snippet_plain(self) -> str:
        return self.snippet_text.replace(MARK_START, "").replace(MARK_STOP, "").replace(LESS_THAN, "<")


@dataclass(frozen=True)
class SearchPage:
    hits: list[SearchHit]
    total: int
    offset: int
    limit: int

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.hits) < self.total


def _marked(text: str) -> SafeString:
    html = escape(text).replace(MARK_START, "<mark>").replace(MARK_STOP, "</mark>").replace(LESS_THAN, "&lt;")
    return mark_safe(html)  # the text is escaped first


def search_query_clean(query: str) -> str:
    """The query, stripped; a sentence (SearchQueryInvalid) for one that cannot be searched."""
    query = (query or "").strip()
    if not query:
        raise SearchQueryInvalid("Type a word to search for.", {"field": "q"})
    if len(query) > SEARCH_MAX_LENGTH:
        raise SearchQueryInvalid(f"A search is at most {SEARCH_MAX_LENGTH} characters.", {"field": "q"})
    if any(unicodedata.category(c) == "Cc" for c in query):
        raise SearchQueryInvalid("Remove the control characters (line breaks, tabs) from the search.", {"field": "q"})
    return query


_SEARCH_SQL = """
WITH titles AS MATERIALIZED (
    SELECT id, updated_at, rank FROM chat_search_conversations({any_query}, {configs}, {queries})
),
messages AS MATERIALIZED (
    SELECT id, conversation_id, role, created_at, rank FROM chat_search_messages({any_query}, {configs}, {queries})
),
hits AS (
    SELECT m.id AS message_id, m.conversation_id, m.role, m.created_at, m.rank + coalesce(t.rank, 0) AS rank
    FROM messages m LEFT JOIN titles t ON t.id = m.conversation_id
    UNION ALL
    SELECT NULL, t.id, '', t.updated_at, t.rank
    FROM titles t WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = t.id)
),
page AS (
    SELECT *, count(*) OVER () AS total FROM hits
    ORDER BY rank DESC, created_at DESC, message_id NULLS LAST LIMIT %(limit)s OFFSET %(offset)s
)
SELECT p.conversation_id, c.title, p.message_id, p.role, p.created_at, p.rank, p.total,
       CASE WHEN m.id IS NULL
            THEN ts_headline(c.search_config, translate(c.title, %(marks)s, %(less_than)s),
                             ({queries})[array_position({configs}, c.search_config)], %(title_options)s)
            ELSE ts_headline(m.search_config, translate(left(m.content, %(chars)s), %(marks)s, %(less_than)s),
                             ({queries})[array_position({configs}, m.search_config)], %(options)s)
       END
FROM page p
JOIN chat_conversation c ON c.id = p.conversation_id AND c.user_id = %(user)s
LEFT JOIN chat_message m ON m.id = p.message_id AND m.user_id = %(user)s
ORDER BY p.rank DESC, p.created_at DESC, p.message_id NULLS LAST
"""


def conversation_search(*, user, query: str, limit: int = 20, offset: int = 0) -> SearchPage:
    """The user's messages and conversation titles matching `query` (web-search syntax: "quoted
    phrases", -excluded, or), best first and newest first among equals, with highlighted snippets.

    Runs as the web role under the caller's row-level security context, never privileged.
    A message in a conversation whose title matches ranks higher; a conversation whose title
    matches but none of its messages is one hit without a message.
    """
    query = search_query_clean(query)
    limit, offset = max(1, min(int(limit), SEARCH_LIMIT_MAX)), max(0, int(offset))
    with connections[rls.APP_ALIAS].cursor() as cur:
        # The configurations this user's rows were indexed with (a conversation's messages share
        # its own); migration 0005's functions match and rank each row with its configuration's query.
        cur.execute("SELECT DISTINCT search_config::text FROM chat_conversation WHERE user_id = %s", [user.pk])
        configs = [row[0] for row in cur.fetchall()]
        if not configs:
            return SearchPage(hits=[], total=0, offset=offset, limit=limit)
        queries = [f"websearch_to_tsquery(%(config_{i})s::regconfig, %(q)s)" for i in range(len(configs))]
        statement = _SEARCH_SQL.format(
            any_query=" || ".join(queries),
            configs="ARRAY[" + ", ".join(f"%(config_{i})s" for i in range(len(configs))) + "]::regconfig[]",
            queries="ARRAY[" + ", ".join(queries) + "]",
        )
        params = {
            "q": query,
            "user": user.pk,
            "limit": limit,
            "offset": offset,
            "marks": "<" + LESS_THAN + MARK_START + MARK_STOP,  # "<" becomes LESS_THAN, the others go
            "less_than": LESS_THAN,
            "chars": INDEXED_CHARS,
            "options": HEADLINE,
            "title_options": TITLE_HEADLINE,
            **{f"config_{i}": config for i, config in enumerate(configs)},
        }
        cur.execute(statement, params)
        rows = cur.fetchall()
    hits = [
        SearchHit(
            conversation_id=conversation_id,
            conversation_title=title,
            message_id=message_id,
            role=role,
            created_at=created_at,
            rank=rank,
            snippet_text=snippet or "",
        )
        for conversation_id, title, message_id, role, created_at, rank, _, snippet in rows
    ]
    return SearchPage(hits=hits, total=rows[0][6] if rows else 0, offset=offset, limit=limit)
