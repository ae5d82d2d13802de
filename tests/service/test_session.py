"""Engines and their pools, on both databases."""

from __future__ import annotations

from contextlib import ExitStack

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
