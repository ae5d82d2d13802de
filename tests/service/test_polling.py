"""What one poll of a job costs: clients poll twice a second, so it stays small."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.api.routes import jobs
from db.session import get_engine
from db.settings import Settings
from tests.service.conftest import submit, upload


def test_polling_a_job_costs_one_query(
    client: TestClient, alice: dict[str, str], settings: Settings, checkpoint_bytes: bytes
) -> None:
    """The job joined with the caller's key: one query, nothing else."""
    job_id = submit(client, alice, upload(client, alice, checkpoint_bytes))["id"]
    statements: list[str] = []

    def record(*args: object) -> None:
        statements.append(str(args[2]))

    engine = get_engine(settings.resolved_database_url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(statements) == 1, statements


def _blocking_calls(dependant: Any) -> set[str]:
    """Names of the functions FastAPI runs in its thread pool to answer a route."""
    names = set()
    for dependency in dependant.dependencies:
        names |= _blocking_calls(dependency)
    call = dependant.call
    function = call if inspect.isfunction(call) else type(call).__call__
    if not (inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)):
        names.add(function.__name__)
    return names


def test_polling_a_job_takes_one_trip_to_the_thread_pool() -> None:
    """Each synchronous dependency is a trip to the thread pool (50-100 us here): only the
    lookup of the caller and the job needs one (and the session's close, on the way out)."""
    routes = [
        route
        for route in jobs.router.routes
        if isinstance(route, APIRoute) and route.path == "/v1/jobs/{job_id}"
    ]
    assert [_blocking_calls(route.dependant) for route in routes] == [{"valid_job"}]
