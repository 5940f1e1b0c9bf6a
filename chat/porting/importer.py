"""One import: detect the file's shape, read its conversations item by item, store them.

Shapes: a ZIP as ChatGPT or Claude export it (its `conversations.json` or
`conversations-NNN.json` members are read, every other member ignored), or one JSON file:
an array of ChatGPT or Claude conversations, or our own format (an object whose `format`
and `version` come before its `conversations`).

Where the line is drawn: the FILE is refused, and nothing of it imported (one transaction),
when it is not readable JSON or ZIP, is not one of those shapes (a conversation that is not
an object, or lacks its source's `mapping` / `chat_messages` / `messages`), or exceeds a
limit (size, uncompressed size, conversations, messages, a message longer than a send may
be, nesting depth). A CONVERSATION is reported as failed, with its title and the reason,
when it is of the right shape but cannot be used (no id, a broken branch, no text, a field
of the wrong type); the others are imported.
"""

from __future__ import annotations

import lzma
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import PurePosixPath
from typing import BinaryIO

import ijson
from django.conf import settings
from django.db import IntegrityError, connections, transaction
from ijson.common import ObjectBuilder

from accounts.models import User
from chat.models import MONEY_CEILING, Conversation, Message, Persona
from chat.porting import chatgpt, claude, ours
from chat.porting.base import ConversationUnusable, ImportRejected, ParsedConversation, size_text, title_clean
from chat.services import MAX_CONTENT, _personal_organization, conversation_title
from config.db import rls
from config.text import text_clean

# A reply is not bounded by what a send accepts (echo's reply to the longest message is longer
# than it, and models answer at length); a file of long replies is bounded by the file's limits.
MAX_REPLY_CONTENT = 10 * MAX_CONTENT
MAX_DEPTH = 64  # deeper JSON than any export nests is refused before it is built
CONVERSATION_MEMBER = re.compile(r"conversations(-\d+)?\.json")
SOURCES = (ours, chatgpt, claude)
SOURCE_NAMES = {"confab": "Confab", "chatgpt": "ChatGPT", "claude": "Claude"}


@dataclass
class ImportReport:
    """What one import did: shown on the page and printed by the command."""

    source: str = ""
    imported: int = 0
    skipped_duplicates: int = 0
    messages: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImportReport:
        # jsonb keeps its own key order: the skipped kinds are put back in the report's (sorted) order.
        return cls(
            **{**data, "failed": [tuple(pair) for pair in data.get("failed", [])], "skipped": dict(sorted(data.get("skipped", {}).items()))}
        )

    @property
    def source_name(self) -> str:
        return SOURCE_NAMES.get(self.source, self.source)

    def lines(self) -> list[str]:
        lines = [
            f"Source: {self.source_name}",
            f"Imported: {self.imported} conversation(s), {self.messages} message(s)",
            f"Skipped as duplicates: {self.skipped_duplicates}",
            f"Failed: {len(self.failed)}",
        ]
        lines += [f"  - {title}: {reason}" for title, reason in self.failed]
        if self.skipped:
            lines.append("Not imported: " + ", ".join(f"{count} {kind}" for kind, count in self.skipped.items()))
        return lines


class _Counted:
    """A readable stream that refuses to give more than `limit` bytes, whatever a header declared."""

    def __init__(self, raw: BinaryIO, limit: int, refusal: str):
        self.raw, self.left, self.refusal = raw, limit, refusal

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""  # ijson asks for nothing first, to see bytes or text
        try:
            data = self.raw.read(size if size > 0 else 65536)
        except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError):  # bz2 says OSError
            raise ImportRejected("The ZIP file is damaged (it may be truncated); nothing was imported.") from None
        self.left -= len(data)
        if self.left < 0:
            raise ImportRejected(self.refusal)
        return data


