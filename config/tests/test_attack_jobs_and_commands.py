"""Background work and operator commands (a review of 2026-12-03): Celery tasks met by a time
limit, a dead worker, a vanished row, a second run at the same time, or one provider down; and
management commands given values they ended in a traceback on. Each test failed before its fix. Real PostgreSQL and Redis; races
ordered by a barrier (both runs measured before either writes), never by sleeping."""

import json
import threading
from contextlib import suppress
from datetime import UTC, timedelta
from io import StringIO

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone
from django_redis import get_redis_connection

from analytics import counters
from analytics import services as analytics_services
from analytics import tasks as analytics_tasks
from analytics.models import ReconciliationReport
from analytics.tests.factories import make_member, usage_fields
from analytics.tests.test_reconcile import _anthropic_bucket, report_server  # noqa: F401  (a fixture)
from chat import services as chat_services
from chat.models import ExportJob, ModelPrice
from chat.porting import exporter
from chat.tasks import export_build_task
from config.db import rls
from config.tests.races import on_a_thread

pytestmark = pytest.mark.django_db(transaction=True)


def _call(*args, **options):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


# --- Exports: a build stopped by its time limit, a worker that died, a job that is gone ----------


@pytest.fixture
def alice(catalog, django_db_blocker):
    from accounts.tests.factories import make_user
    from billing.tests.factories import make_plans

    with django_db_blocker.unblock():
        make_plans()
    return make_user(email="alice@example.com")


@pytest.fixture
def export_dir(settings, tmp_path):
    settings.CHAT_EXPORT_DIR = tmp_path / "exports"
    return settings.CHAT_EXPORT_DIR


def _export_jobs(user) -> list[ExportJob]:
    with rls.privileged(reason="test: the user's export jobs"):
        return list(ExportJob.objects.filter(user_id=user.pk).order_by("created_at"))


def test_an_export_stopped_by_its_time_limit_fails_with_a_sentence_and_frees_the_next_export(alice, export_dir, monkeypatch):
    """Alice has many conversations; her export's zip takes longer than the task's soft time limit
    (CELERY_TASK_SOFT_TIME_LIMIT, 4 minutes: export_build_task sets none of its own). Celery raises
    SoftTimeLimitExceeded inside chat/porting/exporter.py export_build, which catches OSError only:
    the exception leaves its transaction, which rolls back, so the job stays `pending` ("being
    prepared") with no error, the half-written .part file stays on disk, and every new export is
    refused with 409 "An export is already being prepared" (chat_exportjob_one_pending_per_user)
    until exports_expire passes its 24-hour expiry. The import task handles the same limit (jobs.py
    TOO_LONG). Correct: the job `failed` with a sentence saying so, no .part left, the next export
    allowed."""
    chat_services.conversation_create(user=alice, title="A long history")
    job = exporter.export_job_create(user=alice)  # no worker: the test runs the task's body

    def too_slow(**kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(exporter.ours, "document_write", too_slow)
    with suppress(SoftTimeLimitExceeded):
        exporter.export_build(job_id=job.pk, user_id=alice.pk)

    [stored] = _export_jobs(alice)
    assert (stored.status, bool(stored.error)) == ("failed", True), (stored.status, stored.error)
    assert not exporter.export_path(job.pk).with_suffix(".part").exists()
    monkeypatch.undo()
    exporter.export_job_create(user=alice)  # not ExportBusy


def test_an_export_whose_worker_died_hours_ago_does_not_block_the_users_next_export(alice, export_dir):
    """Alice starts an export; the worker building it is killed (the 5-minute hard time limit,
    an OOM kill, a deploy). Its job stays `pending`. Four hours later (the task's hard limit is 5
    minutes) nothing has failed it: the only export beat task, exports_expire, touches a job only
    after its 24-hour expiry, and there is no stale pass for exports as there is for imports
    (jobs.import_jobs_fail_stale: "a job whose worker died blocks its user's next import until this
    fails it"). Every export she starts is refused with 409 for a day. Correct: a periodic pass
    fails such an export (as imports' STALE_AFTER does) and she may export again."""
    job = exporter.export_job_create(user=alice)
    with rls.privileged(reason="test: an export queued four hours ago whose worker died"):
        ExportJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(hours=4))
    exporter.exports_expire()  # what beat runs for exports
    try:
        exporter.export_job_create(user=alice)
    except exporter.ExportBusy as exc:
        pytest.fail(f"a four-hour-old export whose worker died still blocks the next one: {exc.message}")


