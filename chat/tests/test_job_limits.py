"""One export building and one import pending or running per user (chat 0011's partial unique
indexes): a second start is refused with a sentence (409 on the API, a message on the page),
also when two requests race; a finished export replaces the user's earlier zips on disk."""

import threading
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.utils import timezone

from accounts.tests.test_api import assert_error, key_client, session_client
from chat import services
from chat.models import ExportJob, ImportJob
from chat.porting import exporter, jobs
from chat.tests.porting_files import CLAUDE_SINGLE
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
CHAT = ("chat:read", "chat:write")


@pytest.fixture(autouse=True)
def job_dirs(settings, tmp_path):
    settings.CHAT_EXPORT_DIR, settings.CHAT_IMPORT_DIR = tmp_path / "exports", tmp_path / "imports"


def _rows(model, user) -> list:
    with rls.privileged(reason="test: the user's jobs"):
        return list(model.objects.filter(user_id=user.pk).order_by("created_at"))


def _race(start) -> tuple[list, list]:
    """Run `start` on two threads at once, each on its own connection: what each returned or raised."""
    barrier, done, refused = threading.Barrier(2), [], []

    def one():
        try:
            barrier.wait()
            done.append(start())
        except (exporter.ExportBusy, jobs.ImportBusy) as exc:
            refused.append(exc.message)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return done, refused


def test_a_second_export_while_one_is_building_is_refused_on_the_api_and_the_page(alice):
    first = exporter.export_job_create(user=alice)  # no worker: it stays pending
    api = key_client(alice, scopes=CHAT)
    assert_error(api.post(f"{API}/exports"), 409, exporter.BUSY)
    page = session_client(alice).post("/chat/porting/export/", follow=True)
    assert exporter.BUSY in page.content.decode()
    assert [job.pk for job in _rows(ExportJob, alice)] == [first.pk]


def test_two_export_starts_racing_make_one_job(alice):
    done, refused = _race(lambda: exporter.export_job_create(user=alice))
    assert (len(done), refused) == (1, [exporter.BUSY])
    assert [job.pk for job in _rows(ExportJob, alice)] == [done[0].pk]


def test_a_finished_export_replaces_the_earlier_zip_on_disk(alice):
    services.conversation_create(user=alice, title="Tides")
    first = exporter.export_build(job_id=exporter.export_job_create(user=alice).pk, user_id=alice.pk)
    second = exporter.export_build(job_id=exporter.export_job_create(user=alice).pk, user_id=alice.pk)
    assert [job.status for job in _rows(ExportJob, alice)] == ["expired", "ready"]
    assert not exporter.export_path(first.pk).exists() and exporter.export_path(second.pk).exists()
    assert exporter.export_download_url(_rows(ExportJob, alice)[0]) is None


def test_a_second_import_while_one_is_pending_is_refused_before_its_file_is_saved(alice, settings):
    first = jobs.import_job_create(user=alice, upload=SimpleUploadedFile("one.json", CLAUDE_SINGLE.read_bytes()))  # no worker
    api = key_client(alice, scopes=CHAT)
    assert_error(
        api.post(f"{API}/imports", {"file": SimpleUploadedFile("two.json", CLAUDE_SINGLE.read_bytes())}, format="multipart"), 409, jobs.BUSY
    )
    page = session_client(alice).post("/chat/porting/", {"file": SimpleUploadedFile("three.json", CLAUDE_SINGLE.read_bytes())}, follow=True)
    assert jobs.BUSY in page.content.decode()
    assert [job.pk for job in _rows(ImportJob, alice)] == [first.pk]
    assert [path.name for path in settings.CHAT_IMPORT_DIR.iterdir()] == [f"{first.pk}.upload"]


def test_two_uploads_racing_make_one_import_and_leave_one_file(alice, settings):
    done, refused = _race(lambda: jobs.import_job_create(user=alice, upload=SimpleUploadedFile("c.json", CLAUDE_SINGLE.read_bytes())))
    assert (len(done), refused) == (1, [jobs.BUSY])
    assert [job.pk for job in _rows(ImportJob, alice)] == [done[0].pk]
    assert [path.name for path in settings.CHAT_IMPORT_DIR.iterdir()] == [f"{done[0].pk}.upload"]


def test_after_an_import_ends_the_next_one_may_start(alice):
    first = jobs.import_job_create(user=alice, upload=SimpleUploadedFile("one.json", CLAUDE_SINGLE.read_bytes()))
    jobs.import_job_run(job_id=first.pk, user_id=alice.pk)
    second = jobs.import_job_create(user=alice, upload=SimpleUploadedFile("two.json", CLAUDE_SINGLE.read_bytes()))
    assert [job.status for job in _rows(ImportJob, alice)] == ["done", "pending"] and second.pk != first.pk


def test_an_import_whose_worker_died_is_failed_after_the_tasks_time_limit_and_frees_the_next(alice):
    job = jobs.import_job_create(user=alice, upload=SimpleUploadedFile("one.json", CLAUDE_SINGLE.read_bytes()))
    started = timezone.now() - timedelta(minutes=30)
    with rls.privileged(reason="test: a claimed job, half an hour in"):
        ImportJob.objects.filter(pk=job.pk).update(status="running", started_at=started)
    assert jobs.import_jobs_fail_stale() == 0  # still within the task's hard time limit: it may be running
    with rls.privileged(reason="test: a claimed job past its task's hard time limit"):
        ImportJob.objects.filter(pk=job.pk).update(started_at=timezone.now() - jobs.RUNNING_STALE_AFTER - timedelta(minutes=1))
    assert jobs.import_jobs_fail_stale() == 1
    assert [(j.status, j.error) for j in _rows(ImportJob, alice)] == [("failed", jobs.STALE)]
    jobs.import_job_create(user=alice, upload=SimpleUploadedFile("two.json", CLAUDE_SINGLE.read_bytes()))  # not refused
