"""Imports in the background: an upload is saved to a private file named by its job, the job
committed, then a Celery task queued; the task claims the job once (a duplicate delivery does
nothing), runs `conversations_import` on the file, keeps the report or the reason on the job,
and removes the file. A periodic task fails jobs whose task never ran and removes their files;
exports' stale pass (chat.porting.exporter) shares its marking (`jobs_fail`) and margin."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnreachable

from accounts.models import User
from chat.models import ImportJob
from chat.porting.base import title_clean
from chat.porting.importer import ImportReport, conversations_import
from config.cache import REDIS_ERRORS
from config.db import rls
from config.errors import ApplicationError, NotFoundError

NOT_QUEUED = "The import could not be queued (the task queue is unreachable); upload the file again in a few minutes."
NOT_SAVED = "The upload could not be saved; try again in a few minutes."
FAILED_UNEXPECTEDLY = "The import failed unexpectedly and nothing was imported; please upload the file again."
STALE = "The import did not finish; please upload again."
# The import task's limits (chat.tasks): a file of 500,000 messages takes far longer than other tasks.
SOFT_TIME_LIMIT, TIME_LIMIT = 55 * 60, 60 * 60
TOO_LONG = f"The import took longer than {SOFT_TIME_LIMIT // 60} minutes and was stopped; nothing was imported."
# A job never started (a lost or backed-up queue) is failed after this.
STALE_AFTER = timedelta(hours=3)
# A job running this long past its task's hard time limit has lost its worker (killed, redelivered to
# find it claimed): it is failed sooner, as one import (or export) at a time per user would wait on it.
WORKER_GONE_MARGIN = timedelta(minutes=5)
RUNNING_STALE_AFTER = timedelta(seconds=TIME_LIMIT) + WORKER_GONE_MARGIN
RECENT = 5  # import jobs the page lists
ACTIVE = (ImportJob.Status.PENDING, ImportJob.Status.RUNNING)
logger = logging.getLogger("confab.chat.imports")


class ImportUnavailable(ApplicationError):
    """The upload could not be saved or its task queued: the job is kept as failed, uploading again is the remedy."""

    status_code = 503


class ImportBusy(ApplicationError):
    """An import of the user's is still pending or running (chat_importjob_one_active_per_user)."""

    status_code = 409


BUSY = "An import is already running; upload the next file once its report appears below."


def import_path(job_id) -> Path:
    """The upload's private file: named by the job id only, never by the user's file name."""
    return Path(settings.CHAT_IMPORT_DIR) / f"{job_id}.upload"


