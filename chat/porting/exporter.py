"""Exports: one conversation as JSON or Markdown, and all of a user's conversations as a zip
(our JSON plus one Markdown file each) that a Celery task builds into a private directory,
downloaded through a signed link that only its owner can open, until it expires."""

from __future__ import annotations

import io
import logging
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnreachable

from accounts.models import User
from chat import selectors
from chat.models import Conversation, ExportJob
from chat.porting import markdown, ours
from chat.porting.jobs import WORKER_GONE_MARGIN, jobs_fail
from config.cache import REDIS_ERRORS
from config.db import rls
from config.errors import ApplicationError, NotFoundError

SALT = "chat.export.download"
NOT_QUEUED = "The export could not be queued (the task queue is unreachable); start it again in a few minutes."
# The export task's limits (chat.tasks): it reads every conversation of the user twice (JSON, then
# Markdown), far longer for a large account than the default task limits allow.
SOFT_TIME_LIMIT, TIME_LIMIT = 25 * 60, 30 * 60
TOO_LONG = f"The export took longer than {SOFT_TIME_LIMIT // 60} minutes and was stopped; start it again later."
FAILED_UNEXPECTEDLY = "The export failed unexpectedly; please start it again."
# A job pending this long has no live build (a build holds its row until it ends, and none outlives
# the hard limit): its worker died or its task was lost, and the user's next export waits on it.
STALE_AFTER = timedelta(seconds=TIME_LIMIT) + WORKER_GONE_MARGIN
STALE = "The export did not finish; please start it again."
logger = logging.getLogger("confab.chat.exports")


class ExportUnavailable(ApplicationError):
    """The export's task could not be queued: the job is kept as failed, and starting again is the remedy."""

    status_code = 503


class ExportBusy(ApplicationError):
    """An export of the user's is still being built (chat_exportjob_one_pending_per_user)."""

    status_code = 409


BUSY = "An export is already being prepared; its download link appears below when it is ready."


def _all(user_id) -> Iterator[Conversation]:
    return Conversation.objects.filter(user_id=user_id).select_related("persona").order_by("created_at", "id").iterator(chunk_size=200)


def conversation_export(*, user: User, conversation: Conversation, kind: str) -> tuple[str, str]:
    """(file name, text) of one conversation: our JSON document (importable) or Markdown."""
    messages = list(selectors.message_list(conversation=conversation))
    stem = f"conversation-{_slug(conversation.title)}-{str(conversation.pk)[:8]}"
    if kind == "md":
        return f"{stem}.md", markdown.conversation_markdown(conversation, messages)
    out = io.StringIO()
    ours.document_write(out, [ours.conversation_document(conversation, messages)], exported_at=timezone.now())
    return f"{stem}.json", out.getvalue()


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", (title or "untitled").lower()).strip("-")[:40] or "untitled"


def export_path(job_id) -> Path:
    return Path(settings.CHAT_EXPORT_DIR) / f"{job_id}.zip"


def export_job_create(*, user: User) -> ExportJob:
    """A pending export of all the user's conversations; the zip is built by a task once this commits.
    With the broker unreachable the job is kept as failed, and ExportUnavailable (503) says so."""
    from chat.tasks import export_build_task

    def queue() -> None:
        try:
            export_build_task.delay(job_id=str(job.pk), user_id=str(user.pk))
        except (BrokerUnreachable, *REDIS_ERRORS) as exc:
            logger.warning("export %s not queued (broker unreachable: %s)", job.pk, exc)
            with rls.atomic_as(user.pk):
                job.status, job.error, job.finished_at = ExportJob.Status.FAILED, NOT_QUEUED, timezone.now()
                job.save(update_fields=["status", "error", "finished_at"])

    try:
        with rls.atomic_as(user.pk):
            expires_at = timezone.now() + timedelta(hours=settings.CHAT_EXPORT_HOURS)
            job = ExportJob.objects.create(user_id=user.pk, expires_at=expires_at)
            transaction.on_commit(queue, using=rls.current_alias())
    except IntegrityError as exc:
        if "chat_exportjob_one_pending_per_user" not in str(exc):
            raise
        raise ExportBusy(BUSY) from exc
    # Views that own their transactions (the export-start page and API) have queued it by now.
    if job.status == ExportJob.Status.FAILED:
        raise ExportUnavailable(NOT_QUEUED)
    return job


def export_build(*, job_id, user_id) -> ExportJob | None:
    """Build the job's zip, streamed into a file (never whole in memory), under the owner's own
    context, holding the job's row until it is done: a second delivery waits, then finds it built.
    A build that fails (the disk, its time limit, anything else) leaves the job failed with the
    reason and no file behind. None when the job is gone (deleted, or not this user's)."""
    target = export_path(job_id)
    partial = target.with_suffix(".part")
    error = None
    with rls.atomic_as(user_id):
        job = ExportJob.objects.select_for_update().filter(pk=job_id, user_id=user_id).first()
        if job is None or job.status != ExportJob.Status.PENDING:
            return job
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            count = _zip_write(user_id=user_id, path=partial)
            partial.rename(target)
            job.status, job.conversation_count, job.size = ExportJob.Status.READY, count, target.stat().st_size
            job.finished_at = timezone.now()
            job.save(update_fields=["status", "conversation_count", "size", "finished_at"])
            _older_exports_expire(user_id=user_id, newest=job)
        except OSError as exc:
            error = f"The export could not be written: {exc.strerror or exc}."
        except SoftTimeLimitExceeded:
            logger.warning("export %s stopped by its time limit", job_id)
            error = TOO_LONG
        except Exception:
            logger.exception("export %s failed unexpectedly", job_id)
            error = FAILED_UNEXPECTEDLY
        if error:
            # Undone whole (a save before the failure must not commit), its files removed while the
            # row is still held, so that no other delivery of the job has begun writing them.
            transaction.set_rollback(True, using=rls.current_alias())
            target.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
    if error is None:
        return job
    return _export_fail(job_id=job_id, user_id=user_id, error=error)