def test_the_stale_pass_leaves_an_export_a_live_build_holds_and_fails_it_once_let_go(alice, export_dir):
    """A build holds its job's row for as long as it runs: the stale pass skips a row so held (a
    slow export still being written is not failed under its worker), and fails it once let go."""
    job = exporter.export_job_create(user=alice)
    with rls.privileged(reason="test: an export queued long ago"):
        ExportJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - exporter.STALE_AFTER - timedelta(minutes=1))
    held, release, errors = threading.Event(), threading.Event(), []

    def build_holding_the_row():
        with rls.atomic_as(alice.pk):
            ExportJob.objects.select_for_update().get(pk=job.pk)
            held.set()
            assert release.wait(30)

    builder = on_a_thread(build_holding_the_row, errors)
    assert held.wait(30)
    try:
        assert exporter.export_jobs_fail_stale() == 0
        assert [j.status for j in _export_jobs(alice)] == [ExportJob.Status.PENDING]
    finally:
        release.set()
        builder.join(30)
    assert errors == []
    assert exporter.export_jobs_fail_stale() == 1
    assert [(j.status, j.error) for j in _export_jobs(alice)] == [(ExportJob.Status.FAILED, exporter.STALE)]


def test_an_export_task_for_a_job_that_is_gone_does_nothing(alice, export_dir):
    """An export is queued; before a worker takes it, staff delete the job (or the user, whose jobs
    go with it). export_build_task runs: exporter.export_build's ExportJob.objects...get() raises
    ExportJob.DoesNotExist out of the task, a failure with a traceback in the worker's log for
    what is a normal outcome. The import task treats the same case as "gone" and returns quietly
    (chat/tests/test_import_jobs.py test_a_task_for_a_job_that_is_gone_does_nothing). Correct:
    the task succeeds doing nothing (and creates nothing on disk)."""
    job = exporter.export_job_create(user=alice)
    with rls.privileged(reason="test: staff delete the job before its task runs"):
        ExportJob.objects.filter(pk=job.pk).delete()
    result = export_build_task.apply(kwargs={"job_id": str(job.pk), "user_id": str(alice.pk)})
    assert result.successful(), f"{type(result.result).__name__}: {result.result}"


# --- The hourly usage counter reconciliation, run twice at once ----------------------------------


def test_two_counter_reconciliations_at_once_repair_a_drift_once(monkeypatch):
    """A user's live counter lost an increment (total_tokens 500 below the ledger). Two
    usage_counters_reconcile_task runs overlap (beat's run and an operator's, or a redelivery to a
    second worker). analytics/counters.py counters_reconcile took no lock, unlike every other
    periodic task here (the rollup's advisory lock, the flush's Redis lock, the partitions' lock):
    both measure the drift twice, SETTLE_SECONDS apart, and both add it. The counter ends 500 ABOVE
    the ledger, and the user is refused as over quota (or billed against) tokens never used, until
    the next hour. Ordered by a barrier: both runs have measured before either adds. The repair now
    adds only to a counter that still holds what it measured (_ADD_IF_UNCHANGED): the second adds nothing."""
    user, org = make_member()
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        analytics_services.usage_record_batch(records=[usage_fields(user, org) for _ in range(3)])
    truth = counters.counters_read(scope="user", owner_id=user.pk)
    key = counters.counter_key("user", user.pk, counters.month_of())
    get_redis_connection("default").hincrby(key, "total_tokens", -500)  # a lost increment

    monkeypatch.setattr(counters, "SETTLE_SECONDS", 0.01)
    both_measured = threading.Barrier(2, timeout=30)
    real_script = counters.redis_script

    def script(source):
        run = real_script(source)
        if source != counters._ADD_IF_UNCHANGED:  # the repair's add
            return run

        def after_both_measured(**kwargs):
            both_measured.wait()
            return run(**kwargs)

        return after_both_measured

    monkeypatch.setattr(counters, "redis_script", script)
    errors = []
    runs = [on_a_thread(counters.counters_reconcile, errors) for _ in range(2)]
    for run in runs:
        run.join(60)
    assert errors == []
    live = counters.counters_read(scope="user", owner_id=user.pk)
    assert live.total_tokens == truth.total_tokens, f"live {live.total_tokens}, ledger {truth.total_tokens}"


# --- The daily reconciliation with the providers' bills -----------------------------------------


