"""Imports run in a Celery task, not in the web request (chat/porting/jobs.py): the page and the API
save the upload to a private file named by the job, answer at once, and a real worker imports it and
keeps the report on the job; a job is its owner's alone (page, API, raw SQL as `app`); a task
delivered twice imports once; the file is removed when the job ends or goes stale."""

import logging
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from celery.contrib.testing.worker import start_worker
from celery.exceptions import SoftTimeLimitExceeded
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.utils import timezone

from accounts.tests.factories import make_user
from accounts.tests.test_api import assert_error, key_client, session_client
from chat.models import Conversation, ImportJob, Message
from chat.porting import jobs
from chat.tasks import import_jobs_fail_stale_task
from chat.tests.porting_files import CLAUDE_SINGLE, chatgpt_zip
from config.db import rls
from config.tests.races import on_a_thread, until, waiting_locks

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
CHAT = ("chat:read", "chat:write")


@pytest.fixture(autouse=True)
def import_dir(settings, tmp_path):
    settings.CHAT_IMPORT_DIR = tmp_path / "imports"
    return settings.CHAT_IMPORT_DIR


@pytest.fixture
def bob(alice):
    return make_user(email="bob@example.com")


def _upload(data: bytes, name: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data)


def _job(user) -> ImportJob:
    with rls.privileged(reason="test"):
        return ImportJob.objects.get(user_id=user.pk)


def _finished(job_id, timeout=30.0) -> ImportJob:
    deadline = time.monotonic() + timeout
    while True:
        with rls.privileged(reason="test"):
            job = ImportJob.objects.get(pk=job_id)
        if job.status in (ImportJob.Status.DONE, ImportJob.Status.FAILED):
            return job
        assert time.monotonic() < deadline, f"the import stayed {job.status}"
        time.sleep(0.1)


def _imported(user) -> tuple[int, int]:
    with rls.privileged(reason="test"):
        return Conversation.objects.filter(user_id=user.pk).count(), Message.objects.filter(user_id=user.pk).count()


def test_the_page_answers_at_once_and_the_worker_imports_and_the_page_shows_the_report(alice, celery_app, import_dir):
    client = session_client(alice)
    response = client.post("/chat/porting/", {"file": _upload(chatgpt_zip(), "chatgpt-export.zip")}, follow=True)
    assert response.redirect_chain == [("/chat/porting/", 302)]
    job = _job(alice)
    # No worker yet: the request did not import; the job waits with its file named by its id only.
    assert (job.status, job.file_name, job.size) == ("pending", "chatgpt-export.zip", len(chatgpt_zip()))
    assert [p.name for p in import_dir.iterdir()] == [f"{job.pk}.upload"]
    assert _imported(alice) == (0, 0)
    page = response.content.decode()
    assert "Importing chatgpt-export.zip…" in page
    assert 'hx-trigger="every 2s"' in page and "import-report" not in page  # the list polls while a job is pending

    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        job = _finished(job.pk)
    assert (job.status, job.report["imported"], job.report["messages"], job.error) == ("done", 2, 6, "")
    assert job.started_at <= job.finished_at and job.finished_at.tzinfo is not None
    assert _imported(alice) == (2, 6)
    assert list(import_dir.iterdir()) == []  # the upload is removed once imported
    page = client.get("/chat/porting/").content.decode()
    assert 'data-testid="import-imported">2<' in page and "From ChatGPT" in page and "(6 messages)" in page
    assert "1 attachments, 1 non-text, 1 system, 2 tool." in page  # in the report's order, though jsonb reorders keys
    assert 'hx-trigger="every 2s"' not in page  # nothing running: the polling stops
    fragment = client.get("/chat/porting/imports/")
    assert fragment.status_code == 200 and 'data-testid="import-imported">2<' in fragment.content.decode()
    assert "<html" not in fragment.content.decode()


