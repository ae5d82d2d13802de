"""What one poll of a job costs: clients poll twice a second, so it stays small."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import event

from db.session import get_engine
from db.settings import Settings
from tests.service.conftest import submit, upload


def test_polling_a_job_costs_two_queries(
    client: TestClient, alice: dict[str, str], settings: Settings, checkpoint_bytes: bytes
) -> None:
    """The key's owner and the job, one query each, nothing else."""
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
    assert len(statements) == 2, statements
