"""Jobs: create (202), list (cursor pages), get, cancel, events (JSON or SSE), artifact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import JobDep, SessionDep, SettingsDep, UserDep
from app.errors import Problem, not_found
from app.idempotency import commit_or_replay, fingerprint, remember, replay
from app.queue import publisher
from app.schemas import (
    EventList,
    EventPublic,
    JobCreate,
    JobError,
    JobList,
    JobPublic,
    problems,
)
from db import catalog
from db.blobs import read_blob
from db.jobs import add_event, is_terminal, mark_published, request_cancel
from db.models import Blob, File, Job, JobEvent, JobStatus
from db.session import session_factory

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problems(401, 404, 422))


def public(job: Job) -> JobPublic:
    error = (
        JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    )
    return JobPublic(
        id=job.id,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        error=error,
        metrics=job.metrics,
        spec=job.spec,
        checkpoint_file=job.checkpoint_file_id,
        data_file=job.data_file_id,
        attempts=job.attempts,
        artifact=f"/v1/jobs/{job.id}/artifact" if job.status == JobStatus.succeeded else None,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _owned_file(session: Session, user_id: str, file_id: str, purpose: str) -> File:
    file = session.get(File, file_id)
    if file is None or file.user_id != user_id:
        raise not_found("file", file_id)
    if file.purpose != purpose:
        raise Problem(
            422,
            "Invalid Request",
            f"file '{file_id}' has purpose '{file.purpose}', not '{purpose}'",
        )
    if file.size_bytes == 0:
        raise Problem(
            422, "Invalid Request", f"file '{file_id}' is empty: it cannot be the job's {purpose}"
        )
    return file


def _check_catalog(session: Session, kind: str, name: str) -> None:
    names = catalog.known(session, kind)
    if names is not None and name not in names:
        if kind == "architecture":
            field, message = "spec.arch", f"unknown architecture '{name}' (`pqz zoo` lists them)"
        else:
            known = ", ".join(sorted(names))
            field, message = "spec.data", f"unknown data set '{name}' (known here: {known})"
        raise Problem(
            422, "Invalid Request", message, errors=[{"field": field, "message": message}]
        )


@router.post("", status_code=202, response_model=JobPublic)
def create_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    user: UserDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic:
    """Queue a compression job for an uploaded checkpoint; poll it, then download the .pqz."""
    request_sha256 = fingerprint(body.model_dump(mode="json")) if idempotency_key else None
    if idempotency_key and (
        existing := replay(session, user, idempotency_key, "jobs", request_sha256)
    ):
        job = session.get(Job, existing)
        if job is not None:
            response.headers["Location"] = f"/v1/jobs/{job.id}"
            return public(job)
    _owned_file(session, user.id, body.checkpoint_file, "checkpoint")
    if body.data_file is not None:
        _owned_file(session, user.id, body.data_file, "dataset")
        if body.spec.data is not None:
            raise Problem(422, "Invalid Request", "give spec.data or data_file, not both")
    _check_catalog(session, "architecture", body.spec.arch)
    if body.spec.data is not None:
        _check_catalog(session, "data", body.spec.data)
    job = Job(
        user_id=user.id,
        spec=body.spec.model_dump(mode="json"),
        checkpoint_file_id=body.checkpoint_file,
        data_file_id=body.data_file,
        max_attempts=settings.max_attempts,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "queued", progress=0.0)
    if idempotency_key:
        remember(session, user, idempotency_key, "jobs", job.id, request_sha256)
        first = commit_or_replay(session, user, idempotency_key, "jobs", request_sha256)
        if first is not None:  # the same request, sent twice at once: the first one's job
            earlier = session.get(Job, first)
            assert earlier is not None, "jobs are never deleted"
            response.headers["Location"] = f"/v1/jobs/{earlier.id}"
            return public(earlier)
    session.commit()
    try:
        publisher(settings)(job.id)
    except Exception as error:  # the broker is down: the reaper publishes it later
        add_event(session, job.id, f"not yet sent to the workers: {error}", level="warning")
    else:
        mark_published(session, job.id)
    session.commit()
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return public(job)


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    user: UserDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(description="Cursor: the last job id of the previous page.")
    ] = None,
) -> JobList:
    """The caller's jobs, newest first."""
    query = select(Job).where(Job.user_id == user.id)
    if after is not None:
        anchor = session.get(Job, after)
        if anchor is None or anchor.user_id != user.id:
            raise not_found("job", after)
        query = query.where(
            or_(
                Job.created_at < anchor.created_at,
                and_(Job.created_at == anchor.created_at, Job.id < anchor.id),
            )
        )
    jobs = list(
        session.execute(
            query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        ).scalars()
    )
    return JobList(data=[public(job) for job in jobs[:limit]], has_more=len(jobs) > limit)


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job: JobDep) -> JobPublic:
    return public(job)  # no I/O: the job's columns were loaded by valid_job


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=problems(409))
def cancel_job(job: JobDep, session: SessionDep) -> JobPublic:
    """A queued job ends at once; a running one ends between two steps of the worker."""
    if is_terminal(job.status):
        raise Problem(409, "Conflict", f"job '{job.id}' has already ended ({job.status})")
    request_cancel(session, job)
    session.commit()
    return public(job)