def _streams(file: BinaryIO) -> Iterator[BinaryIO]:
    """The JSON documents to read: the file itself, or each conversations member of a ZIP."""
    head = file.read(4)
    file.seek(0)
    if not head.startswith(b"PK"):
        limit = settings.CHAT_IMPORT_MAX_BYTES
        yield _Counted(file, limit, f"The file is larger than the {size_text(limit)} an import may be.")
        return
    try:
        archive = zipfile.ZipFile(file)
        members = sorted((i for i in archive.infolist() if CONVERSATION_MEMBER.fullmatch(PurePosixPath(i.filename).name)), key=_order)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError):
        raise ImportRejected("The ZIP file cannot be read (it may be truncated or damaged); nothing was imported.") from None
    if not members:
        raise ImportRejected("The ZIP holds no conversations.json or conversations-000.json: it is not a ChatGPT or Claude export.")
    limit = settings.CHAT_IMPORT_MAX_UNCOMPRESSED_BYTES
    refusal = f"The ZIP's conversations unpack to more than the {size_text(limit)} an import may be."
    if sum(member.file_size for member in members) > limit:
        raise ImportRejected(refusal)
    for member in members:
        try:
            raw = archive.open(member)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
            raise ImportRejected("The ZIP file is damaged (it may be truncated); nothing was imported.") from None
        except RuntimeError:  # zipfile's "encrypted, password required" and NotImplementedError (compression method)
            raise ImportRejected(
                "The ZIP's conversations are encrypted or compressed in a way that cannot be read; nothing was imported."
            ) from None
        with raw:
            counted = _Counted(raw, limit, refusal)
            yield counted
            limit = counted.left


def _order(member: zipfile.ZipInfo):
    return PurePosixPath(member.filename).name, member.filename


@dataclass
class _Document:
    """One JSON document's top level: an array (ChatGPT's, Claude's) or an object (ours) and its plain values."""

    is_object: bool = False
    header: dict = field(default_factory=dict)


def _items(stream: BinaryIO, document: _Document) -> Iterator[dict]:
    """Each conversation object of one JSON document, built one at a time from the parser's events;
    `document` learns the top level's shape and plain values (our format's `format` and `version`)."""
    shape, item_prefix, builder, depth, item_depth = None, "", None, 0, 0
    try:
        for prefix, event, value in ijson.parse(stream, use_float=True):
            if event in ("start_map", "start_array"):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ImportRejected(f"The file nests deeper than {MAX_DEPTH} levels: it is not an export.")
            elif event in ("end_map", "end_array"):
                depth -= 1
            if shape is None:
                if event not in ("start_map", "start_array"):
                    raise ImportRejected("The file holds a single value, not conversations.")
                shape, document.is_object = event, event == "start_map"
                item_prefix = "item" if event == "start_array" else "conversations.item"
                continue
            if builder is not None:
                builder.event(event, value)
                if depth < item_depth:
                    yield builder.value
                    builder = None
            elif prefix == item_prefix and event != "map_key":
                if event != "start_map":
                    raise ImportRejected("Each conversation in the file must be a JSON object; one is not.")
                builder, item_depth = ObjectBuilder(), depth
                builder.event(event, value)
            elif shape == "start_map" and depth == 1 and event not in ("map_key", "end_map") and "." not in prefix:
                document.header[prefix] = value
    except ijson.JSONError as exc:
        raise ImportRejected(f"The file is not valid JSON ({str(exc)[:120]}); nothing was imported.") from None
    except UnicodeDecodeError:
        raise ImportRejected("The file is not UTF-8 text; nothing was imported.") from None


def _source(item: dict, document: _Document):
    header = document.header
    if document.is_object:
        if header.get("format") != ours.FORMAT:
            raise ImportRejected(f'This JSON object is not a Confab export: it needs "format": "{ours.FORMAT}" before its conversations.')
        if header.get("version") != ours.VERSION:
            raise ImportRejected(
                f"Version {header.get('version')!r} of the Confab format cannot be read here (this server reads {ours.VERSION})."
            )
        if not ours.is_conversation(item):
            raise ImportRejected("A conversation in this Confab export has no messages list.")
        return ours
    for module in (chatgpt, claude):
        if module.is_conversation(item):
            return module
    raise ImportRejected("The file's conversations are neither ChatGPT's (with a mapping) nor Claude's (with chat_messages).")


def _limits_check(parsed: ParsedConversation, report: ImportReport) -> None:
    if report.messages + len(parsed.messages) > settings.CHAT_IMPORT_MAX_MESSAGES:
        raise ImportRejected(f"The file holds more than {settings.CHAT_IMPORT_MAX_MESSAGES} messages, the most one import may hold.")
    for message in parsed.messages:
        limit, kind = (MAX_REPLY_CONTENT, "reply") if message.role == Message.Role.ASSISTANT else (MAX_CONTENT, "message")
        if len(message.content) > limit:
            raise ImportRejected(
                f"A {kind} in “{parsed.title or 'an untitled conversation'}” is longer than {limit} characters,"
                f" the most a {kind} may be; nothing was imported."
            )