def test_the_api_accepts_the_upload_and_reports_the_job(alice, bob, celery_worker):
    api = key_client(alice, scopes=CHAT)
    started = api.post(f"{API}/imports", {"file": _upload(CLAUDE_SINGLE.read_bytes(), "conversations.json")}, format="multipart")
    assert started.status_code == 202, started.content
    body = started.json()
    assert body["status"] in ("pending", "running", "done") and body["file_name"] == "conversations.json"
    _finished(body["id"])
    done = api.get(f"{API}/imports/{body['id']}").json()
    assert (done["status"], done["report"]["source"], done["report"]["failed"][0][0], done["error"]) == (
        "done",
        "claude",
        "Empty draft",
        "",
    )
    assert done["report"]["imported"] == _imported(alice)[0] > 0
    assert_error(key_client(bob, scopes=CHAT).get(f"{API}/imports/{body['id']}"), 404)
    assert_error(session_client(bob).get(f"{API}/imports/{body['id']}"), 404)
    assert_error(api.get(f"{API}/imports/00000000-0000-4000-8000-000000000000"), 404)
    assert_error(api.post(f"{API}/imports", {}, format="multipart"), 400, "choose a file")
    assert_error(api.post(f"{API}/imports", {"file": "not a file"}, format="multipart"), 400, "choose a file")
    assert_error(api.post(f"{API}/imports", {"file": _upload(b"", "empty.json")}, format="multipart"), 400, "empty")
    assert_error(key_client(alice, scopes=("chat:read",)).post(f"{API}/imports", {}, format="multipart"), 403)
    assert key_client(alice, scopes=("chat:read",)).get(f"{API}/imports/{body['id']}").status_code == 200


def test_the_api_refuses_a_file_over_the_limit(alice, settings):
    settings.CHAT_IMPORT_MAX_BYTES = 100
    api = key_client(alice, scopes=CHAT)
    assert_error(api.post(f"{API}/imports", {"file": _upload(chatgpt_zip(), "big.zip")}, format="multipart"), 400, "larger than the 100")
    with rls.privileged(reason="test"):
        assert not ImportJob.objects.exists()


def test_the_schema_lists_the_import_endpoints(alice):
    schema = session_client(alice).get("/api/schema/", {"format": "json"}).json()
    assert set(schema["paths"]["/api/v1/imports"]) == {"post"}
    assert "multipart/form-data" in schema["paths"]["/api/v1/imports"]["post"]["requestBody"]["content"]
    assert set(schema["paths"]["/api/v1/imports"]["post"]["responses"]) >= {"202", "400", "503"}
    assert set(schema["paths"]["/api/v1/imports/{import_id}"]) == {"get"}


def test_a_malformed_file_fails_the_job_with_the_reason_and_imports_nothing(alice, celery_worker, import_dir):
    client = session_client(alice)
    assert client.post("/chat/porting/", {"file": _upload(b"[{" * 3, "conversations.json")}).status_code == 302
    job = _finished(_job(alice).pk)
    assert job.status == "failed" and "not valid JSON" in job.error and job.report == {}
    assert _imported(alice) == (0, 0) and list(import_dir.iterdir()) == []
    page = client.get("/chat/porting/").content.decode()
    assert "not valid JSON" in page and "import-report" not in page


