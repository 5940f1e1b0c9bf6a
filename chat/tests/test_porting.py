"""Import (chat/porting/): ChatGPT's export in both shapes, Claude's, and our own format round
trip; malformed, wrong-shaped and oversized files import nothing with the reason; importing
twice (also racing) never duplicates; imported messages are never metered."""

import io
import json
import tempfile
import threading
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django_redis import get_redis_connection

from accounts.tests.factories import make_user
from analytics.models import TokenUsage
from chat import services
from chat.models import Conversation, Message
from chat.porting.base import ImportRejected
from chat.porting.exporter import _zip_write
from chat.porting.importer import MAX_REPLY_CONTENT, conversations_import
from chat.tests.porting_files import CHATGPT_SINGLE, CLAUDE_SINGLE, FIXTURES, chatgpt_zip, claude_zip, zip_bytes
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
LISBON = ["What should I pack for Lisbon in March?", "Layers: a light rain jacket, a sweater and comfortable shoes for the hills."]
LISBON += ["Which shoes, exactly?", "Trainers with a grippy sole: the calçada is slippery when wet."]
SOURDOUGH = ["Is my starter ready? It doubled overnight.", "Yes: doubling in 8 hours with a domed top means it is ready to bake with."]


def _import(user, data: bytes):
    return conversations_import(user=user, file=io.BytesIO(data))


def stored(user) -> dict[str, list[Message]]:
    """Title → messages in order, read back as staff would."""
    with rls.privileged(reason="test"):
        return {
            conversation.title: list(conversation.messages.order_by("sequence"))
            for conversation in Conversation.objects.filter(user_id=user.pk).order_by("created_at")
        }


def counts():
    with rls.privileged(reason="test"):
        return Conversation.objects.count(), Message.objects.count()


def _epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@pytest.mark.parametrize("shape", ["zip as downloaded today", "single conversations.json", "one member of the zip"])
def test_chatgpt_export_imports_the_current_branch_in_every_shape(alice, shape):
    data = {
        "zip as downloaded today": chatgpt_zip,
        "single conversations.json": CHATGPT_SINGLE.read_bytes,
        "one member of the zip": (FIXTURES / "chatgpt_export" / "conversations-001.json").read_bytes,
    }[shape]()
    report = _import(alice, data)
    conversations = stored(alice)
    sourdough = conversations["Sourdough starter"]
    # A user message with no metadata, an image part counted; the model only at the conversation level.
    assert [m.content for m in sourdough] == SOURDOUGH
    assert [(m.role, m.provider, m.model) for m in sourdough] == [("user", "", ""), ("assistant", "openai", "gpt-4o-mini")]
    assert all(m.created_at == _epoch(1731222000.5) for m in sourdough)  # messages without create_time: the conversation's
    if shape == "one member of the zip":
        assert (report.imported, report.messages, report.skipped) == (1, 2, {"attachments": 1})
        return
    assert (report.source, report.imported, report.skipped_duplicates, report.failed, report.messages) == ("chatgpt", 2, 0, [], 6)
    assert report.skipped == {"system": 1, "tool": 2, "non-text": 1, "attachments": 1}
    lisbon = conversations["Packing for Lisbon"]
    assert [m.content for m in lisbon] == LISBON  # the edited branch ("And for Porto?") is left out
    assert [m.sequence for m in lisbon] == [1, 2, 3, 4]
    assert [m.model for m in lisbon] == ["", "gpt-4o", "", "o3"]
    assert lisbon[0].created_at == _epoch(1730111001.5) and lisbon[3].created_at == _epoch(1730111130.5)
    with rls.privileged(reason="test"):
        conversation = Conversation.objects.get(title="Packing for Lisbon")
    assert (conversation.imported_from, conversation.external_id) == ("chatgpt", "6720f3a1-5c3e-8003-9b1e-2f4c8d7a1e01")
    assert (conversation.created_at, conversation.updated_at) == (_epoch(1730111000.0), _epoch(1730111900.25))
    assert conversation.message_count == 4 and conversation.total_cost == 0


