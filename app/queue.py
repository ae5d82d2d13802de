"""Enqueue by task name after the commit: the API sends job ids, it never imports the worker."""

from __future__ import annotations

import functools

from celery import Celery

from db.settings import Settings

TASK = "pqz.compress"
QUEUE = "gpu"


@functools.cache
def _client(broker_url: str, transport_options: tuple[tuple[str, object], ...]) -> Celery:
    celery = Celery("pqz-api", broker=broker_url)
    celery.conf.broker_transport_options = dict(transport_options)
    celery.conf.task_ignore_result = True
    return celery


def celery_client(settings: Settings) -> Celery:
    """One client per broker and process."""
    options = tuple(sorted(settings.broker_transport_options().items()))
    return _client(settings.resolved_broker_url, options)


def publisher(settings: Settings) -> functools.partial[None]:
    """`publish(job_id)`: the message carries the job id only, and is the task's id too."""
    return functools.partial(_publish, celery_client(settings))


def _publish(celery: Celery, job_id: str) -> None:
    celery.send_task(TASK, args=[job_id], task_id=job_id, queue=QUEUE)