def test_an_unexpected_error_fails_the_job_with_a_generic_sentence_and_removes_the_file(alice, monkeypatch, caplog, import_dir):
    job = jobs.import_job_create(user=alice, upload=_upload(CLAUDE_SINGLE.read_bytes(), "conversations.json"))

    def broken(**kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(jobs, "conversations_import", broken)
    with caplog.at_level(logging.ERROR, logger="confab.chat.imports"):
        job = jobs.import_job_run(job_id=job.pk, user_id=alice.pk)
    assert (job.status, job.error) == ("failed", jobs.FAILED_UNEXPECTEDLY)
    assert "disk on fire" in caplog.text
    assert list(import_dir.iterdir()) == [] and _imported(alice) == (0, 0)


def test_a_task_delivered_twice_imports_once(alice):
    job = jobs.import_job_create(user=alice, upload=_upload(chatgpt_zip(), "chatgpt-export.zip"))
    first = jobs.import_job_run(job_id=job.pk, user_id=alice.pk)
    again = jobs.import_job_run(job_id=job.pk, user_id=alice.pk)
    assert (first.status, again.status) == ("done", "done")
    assert again.report == first.report and first.report["imported"] == 2 and again.finished_at == first.finished_at
    assert _imported(alice) == (2, 6)


def test_two_racing_deliveries_import_once(alice):
    job = jobs.import_job_create(user=alice, upload=_upload(chatgpt_zip(), "chatgpt-export.zip"))
    barrier, outcomes = threading.Barrier(2), []

    def deliver():
        try:
            barrier.wait()
            outcomes.append(jobs.import_job_run(job_id=job.pk, user_id=alice.pk).status)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    job = _finished(job.pk)
    # One claimed and imported; the other found it claimed and did nothing (no second report over the first).
    assert (job.status, job.report["imported"], job.report["skipped_duplicates"]) == ("done", 2, 0)
    assert len(outcomes) == 2 and "failed" not in outcomes
    assert _imported(alice) == (2, 6)


def test_another_user_cannot_see_the_job_on_the_page_or_the_api(alice, bob):
    job = jobs.import_job_create(user=alice, upload=_upload(chatgpt_zip(), "alice-secret-export.zip"))
    assert "alice-secret-export.zip" in session_client(alice).get("/chat/porting/").content.decode()
    assert "alice-secret-export.zip" not in session_client(bob).get("/chat/porting/").content.decode()
    assert "alice-secret-export.zip" not in session_client(bob).get("/chat/porting/imports/").content.decode()
    assert_error(key_client(bob, scopes=CHAT).get(f"{API}/imports/{job.pk}"), 404)
    with pytest.raises(Exception, match="No such import"):
        jobs.import_job_get(user=bob, job_id=job.pk)


def test_another_user_cannot_read_or_write_import_jobs_with_raw_sql(alice, bob, raw_app_connection):
    created = {user: jobs.import_job_create(user=user, upload=_upload(b"[]", "c.json")) for user in (alice, bob)}
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, true)", [str(alice.pk)])
        cur.execute("SELECT id FROM chat_importjob")
        assert cur.fetchall() == [(created[alice].pk,)]
        cur.execute("UPDATE chat_importjob SET status = 'done' WHERE id = %s", [created[bob].pk])
        assert cur.rowcount == 0
        cur.execute("DELETE FROM chat_importjob WHERE id = %s", [created[bob].pk])
        assert cur.rowcount == 0
        cur.execute("UPDATE chat_importjob SET status = 'done' WHERE id = %s", [created[alice].pk])
        assert cur.rowcount == 1  # the owner may; only the user id is guarded
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO chat_importjob (id, user_id, status, file_name, size, report, error, created_at)"
                " VALUES (gen_random_uuid(), %s, 'done', 'x', 0, '{}', '', now())",
                [bob.pk],
            )
    raw_app_connection.rollback()
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, true)", [str(alice.pk)])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("UPDATE chat_importjob SET user_id = %s WHERE id = %s", [bob.pk, created[alice].pk])
    raw_app_connection.rollback()
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM chat_importjob")  # no context: nothing
        assert cur.fetchone()[0] == 0


