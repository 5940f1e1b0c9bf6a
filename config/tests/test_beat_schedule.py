"""Every entry of the beat schedule names a task the worker has registered, and each runs once
to success on a real worker against the real database and Redis (one whose result is ignored,
in this process): a task that a rename left
behind, or one that cannot import in the worker, fails here rather than silently every hour."""

import pytest

from billing.tests.factories import make_plans
from chat.tests.factories import make_catalog

pytestmark = pytest.mark.django_db(transaction=True)


def test_every_scheduled_task_is_registered_and_runs_once_on_a_real_worker(celery_app, celery_worker, settings, tmp_path):
    settings.CHAT_EXPORT_DIR, settings.CHAT_IMPORT_DIR = tmp_path / "exports", tmp_path / "imports"
    make_catalog()  # a transactional test's flush removed the seeded catalog and plans
    make_plans()
    schedule = settings.CELERY_BEAT_SCHEDULE
    unregistered = sorted(entry["task"] for entry in schedule.values() if entry["task"] not in celery_app.tasks)
    assert unregistered == []
    failures = {}
    for name, entry in sorted(schedule.items()):
        task, args, kwargs = celery_app.tasks[entry["task"]], entry.get("args", ()), entry.get("kwargs", {})
        try:
            if task.ignore_result:  # no result to wait for from the worker: run its code here instead
                task.apply(args=args, kwargs=kwargs).get()
            else:
                celery_app.send_task(entry["task"], args=args, kwargs=kwargs).get(timeout=60)
        except Exception as exc:  # noqa: BLE001 - collected, reported together below
            failures[name] = f"{type(exc).__name__}: {exc}"
    assert failures == {}
