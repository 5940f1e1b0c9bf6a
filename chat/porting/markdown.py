"""A conversation as Markdown, for reading (import reads our JSON, not this).

Each message's text goes in a fenced block whose fence is longer than any run of backticks in
it: whatever a message says (a reply is whatever the model or a user's own server sent), it
cannot start a heading of its own, close the block, or hide the turns after it, so the file has
exactly one heading per message. The title, tags and summary are one line each."""

from __future__ import annotations

import re
from collections.abc import Iterable

from chat.models import Conversation, Message

ROLE_NAMES = {"user": "You", "assistant": "Assistant", "system": "System"}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fenced(text: str) -> list[str]:
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return [f"{fence}text", text, fence]


def conversation_markdown(conversation: Conversation, messages: Iterable[Message]) -> str:
    lines = [f"# {_one_line(conversation.title) or 'Untitled conversation'}", ""]
    lines.append(f"- Created: {conversation.created_at:%Y-%m-%d %H:%M} UTC")
    if conversation.tags:
        lines.append(f"- Tags: {', '.join(_one_line(tag) for tag in conversation.tags)}")
    if conversation.summary:
        lines.append(f"- Summary: {_one_line(conversation.summary)}")
    for message in messages:
        who = ROLE_NAMES.get(message.role, message.role)
        if message.role == "assistant" and message.model:
            who += f" ({message.provider}/{message.model})" if message.provider else f" ({message.model})"
        lines += ["", f"## {_one_line(who)} · {message.created_at:%Y-%m-%d %H:%M} UTC", "", *_fenced(message.content)]
    return "\n".join(lines) + "\n"
