"""Export (chat/porting/): one conversation as JSON or Markdown (page and API); all of them as a
zip built by a real Celery worker behind a signed, owner-only link that expires and whose file
a periodic task removes; export jobs are their owner's alone (pages, API, raw SQL as `app`)."""

import io
import json
import time
import zipfile
from datetime import timedelta

import psycopg
import pytest
from django.test import Client
from django.utils import timezone

from accounts.tests.factories import make_user
from accounts.tests.test_api import assert_error, key_client, session_client
from chat import services
from chat.models import Conversation, ExportJob, ImportJob
from chat.porting import exporter
from chat.porting.importer import conversations_import
from chat.tasks import exports_expire_task
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
CHAT = ("chat:read", "chat:write")


@pytest.fixture
def bob(alice):
    return make_user(email="bob@example.com")


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _conversation(user, content="how do tides work?"):
    reply = services.message_send(user=user, content=content)
    with rls.privileged(reason="test"):
        return Conversation.objects.get(pk=reply.conversation.pk)


def test_one_conversation_downloads_as_json_that_imports_and_as_markdown(alice, bob):
    conversation = _conversation(alice)
    client = _client(alice)
    page = client.get(f"/chat/{conversation.pk}/")
    assert f"/chat/{conversation.pk}/export/?format=json" in page.content.decode()
    as_json = client.get(f"/chat/{conversation.pk}/export/", {"format": "json"})
    assert as_json.status_code == 200 and as_json["Content-Disposition"].startswith('attachment; filename="conversation-how-do-tides')
    document = json.loads(as_json.content)
    assert document["format"] == "confab.conversations" and [c["id"] for c in document["conversations"]] == [str(conversation.pk)]
    assert [m["content"] for m in document["conversations"][0]["messages"]] == ["how do tides work?", "You said: how do tides work?"]
    as_md = client.get(f"/chat/{conversation.pk}/export/", {"format": "md"})
    assert as_md["Content-Type"].startswith("text/markdown")
    assert as_md.content.decode().startswith("# how do tides work?\n") and "## Assistant (echo/echo-1)" in as_md.content.decode()
    assert client.get(f"/chat/{conversation.pk}/export/", {"format": "pdf"}).status_code == 400
    assert _client(bob).get(f"/chat/{conversation.pk}/export/", {"format": "json"}).status_code == 404
    report = conversations_import(user=bob, file=io.BytesIO(as_json.content))
    assert (report.source, report.imported) == ("confab", 1)


def test_the_api_exports_one_conversation_and_refuses_another_users(alice, bob):
    conversation = _conversation(alice)
    client = key_client(alice, scopes=CHAT)
    response = client.get(f"{API}/conversations/{conversation.pk}/export", {"format": "md"})
    assert response.status_code == 200 and b"how do tides work?" in response.content
    assert json.loads(client.get(f"{API}/conversations/{conversation.pk}/export").content)["version"] == 1
    assert_error(client.get(f"{API}/conversations/{conversation.pk}/export", {"format": "exe"}), 400)
    assert_error(key_client(bob, scopes=CHAT).get(f"{API}/conversations/{conversation.pk}/export"), 404)


def _ready(job_id, timeout=30.0) -> ExportJob:
    deadline = time.monotonic() + timeout
    while True:
        with rls.privileged(reason="test"):
            job = ExportJob.objects.get(pk=job_id)
        if job.status != ExportJob.Status.PENDING:
            return job
        assert time.monotonic() < deadline, "the export stayed pending"
        time.sleep(0.1)


