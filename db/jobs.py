"""Job state changes, written once for the API, the worker and the reaper.

A worker claims a job with one conditional UPDATE (DESIGN.md section 1): duplicated or
re-delivered messages find nothing to claim and do nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.blobs import delete_blob
from db.models import TERMINAL, ApiKey, Blob, File, Job, JobEvent, JobStatus, User, now

Owned = TypeVar("Owned", Job, File)

Publish = Callable[[str], None]  # sends the job id to the workers' queue
ABANDONED_UPLOAD_S = 24 * 3600  # an upload still incomplete after a day is not coming back


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    stage: str | None = None,
    progress: float | None = None,
    level: str = "info",
) -> None:
    session.add(
        JobEvent(job_id=job_id, message=message, stage=stage, progress=progress, level=level)
    )


def claim(session: Session, job_id: str, worker: str) -> bool:
    """queued -> running for exactly one worker; False if someone else has it or it ended."""
    moment = now()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            attempts=Job.attempts + 1,
            worker=worker,
            heartbeat_at=moment,
            started_at=moment,
        )
    )
    claimed = bool(result.rowcount)  # type: ignore[attr-defined]
    if claimed:
        add_event(session, job_id, f"claimed by {worker}", stage="validate", progress=0.0)
    return claimed


def heartbeat(session: Session, job_id: str, worker: str) -> str | None:
    """Refresh the heartbeat of a job this worker runs; returns its status (None if not ours)."""
    session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.worker == worker,
            Job.status.in_([JobStatus.running, JobStatus.cancelling]),
        )
        .values(heartbeat_at=now())
    )
    status = session.execute(
        select(Job.status).where(Job.id == job_id, Job.worker == worker)
    ).scalar()
    return status


def finish(
    session: Session,
    job_id: str,
    worker: str,
    status: JobStatus,
    *,
    error: tuple[str, str] | None = None,
    metrics: dict[str, Any] | None = None,
    artifact_blob_id: str | None = None,
) -> bool:
    """Move a job this worker runs to a terminal state; False if it was taken from the worker."""
    values: dict[str, Any] = {"status": status, "finished_at": now(), "heartbeat_at": now()}
    if error is not None:
        values["error_code"], values["error_message"] = error
    if metrics is not None:
        values["metrics"] = metrics
    if artifact_blob_id is not None:
        values["artifact_blob_id"] = artifact_blob_id
    if status == JobStatus.succeeded:
        values["progress"] = 1.0
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.worker == worker,
            Job.status.in_([JobStatus.running, JobStatus.cancelling]),
        )
        .values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release(session: Session, job_id: str, worker: str) -> bool:
    """running -> queued, for a worker that stops on purpose (a service shutting down): the
    attempt it used is given back, and the reaper publishes the job again. False if the job
    was no longer this worker's to release (cancelled meanwhile, say)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.running)
        .values(
            status=JobStatus.queued,
            attempts=Job.attempts - 1,
            worker=None,
            published_at=None,
            stage=None,
            progress=0.0,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def request_cancel(session: Session, job: Job) -> None:
    """queued -> cancelled at once; running -> cancelling, the worker ends it between steps."""
    if job.status == JobStatus.queued:
        job.status = JobStatus.cancelled
        job.finished_at = now()
        add_event(session, job.id, "cancelled before it started", stage=job.stage)
    elif job.status == JobStatus.running:
        job.status = JobStatus.cancelling
        add_event(session, job.id, "cancellation requested", stage=job.stage)


def reap(
    session: Session, publish: Publish, *, timeout_s: float, republish_after_s: float = 600.0
) -> list[str]:
    """Re-queue or fail jobs whose worker went silent; publish queued jobs that never were.

    Returns the ids it acted on. Safe to run in several processes at once: every change is a
    conditional update on the state it saw, and a job published twice is claimed once. A queued
    job is published again after `republish_after_s`, in case its message was lost.
    """
    moment = now()
    stale = moment - timedelta(seconds=timeout_s)
    acted = []
    lost = session.execute(
        select(Job).where(
            Job.status.in_([JobStatus.running, JobStatus.cancelling]),
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
        )
    ).scalars()
    for job in list(lost):
        # Read before the update: it also refreshes `job` in the session (worker -> None).
        worker, stage, progress = job.worker, job.stage, job.progress
        if job.status == JobStatus.cancelling:
            target, error = JobStatus.cancelled, None
        elif job.attempts < job.max_attempts:
            target, error = JobStatus.queued, None
        else:
            target, error = (
                JobStatus.failed,
                ("worker_lost", f"the worker stopped answering ({worker})"),
            )
        values: dict[str, Any] = {"status": target, "worker": None, "published_at": None}
        if target != JobStatus.queued:
            values["finished_at"] = moment
        else:  # it starts again from the beginning
            values["stage"], values["progress"] = None, 0.0
        if error is not None:
            values["error_code"], values["error_message"] = error
        changed = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == job.status, Job.heartbeat_at == job.heartbeat_at)
            .values(**values)
        ).rowcount  # type: ignore[attr-defined]
        if changed:
            add_event(
                session,
                job.id,
                f"worker {worker} lost; job {target}",
                level="warning",
                stage=stage,
                progress=0.0 if target == JobStatus.queued else progress,
            )
            acted.append(job.id)
    session.commit()
    unpublished = session.execute(
        select(Job.id).where(
            Job.status == JobStatus.queued,
            or_(
                Job.published_at.is_(None),
                Job.published_at < moment - timedelta(seconds=republish_after_s),
            ),
        )
    ).scalars()
    for job_id in list(unpublished):
        mark_published(session, job_id)
        session.commit()
        publish(job_id)
        acted.append(job_id)
    _drop_abandoned_uploads(session, moment - timedelta(seconds=ABANDONED_UPLOAD_S))
    return acted