@pytest.mark.parametrize("shape", ["conversations.json", "zip"])
def test_claude_export_imports_and_reports_the_empty_conversation(alice, shape):
    report = _import(alice, CLAUDE_SINGLE.read_bytes() if shape == "conversations.json" else claude_zip())
    assert (report.source, report.imported, report.messages) == ("claude", 1, 4)
    assert report.failed == [("Empty draft", "it has no human or assistant text")]
    assert report.skipped == {"attachments": 2, "non-text": 1}
    messages = stored(alice)["Haiku about autumn"]
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1].content.startswith("Crisp leaves drift")  # the text block, not the thinking block
    assert messages[2].content == "Now one about winter, please."  # no content blocks: the text field
    assert messages[3].content.startswith("Snow hushes")
    assert messages[0].created_at == datetime(2025, 10, 2, 8, 15, 30, 523412, tzinfo=UTC)
    assert {m.provider for m in messages if m.role == "assistant"} == {"anthropic"}


def _export(user) -> dict:
    """The JSON document of a full export's zip."""
    with tempfile.TemporaryDirectory() as folder, rls.atomic_as(user.pk):
        path = Path(folder) / "export.zip"
        _zip_write(user_id=user.pk, path=path)
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("conversations.json"))


def _without_ids(document: dict) -> dict:
    """What may differ between two exports of the same history: when, and our ids."""
    return {**document, "exported_at": None, "conversations": [{**c, "id": None} for c in document["conversations"]]}


def test_our_format_round_trips_exactly(alice):
    services.message_send(user=alice, content="first question\twith a tab")
    services.message_send(user=alice, content="second ✓ — naïve “quotes”")
    with rls.privileged(reason="test"):
        conversation = Conversation.objects.filter(user_id=alice.pk).order_by("created_at").first()
    services.conversation_update(user=alice, conversation=conversation, tags=["trip", "ideas"], summary="A summary.", is_archived=True)
    services.conversation_create(user=alice, title="Empty one")
    first = _export(alice)
    assert first["format"] == "confab.conversations" and first["version"] == 1 and len(first["conversations"]) == 3
    assert [len(c["messages"]) for c in first["conversations"]] == [2, 2, 0]

    bob = make_user(email="bob@example.com")
    report = _import(bob, json.dumps(first).encode())
    assert (report.source, report.imported, report.failed) == ("confab", 3, [])
    again = _export(bob)
    assert _without_ids(again) == _without_ids(first)
    with rls.privileged(reason="test"):
        assert set(Message.objects.filter(user_id=bob.pk).values_list("imported", flat=True)) == {True}
        assert set(Message.objects.filter(user_id=alice.pk).values_list("imported", flat=True)) == {False}


def test_importing_twice_adds_nothing_the_second_time(alice):
    first = _import(alice, chatgpt_zip())
    second = _import(alice, CHATGPT_SINGLE.read_bytes())  # the same conversations in the other shape
    assert (first.imported, second.imported, second.skipped_duplicates) == (2, 0, 2)
    assert counts() == (2, 6)


def test_two_racing_imports_of_one_file_store_it_once(alice):
    data, barrier, reports, errors = chatgpt_zip(), threading.Barrier(2), [], []

    def run():
        try:
            barrier.wait()
            reports.append(_import(alice, data))
        except Exception as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted((r.imported, r.skipped_duplicates) for r in reports) == [(0, 2), (2, 0)]
    assert counts() == (2, 6)


def test_imported_messages_are_not_metered(alice):
    redis = get_redis_connection("default")
    before = sorted(redis.keys("*"))
    _import(alice, chatgpt_zip())
    with rls.privileged(reason="test"):
        assert TokenUsage.objects.count() == 0
        assert {(m.imported, m.cost, m.input_tokens, m.output_tokens) for m in Message.objects.all()} == {(True, 0, 0, 0)}
    assert sorted(redis.keys("*")) == before  # no live counter, no rate-limit window was touched


def _chatgpt(conversations) -> bytes:
    return json.dumps(conversations).encode()


def _one_chatgpt(**changes) -> dict:
    conversation = json.loads((FIXTURES / "chatgpt_export" / "conversations-001.json").read_text())[0]
    return {**conversation, **changes}


def test_an_unusable_conversation_is_reported_and_the_rest_imported(alice):
    broken = _one_chatgpt(conversation_id="broken-1", id="broken-1", title="Broken \u202etree\x07", current_node="nowhere")
    report = _import(alice, _chatgpt([broken, _one_chatgpt()]))
    assert report.imported == 1
    assert report.failed == [("Broken tree", "its current message (current_node) is not in its message tree")]


