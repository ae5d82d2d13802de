"""The Celery application (DESIGN.md section 2): one job per child process, late acks,
rejected on worker loss, no prefetch, a hard time limit; the job row is the result."""

from __future__ import annotations

from celery import Celery

from db.settings import get_settings
from worker import lifeline

lifeline.hold()
settings = get_settings()

app = Celery("pqz", broker=settings.resolved_broker_url, include=["worker.tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=settings.job_time_limit_s,
    task_soft_time_limit=max(settings.job_time_limit_s - 60, 1),
    task_ignore_result=True,
    task_default_queue="gpu",
    broker_transport_options=settings.broker_transport_options(),
    broker_connection_retry_on_startup=True,
    # The filesystem transport has no broadcast: no remote control there (cancel goes through
    # the database anyway).
    worker_enable_remote_control=not settings.uses_filesystem_broker,
    beat_schedule={"reap": {"task": "pqz.reap", "schedule": settings.reap_interval_s}},
)
