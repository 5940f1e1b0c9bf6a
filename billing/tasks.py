from celery import shared_task

from billing import revenue, services, stripe_services
from config.errors import ApplicationError


@shared_task
def subscription_periods_advance_task() -> int:
    return services.subscription_periods_advance()


# Stripe unreachable while fetching a subscription: try again, backing off, for about an hour.
@shared_task(autoretry_for=(ApplicationError,), retry_backoff=30, retry_backoff_max=900, max_retries=8)
def stripe_event_process_task(*, event_id: str) -> str:
    return stripe_services.stripe_event_process(event_id=event_id)


@shared_task
def revenue_snapshot_task() -> str:
    return str(revenue.revenue_snapshot_take().pk)


@shared_task
def reservations_expire_task() -> int:
    return services.reservations_expire()