def test_the_daily_reconciliation_still_reconciles_anthropic_when_openais_report_fails(settings, report_server):  # noqa: F811
    """Both admin keys are set. On the day OpenAI's usage API answers an error, analytics/tasks.py
    usage_reconcile_task lets ReconciliationFailed out of its loop at "openai" (the first of
    PROVIDERS): Anthropic, whose report is there, is never reconciled that day, and nothing says
    so (the task runs once a day for yesterday only, so that day is skipped for good). The log flush
    next to it keeps going past a failing kind (buffer_flush_all). Correct: each provider is
    reconciled on its own; one's failure is logged (and reported), the other's report is stored."""
    yesterday = timezone.now().astimezone(UTC).date() - timedelta(days=1)
    failing = report_server({})  # every page unknown: HTTP 400
    working = report_server({None: {"data": [_anthropic_bucket(yesterday)], "has_more": False}})
    settings.OPENAI_ADMIN_KEY, settings.OPENAI_ADMIN_BASE_URL = "sk-admin-test", failing.url
    settings.ANTHROPIC_ADMIN_KEY, settings.ANTHROPIC_ADMIN_BASE_URL = "sk-ant-admin-test", working.url
    with suppress(Exception):
        analytics_tasks.usage_reconcile_task()
    with rls.privileged(reason="test: the reports stored"):
        providers = list(ReconciliationReport.objects.values_list("provider", flat=True))
    assert providers == ["anthropic"], f"reports stored: {providers}; Anthropic asked {len(working.received)} time(s)"


# --- Management commands with values they end in a traceback on ----------------------------------


def test_usage_reconcile_for_the_last_day_of_the_calendar_is_a_sentence_not_a_traceback(tmp_path):
    """`manage.py usage_reconcile --provider openai --from 9999-12-31 --to 9999-12-31 --file r.json`:
    reconcile_arguments accepts the dates, then analytics/selectors.py platform_usage_by_day (and,
    without --file, reconcile._request) adds a day past the end: OverflowError "date value out of
    range" escapes as a traceback. Correct: CommandError with a sentence; nothing stored."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"data": []}))
    with pytest.raises(CommandError):
        _call("usage_reconcile", "--provider", "openai", "--from", "9999-12-31", "--to", "9999-12-31", "--file", str(path))
    with rls.privileged(reason="test: nothing stored"):
        assert ReconciliationReport.objects.count() == 0


@pytest.mark.parametrize("thousands", ["0", "9" * 5000], ids=["threshold-zero", "threshold-of-5000-digits"])
def test_prices_import_with_a_long_context_threshold_the_catalog_refuses_is_a_sentence(catalog, tmp_path, thousands):
    """A price map whose gpt-4o entry has `input_cost_per_token_above_0k_tokens` and its output
    twin (a threshold of 0 tokens): chat/management/commands/prices_import.py _fields takes it, and
    the insert fails on chat_modelprice_tier_needs_threshold (long_context_threshold > 0), an
    IntegrityError traceback. With 5,000 digits before the `k`, int() itself raises ValueError
    ("Exceeds the limit (4300 digits) for integer string conversion"), a traceback too. Correct:
    CommandError naming the entry and key; no new version."""
    entry = {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.2e-05,
        f"input_cost_per_token_above_{thousands}k_tokens": 6e-06,
        f"output_cost_per_token_above_{thousands}k_tokens": 2.4e-05,
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o": entry}))
    versions = ModelPrice.objects.using("privileged").count()
    with pytest.raises(CommandError):
        _call("prices_import", str(path))
    assert ModelPrice.objects.using("privileged").count() == versions


ROLE_URLS = {
    "DATABASE_URL": "postgres://confab_owner:pw@127.0.0.1:1/confab",
    "DATABASE_APP_URL": "postgres://confab_app:pw@127.0.0.1:1/confab",
    "DATABASE_WORKER_URL": "postgres://confab_worker:pw@127.0.0.1:1/confab",
}


@pytest.mark.parametrize(
    "overrides",
    [
        {"DATABASE_ADMIN_URL": "postgres://postgres@127.0.0.1:1/postgres"},
        {"DATABASE_ADMIN_URL": "postgres://postgres@127.0.0.1:1/postgres", "DATABASE_URL": "postgres://confab_owner@127.0.0.1:1"},
    ],
    ids=["admin-url-does-not-answer", "owner-url-without-a-database"],
)
def test_db_bootstrap_with_an_unreachable_or_incomplete_url_is_a_sentence_not_a_traceback(monkeypatch, overrides):
    """docker-compose's web service runs `manage.py db_bootstrap` first. With DATABASE_ADMIN_URL
    pointing at a server that does not answer, config/management/commands/db_bootstrap.py lets
    psycopg.OperationalError out (a traceback); with a DATABASE_URL naming no database,
    config/db/roles.py database_bootstrap raises KeyError('dbname'). `make run` (config/embedded.py
    _prepare_database) turns the first into "DATABASE_ADMIN_URL does not answer (...)". Correct:
    CommandError naming the variable."""
    for name, value in {**ROLE_URLS, **overrides}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(CommandError):
        _call("db_bootstrap")
