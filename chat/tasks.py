from celery import shared_task

from chat import services


@shared_task
def streams_close_stale_task() -> int:
    return services.streams_close_stale()