def _drop_abandoned_uploads(session: Session, before: datetime) -> None:
    """Blobs left incomplete by an upload whose API process died mid-stream."""
    abandoned = session.execute(
        select(Blob.id).where(Blob.complete.is_(False), Blob.created_at < before)
    ).scalars()
    for blob_id in list(abandoned):
        delete_blob(session, blob_id)
    session.commit()


def mark_published(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(published_at=now()))


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    session: Session, user_name: str, key_name: str | None = None
) -> tuple[ApiKey, str]:
    """A new key for `user_name` (the user is created if new); the key itself is returned once."""
    user = session.execute(select(User).where(User.name == user_name)).scalar_one_or_none()
    if user is None:
        user = User(name=user_name)
        session.add(user)
        session.flush()
    key = "pqz_" + secrets.token_urlsafe(32)
    record = ApiKey(
        user_id=user.id, name=key_name or user_name, key_hash=hash_key(key), prefix=key[:10]
    )
    session.add(record)
    session.flush()
    return record, key


def list_api_keys(session: Session) -> list[tuple[ApiKey, str]]:
    """Every key with its user's name, oldest first (the keys themselves are not stored)."""
    rows = session.execute(
        select(ApiKey, User.name).join(User, User.id == ApiKey.user_id).order_by(ApiKey.created_at)
    ).all()
    return [(key, name) for key, name in rows]


def revoke_api_key(session: Session, which: str) -> list[tuple[ApiKey, str]]:
    """Delete the key that `which` names: its id, the key itself, or the start of the prefix
    `pqz keys list` shows. Returns the keys that matched: the one deleted, or none, or several
    (an ambiguous prefix, and nothing is deleted)."""
    digest = hash_key(which)
    matches = [
        (key, name)
        for key, name in list_api_keys(session)
        if which == key.id or key.key_hash == digest or (which and key.prefix.startswith(which))
    ]
    if len(matches) == 1:
        session.delete(matches[0][0])
        session.flush()
    return matches


def owned_with_key(
    session: Session, model: type[Owned], resource_id: str, key: str
) -> Owned | None:
    """The job or file `resource_id` if the key's owner owns it, in one query: a client polls
    its job twice a second, and the key check and the lookup each cost a round trip else."""
    return session.execute(
        select(model)
        .join(ApiKey, ApiKey.user_id == model.user_id)
        .where(model.id == resource_id, ApiKey.key_hash == hash_key(key))
    ).scalar_one_or_none()


def user_for_key(session: Session, key: str) -> User | None:
    """The key's owner, in one query: it runs on every request (a poll is three queries else)."""
    return session.execute(
        select(User).join(ApiKey, ApiKey.user_id == User.id).where(ApiKey.key_hash == hash_key(key))
    ).scalar_one_or_none()
