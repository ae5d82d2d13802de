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
from db.jobs import Owned, owned_with_key, user_for_key
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


def bearer_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Problem(401, "Unauthorized", "an API key is required: Authorization: Bearer <key>")
    return credentials.credentials


def authenticate(session: Session, credentials: HTTPAuthorizationCredentials | None) -> User:
    user = user_for_key(session, bearer_key(credentials))
    if user is None:
        raise Problem(401, "Unauthorized", "the API key is not valid")
    return user


def owned(
    session: Session,
    model: type[Owned],
    resource_id: str,
    credentials: HTTPAuthorizationCredentials | None,
) -> Owned:
    """The caller's job or file, in one query; a second only tells a bad key from a bad id."""
    resource = owned_with_key(session, model, resource_id, bearer_key(credentials))
    if resource is None:
        authenticate(session, credentials)  # 401 if the key is what is wrong
        raise not_found(model.__tablename__, resource_id)
    return resource


def current_user(session: SessionDep, credentials: CredentialsDep) -> User:
    return authenticate(session, credentials)


UserDep = Annotated[User, Depends(current_user)]


def valid_job(job_id: str, session: SessionDep, credentials: CredentialsDep) -> Job:
    return owned(session, Job, job_id, credentials)


def valid_file(file_id: str, session: SessionDep, credentials: CredentialsDep) -> File:
    return owned(session, File, file_id, credentials)


JobDep = Annotated[Job, Depends(valid_job)]
FileDep = Annotated[File, Depends(valid_file)]
