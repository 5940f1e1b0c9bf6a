from celery import shared_task

from chat import services
from chat.porting import exporter, jobs


@shared_task
def streams_close_stale_task() -> int:
    return services.streams_close_stale()


@shared_task(soft_time_limit=exporter.SOFT_TIME_LIMIT, time_limit=exporter.TIME_LIMIT)
def export_build_task(*, job_id: str, user_id: str) -> str:
    job = exporter.export_build(job_id=job_id, user_id=user_id)
    return job.status if job else "gone"


@shared_task
def exports_expire_task() -> int:
    return exporter.exports_expire()


@shared_task(soft_time_limit=jobs.SOFT_TIME_LIMIT, time_limit=jobs.TIME_LIMIT)
def import_run_task(*, job_id: str, user_id: str) -> str:
    job = jobs.import_job_run(job_id=job_id, user_id=user_id)
    return job.status if job else "gone"


@shared_task
def import_jobs_fail_stale_task() -> int:
    return jobs.import_jobs_fail_stale()
