"""Analytics upkeep on Celery beat: logs flushed every 10 seconds, rollups every minute, counters hourly, partitions and request ids daily."""

import logging

from celery import shared_task

from analytics import buffer, counters, services
from config.db import partitions

logger = logging.getLogger("confab.analytics.tasks")


@shared_task(acks_late=True)
def usage_rollup_task() -> dict:
    result = services.usage_rollup()
    return {"ran": result.ran, "rows": result.rows, "horizon": result.horizon}


@shared_task(acks_late=True)
def usage_counters_reconcile_task() -> int:
    repaired = counters.counters_reconcile()
    if repaired:
        logger.warning("reconciliation repaired %d usage counter(s)", len(repaired))
    return len(repaired)


@shared_task(acks_late=True)
def usage_requests_prune_task() -> int:
    """Daily: request ids past the dedupe window are forgotten."""
    return services.usage_requests_prune()


@shared_task(acks_late=True)
def partitions_upkeep_task() -> dict:
    return partitions.partitions_upkeep()


@shared_task(acks_late=True)
def logs_flush_task() -> dict:
    """Write the buffered API logs, events and audit entries (every 10 seconds)."""
    return buffer.buffer_flush_all()
