"""Chat's state-changing endpoints (besides the metered send itself) racing each other or a send:
two requests for the same row or invariant, ordered by events and PostgreSQL's lock table
(config/tests/races.py), never by sleeping for luck. Each test fails on the code it was written
against, because of the bug its docstring names."""

import io
import json
import threading
import zipfile

import pytest
from asgiref.sync import async_to_sync
from django.db import connections
from django.test import Client
from django.utils import timezone

from accounts.tests.test_api import key_client
from chat import services, sharing
from chat.models import Conversation, Persona, ShareLink
from chat.porting import exporter, importer
from config.db import rls
from config.tests.races import race_while_held, until, waiting_locks

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"


def _client(user):
    client = key_client(user, scopes=("chat:read", "chat:write"))
    client.raise_request_exception = False
    return client


# --- A conversation's persona -------------------------------------------------------------


@pytest.mark.parametrize("door", ["api", "page"])
def test_renaming_a_conversation_while_its_persona_is_deleted_is_not_a_deadlock(alice, monkeypatch, door):
    """PATCH /conversations/{id} with the conversation's own persona_id (what the page's Save always
    sends: chat/views.py conversation_update posts the persona field with the title) while DELETE
    /personas/{id} of that persona runs. The PATCH locks the conversation (services._still_there),
    then the persona (_persona_held); the delete locks the persona (persona_delete's _still_there),
    then its SET NULL updates the conversation. Opposite orders.
    Was: PostgreSQL detects a deadlock and aborts one of them: a 500 (the rename, or the delete).
    Should: one waits for the other: the rename answers 200 and the delete 204, the conversation
    left with no persona."""
    client = _client(alice)
    persona = services.persona_create(user=alice, name="Brief", system_prompt="Be brief.")
    conversation = services.conversation_create(user=alice, title="old", persona=persona)
    if door == "api":
        body = {"title": "renamed", "persona_id": str(persona.pk)}
        rename = lambda: client.patch(f"{API}/conversations/{conversation.pk}", body, format="json").status_code  # noqa: E731
    else:
        page = Client(raise_request_exception=False)
        page.force_login(alice)
        form = {"title": "renamed", "tags": "", "persona": str(persona.pk)}
        rename = lambda: page.post(f"/chat/{conversation.pk}/edit/", form).status_code  # noqa: E731
    outcome = race_while_held(
        monkeypatch,
        services,
        "_still_there",  # the rename holds the conversation's row
        rename,
        lambda: client.delete(f"{API}/personas/{persona.pk}").status_code,
        "the persona's delete waits on the conversation the rename holds",
    )
    assert outcome == {"first": 200 if door == "api" else 302, "second": 204}, outcome
    with rls.privileged(reason="test"):
        stored = Conversation.objects.get(pk=conversation.pk)
        assert (stored.title, stored.persona_id) == ("renamed", None)
        assert not Persona.objects.filter(pk=persona.pk).exists()


def _prompt_of_the_send(monkeypatch) -> list:
    """The messages each model call was given (the echo provider answers them)."""
    seen = []
    real = services._complete

    async def spying(pending):
        seen.append([(m.role, m.content) for m in pending.request.messages])
        return await real(pending)

    monkeypatch.setattr(services, "_complete", spying)
    return seen


def test_a_send_that_waited_for_a_persona_switch_uses_the_old_or_the_new_persona_not_none(alice, monkeypatch):
    """PATCH /conversations/{id} {persona_id: new} on a conversation whose persona is `old`, while a
    send to it is under way (two tabs, or an API client). The PATCH holds the conversation's row; the
    send's locking read (services._SEND_TARGET_SQL: the conversation LEFT JOIN its persona, FOR UPDATE
    OF c) waits, then PostgreSQL re-checks the row with the conversation's new version (persona_id =
    new) joined to the persona row it read before the wait (`old`): the join no longer matches, the
    LEFT JOIN yields no persona, and the send goes on as if the conversation had none.
    Was: the call goes out with no system prompt at all (and the default model, not the persona's),
    neither the old persona's nor the new one's.
    Should: the send uses the persona the conversation names when it gets the row (new), or the one
    it named when the send began (old); never none."""
    client = _client(alice)
    old = services.persona_create(user=alice, name="Old", system_prompt="You are the old persona.")
    new = services.persona_create(user=alice, name="New", system_prompt="You are the new persona.")
    conversation = services.conversation_create(user=alice, title="t", persona=old)
    seen = _prompt_of_the_send(monkeypatch)
    outcome = race_while_held(
        monkeypatch,
        services,
        "_still_there",  # the PATCH holds the conversation's row
        lambda: client.patch(f"{API}/conversations/{conversation.pk}", {"persona_id": str(new.pk)}, format="json").status_code,
        lambda: services.message_send(user=alice, content="hello", conversation_id=conversation.pk).message.status,
        "the send waits on the conversation the PATCH holds",
    )
    assert outcome == {"first": 200, "second": "complete"}, outcome
    assert len(seen) == 1
    system = [content for role, content in seen[0] if role == "system"]
    assert system in (["You are the new persona."], ["You are the old persona."]), seen[0]


