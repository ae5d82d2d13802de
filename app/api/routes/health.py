"""`/healthz` (the process answers), `/readyz` (database and broker reachable), `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select, text

from app.api.deps import SessionDep, SettingsDep
from app.errors import Problem
from app.queue import celery_client
from app.schemas import problems
from db.models import Job, JobStatus

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:  # async: no thread needed to say "ok"
    return {"status": "ok"}


@router.get("/readyz", responses=problems(503))
def readyz(session: SessionDep, settings: SettingsDep) -> dict[str, str]:
    try:
        session.execute(text("SELECT 1"))
    except Exception as error:
        raise Problem(503, "Service Unavailable", f"database unreachable: {error}") from None
    try:
        with celery_client(settings).connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as error:
        raise Problem(503, "Service Unavailable", f"broker unreachable: {error}") from None
    return {"status": "ready"}


@router.get("/metrics")
def metrics(session: SessionDep) -> Response:
    """Prometheus text format: jobs by status, read from the database at scrape time."""
    registry = CollectorRegistry()
    jobs = Gauge("pqz_jobs", "Jobs by status", ["status"], registry=registry)
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    for status in JobStatus:
        jobs.labels(status=status.value).set(counts.get(status.value, 0))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
