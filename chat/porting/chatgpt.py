"""ChatGPT's export (Settings → Data controls → Export): one conversation object per item of
`conversations.json` (older exports) or of `conversations-000.json`, `-001`, … (today's ZIP).

Each conversation is a tree of `mapping` nodes ({id, message|null, parent, children}); the
branch the user last saw runs from `current_node` up through `parent` to the root. Only user
and assistant text is imported; system, tool (and calls to tools), hidden, empty and non-text nodes and
attachments are counted in the report. The model is the message's `metadata.model_slug`,
else the conversation's `default_model_slug` (many messages carry no metadata at all).
"""

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
    when_epoch,
)

SOURCE = "chatgpt"
TEXT_TYPES = ("text", "multimodal_text")


def is_conversation(item: dict) -> bool:
    return "mapping" in item


def external_id(item: dict) -> str:
    value = item.get("conversation_id") or item.get("id")
    return text_clean(str(value))[:200] if isinstance(value, str | int) and value != "" else ""


def _branch(item: dict) -> list[dict]:
    """The nodes of the current branch, root first."""
    mapping = item.get("mapping")
    if not isinstance(mapping, dict):
        raise ConversationUnusable("its message tree (mapping) is not an object")
    node_id = item.get("current_node")
    if not isinstance(node_id, str) or node_id not in mapping:
        raise ConversationUnusable("its current message (current_node) is not in its message tree")
    branch, seen = [], set()
    while node_id is not None:
        if node_id in seen:
            raise ConversationUnusable("its message tree loops back on itself")
        seen.add(node_id)
        node = mapping.get(node_id) if isinstance(node_id, str) else None
        if not isinstance(node, dict):
            raise ConversationUnusable("its current branch points at a message that is not in the file")
        branch.append(node)
        node_id = node.get("parent")
        if node_id is not None and not isinstance(node_id, str):
            raise ConversationUnusable("a message on its current branch names its parent with something other than an id")
    branch.reverse()
    return branch


def _text(message: dict, skipped: Counter) -> str | None:
    """The message's text, or None (counted) when it has none to import."""
    content = message.get("content")
    content = content if isinstance(content, dict) else {}
    if content.get("content_type") not in TEXT_TYPES:
        skipped["non-text"] += 1
        return None
    parts = content.get("parts")
    texts = []
    for part in parts if isinstance(parts, list) else []:  # a number or true is no text, never an error
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            skipped["attachments"] += 1  # an image or file pointer
    text = "\n".join(t for t in texts if t)
    if not text.strip():
        skipped["empty"] += 1
        return None
    return text_clean(text)


def conversation_parse(item: dict, *, skipped: Counter) -> ParsedConversation:
    conversation_id = external_id(item)
    if not conversation_id:
        raise ConversationUnusable("it has no id (conversation_id)")
    default_model = item.get("default_model_slug") if isinstance(item.get("default_model_slug"), str) else ""
    started = when_epoch(item.get("create_time"))
    messages: list[ParsedMessage] = []
    for node in _branch(item):
        message = node.get("message")
        if message is None:
            continue  # the tree's root holds no message
        if not isinstance(message, dict):
            raise ConversationUnusable("a message on its current branch is not an object")
        author = message.get("author") if isinstance(message.get("author"), dict) else {}
        metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
        role = author.get("role")
        if role in ("system", "tool"):
            skipped[role] += 1
            continue
        if role not in ("user", "assistant"):
            skipped["other roles"] += 1
            continue
        if message.get("recipient") not in (None, "all"):
            skipped["tool"] += 1  # a call to a tool (browsing, python, memory), not words for the user
            continue
        skipped["attachments"] += items_count(metadata.get("attachments"))
        if metadata.get("is_visually_hidden_from_conversation"):
            skipped["hidden"] += 1
            continue
        text = _text(message, skipped)
        if text is None:
            continue
        previous = messages[-1].created_at if messages else None
        created = when_epoch(message.get("create_time")) or previous or started or when_epoch(item.get("update_time"))
        model = text_clean(str(metadata.get("model_slug") or default_model or "")) if role == "assistant" else ""
        messages.append(
            ParsedMessage(role=role, content=text, created_at=created, provider="openai" if role == "assistant" else "", model=model[:100])
        )
    return conversation_parsed(
        messages,
        external_id=conversation_id,
        title=title_clean(item.get("title")),
        started=started,
        updated=when_epoch(item.get("update_time")),
        empty_reason="its current branch has no user or assistant text",
        is_archived=item.get("is_archived") is True,
    )
