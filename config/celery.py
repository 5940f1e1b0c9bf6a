"""The Celery app: Redis broker, JSON only, settings under the CELERY_ namespace."""

import os
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from celery.signals import task_postrun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("confab")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def celery_broker_url(redis_url: str) -> str:
    """kombu refuses unix://; it reaches a socket as redis+socket://PATH."""
    parts = urlsplit(redis_url)
    if parts.scheme != "unix":
        return redis_url
    db = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.path}?virtual_host={db}"


@task_postrun.connect
def _connections_reset(**kwargs):
    # A worker's connections are reused across tasks: never carry one task's state on.
    from config.db.rls import connections_reset

    connections_reset()
