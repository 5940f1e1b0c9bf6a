"""What every source's reader produces, the two ways an import fails, and the text cleaning they share."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from django.utils import timezone

from accounts.models import has_control_characters, shows_nothing  # the characters names refuse: one list
from chat.models import MAX_TAG_LENGTH, tag_composed
from config.errors import ApplicationError
from config.text import text_clean

TITLE_MAX = 200


class ImportRejected(ApplicationError):
    """The whole file is refused (unreadable, the wrong shape, over a limit): nothing is imported."""

    code = "import_rejected"


class ConversationUnusable(Exception):
    """One conversation is well-formed JSON but cannot be imported: reported with its reason, the rest go on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ParsedMessage:
    role: str
    content: str
    created_at: datetime
    provider: str = ""
    model: str = ""
    status: str = "complete"
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal("0")
    metadata: dict = field(default_factory=dict)


@dataclass
class ParsedConversation:
    external_id: str
    title: str
    created_at: datetime
    updated_at: datetime
    messages: list[ParsedMessage]
    summary: str = ""
    tags: list[str] = field(default_factory=list)
    is_archived: bool = False
    persona_name: str = ""


def conversation_parsed(
    messages: list[ParsedMessage],
    *,
    external_id: str,
    title: str,
    started: datetime | None,
    updated: datetime | None,
    empty_reason: str,
    is_archived: bool = False,
) -> ParsedConversation:
    """A source's conversation once its messages are read: none is unusable (`empty_reason`);
    a message without a time takes the conversation's start, or the first message's."""
    if not messages:
        raise ConversationUnusable(empty_reason)
    first = started or messages[0].created_at or timezone.now()
    for message in messages:
        message.created_at = message.created_at or first
    return ParsedConversation(
        external_id=external_id,
        title=title,
        created_at=first,
        updated_at=updated or messages[-1].created_at or first,
        messages=messages,
        is_archived=is_archived,
    )


def size_text(n: int) -> str:
    """A limit in words: 200 MB, or 1000 bytes below a megabyte."""
    return f"{n / 1024 / 1024:.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def title_clean(value) -> str:
    """A title or tag shown on every page: each run of what a typed one may not hold (control,
    line-separator and text-direction characters: `has_control_characters`), with the spaces
    around it, becomes one space; other spacing is kept, so a title Confab stored comes back as it was."""
    if not isinstance(value, str):
        return ""
    marked = "".join("\x00" if has_control_characters(c) else c for c in text_clean(value))
    title = _REFUSED_RUN.sub(" ", marked).strip()[:TITLE_MAX].rstrip()
    return "" if shows_nothing(title) else title  # zero-width characters alone: no title, so the default one


def tag_clean(value: str) -> str:
    """An imported tag as the API and the page would store it: one line (title_clean), composed
    (NFC), no comma (it would split the tag on the page), at most MAX_TAG_LENGTH characters once
    composed and cut; "" (dropped) when what is left shows nothing."""
    tag = title_clean(tag_composed(value).replace(",", " "))[:MAX_TAG_LENGTH].rstrip()
    return "" if shows_nothing(tag) else tag


_REFUSED_RUN = re.compile(r"\s*\x00[\x00\s]*")  # "\x00" marks a refused character (NUL is one itself)


def when_epoch(value) -> datetime | None:
    """Seconds since 1970 (ChatGPT's `create_time`), or None when absent or unreadable."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def when_iso(value) -> datetime | None:
    """An ISO 8601 time (a time without a zone is read as UTC), or None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    try:
        # In UTC, as PostgreSQL returns it: a moment that leaves years 1-9999 there could not be read back.
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:
        return None


def items_count(value) -> int:
    """How many items a list in the file holds (attachments, files); anything else counts none."""
    return len(value) if isinstance(value, list) else 0