def test_a_stale_job_is_failed_and_its_file_removed_by_the_periodic_task(alice, bob, import_dir):
    stale = jobs.import_job_create(user=alice, upload=_upload(chatgpt_zip(), "old.zip"))
    fresh = jobs.import_job_create(user=bob, upload=_upload(chatgpt_zip(), "new.zip"))  # one active import per user
    with rls.privileged(reason="test: a job whose task never ran"):
        ImportJob.objects.filter(pk=stale.pk).update(created_at=timezone.now() - jobs.STALE_AFTER - timedelta(minutes=1))
    assert import_jobs_fail_stale_task.apply().get() == 1
    with rls.privileged(reason="test"):
        stale, fresh = ImportJob.objects.get(pk=stale.pk), ImportJob.objects.get(pk=fresh.pk)
    assert (stale.status, stale.error) == ("failed", jobs.STALE) and stale.finished_at is not None
    assert fresh.status == "pending"
    assert [p.name for p in import_dir.iterdir()] == [f"{fresh.pk}.upload"]
    assert jobs.STALE in session_client(alice).get("/chat/porting/").content.decode()


def test_a_job_claimed_while_the_stale_pass_runs_is_left_to_its_worker(alice, import_dir):
    """A job pending past its mark is claimed by its (late) worker while the stale pass runs: the
    pass waits for the claim and leaves the job and its file alone. It read the stale list, then
    removed the files, then marked them failed: a claim between the read and the mark lost its
    file and was failed while it ran."""
    job = jobs.import_job_create(user=alice, upload=_upload(chatgpt_zip(), "late.zip"))
    with rls.privileged(reason="test: a job whose task is late"):
        ImportJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - jobs.STALE_AFTER - timedelta(minutes=1))
    claim = psycopg.connect(**connections[rls.PRIVILEGED_ALIAS].get_connection_params())  # the worker's claim, held open
    try:
        claim.execute("UPDATE chat_importjob SET status = 'running', started_at = now() WHERE id = %s AND status = 'pending'", [job.pk])
        errors, failed = [], []
        sweep = on_a_thread(lambda: failed.append(jobs.import_jobs_fail_stale()), errors)
        until(lambda: waiting_locks() > 0 or not sweep.is_alive(), "the stale pass waits for the claim")
        claim.commit()
        sweep.join(30)
    finally:
        claim.close()
    assert errors == [] and failed == [0]
    with rls.privileged(reason="test"):
        assert ImportJob.objects.get(pk=job.pk).status == "running"
    assert jobs.import_path(job.pk).exists(), "the running job's file was removed"


def test_staff_see_import_jobs_read_only(alice, client):
    job = jobs.import_job_create(user=alice, upload=_upload(b"[]", "c.json"))
    client.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    listing = client.get("/admin/chat/importjob/")
    assert listing.status_code == 200 and str(job.pk) in listing.content.decode()
    assert client.get(f"/admin/chat/importjob/{job.pk}/change/").status_code == 200
    assert client.get("/admin/chat/importjob/add/").status_code == 403


def test_the_file_name_is_kept_clean_and_never_names_the_saved_file(alice, import_dir):
    job = jobs.import_job_create(user=alice, upload=_upload(b"[]", "../../etc/\u202eexport\x07\n" + "x" * 300 + ".json"))
    assert job.file_name == ("export " + "x" * 300)[:200] and len(job.file_name) == 200
    assert [p.name for p in import_dir.iterdir()] == [f"{job.pk}.upload"]


def test_a_task_for_a_job_that_is_gone_does_nothing(alice, bob):
    job = jobs.import_job_create(user=alice, upload=_upload(b"[]", "c.json"))
    assert jobs.import_job_run(job_id=job.pk, user_id=bob.pk) is None  # another user's id: not theirs to run
    with rls.privileged(reason="test"):
        assert ImportJob.objects.get(pk=job.pk).status == "pending"
    assert jobs.import_path(job.pk).exists()


def test_an_import_stopped_by_its_time_limit_says_so_and_imports_nothing(alice, monkeypatch, import_dir):
    job = jobs.import_job_create(user=alice, upload=_upload(chatgpt_zip(), "huge.zip"))

    def slow(**kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(jobs, "conversations_import", slow)
    job = jobs.import_job_run(job_id=job.pk, user_id=alice.pk)
    assert (job.status, job.error) == ("failed", jobs.TOO_LONG)
    assert list(import_dir.iterdir()) == [] and _imported(alice) == (0, 0)
