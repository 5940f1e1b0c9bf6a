"""The Celery app: Redis broker, JSON only, settings under the CELERY_ namespace."""

import os

from celery import Celery
from celery.signals import task_postrun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("confab")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_postrun.connect
def _connections_reset(**kwargs):
    # A worker's connections are reused across tasks: never carry one task's state on.
    from config.db.rls import connections_reset

    connections_reset()