def test_titles_lose_control_and_direction_characters_and_content_its_nul(alice):
    conversation = _one_chatgpt(title="Evil\u202e txt.exe\x1b[31m")
    node = conversation["mapping"]["f7a8b9c0-0102-4d44-8b6c-9d0e1f2a0102"]["message"]
    node["content"]["parts"] = ["nul\x00 byte and lone \ud800 surrogate"]
    _import(alice, json.dumps(conversation and [conversation]).encode())
    ((title, messages),) = stored(alice).items()
    assert title == "Evil txt.exe [31m"
    assert messages[1].content == "nul byte and lone ? surrogate"


def test_a_title_of_zero_width_characters_only_becomes_the_first_words(alice):
    """A title that shows nothing (a link no one could see on the list) is no title."""
    _import(alice, json.dumps([_one_chatgpt(title="\u200b\ufeff\u3164")]).encode())
    ((title, messages),) = stored(alice).items()
    assert title and title.split()[0] == messages[0].content.split()[0]


TRUNCATED = CHATGPT_SINGLE.read_bytes()[:-300]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (TRUNCATED, "not valid JSON"),
        (CHATGPT_SINGLE.read_bytes()[:4000], "not valid JSON"),
        (b"\xff\xfe[not utf-8", "not valid JSON|not UTF-8"),
        (b"42", "single value"),
        (b"[]", "holds no conversations"),
        (b"[1, 2]", "must be a JSON object"),
        (b'[{"title": "x", "messages": []}]', "neither ChatGPT's"),
        (b'{"conversations": [{"id": "x", "messages": []}]}', "not a Confab export"),
        (b'{"format": "confab.conversations", "version": 9, "conversations": [{"id": "x", "messages": []}]}', "Version 9"),
        (b'[{"title": "deep", "mapping": ' + b"[" * 100 + b"]" * 100 + b"}]", "nests deeper"),
        (chatgpt_zip()[:-120], "cannot be read"),
        (chatgpt_zip()[: len(chatgpt_zip()) // 2], "cannot be read|damaged"),
        (zip_bytes({"user.json": b"{}", "chat.html": b"<html>"}), "holds no conversations.json"),
        (zip_bytes({"conversations.json": CLAUDE_SINGLE.read_bytes(), "conversations-000.json": CHATGPT_SINGLE.read_bytes()}), "mixes"),
    ],
    ids=[
        "truncated json",
        "cut in the middle",
        "not utf-8",
        "scalar",
        "empty array",
        "array of numbers",
        "unknown objects",
        "object without format",
        "unknown version",
        "deeply nested",
        "truncated zip",
        "half a zip",
        "zip without conversations",
        "zip mixing services",
    ],
)
def test_a_malformed_or_wrong_file_imports_nothing_with_the_reason(alice, data, reason):
    with pytest.raises(ImportRejected, match=reason):
        _import(alice, data)
    assert counts() == (0, 0)


def test_a_bad_conversation_late_in_the_file_undoes_the_good_ones_before_it(alice):
    good = json.dumps([_one_chatgpt()])[:-1]
    with pytest.raises(ImportRejected, match="not valid JSON"):
        _import(alice, (good + ', {"mapping": {"a": [').encode())
    assert counts() == (0, 0)