def test_a_rename_that_waited_for_a_send_answers_the_conversation_as_it_is(alice, monkeypatch):
    """PATCH /conversations/{id} {title} while a send to it holds the row (between its lock and its
    insert). Was: the answer was the copy read before the PATCH waited: message_count 0 though the
    send stored two messages. Should: the answer shows the row as stored."""
    client = _client(alice)
    conversation = services.conversation_create(user=alice, title="t")
    outcome = race_while_held(
        monkeypatch,
        services,
        "_send_target",  # the send holds the conversation's row
        lambda: services.message_send(user=alice, content="hello", conversation_id=conversation.pk).message.status,
        lambda: client.patch(f"{API}/conversations/{conversation.pk}", {"title": "renamed"}, format="json").json(),
        "the PATCH waits on the conversation the send holds",
    )
    assert outcome["first"] == "complete"
    assert (outcome["second"]["title"], outcome["second"]["message_count"]) == ("renamed", 2), outcome["second"]


# --- Imports ------------------------------------------------------------------------------


def _confab_file(persona_name: str, count: int) -> io.BytesIO:
    now = timezone.now().isoformat()
    conversations = [
        {
            "id": f"c{n}",
            "title": f"Imported {n}",
            "persona": persona_name,
            "created_at": now,
            "updated_at": now,
            "messages": [{"sequence": 1, "role": "user", "content": f"hello {n}", "created_at": now}],
        }
        for n in range(count)
    ]
    return io.BytesIO(json.dumps({"format": "confab.conversations", "version": 1, "conversations": conversations}).encode())


def _import_paused_after_first(monkeypatch, user, persona_name):
    """An import on a thread of its own, paused (its transaction open) after storing its first conversation."""
    paused, go, outcome = threading.Event(), threading.Event(), {}
    real = importer._store

    def store_then_pause(**kwargs):
        stored = real(**kwargs)
        if threading.current_thread().name == "import" and not paused.is_set():
            paused.set()
            assert go.wait(60)
        return stored

    monkeypatch.setattr(importer, "_store", store_then_pause)

    def run():
        try:
            outcome["import"] = importer.conversations_import(user=user, file=_confab_file(persona_name, 2)).imported
        except Exception as exc:  # noqa: BLE001
            outcome["import"] = repr(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="import")
    thread.start()
    assert paused.wait(30)
    return thread, go, outcome


def test_deleting_a_persona_while_an_import_names_it_does_not_fail_the_whole_import(alice, monkeypatch):
    """An import (a Celery task, one transaction that may run for most of an hour) of a Confab export
    whose conversations name the persona "Brief": the importer looks the persona up once, unlocked
    (chat/porting/importer.py _store), and gives every conversation its id. The user deletes the
    persona on the personas page meanwhile: nothing waits (the foreign key is checked at COMMIT), the
    delete's SET NULL sees none of the import's uncommitted conversations, the persona goes.
    Was: the import's next conversation is refused by the conversation's row policy (persona_id must
    be one of the user's personas; or, at COMMIT, by the deferred foreign key): the whole import
    fails, nothing of the file imported (the job says "failed unexpectedly").
    Should: as when a conversation takes a persona (services._persona_held): the delete waits for the
    import and clears its conversations' persona, or the import stores them without it."""
    persona = services.persona_create(user=alice, name="Brief", system_prompt="Be brief.")
    importing, go, outcome = _import_paused_after_first(monkeypatch, alice, "Brief")

    def delete():
        try:
            services.persona_delete(user=alice, persona=persona)
            outcome["delete"] = "deleted"
        except Exception as exc:  # noqa: BLE001  the assertion shows it
            outcome["delete"] = repr(exc)
        finally:
            connections.close_all()

    deleting = threading.Thread(target=delete)
    deleting.start()
    until(lambda: "delete" in outcome or waiting_locks() >= 1, "the persona's delete ends or waits on the import")
    go.set()
    for thread in (importing, deleting):
        thread.join(30)
    assert outcome == {"import": 2, "delete": "deleted"}, outcome
    with rls.privileged(reason="test"):
        assert Conversation.objects.filter(user_id=alice.pk, imported_from="confab").count() == 2
        assert not Persona.objects.filter(pk=persona.pk).exists()


