"""Claude's export (Settings → Privacy → Export data): a ZIP with `conversations.json` (beside
`users.json`, `projects.json`) whose conversations hold a flat `chat_messages` list, each
with `sender` human/assistant, `text`, `content` blocks ({type: "text", text}, tool use,
thinking…), `attachments` and `files`. The text blocks are imported, else `text`."""

from __future__ import annotations

from collections import Counter

from chat.porting.base import (
    ConversationUnusable,
    ParsedConversation,
    ParsedMessage,
    conversation_parsed,
    items_count,
    text_clean,
    title_clean,
    when_iso,
)

SOURCE = "claude"
ROLES = {"human": "user", "assistant": "assistant"}


def is_conversation(item: dict) -> bool:
    return "chat_messages" in item


def external_id(item: dict) -> str:
    value = item.get("uuid")
    return text_clean(value)[:200] if isinstance(value, str) else ""


def _text(message: dict, skipped: Counter) -> str:
    blocks = message.get("content") if isinstance(message.get("content"), list) else []
    texts = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") in ("tool_use", "tool_result"):
            skipped["tool"] += 1
        else:
            skipped["non-text"] += 1
    text = "\n\n".join(t for t in texts if t)
    if not text.strip() and isinstance(message.get("text"), str):
        text = message["text"]
    return text_clean(text)


def conversation_parse(item: dict, *, skipped: Counter) -> ParsedConversation:
    conversation_id = external_id(item)
    if not conversation_id:
        raise ConversationUnusable("it has no id (uuid)")
    if not isinstance(item.get("chat_messages"), list):
        raise ConversationUnusable("its chat_messages is not a list")
    started = when_iso(item.get("created_at"))
    messages: list[ParsedMessage] = []
    for message in item["chat_messages"]:
        if not isinstance(message, dict):
            raise ConversationUnusable("one of its messages is not an object")
        sender = message.get("sender")
        role = ROLES.get(sender) if isinstance(sender, str) else None
        if role is None:
            skipped["other roles"] += 1
            continue
        skipped["attachments"] += items_count(message.get("attachments")) + items_count(message.get("files"))
        text = _text(message, skipped)
        if not text.strip():
            skipped["empty"] += 1
            continue
        previous = messages[-1].created_at if messages else None
        created = when_iso(message.get("created_at")) or previous or started
        messages.append(ParsedMessage(role=role, content=text, created_at=created, provider="anthropic" if role == "assistant" else ""))
    return conversation_parsed(
        messages,
        external_id=conversation_id,
        title=title_clean(item.get("name")),
        started=started,
        updated=when_iso(item.get("updated_at")),
        empty_reason="it has no human or assistant text",
    )