def test_the_whole_export_is_built_by_the_worker_and_its_link_is_the_owners_until_it_expires(alice, bob, celery_worker, settings, tmp_path):
    settings.CHAT_EXPORT_DIR = tmp_path / "exports"
    _conversation(alice, "first: tides")
    _conversation(alice, "second: \u202emoons")
    client = _client(alice)
    assert client.post("/chat/porting/export/").status_code == 302
    with rls.privileged(reason="test"):
        job_id = ExportJob.objects.get(user_id=alice.pk).pk
    job = _ready(job_id)
    assert (job.status, job.conversation_count) == ("ready", 2)
    page = client.get("/chat/porting/").content.decode()
    link = page.split('data-testid="export-download"')[0].rsplit('href="', 1)[1].split('"')[0]
    assert link.startswith("/chat/exports/")
    download = client.get(link)
    assert download.status_code == 200 and download["Content-Disposition"].startswith("attachment")
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download)))  # an async body, consumed as the test client can
    names = sorted(archive.namelist())
    assert names[0] == "conversations.json" and len([n for n in names if n.startswith("markdown/")]) == 2
    exported = json.loads(archive.read("conversations.json"))
    assert [c["messages"][0]["content"] for c in exported["conversations"]] == ["first: tides", "second: \u202emoons"]

    assert _client(bob).get(link).status_code == 404  # the link is not a bearer token
    assert client.get(link[:-3] + "xyz/").status_code == 404  # forged
    assert_error(session_client(bob).get(f"{API}/exports/{job_id}"), 404)
    assert_error(key_client(bob, scopes=CHAT).get(f"{API}/exports/{job_id}/download"), 404)
    api = key_client(alice, scopes=CHAT)
    assert api.get(f"{API}/exports/{job_id}").json()["download_url"] == f"/api/v1/exports/{job_id}/download"
    assert api.get(f"{API}/exports/{job_id}/download").status_code == 200

    with rls.privileged(reason="test: the export's day passes"):
        ExportJob.objects.filter(pk=job_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get(link).status_code == 404
    assert exporter.export_path(job_id).exists()
    assert exports_expire_task.delay().get(timeout=30) == 1
    assert not exporter.export_path(job_id).exists()
    assert api.get(f"{API}/exports/{job_id}").json()["status"] == "expired"


def test_the_api_starts_an_export_and_reports_it(alice, celery_worker, settings, tmp_path):
    settings.CHAT_EXPORT_DIR = tmp_path / "exports"
    _conversation(alice)
    api = key_client(alice, scopes=CHAT)
    started = api.post(f"{API}/exports")
    assert started.status_code == 202 and started.json()["status"] == "pending" and started.json()["download_url"] is None
    _ready(started.json()["id"])
    body = api.get(f"{API}/exports/{started.json()['id']}").json()
    assert (body["status"], body["conversation_count"]) == ("ready", 1)
    assert_error(api.get(f"{API}/exports/00000000-0000-4000-8000-000000000000"), 404)


def test_another_user_cannot_read_or_write_export_jobs_with_raw_sql(alice, bob, raw_app_connection):
    jobs = {user: exporter.export_job_create(user=user) for user in (alice, bob)}
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, true)", [str(alice.pk)])
        cur.execute("SELECT id FROM chat_exportjob")
        assert cur.fetchall() == [(jobs[alice].pk,)]
        cur.execute("UPDATE chat_exportjob SET status = 'ready' WHERE id = %s", [jobs[bob].pk])
        assert cur.rowcount == 0
        cur.execute("DELETE FROM chat_exportjob WHERE id = %s", [jobs[bob].pk])
        assert cur.rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO chat_exportjob (id, user_id, status, conversation_count, size, error, created_at, expires_at)"
                " VALUES (gen_random_uuid(), %s, 'ready', 0, 0, '', now(), now())",
                [bob.pk],
            )
    raw_app_connection.rollback()
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM chat_exportjob")  # no context: nothing
        assert cur.fetchone()[0] == 0


def test_the_settings_page_refuses_a_missing_or_oversized_file_inline(alice, settings, tmp_path):
    """The form's own checks stay inline errors (400); what the file holds is the import job's to judge
    (test_import_jobs.py)."""
    from chat.tests.porting_files import chatgpt_zip

    settings.CHAT_IMPORT_DIR = tmp_path / "imports"
    client = _client(alice)
    assert 'href="/chat/porting/"' in client.get("/settings/profile/").content.decode()
    missing = client.post("/chat/porting/", {})
    assert missing.status_code == 400 and "Choose a file to import." in missing.content.decode()
    settings.CHAT_IMPORT_MAX_BYTES = 100
    upload = io.BytesIO(chatgpt_zip())
    upload.name = "chatgpt-export.zip"
    too_big = client.post("/chat/porting/", {"file": upload})
    assert too_big.status_code == 400, too_big
    assert "larger than the 100 bytes an import may be" in too_big.content.decode()
    with rls.privileged(reason="test"):
        assert not ImportJob.objects.exists()
    assert not settings.CHAT_IMPORT_DIR.exists()


def test_staff_see_export_jobs_read_only(alice, client):
    job = exporter.export_job_create(user=alice)
    client.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    listing = client.get("/admin/chat/exportjob/")
    assert listing.status_code == 200 and str(job.pk) in listing.content.decode()
    assert client.get(f"/admin/chat/exportjob/{job.pk}/change/").status_code == 200
    assert client.get("/admin/chat/exportjob/add/").status_code == 403