def _events(session: Session, job_id: str, after: int, limit: int) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
    return list(session.execute(query.order_by(JobEvent.id).limit(limit)).scalars())


def _event(event: JobEvent) -> EventPublic:
    return EventPublic(
        id=event.id,
        created_at=event.created_at,
        level=event.level,
        stage=event.stage,
        progress=event.progress,
        message=event.message,
    )


@router.get("/{job_id}/events", response_model=EventList)
def job_events(
    job: JobDep,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    after: Annotated[int, Query(ge=0, description="Cursor: the last event id seen.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[
        int | None,
        Header(ge=0, description="SSE: a reconnecting EventSource's last id (as `after`)."),
    ] = None,
) -> EventList | StreamingResponse:
    """Events oldest first; with `Accept: text/event-stream`, a live stream until the job ends
    (a client that reconnects with `Last-Event-ID` goes on after that event)."""
    if "text/event-stream" in request.headers.get("accept", ""):
        start = max(after, last_event_id or 0)
        return StreamingResponse(
            _stream(settings.resolved_database_url, job.id, start), media_type="text/event-stream"
        )
    events = _events(session, job.id, after, limit + 1)
    return EventList(data=[_event(event) for event in events[:limit]], has_more=len(events) > limit)


async def _stream(url: str, job_id: str, after: int) -> AsyncIterator[str]:
    def poll(cursor: int) -> tuple[list[EventPublic], str]:
        with session_factory(url)() as session:
            events = [_event(event) for event in _events(session, job_id, cursor, 500)]
            status = session.execute(select(Job.status).where(Job.id == job_id)).scalar_one()
        return events, status

    cursor = after
    while True:
        events, status = await run_in_threadpool(poll, cursor)
        for event in events:
            cursor = event.id
            yield f"id: {event.id}\nevent: job.event\ndata: {event.model_dump_json()}\n\n"
        if is_terminal(status) and not events:
            yield f"event: job.end\ndata: {json.dumps({'status': status})}\n\n"
            return
        await asyncio.sleep(0.5)


@router.get("/{job_id}/artifact", response_class=StreamingResponse, responses=problems(409))
def job_artifact(
    job: JobDep,
    session: SessionDep,
    settings: SettingsDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The compressed model (`.pqz`), streamed from the database; ETag is its SHA-256."""
    if job.status != JobStatus.succeeded or job.artifact_blob_id is None:
        raise Problem(409, "Conflict", f"job '{job.id}' has no artifact (status {job.status})")
    blob = session.get(Blob, job.artifact_blob_id)
    if blob is None or blob.sha256 is None:
        raise not_found("artifact of job", job.id)
    etag = f'"{blob.sha256}"'
    if _none_match(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    headers = {
        "ETag": etag,
        "Content-Length": str(blob.size_bytes),
        "Content-Disposition": f'attachment; filename="{job.id}.pqz"',
    }
    url, blob_id = settings.resolved_database_url, blob.id

    def chunks() -> Iterator[bytes]:
        # Its own session: the request's closes once the route returns, the stream goes on.
        with session_factory(url)() as stream_session:
            yield from read_blob(stream_session, blob_id)

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


def _none_match(header: str | None, etag: str) -> bool:
    """If-None-Match as RFC 9110 compares it for GET: `*`, or any tag of the list equal to
    `etag` when a weak tag's `W/` is set aside."""
    if header is None:
        return False
    tags = [tag.strip() for tag in header.split(",")]
    return "*" in tags or etag in (tag.removeprefix("W/") for tag in tags)