def test_limits_refuse_the_whole_file(alice, settings):
    settings.CHAT_IMPORT_MAX_BYTES = 1000
    with pytest.raises(ImportRejected, match="larger than the 1000 bytes"):
        _import(alice, CHATGPT_SINGLE.read_bytes())
    settings.CHAT_IMPORT_MAX_BYTES = 10**8
    settings.CHAT_IMPORT_MAX_CONVERSATIONS = 1
    with pytest.raises(ImportRejected, match="more than 1 conversations"):
        _import(alice, chatgpt_zip())
    settings.CHAT_IMPORT_MAX_CONVERSATIONS = 100
    settings.CHAT_IMPORT_MAX_MESSAGES = 5
    with pytest.raises(ImportRejected, match="more than 5 messages"):
        _import(alice, chatgpt_zip())
    settings.CHAT_IMPORT_MAX_MESSAGES = 100
    # A person's message: at most what a send takes; a reply: at most MAX_REPLY_CONTENT (a reply
    # may be longer than the message it answers, as echo's to the longest one is).
    for node, limit, kind in (
        ("e5f6a7b8-0101-4c33-9a5b-8c9d0e1f0101", services.MAX_CONTENT, "message"),
        ("f7a8b9c0-0102-4d44-8b6c-9d0e1f2a0102", MAX_REPLY_CONTENT, "reply"),
    ):
        long = _one_chatgpt()
        long["mapping"][node]["message"]["content"] = {"content_type": "text", "parts": ["x" * (limit + 1)]}
        with pytest.raises(ImportRejected, match=f"A {kind} in .* is longer than {limit} characters"):
            _import(alice, _chatgpt([_one_chatgpt(conversation_id="other", id="other"), long]))
        assert counts() == (0, 0)
        long["mapping"][node]["message"]["content"]["parts"] = ["x" * limit]
        _import(alice, _chatgpt([long]))
        assert counts()[0] == 1
        with rls.privileged(reason="test"):
            Conversation.objects.filter(user_id=alice.pk).delete()


def test_a_zip_bomb_is_refused_by_its_declared_size(alice, settings):
    settings.CHAT_IMPORT_MAX_UNCOMPRESSED_BYTES = 1024 * 1024
    bomb = zip_bytes({"conversations.json": CHATGPT_SINGLE.read_bytes()[:-1] + b" " * (8 * 1024 * 1024) + b"]"})
    assert len(bomb) < 100_000
    with pytest.raises(ImportRejected, match="unpack to more than the 1 MB"):
        _import(alice, bomb)
    assert counts() == (0, 0)


def test_a_zip_whose_header_understates_its_size_is_refused(alice, settings):
    """The sizes in the headers say 600 bytes; the member inflates to 8 MB: reading stops at the limit, whatever was declared."""
    settings.CHAT_IMPORT_MAX_UNCOMPRESSED_BYTES = 1024 * 1024
    real = CHATGPT_SINGLE.read_bytes()[:-1] + b" " * (8 * 1024 * 1024) + b"]"
    data = bytearray(zip_bytes({"conversations.json": real}))
    size = len(real).to_bytes(4, "little")
    assert data.count(size) == 2  # the local header's and the central directory's
    data[:] = data.replace(size, (600).to_bytes(4, "little"))
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("conversations.json").file_size == 600
    with pytest.raises(ImportRejected):
        _import(alice, bytes(data))
    assert counts() == (0, 0)


def test_the_command_prints_the_report_and_refuses_bad_files_and_users(alice, tmp_path):
    export = tmp_path / "chatgpt.zip"
    export.write_bytes(chatgpt_zip())
    out = io.StringIO()
    call_command("import_conversations", str(export), "--user", "ALICE@example.com", stdout=out)
    assert "Source: ChatGPT" in out.getvalue() and "Imported: 2 conversation(s), 6 message(s)" in out.getvalue()
    assert "Not imported: 1 attachments, 1 non-text, 1 system, 2 tool" in out.getvalue()
    call_command("import_conversations", str(export), "--user", alice.email, stdout=(again := io.StringIO()))
    assert "Skipped as duplicates: 2" in again.getvalue()
    broken = tmp_path / "broken.json"
    broken.write_bytes(TRUNCATED)
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("import_conversations", str(broken), "--user", alice.email)
    with pytest.raises(CommandError, match="no active user with the email nobody@example.com"):
        call_command("import_conversations", str(export), "--user", "nobody@example.com")
    assert counts() == (2, 6)


def test_an_import_runs_under_the_users_own_context_never_privileged(alice):
    entered = []
    rls.privileged_entered.connect(receiver := lambda sender, reason, **kwargs: entered.append(reason), weak=False)
    try:
        report = _import(alice, chatgpt_zip())
    finally:
        rls.privileged_entered.disconnect(receiver)
    assert report.imported == 2 and entered == []


def test_a_file_is_read_as_a_stream_never_loaded_whole(alice, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the whole file was loaded at once")

    monkeypatch.setattr(json, "load", refuse)
    monkeypatch.setattr(json, "loads", refuse)
    for data in (chatgpt_zip(), CHATGPT_SINGLE.read_bytes(), claude_zip()):
        _import(alice, data)
    assert counts() == (3, 10)
