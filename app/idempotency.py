"""`Idempotency-Key` on the POSTs: a repeated request returns the first one's resource.

A key reused for a different request (another job body) is a 422, not the first answer: the
client has a bug, and silently handing back an unrelated job would hide it. Uploads stream
their body, so for them the key alone decides (their body is never held to compare).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Problem
from db.models import IdempotencyKey, User


def fingerprint(body: Any) -> str:
    """SHA-256 of the request's canonical JSON."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def replay(
    session: Session, user: User, key: str, path: str, request_sha256: str | None = None
) -> str | None:
    """The resource of the first request with this key, if any."""
    row = session.execute(
        select(IdempotencyKey.resource_id, IdempotencyKey.request_sha256).where(
            IdempotencyKey.user_id == user.id,
            IdempotencyKey.key == key,
            IdempotencyKey.path == path,
        )
    ).one_or_none()
    if row is None:
        return None
    if request_sha256 is not None and row.request_sha256 not in (None, request_sha256):
        raise Problem(
            422,
            "Invalid Request",
            f"Idempotency-Key '{key}' was used for a different request (resource "
            f"'{row.resource_id}'); use a new key for a new request",
        )
    resource_id: str = row.resource_id
    return resource_id


def remember(
    session: Session,
    user: User,
    key: str,
    path: str,
    resource_id: str,
    request_sha256: str | None = None,
) -> None:
    session.add(
        IdempotencyKey(
            user_id=user.id,
            key=key,
            path=path,
            resource_id=resource_id,
            request_sha256=request_sha256,
        )
    )


def commit_or_replay(
    session: Session, user: User, key: str, path: str, request_sha256: str | None = None
) -> str | None:
    """Commit the new resource with its remembered key, and return None; or, when a request
    with the same key committed first (two sent at once, as a retry after a timeout can be),
    roll this one back and return that request's resource, as a replay would have."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = replay(session, user, key, path, request_sha256)
        if existing is None:  # some other constraint: not this module's to answer
            raise
        return existing
    return None
