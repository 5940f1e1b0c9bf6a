from celery import shared_task

from billing import services


@shared_task
def subscription_periods_advance_task() -> int:
    return services.subscription_periods_advance()
