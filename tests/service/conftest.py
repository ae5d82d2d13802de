"""The service under test: a real app on a real database (SQLite, and the PostgreSQL running
on this machine), and helpers to upload and submit as a user would."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from compression import build_model
from db.blobs import write_blob
from db.jobs import create_api_key
from db.migrate import upgrade
from db.models import File
from db.session import get_engine, session_scope
from db.settings import Settings

POSTGRES = os.environ.get("PQZ_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("PQZ_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _unavailable(what: str, error: Exception) -> None:
    if os.environ.get("CI"):
        raise RuntimeError(f"{what} is not reachable in CI (.ci/run starts it): {error}")
    pytest.skip(f"{what} not reachable: {error}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every service test runs on SQLite and on PostgreSQL, unless marked `sqlite_only` or
    `postgresql_only`."""
    if "database_url" in metafunc.fixturenames:
        kinds = ["sqlite", "postgresql"]
        if metafunc.definition.get_closest_marker("sqlite_only"):
            kinds = ["sqlite"]
        elif metafunc.definition.get_closest_marker("postgresql_only"):
            kinds = ["postgresql"]
        metafunc.parametrize("database_url", kinds, indirect=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'pqz.db'}"
        return
    import psycopg

    name = f"pqz_test_{secrets.token_hex(6)}"
    admin = POSTGRES.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        _unavailable("PostgreSQL", error)
    url = POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    yield url
    get_engine(url).dispose()
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(home: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home,
        "database_url": database_url,
        "max_upload_bytes": 4 << 20,
        "chunk_bytes": 256 << 10,
        "heartbeat_interval_s": 0.2,
        "heartbeat_timeout_s": 3.0,
        "reap_interval_s": 0.5,
        "intake_timeout_s": 120.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    settings = make_settings(tmp_path / "home", database_url)
    upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def new_key(settings: Settings, user: str) -> dict[str, str]:
    with session_scope(settings.resolved_database_url) as session:
        _, key = create_api_key(session, user)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def alice(settings: Settings) -> dict[str, str]:
    return new_key(settings, "alice")


@pytest.fixture
def bob(settings: Settings) -> dict[str, str]:
    return new_key(settings, "bob")


@pytest.fixture(scope="session")
def checkpoint_bytes() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(build_model("lenet-300-100").state_dict(), buffer)
    return buffer.getvalue()


def upload(
    client: TestClient, headers: dict[str, str], data: bytes, purpose: str = "checkpoint"
) -> str:
    response = client.post(
        "/v1/files",
        params={"filename": "model.pt", "purpose": purpose},
        content=data,
        headers=headers,
    )
    assert response.status_code == 201, response.text
    file_id: str = response.json()["id"]
    return file_id


def store_unchecked(
    client: TestClient,
    headers: dict[str, str],
    settings: Settings,
    data: bytes,
    purpose: str = "checkpoint",
) -> str:
    """A file holding `data` that the API's upload check never saw (as one stored before that
    check existed): what the worker's own checks must still refuse."""
    file_id = upload(client, headers, b"", purpose)  # an empty file passes the upload check
    with session_scope(settings.resolved_database_url) as session:
        blob = write_blob(session, [data], chunk_bytes=settings.chunk_bytes)
        file = session.get(File, file_id)
        assert file is not None
        file.blob_id, file.size_bytes, file.sha256 = blob.id, blob.size_bytes, blob.sha256 or ""
    return file_id


def submit(
    client: TestClient, headers: dict[str, str], file_id: str, **spec: object
) -> dict[str, object]:
    body = {"checkpoint_file": file_id, "spec": {"arch": "lenet-300-100", **spec}}
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job: dict[str, object] = response.json()
    return job
