"""A conversation as Markdown, for reading (import reads our JSON, not this)."""

from __future__ import annotations

from collections.abc import Iterable

from chat.models import Conversation, Message

ROLE_NAMES = {"user": "You", "assistant": "Assistant", "system": "System"}


def conversation_markdown(conversation: Conversation, messages: Iterable[Message]) -> str:
    lines = [f"# {conversation.title or 'Untitled conversation'}", ""]
    lines.append(f"- Created: {conversation.created_at:%Y-%m-%d %H:%M} UTC")
    if conversation.tags:
        lines.append(f"- Tags: {', '.join(conversation.tags)}")
    if conversation.summary:
        lines.append(f"- Summary: {conversation.summary}")
    for message in messages:
        who = ROLE_NAMES.get(message.role, message.role)
        if message.role == "assistant" and message.model:
            who += f" ({message.provider}/{message.model})" if message.provider else f" ({message.model})"
        lines += ["", f"## {who} · {message.created_at:%Y-%m-%d %H:%M} UTC", "", message.content]
    return "\n".join(lines) + "\n"
