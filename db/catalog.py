"""What the workers can run, published in the database for the API (which cannot import torch)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.models import CatalogEntry, now


def publish(session: Session, kind: str, names: Iterable[str]) -> None:
    """Replace the entries of `kind` with `names`."""
    session.execute(delete(CatalogEntry).where(CatalogEntry.kind == kind))
    moment = now()
    session.add_all(
        CatalogEntry(kind=kind, name=name, updated_at=moment) for name in sorted(set(names))
    )


def known(session: Session, kind: str) -> set[str] | None:
    """The published names of `kind`, or None when no worker has published any yet."""
    names = set(
        session.execute(select(CatalogEntry.name).where(CatalogEntry.kind == kind)).scalars()
    )
    return names or None
