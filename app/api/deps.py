"""Dependencies written once: settings, the session, the caller, and owned resources by id.

A resource that exists but belongs to someone else is a 404, exactly like one that does not.
Every synchronous dependency costs a trip to the thread pool (50-100 us on the 2-core box),
and a client polls a job twice a second: so what needs no I/O is `async`, and what a poll needs
(the caller and the job) is looked up in one trip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.errors import Problem, not_found
from db.jobs import user_for_key
from db.models import File, Job, User
from db.session import session_factory
from db.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    # A new session does no I/O (it connects on first use); closing one may roll back.
    session = session_factory(settings.resolved_database_url)()
    try:
        yield session
    finally:
        await run_in_threadpool(session.close)


SessionDep = Annotated[Session, Depends(get_session)]
bearer = HTTPBearer(auto_error=False, description="An API key from `pqz keys create NAME`.")
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def authenticate(session: Session, credentials: HTTPAuthorizationCredentials | None) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Problem(401, "Unauthorized", "an API key is required: Authorization: Bearer <key>")
    user = user_for_key(session, credentials.credentials)
    if user is None:
        raise Problem(401, "Unauthorized", "the API key is not valid")
    return user


def current_user(session: SessionDep, credentials: CredentialsDep) -> User:
    return authenticate(session, credentials)


UserDep = Annotated[User, Depends(current_user)]


def valid_job(job_id: str, session: SessionDep, credentials: CredentialsDep) -> Job:
    user = authenticate(session, credentials)  # not UserDep: that would be a second trip
    job = session.get(Job, job_id)
    if job is None or job.user_id != user.id:
        raise not_found("job", job_id)
    return job


def valid_file(file_id: str, session: SessionDep, credentials: CredentialsDep) -> File:
    user = authenticate(session, credentials)
    file = session.get(File, file_id)
    if file is None or file.user_id != user.id:
        raise not_found("file", file_id)
    return file


JobDep = Annotated[Job, Depends(valid_job)]
FileDep = Annotated[File, Depends(valid_file)]