def _save(upload: UploadedFile, target: Path) -> None:
    """Stream the upload to `target` in chunks (never read whole)."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = target.with_suffix(".part")
    try:
        with partial.open("wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
        partial.rename(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        logger.error("import upload not saved to %s: %s", target, exc)
        raise ImportUnavailable(NOT_SAVED) from exc


def import_job_create(*, user: User, upload: UploadedFile) -> ImportJob:
    """A pending import of the uploaded file: saved under the job's id, the job committed, then its
    task queued. With the broker unreachable the job is kept as failed, its file removed, and
    ImportUnavailable (503) says so. Callers own their transactions (rls.own_transactions)."""
    from chat.tasks import import_run_task

    with rls.atomic_as(user.pk):  # a courtesy before saving the file; the constraint below holds under races
        if ImportJob.objects.filter(user_id=user.pk, status__in=ACTIVE).exists():
            raise ImportBusy(BUSY)
    job_id = uuid.uuid4()
    target = import_path(job_id)
    _save(upload, target)

    def queue() -> None:
        try:
            import_run_task.delay(job_id=str(job.pk), user_id=str(user.pk))
        except (BrokerUnreachable, *REDIS_ERRORS) as exc:
            logger.warning("import %s not queued (broker unreachable: %s)", job.pk, exc)
            target.unlink(missing_ok=True)
            _finish(job, status=ImportJob.Status.FAILED, error=NOT_QUEUED)

    try:
        with rls.atomic_as(user.pk):
            name = title_clean(upload.name) or "upload"  # Django kept only the name's last part
            job = ImportJob.objects.create(id=job_id, user_id=user.pk, file_name=name, size=upload.size)
            transaction.on_commit(queue, using=rls.current_alias())
    except BaseException as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, IntegrityError) and "chat_importjob_one_active_per_user" in str(exc):
            raise ImportBusy(BUSY) from exc
        raise
    if job.status == ImportJob.Status.FAILED:
        raise ImportUnavailable(NOT_QUEUED)
    return job


def _finish(job: ImportJob, *, status: str, report: dict | None = None, error: str = "") -> None:
    with rls.atomic_as(job.user_id):
        job.status, job.report, job.error, job.finished_at = status, report or {}, error, timezone.now()
        job.save(update_fields=["status", "report", "error", "finished_at"])


def import_job_run(*, job_id, user_id) -> ImportJob | None:
    """Import the job's file under the owner's own context, once: the job is claimed pending → running
    by one conditional UPDATE, so a task delivered twice (or racing itself) imports once and the
    other delivery returns the job untouched. The report, or the reason it failed, is kept on the
    job; the file is removed either way."""
    with rls.atomic_as(user_id):
        claimed = ImportJob.objects.filter(pk=job_id, user_id=user_id, status=ImportJob.Status.PENDING).update(
            status=ImportJob.Status.RUNNING, started_at=timezone.now()
        )
        job = ImportJob.objects.filter(pk=job_id, user_id=user_id).first()
    if not claimed:
        return job  # another delivery claimed it, or it is gone
    path = import_path(job_id)
    try:
        with rls.atomic_as(user_id):
            owner = User.objects.get(pk=user_id)
            with path.open("rb") as file:
                report = conversations_import(user=owner, file=file)
            # In the import's transaction: a crash leaves neither the conversations nor a "done" behind.
            _finish(job, status=ImportJob.Status.DONE, report=report.as_dict())
    except ApplicationError as exc:
        _finish(job, status=ImportJob.Status.FAILED, error=exc.message)
    except SoftTimeLimitExceeded:
        logger.warning("import %s stopped by its time limit", job_id)
        _finish(job, status=ImportJob.Status.FAILED, error=TOO_LONG)
    except Exception:
        logger.exception("import %s failed unexpectedly", job_id)
        _finish(job, status=ImportJob.Status.FAILED, error=FAILED_UNEXPECTEDLY)
    finally:
        path.unlink(missing_ok=True)
    return job


def import_job_get(*, user: User, job_id) -> ImportJob:
    job = ImportJob.objects.filter(user_id=user.pk, pk=job_id).first()
    if job is None:
        raise NotFoundError("No such import.")
    return job


def import_job_list(*, user: User) -> list[tuple[ImportJob, ImportReport | None]]:
    """The user's recent import jobs, newest first, each with its report once done."""
    jobs = ImportJob.objects.filter(user_id=user.pk).order_by("-created_at")[:RECENT]
    return [(job, ImportReport.from_dict(job.report) if job.status == ImportJob.Status.DONE else None) for job in jobs]


def import_jobs_fail_stale() -> int:
    """Fail the jobs pending for longer than STALE_AFTER (their task never ran) or running past
    RUNNING_STALE_AFTER (their worker died) and remove their files (a system job over every
    user's imports)."""
    now = timezone.now()
    never_started = Q(status=ImportJob.Status.PENDING, created_at__lt=now - STALE_AFTER)
    worker_gone = Q(status=ImportJob.Status.RUNNING, started_at__lt=now - RUNNING_STALE_AFTER)
    with rls.privileged(reason="chat imports fail stale", audited=False):
        stale = jobs_fail(ImportJob.objects.filter(never_started | worker_gone), error=STALE)
        for job_id in stale:
            import_path(job_id).unlink(missing_ok=True)
            import_path(job_id).with_suffix(".part").unlink(missing_ok=True)
    # Files no job will read: an upload whose request died before its job was committed.
    directory, cutoff = Path(settings.CHAT_IMPORT_DIR), (timezone.now() - STALE_AFTER).timestamp()
    for path in directory.iterdir() if directory.is_dir() else ():
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
    return len(stale)


def jobs_fail(stale: QuerySet, *, error: str, skip_locked: bool = False) -> list:
    """Mark the `stale` import or export jobs failed with `error` and return their ids (the caller,
    privileged, removes their files). Locked as they are marked: a worker claiming one meanwhile
    waits and then finds it failed, instead of starting on a job whose files are removed (read,
    then marked, it could). skip_locked leaves alone the jobs whose row a live worker holds (an
    export's build holds it for as long as it runs)."""
    with transaction.atomic(using=rls.PRIVILEGED_ALIAS):
        ids = list(stale.select_for_update(skip_locked=skip_locked).values_list("pk", flat=True))
        stale.model.objects.filter(pk__in=ids).update(status=stale.model.Status.FAILED, error=error, finished_at=timezone.now())
    return ids