def _total_check(parsed: ParsedConversation) -> None:
    """A conversation's total cost is kept in a column as wide as a message's: messages whose
    costs each fit may add up to more than it holds."""
    if sum((message.cost for message in parsed.messages), start=Decimal(0)) >= MONEY_CEILING:
        raise ConversationUnusable(f"its messages' costs add up to {MONEY_CEILING} or more, more than a conversation's total holds")


def _persona_kept(user: User, name: str) -> Persona | None:
    """The user's persona of that name, kept from deletion until the import commits (FOR KEY
    SHARE: edits go on, a delete waits, then clears the imported conversations' persona as it
    clears the others'). Unlocked, a delete meanwhile failed the whole import."""
    persona = Persona.objects.filter(user_id=user.pk, name=name).first()
    if persona is None:
        return None
    with connections[rls.current_alias()].cursor() as cur:
        cur.execute(f"SELECT 1 FROM {Persona._meta.db_table} WHERE id = %s FOR KEY SHARE", [persona.pk])
        return persona if cur.fetchone() else None


def _store(*, user: User, organization_id, source: str, parsed: ParsedConversation, personas: dict) -> bool:
    """Store one conversation and its messages, marked imported and never metered; False when it was imported before."""
    found = Conversation.objects.filter(user_id=user.pk, imported_from=source, external_id=parsed.external_id)
    if found.exists():
        return False
    if parsed.persona_name and parsed.persona_name not in personas:
        personas[parsed.persona_name] = _persona_kept(user, parsed.persona_name)
    try:
        # A savepoint: a racing import that stored it first leaves this file's transaction usable.
        with transaction.atomic(using=rls.current_alias()):
            conversation = Conversation.objects.create(
                user_id=user.pk,
                organization_id=organization_id,
                title=parsed.title or (conversation_title(content=parsed.messages[0].content) if parsed.messages else ""),
                summary=parsed.summary,
                tags=parsed.tags,
                is_archived=parsed.is_archived,
                persona=personas.get(parsed.persona_name),
                created_at=parsed.created_at,
                imported_from=source,
                external_id=parsed.external_id,
                message_count=len(parsed.messages),
                total_tokens=sum(m.input_tokens + m.output_tokens for m in parsed.messages),
                total_cost=sum((m.cost for m in parsed.messages), start=Decimal("0")),
            )
    except IntegrityError as exc:
        if "chat_conversation_imported_once" in str(exc):
            return False
        raise
    Message.objects.bulk_create(
        [
            Message(conversation=conversation, user_id=user.pk, sequence=n, imported=True, **vars(message))
            for n, message in enumerate(parsed.messages, start=1)
        ],
        batch_size=500,
    )
    # updated_at is set on every save; the source's own time is written after.
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=parsed.updated_at)
    return True


def conversations_import(*, user: User, file: BinaryIO) -> ImportReport:
    """Import every conversation of one file (see the module's docstring for its shapes) under
    the user's own row-level security context, in one transaction: ImportRejected (400, with
    the reason) imports nothing. Conversations imported before are skipped, never duplicated;
    imported messages are marked `imported` and not metered (no ledger row, no counter)."""
    report, skipped, conversations = ImportReport(), Counter(), 0
    with rls.atomic_as(user.pk):
        organization = _personal_organization(user)
        personas: dict = {}
        for stream in _streams(file):
            document = _Document()
            for item in _items(stream, document):
                source = _source(item, document)
                if report.source and report.source != source.SOURCE:
                    raise ImportRejected("The file mixes conversations of different services; import each export on its own.")
                report.source = source.SOURCE
                conversations += 1
                if conversations > settings.CHAT_IMPORT_MAX_CONVERSATIONS:
                    raise ImportRejected(
                        f"The file holds more than {settings.CHAT_IMPORT_MAX_CONVERSATIONS} conversations, the most one import may hold."
                    )
                found = Counter()
                try:
                    parsed = source.conversation_parse(item, skipped=found)
                    _total_check(parsed)
                except ConversationUnusable as exc:
                    # The reason may quote the file (a role it does not know): the report is stored as jsonb.
                    report.failed.append((_title(item), text_clean(exc.reason)))
                    continue
                _limits_check(parsed, report)
                if _store(user=user, organization_id=organization.pk, source=source.SOURCE, parsed=parsed, personas=personas):
                    report.imported += 1
                    report.messages += len(parsed.messages)
                    skipped.update(found)
                else:
                    report.skipped_duplicates += 1
        if not conversations:
            raise ImportRejected("The file holds no conversations; nothing was imported.")
    report.skipped = dict(sorted(skipped.items()))
    return report


def _title(item: dict) -> str:
    return title_clean(item.get("title") or item.get("name")) or "Untitled conversation"
