"""Analytics upkeep on Celery beat: logs flushed every 10 seconds, rollups every minute, counters hourly, partitions,
request ids and the reconciliation with the providers' bills daily."""

import logging
from datetime import UTC, timedelta

from celery import shared_task
from django.utils import timezone

from analytics import buffer, counters, reconcile, services
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


@shared_task(acks_late=True)
def usage_reconcile_task() -> dict:
    """Daily: each provider whose admin key is set is reconciled for yesterday (UTC); the others are skipped with a log line."""
    yesterday = timezone.now().astimezone(UTC).date() - timedelta(days=1)
    done = {}
    for provider in reconcile.PROVIDERS:
        if not reconcile.admin_key(provider):
            logger.info("usage reconciliation for %s skipped: %s_ADMIN_KEY is not set", provider, provider.upper())
            continue
        try:
            arguments = reconcile.reconcile_arguments(provider=provider, start=yesterday, end=yesterday)
            report = reconcile.usage_reconcile_run(arguments=arguments)
        except reconcile.ReconciliationFailed as exc:
            # One provider's outage must not cost the others their day: the task covers yesterday only.
            logger.error("usage reconciliation for %s failed: %s", provider, exc.message)
            done[provider] = {"failed": exc.message}
            continue
        except Exception as exc:  # noqa: BLE001 - whatever one provider's report did, the next is still reconciled
            logger.exception("usage reconciliation for %s failed", provider)
            done[provider] = {"failed": f"{type(exc).__name__}: {exc}"}
            continue
        if not report.within_tolerance:
            logger.warning("usage reconciliation beyond tolerance: %s", report.summary)
        done[provider] = {"report": str(report.pk), "within_tolerance": report.within_tolerance}
    return done