@pytest.mark.parametrize("edit", ["persona_update", "conversation_rename"])
def test_editing_a_persona_an_import_names_does_not_wait_for_the_whole_import(alice, monkeypatch, edit):
    """The user imports a Confab export whose conversations name the persona "Brief" (a Celery task:
    one transaction that may run up to 55 minutes, chat/porting/jobs.py). The importer now keeps the
    persona with FOR KEY SHARE (importer._persona_kept), whose docstring says "edits go on, a delete
    waits". Meanwhile the user edits the persona's system prompt (PATCH /personas/{id}: persona_update
    locks the row with select_for_update(), FOR UPDATE), or saves a conversation's details form, which
    always posts its persona (conversation_update -> _persona_held: FOR UPDATE too). FOR UPDATE
    conflicts with FOR KEY SHARE.
    Was: the edit (a web request, holding its pooled connection and transaction) waits on the lock
    for as long as the import runs: minutes, up to the import's time limit.
    Should: edits go on while an import holds the persona (lock it FOR NO KEY UPDATE, i.e.
    select_for_update(no_key=True), where the key is not changed): the edit commits at once."""
    persona = services.persona_create(user=alice, name="Brief", system_prompt="Be brief.")
    conversation = services.conversation_create(user=alice, title="old", persona=persona)
    importing, go, outcome = _import_paused_after_first(monkeypatch, alice, "Brief")
    done = threading.Event()

    def do_edit():
        try:
            if edit == "persona_update":
                services.persona_update(user=alice, persona=persona, system_prompt="Be very brief.")
            else:
                services.conversation_update(user=alice, conversation=conversation, title="renamed", persona=persona)
            outcome["edit"] = "done"
        except Exception as exc:  # noqa: BLE001
            outcome["edit"] = repr(exc)
        finally:
            done.set()
            connections.close_all()

    editing = threading.Thread(target=do_edit, name="edit")
    editing.start()
    finished_while_importing = done.wait(30)
    blocked = waiting_locks()
    go.set()
    for thread in (importing, editing):
        thread.join(60)
    assert outcome.get("import") == 2, outcome
    assert finished_while_importing, f"the edit waited on the import's lock ({blocked} lock waiter(s)) until the import ended"
    assert outcome["edit"] == "done", outcome


# --- Share links --------------------------------------------------------------------------


def test_two_revokes_of_one_link_at_once_keep_the_first_time(alice, monkeypatch):
    """DELETE /shares/{id} twice at once (a double click, two tabs). Each reads the link (not
    revoked), the first locks it and saves revoked_at, the second waits on the lock and then saves
    `share_link.revoked_at or now()` from the copy it read before the wait (chat/sharing.py
    share_link_revoke): its own, later time.
    Was: the stored revoked_at is the second request's time; the first's answer (and the audit of it)
    named another. share_link_revoke's promise, "revoking twice keeps the first time", is broken.
    Should: the second revoke keeps the time the first stored."""
    client = _client(alice)
    conversation = services.message_send(user=alice, content="hello").conversation
    link, _token = sharing.share_link_create(user=alice, conversation=conversation)
    times = []
    real_save = ShareLink.save

    def recording_save(self, *args, **kwargs):
        times.append(self.revoked_at)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(ShareLink, "save", recording_save)
    read_by_second = threading.Event()
    real_get = sharing.share_link_get

    def get(**kwargs):
        found = real_get(**kwargs)
        if threading.current_thread().name == "second":
            read_by_second.set()
        return found

    monkeypatch.setattr(sharing, "share_link_get", get)
    outcome = race_while_held(
        monkeypatch,
        ShareLink,
        "save",  # the first has saved its revoked_at, uncommitted
        lambda: client.delete(f"{API}/shares/{link.pk}").status_code,
        lambda: client.delete(f"{API}/shares/{link.pk}").status_code,
        "the second revoke waits on the link the first holds",
    )
    assert outcome == {"first": 204, "second": 204}, outcome
    assert read_by_second.is_set()
    with rls.privileged(reason="test"):
        stored = ShareLink.objects.get(pk=link.pk).revoked_at
    assert stored == times[0], (stored, times)