def _zip_write(*, user_id, path: Path) -> int:
    """All the user's conversations into a zip at `path`: one Markdown file each, and our JSON.
    One pass, each conversation read once with its messages, so both parts name the same ones (two
    passes let a conversation deleted between them be in the JSON and not in the Markdown): the
    Markdown goes in as it is read, the JSON document to a temporary file beside it, added last."""
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        tempfile.TemporaryFile("w+", encoding="utf-8", dir=path.parent) as spool,
    ):

        def documents() -> Iterator[dict]:
            for n, conversation in enumerate(_all(user_id), start=1):
                messages = list(selectors.message_list(conversation=conversation))
                archive.writestr(f"markdown/{n:05d}-{_slug(conversation.title)}.md", markdown.conversation_markdown(conversation, messages))
                yield ours.conversation_document(conversation, messages)

        count = ours.document_write(spool, documents(), exported_at=timezone.now())
        spool.seek(0)
        with archive.open("conversations.json", "w", force_zip64=True) as raw, io.TextIOWrapper(raw, encoding="utf-8") as out:
            shutil.copyfileobj(spool, out)
    return count


def _export_fail(*, job_id, user_id, error: str) -> ExportJob | None:
    """Fail the job with `error` in a transaction of its own, after the build's rolled back."""
    with rls.atomic_as(user_id):
        ExportJob.objects.filter(pk=job_id, user_id=user_id, status=ExportJob.Status.PENDING).update(
            status=ExportJob.Status.FAILED, error=error, finished_at=timezone.now()
        )
        return ExportJob.objects.filter(pk=job_id, user_id=user_id).first()


def _older_exports_expire(*, user_id, newest: ExportJob) -> None:
    """A new export replaces the user's earlier ready ones: their files go once it commits, so one
    zip per user is kept on disk however often they export."""
    older = ExportJob.objects.filter(user_id=user_id, status=ExportJob.Status.READY).exclude(pk=newest.pk)
    paths = [export_path(job_id) for job_id in older.values_list("pk", flat=True)]
    older.update(status=ExportJob.Status.EXPIRED)
    transaction.on_commit(lambda: [path.unlink(missing_ok=True) for path in paths], using=rls.current_alias())


def export_download_url(job: ExportJob) -> str | None:
    """The signed link to a ready export (None before): only its owner can open it, until it expires."""
    if job.status != ExportJob.Status.READY or job.expires_at <= timezone.now():
        return None
    return reverse("chat:export-download", kwargs={"token": signing.dumps(str(job.pk), salt=SALT)})


def export_job_get(*, user: User, job_id) -> ExportJob:
    job = ExportJob.objects.filter(user_id=user.pk, pk=job_id).first()
    if job is None:
        raise NotFoundError("No such export.")
    return job


def export_job_list(*, user: User):
    return ExportJob.objects.filter(user_id=user.pk).order_by("-created_at")[:10]


def export_open(*, user: User, job_id) -> tuple[ExportJob, BinaryIO]:
    """The caller's ready export and its file, opened: NotFoundError when it is not theirs, not
    ready, expired or gone (a newer export's commit removes the older file: opened here, not
    checked here and opened later, that is a 404 whenever it happens)."""
    job = export_job_get(user=user, job_id=job_id)
    gone = NotFoundError("This export is not ready or has expired; start a new one.")
    if job.status != ExportJob.Status.READY or job.expires_at <= timezone.now():
        raise gone
    try:
        return job, export_path(job.pk).open("rb")
    except FileNotFoundError:
        raise gone from None


def export_file(*, user: User, token: str) -> tuple[ExportJob, BinaryIO]:
    """The export a signed download link names (NotFoundError when the link is forged or past its age)."""
    try:
        job_id = signing.loads(token, salt=SALT, max_age=timedelta(hours=settings.CHAT_EXPORT_HOURS))
    except signing.BadSignature:
        raise NotFoundError("This download link is not valid or has expired.") from None
    return export_open(user=user, job_id=job_id)


def export_jobs_fail_stale() -> int:
    """Fail the exports pending past STALE_AFTER whose row no build holds (their worker died or their
    task was lost) and remove their files (a system job over every user's exports)."""
    never_finished = ExportJob.objects.filter(status=ExportJob.Status.PENDING, created_at__lt=timezone.now() - STALE_AFTER)
    with rls.privileged(reason="chat exports fail stale", audited=False):
        stale = jobs_fail(never_finished, error=STALE, skip_locked=True)
        for job_id in stale:
            export_path(job_id).unlink(missing_ok=True)
            export_path(job_id).with_suffix(".part").unlink(missing_ok=True)
    return len(stale)


def exports_expire() -> int:
    """What beat runs for exports: fail the stale ones (export_jobs_fail_stale), which block their
    user's next export, then remove the files of expired ones (a system job over every user's
    exports). Returns how many expired."""
    export_jobs_fail_stale()
    with rls.privileged(reason="chat exports expire", audited=False):
        expired = list(ExportJob.objects.filter(expires_at__lte=timezone.now()).exclude(status=ExportJob.Status.EXPIRED))
        for job in expired:
            export_path(job.pk).unlink(missing_ok=True)
            export_path(job.pk).with_suffix(".part").unlink(missing_ok=True)
        ExportJob.objects.filter(pk__in=[job.pk for job in expired]).update(status=ExportJob.Status.EXPIRED)
    return len(expired)
