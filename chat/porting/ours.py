"""Our JSON format, `confab.conversations` version 1 (docs/export-format.md): what export
writes and import reads back exactly. Written conversation by conversation, so an export of
any size never sits in memory whole."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TextIO

from chat.models import MAX_TAGS, MONEY_CEILING, Conversation, Message, tags_kept
from chat.porting.base import ConversationUnusable, ParsedConversation, ParsedMessage, tag_clean, title_clean, when_iso
from config.text import json_clean, text_clean

SOURCE = "confab"
FORMAT = "confab.conversations"
VERSION = 1
ROLES = {choice.value for choice in Message.Role}
STATUSES = {choice.value for choice in Message.Status}


def conversation_document(conversation: Conversation, messages: Iterable[Message]) -> dict:
    return {
        "id": str(conversation.pk),
        "title": conversation.title,
        "summary": conversation.summary,
        "tags": list(conversation.tags),
        "persona": conversation.persona.name if conversation.persona_id else None,
        "is_archived": conversation.is_archived,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "messages": [
            {
                "sequence": message.sequence,
                "role": message.role,
                "content": message.content,
                "provider": message.provider,
                "model": message.model,
                "status": message.status,
                "input_tokens": message.input_tokens,
                "output_tokens": message.output_tokens,
                "cost": str(message.cost),
                "created_at": message.created_at.isoformat(),
                "metadata": message.metadata,
            }
            for message in messages
        ],
    }


def document_write(out: TextIO, documents: Iterable[dict], *, exported_at: datetime) -> int:
    """Write the whole document, one conversation at a time; returns how many were written."""
    out.write(f'{{"format": "{FORMAT}", "version": {VERSION}, "exported_at": {json.dumps(exported_at.isoformat())}, "conversations": [')
    count = 0
    for document in documents:
        out.write(("," if count else "") + "\n" + json.dumps(document, ensure_ascii=False))
        count += 1
    out.write("\n]}\n")
    return count


def is_conversation(item: dict) -> bool:
    return "messages" in item


def external_id(item: dict) -> str:
    value = item.get("id")
    return text_clean(value)[:200] if isinstance(value, str) else ""


def _field(item: dict, name: str, kind, default=None):
    value = item.get(name, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConversationUnusable(f"its field '{name}' is not {_KIND_NAMES[kind]}")
    return value


_KIND_NAMES = {str: "text", int: "a whole number", bool: "true or false", list: "a list", dict: "an object"}


def _when(item: dict, name: str) -> datetime:
    moment = when_iso(item.get(name))
    if moment is None:
        raise ConversationUnusable(f"its field '{name}' is not an ISO 8601 time")
    return moment


def _message(item) -> ParsedMessage:
    if not isinstance(item, dict):
        raise ConversationUnusable("one of its messages is not an object")
    role, status = _field(item, "role", str), _field(item, "status", str, "complete")
    if role not in ROLES or status not in STATUSES:
        raise ConversationUnusable(f"a message has an unknown role '{role[:20]}' or status '{status[:20]}'")
    try:
        cost = Decimal(_field(item, "cost", str, "0"))
    except InvalidOperation:
        raise ConversationUnusable("a message's cost is not a decimal number") from None
    if not cost.is_finite() or cost < 0 or cost >= MONEY_CEILING:
        raise ConversationUnusable(f"a message's cost is not a decimal number from 0 to below {MONEY_CEILING}")
    tokens = [_field(item, name, int, 0) for name in ("input_tokens", "output_tokens")]
    if min(tokens) < 0 or max(tokens) > 2**31 - 1:
        raise ConversationUnusable("a message's token counts are out of range")
    if status == Message.Status.STREAMING:
        # Exported mid-reply: it will never finish here, and a streaming row would be metered by the stale-stream sweep.
        status = Message.Status.INTERRUPTED
    return ParsedMessage(
        role=role,
        content=text_clean(_field(item, "content", str)),
        created_at=_when(item, "created_at"),
        provider=text_clean(_field(item, "provider", str, ""))[:32],
        model=text_clean(_field(item, "model", str, ""))[:100],
        status=status,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost=cost,
        metadata=json_clean(_field(item, "metadata", dict, {})),
    )


def conversation_parse(item: dict, *, skipped: Counter) -> ParsedConversation:
    conversation_id = external_id(item)
    if not conversation_id:
        raise ConversationUnusable("it has no id")
    messages = _field(item, "messages", list)
    ordered = sorted(messages, key=lambda m: m.get("sequence", 0) if isinstance(m, dict) and isinstance(m.get("sequence"), int) else 0)
    tags = _field(item, "tags", list, [])
    if not all(isinstance(tag, str) for tag in tags):
        raise ConversationUnusable("its tags are not all text")
    persona = item.get("persona")
    return ParsedConversation(
        external_id=conversation_id,
        title=title_clean(_field(item, "title", str, "")),
        created_at=_when(item, "created_at"),
        updated_at=_when(item, "updated_at"),
        messages=[_message(message) for message in ordered],
        summary=text_clean(_field(item, "summary", str, "")),
        tags=tags_kept(cleaned for tag in tags if (cleaned := tag_clean(tag)))[:MAX_TAGS],
        is_archived=_field(item, "is_archived", bool, False),
        persona_name=text_clean(persona) if isinstance(persona, str) else "",
    )