# --- Exports ------------------------------------------------------------------------------


def test_a_conversation_deleted_while_the_export_runs_is_in_both_parts_of_the_zip_or_in_neither(alice, monkeypatch, settings, tmp_path):
    """An export of everything (the Celery task, up to 25 minutes for a large account) wrote the
    zip's conversations.json from one pass over the user's conversations, then its markdown/ files
    from a second pass (chat/porting/exporter.py _zip_write), each query under READ COMMITTED, so each
    saw what was committed when it ran. The user deletes a conversation (or sends a message) while
    the build is under way.
    Was: the zip disagreed with itself: conversations.json (and the job's conversation_count) held
    two conversations, markdown/ one; a send in the gap left the two parts with different messages.
    Should: both parts, and the count, show the same conversations: each read once for both."""
    settings.CHAT_EXPORT_DIR = tmp_path / "exports"
    kept = services.message_send(user=alice, content="kept").conversation
    gone = services.message_send(user=alice, content="deleted during the export").conversation
    job = exporter.export_job_create(user=alice)
    paused, go, outcome = threading.Event(), threading.Event(), {}
    real = exporter.selectors.message_list

    def read_then_pause(**kwargs):
        messages = real(**kwargs)
        if threading.current_thread().name == "export" and not paused.is_set():
            list(messages)  # the first conversation's messages read; the rest to come
            paused.set()
            assert go.wait(30)
        return messages

    monkeypatch.setattr(exporter.selectors, "message_list", read_then_pause)

    def build():
        try:
            outcome["export"] = exporter.export_build(job_id=job.pk, user_id=alice.pk)
        finally:
            connections.close_all()

    building = threading.Thread(target=build, name="export")
    building.start()
    assert paused.wait(30)
    services.conversation_delete(user=alice, conversation=gone)  # the user, in another tab
    go.set()
    building.join(60)
    built = outcome["export"]
    assert built.status == "ready", built.error
    with zipfile.ZipFile(exporter.export_path(job.pk)) as archive:
        in_json = {c["id"] for c in json.loads(archive.read("conversations.json"))["conversations"]}
        markdown = [name for name in archive.namelist() if name.startswith("markdown/")]
    assert str(kept.pk) in in_json
    assert len(in_json) == len(markdown) == built.conversation_count, (in_json, markdown, built.conversation_count)


async def _joined(chunks) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def test_downloading_an_export_as_a_newer_one_replaces_it_is_sent_whole_not_a_500(alice, monkeypatch, settings, tmp_path):
    """GET /api/v1/exports/{id}/download of a ready export while a newer export finishes: the
    download checks the job is ready and its file exists (chat/porting/exporter.py export_open), the
    newer build commits and removes the older zip (_older_exports_expire's on_commit), then the
    response opens the file (config/downloads.py file_download_response: path.open, path.stat).
    (exports_expire removing an expired file is the same race.)
    Was: FileNotFoundError: a 500.
    Should: the file opened where it is checked: the download that was found ready is sent whole
    (the open file outlives its name), and one whose file is gone is the usual 404."""
    settings.CHAT_EXPORT_DIR = tmp_path / "exports"
    client = _client(alice)
    services.message_send(user=alice, content="hello")
    older = exporter.export_build(job_id=exporter.export_job_create(user=alice).pk, user_id=alice.pk)
    assert older.status == "ready"
    checked, go, outcome = threading.Event(), threading.Event(), {}
    real = exporter.export_open

    def open_then_pause(**kwargs):
        found = real(**kwargs)
        if threading.current_thread().name == "download":
            checked.set()
            assert go.wait(30)
        return found

    monkeypatch.setattr(exporter, "export_open", open_then_pause)

    def download():
        try:
            response = client.get(f"{API}/exports/{older.pk}/download")
            outcome["download"] = response.status_code
            outcome["body"] = async_to_sync(_joined)(response.streaming_content) if response.status_code == 200 else b""
        finally:
            connections.close_all()

    downloading = threading.Thread(target=download, name="download")
    downloading.start()
    assert checked.wait(30)
    newer = exporter.export_build(job_id=exporter.export_job_create(user=alice).pk, user_id=alice.pk)
    assert newer.status == "ready" and not exporter.export_path(older.pk).exists()
    go.set()
    downloading.join(30)
    assert outcome["download"] == 200, outcome
    assert zipfile.ZipFile(io.BytesIO(outcome["body"])).read("conversations.json")
