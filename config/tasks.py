"""Infrastructure tasks: a ping for round-trip checks and beat's heartbeat."""

from celery import shared_task
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

BEAT_HEARTBEAT_KEY = "health:beat:last"


@shared_task(acks_late=True)
def ping(value: str) -> dict:
    """Echo through a real worker, with the database role it runs as."""
    with connection.cursor() as cur:
        cur.execute("SELECT current_user")
        role = cur.fetchone()[0]
    return {"echo": value, "role": role}


@shared_task(acks_late=True, ignore_result=True)
def heartbeat() -> None:
    cache.set(BEAT_HEARTBEAT_KEY, timezone.now().isoformat(), timeout=None)
