"""Attack probes on import and export (#17): hostile files and ids are refused or reported with
a reason, never a 500, and what they store can be read back on every page."""

import io
import json
import zipfile

import pytest
from django.test import Client

from analytics.models import TokenUsage
from chat import services
from chat.models import Conversation, Message
from chat.porting.base import ImportRejected
from chat.porting.importer import conversations_import
from chat.tests.porting_files import zip_bytes
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _chatgpt(message_extra=None, **conversation):
    message = {
        "id": "m1",
        "author": {"role": "user"},
        "content": {"content_type": "text", "parts": ["Hello there"]},
        "create_time": 1700000000.0,
        **(message_extra or {}),
    }
    return {
        "id": "c1",
        "title": "Probe",
        "create_time": 1700000000.0,
        "current_node": "n1",
        "mapping": {"n0": {"id": "n0", "message": None, "parent": None}, "n1": {"id": "n1", "message": message, "parent": "n0"}},
        **conversation,
    }


def _claude(**message_extra):
    message = {"uuid": "m1", "sender": "human", "text": "Hello there", "created_at": "2024-01-01T00:00:00Z", **message_extra}
    return {"uuid": "c1", "name": "Probe", "created_at": "2024-01-01T00:00:00Z", "chat_messages": [message]}


def _ours(**message_extra):
    message = {"sequence": 1, "role": "user", "content": "Hello there", "created_at": "2024-01-01T00:00:00Z", **message_extra}
    conversation = {"id": "c1", "title": "Probe", "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}
    return {"format": "confab.conversations", "version": 1, "conversations": [{**conversation, "messages": [message]}]}


def _outcome(user, document) -> str:
    """'imported', 'failed: reason' or 'rejected: reason'; any other exception fails the probe."""
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    try:
        report = conversations_import(user=user, file=io.BytesIO(data))
    except ImportRejected as exc:
        return f"rejected: {exc.message}"
    return "imported" if report.imported else f"failed: {report.failed}"


def _patched_zip(*, flags: int = 0, method: int | None = None) -> bytes:
    """A ZIP whose one conversations.json member claims encryption (flags) or an unknown compression method."""
    raw = bytearray(zip_bytes({"conversations.json": json.dumps([_claude()]).encode()}))
    central = raw.find(b"PK\x01\x02")
    for flag_at, method_at in ((6, 8), (central + 8, central + 10)):  # the local header, then the central directory
        raw[flag_at] |= flags
        if method is not None:
            raw[method_at : method_at + 2] = method.to_bytes(2, "little")
    return bytes(raw)


def _corrupt_zip(method: int) -> bytes:
    """A ZIP whose conversations.json member's compressed bytes are garbled (its headers intact)."""
    members = json.dumps([_claude() | {"uuid": f"c{n}"} for n in range(200)]).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr("conversations.json", members)
    raw = bytearray(buffer.getvalue())
    for at in range(60, 200):
        raw[at] ^= 0x5A
    return bytes(raw)


PROBES = {
    # Found: each of these was a TypeError or a DataError (a 500 on the upload page).
    "chatgpt attachments a number": ([_chatgpt({"metadata": {"attachments": 5}})], "imported"),
    "claude attachments a number": ([_claude(attachments=5)], "imported"),
    "claude files true": ([_claude(files=True)], "imported"),
    "claude sender a list": ([_claude(sender=["human"])], "failed"),
    "chatgpt parent a list": ([_chatgpt(mapping={"n1": {"message": None, "parent": ["n0"]}})], "failed"),
    "ours cost beyond the column": (_ours(cost="1e30"), "failed"),
    "chatgpt model_slug with NUL": ([_chatgpt({"author": {"role": "assistant"}, "metadata": {"model_slug": "gpt\x00-4"}})], "imported"),
    "chatgpt default_model_slug with a lone surrogate": (
        b'[{"id": "c1", "current_node": "n1", "default_model_slug": "gpt-\\ud800", "mapping": {"n1": {"parent": null,'
        b' "message": {"author": {"role": "assistant"}, "content": {"content_type": "text", "parts": ["hi"]}}}}}]',
        "imported",
    ),
    "chatgpt id with NUL": ([_chatgpt(id="c\x001")], "imported"),
    "claude uuid with a lone surrogate": (b'[{"uuid": "c\\ud800", "chat_messages": [{"sender": "human", "text": "hi"}]}]', "imported"),
    "ours provider and model with NUL": (_ours(provider="open\x00ai", model="gpt\x00"), "imported"),
    "ours persona with NUL": ({**_ours(), "conversations": [{**_ours()["conversations"][0], "persona": "Pi\x00rate"}]}, "imported"),
    "zip member corrupt (lzma)": (_corrupt_zip(zipfile.ZIP_LZMA), "rejected"),
    "zip member corrupt (bzip2)": (_corrupt_zip(zipfile.ZIP_BZIP2), "rejected"),
    "zip member encrypted": (_patched_zip(flags=0x1), "rejected"),
    "zip member of an unknown compression method": (_patched_zip(method=99), "rejected"),
    # Held: kept as regression probes.
    "chatgpt current_node absent": ([_chatgpt(current_node=None)], "failed"),
    "chatgpt parent missing": ([_chatgpt(mapping={"n1": {"message": None, "parent": "gone"}})], "failed"),
    "chatgpt create_time a string": ([_chatgpt({"create_time": "yesterday"}, create_time="today")], "imported"),
    "chatgpt NaN": (json.dumps([_chatgpt({"create_time": float("nan")})]).encode(), "rejected"),
    "conversations-000.json an object": (zip_bytes({"conversations-000.json": b'{"a": 1}'}), "rejected"),
    "zip with a directory and ../../x": (zip_bytes({"d/": b"", "../../conversations.json": json.dumps([_claude()]).encode()}), "imported"),
    "zip inside a zip": (zip_bytes({"inner.zip": zip_bytes({"conversations.json": b"[]"})}), "rejected"),
    "0-byte file": (b"", "rejected"),
}


@pytest.mark.parametrize("name", list(PROBES))
def test_a_hostile_file_is_imported_reported_or_refused_never_an_error(alice, name):
    document, expected = PROBES[name]
    assert _outcome(alice, document).split(":")[0] == expected


def test_duplicate_ids_inside_one_file_store_one_conversation(alice):
    assert _outcome(alice, [_claude(), _claude()]) == "imported"
    with rls.privileged(reason="test"):
        assert Conversation.objects.filter(user_id=alice.pk).count() == 1


TIMES = {
    "claude before year 1 in UTC": [_claude(created_at="0001-01-01T00:00:00+14:00")],
    "claude after year 9999 in UTC": [_claude(created_at="9999-12-31T23:59:59-14:00")],
    "ours before year 1 in UTC": _ours(created_at="0001-01-01T00:30:00+01:00"),
}


@pytest.mark.parametrize("name", list(TIMES))
def test_a_time_outside_what_can_be_read_back_never_breaks_the_pages(alice, name):
    outcome = _outcome(alice, TIMES[name])
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    assert client.get("/chat/").status_code == 200, outcome
    with rls.privileged(reason="test"):
        ids = list(Conversation.objects.filter(user_id=alice.pk).values_list("id", flat=True))
    for conversation_id in ids:
        assert client.get(f"/chat/{conversation_id}/").status_code == 200, outcome


def test_an_imported_reply_marked_streaming_is_never_metered_by_the_stale_stream_sweep(alice):
    document = _ours(role="assistant", status="streaming", provider="openai", model="gpt-4o-mini", metadata={"request_id": "forged"})
    assert _outcome(alice, document) == "imported"
    services.streams_close_stale(older_than_minutes=1)
    with rls.privileged(reason="test"):
        assert not TokenUsage.objects.exists()
        assert list(Message.objects.values_list("status", "imported")) == [("interrupted", True)]
