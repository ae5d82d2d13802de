"""Celery tasks, thin: the work is in worker.pipeline."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery.signals import worker_process_init, worker_ready

from db import catalog
from db.jobs import reap
from db.session import forget_inherited_connections, session_scope
from worker import lifeline
from worker.celery_app import app, settings
from worker.pipeline import run_job

log = logging.getLogger("pqz.worker")


@app.task(name="pqz.compress")
def compress(job_id: str) -> None:
    run_job(job_id, settings, worker=f"{socket.gethostname()}:{os.getpid()}")


@app.task(name="pqz.reap")
def reap_jobs() -> None:
    """Run by celery beat in production (the API runs the same in the embedded default)."""
    with session_scope(settings.resolved_database_url) as session:
        reap(
            session,
            lambda job_id: compress.apply_async(args=[job_id], task_id=job_id),
            timeout_s=settings.heartbeat_timeout_s,
        )


@worker_process_init.connect
def fresh_connections(**_: Any) -> None:
    """Each pool process (one per job) opens its own database connections, and stops with the
    worker's main process (worker/lifeline.py)."""
    forget_inherited_connections()
    lifeline.hold_parent()


@worker_ready.connect
def publish_catalog(**_: Any) -> None:
    """Tell the API which architectures and data sets this worker can run (once, in the main
    process: listing torchvision's models takes seconds, too long to repeat for every job)."""
    try:
        publish_catalog_now()
    except Exception:
        log.exception("could not publish the catalog")


def publish_catalog_now() -> None:
    from compression.data import BUILT_IN
    from compression.zoo import list_architectures

    with session_scope(settings.resolved_database_url) as session:
        catalog.publish(session, "architecture", [arch.name for arch in list_architectures()])
        catalog.publish(session, "data", BUILT_IN)
