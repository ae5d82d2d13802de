"""`Idempotency-Key` on the POSTs: a repeated request returns the first one's resource."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import IdempotencyKey, User


def replay(session: Session, user: User, key: str, path: str) -> str | None:
    return session.execute(
        select(IdempotencyKey.resource_id).where(
            IdempotencyKey.user_id == user.id,
            IdempotencyKey.key == key,
            IdempotencyKey.path == path,
        )
    ).scalar_one_or_none()


def remember(session: Session, user: User, key: str, path: str, resource_id: str) -> None:
    session.add(IdempotencyKey(user_id=user.id, key=key, path=path, resource_id=resource_id))
