"""Engines and their pools, on both databases."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from db import session
from db.session import get_engine
from db.settings import Settings


def test_pool_hands_out_the_most_recently_used_connection(settings: Settings) -> None:
    """After a burst of concurrent requests, a sequential stream (an upload's chunk commits)
    keeps to one warm connection instead of cycling through all of them: each connection holds
    memory sized by the largest statement it ran (a 4 MiB chunk), so cycling multiplied it."""
    engine = get_engine(settings.resolved_database_url)
    with ExitStack() as burst:  # five connections in use at once, then all back in the pool
        for _ in range(5):
            burst.enter_context(engine.connect())
    handed_out = set()
    for _ in range(10):
        with engine.connect() as connection:
            handed_out.add(id(connection.connection.dbapi_connection))
    assert len(handed_out) == 1


def _backend_pid(connection: Connection) -> int:
    return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    import psycopg

    # Not from the pool: LIFO would hand out the very connection to be killed.
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as other:
        other.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits until gone


@pytest.mark.postgresql_only
def test_a_connection_dropped_while_idle_is_replaced_before_use(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool pings a connection only after it sat idle (a ping on every checkout was a
    round trip on every request); a server-side drop during the idle time is never seen."""
    monkeypatch.setattr(session, "IDLE_PING_S", 0.0)  # every connection counts as idle
    engine = get_engine(database_url)
    with engine.connect() as first:
        dropped = _backend_pid(first)
    _terminate(database_url, dropped)
    with engine.connect() as connection:
        assert _backend_pid(connection) != dropped


@pytest.mark.postgresql_only
def test_a_connection_returned_moments_ago_is_used_without_a_ping(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the trade: within IDLE_PING_S no ping, so a drop in that window costs
    one failed query, after which the pool is invalidated and the next query works."""
    monkeypatch.setattr(session, "IDLE_PING_S", 3600.0)
    engine = get_engine(database_url)
    with engine.connect() as first:
        dropped = _backend_pid(first)
    _terminate(database_url, dropped)
    with engine.connect() as connection, pytest.raises(OperationalError):
        connection.execute(text("SELECT 1"))
    with engine.connect() as connection:
        assert _backend_pid(connection) != dropped
