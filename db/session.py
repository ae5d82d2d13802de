"""Engines and sessions: SQLite in WAL mode with a busy timeout, or PostgreSQL."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_ENGINES: dict[str, Engine] = {}


def get_engine(url: str) -> Engine:
    """One engine per URL and process."""
    if url not in _ENGINES:
        _ENGINES[url] = _create(url)
    return _ENGINES[url]


def forget_inherited_connections() -> None:
    """In a forked child: leave the parent's pooled connections to the parent.

    Two processes talking over one connection corrupt its state (PostgreSQL answers, for
    instance, "prepared statement already exists"); the child opens its own instead.
    """
    for engine in _ENGINES.values():
        engine.dispose(close=False)


def _create(url: str) -> Engine:
    """Both pools hand out the most recently returned connection (LIFO), not the one idle
    longest (FIFO, SQLAlchemy's default). A connection keeps memory sized by the largest
    statement it ran: sqlite3's cached INSERT keeps its last bound 4 MiB chunk, SQLite its page
    cache, libpq its grown buffers. With FIFO, a 1 GB upload after a burst of concurrent polls
    committed each chunk on the next of 20 warm connections in turn, and the API grew by 154 MB
    (SQLite) or 66 MB (PostgreSQL) instead of 32 MB; LIFO keeps a sequential stream on one.
    """
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # The API answers from a pool of threads: enough connections that they rarely wait.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=20,
            max_overflow=20,
            pool_use_lifo=True,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_use_lifo=True)


@functools.cache
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
