"""Real processes: a Celery worker on the local Redis, a worker killed mid-job, and the
embedded default (`pqz serve`) driven by the `pqz` client."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from compression import QuantConfig, build_model, load_pqz, quantize_
from db.settings import Settings
from tests.service.conftest import REDIS, _unavailable, make_settings, submit, upload

PQZ = str(Path(sys.executable).parent / "pqz")


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=3).flushdb()
    except redis.RedisError as error:
        _unavailable("Redis", error)
    return REDIS


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PQZ_HOME=str(settings.home),
        PQZ_DATABASE_URL=settings.resolved_database_url,
        PQZ_BROKER_URL=settings.resolved_broker_url,
        PQZ_HEARTBEAT_INTERVAL_S=str(settings.heartbeat_interval_s),
        PQZ_HEARTBEAT_TIMEOUT_S=str(settings.heartbeat_timeout_s),
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings) -> subprocess.Popen[bytes]:
        """`pqz worker` as an operator runs it (here: no GPU, so one CPU worker process)."""
        log = (tmp_path / f"worker-{len(started)}.log").open("wb")
        env = {**_env(settings), "CUDA_VISIBLE_DEVICES": ""}
        process = subprocess.Popen(
            [PQZ, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            _kill_worker(process)


def _kill_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to `pqz worker` and to each Celery worker it runs (each in its own group)."""
    for child in _children(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait(
    client: TestClient,
    headers: dict[str, str],
    job_id: str,
    statuses: tuple[str, ...],
    limit_s: float = 180,
) -> dict[str, object]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        job: dict[str, object] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not reach {statuses}: {job}")


def _expected_outputs(checkpoint_bytes: bytes, images: torch.Tensor) -> torch.Tensor:
    model = build_model("lenet-300-100")
    model.load_state_dict(torch.load(io.BytesIO(checkpoint_bytes), weights_only=True))
    quantize_(model, QuantConfig())
    with torch.no_grad():
        return model(images)


def test_celery_worker_on_redis_compresses_end_to_end(
    settings: Settings,
    redis_url: str,
    start_worker: object,
    alice: dict[str, str],
    checkpoint_bytes: bytes,
    tmp_path: Path,
) -> None:
    settings = settings.model_copy(update={"broker_url": redis_url})
    with TestClient(create_app(settings)) as client:
        file_id = upload(client, alice, checkpoint_bytes)
        # Three jobs: each runs in a fresh pool process forked from the same worker, which must
        # not share its parent's database connections.
        job_ids = [submit(client, alice, file_id)["id"] for _ in range(3)]
        start_worker(settings)  # type: ignore[operator]
        for job_id in job_ids:
            job = _wait(client, alice, job_id, ("succeeded", "failed", "cancelled"))
            assert job["status"] == "succeeded", job["error"]
        events = client.get(f"/v1/jobs/{job_id}/events", headers=alice).json()["data"]
        progress = [event["progress"] for event in events if event["progress"] is not None]
        assert progress == sorted(progress)
        assert progress[-1] == 1.0
        artifact = client.get(f"/v1/jobs/{job_id}/artifact", headers=alice)
    path = tmp_path / "job.pqz"
    path.write_bytes(artifact.content)
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_pqz(path)(images), _expected_outputs(checkpoint_bytes, images))


@pytest.mark.sqlite_only
def test_worker_killed_mid_job_is_rerun_not_stuck(
    tmp_path: Path, database_url: str, redis_url: str, start_worker: object, checkpoint_bytes: bytes
) -> None:
    from db.migrate import upgrade
    from tests.service.conftest import new_key

    settings = make_settings(
        tmp_path / "home", database_url, broker_url=redis_url, heartbeat_timeout_s=2.0
    )
    upgrade(settings.resolved_database_url)
    alice = new_key(settings, "alice")
    with TestClient(create_app(settings, reaper=True)) as client:
        spec = {"data": "digits", "prune": None, "finetune": {"epochs": 15}}
        job_id = submit(client, alice, upload(client, alice, checkpoint_bytes), **spec)["id"]
        worker = start_worker(settings)  # type: ignore[operator]
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job_id}", headers=alice).json()["stage"] not in (
            "quantize",
            "finetune",
        ):
            assert time.monotonic() < deadline, "the job never got going"
            time.sleep(0.2)
        _kill_worker(worker)  # the worker and its child, mid-job
        job = _wait(client, alice, job_id, ("queued", "failed"), limit_s=60)
        assert job["status"] == "queued"  # re-queued by the reaper, 1 attempt of 2 spent
        assert job["attempts"] == 1
        start_worker(settings)  # type: ignore[operator]
        job = _wait(client, alice, job_id, ("succeeded", "failed", "cancelled"))
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_serve(
    tmp_path: Path, *, new_session: bool = False
) -> tuple[subprocess.Popen[str], int, str | None]:
    """`pqz serve` on a free port under tmp_path/var, once it listens; its first API key."""
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PQZ_")}
    env.update(PQZ_HOME=str(tmp_path / "var"), OMP_NUM_THREADS="1")
    server = subprocess.Popen(
        [PQZ, "serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=new_session,
    )  # fmt: skip
    key = None
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("first API key"):
            key = line.split(":", 1)[1].strip()
        if "Uvicorn running" in line:
            break
    return server, port, key


@pytest.mark.sqlite_only
def test_embedded_default_serves_the_cli_client(tmp_path: Path, checkpoint_bytes: bytes) -> None:
    server, port, key = _start_serve(tmp_path, new_session=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PQZ_")}
    env.update(PQZ_HOME=str(tmp_path / "var"), OMP_NUM_THREADS="1")
    try:
        assert key is not None, "pqz serve printed no first API key"
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json() == {"status": "ready"}
        # The API process never loads torch (the catalog is published by a child process).
        assert "libtorch" not in Path(f"/proc/{server.pid}/maps").read_text()
        client_env = {**env, "PQZ_URL": f"http://127.0.0.1:{port}", "PQZ_API_KEY": key}
        checkpoint = tmp_path / "model.pt"
        checkpoint.write_bytes(checkpoint_bytes)

        def pqz(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [PQZ, *args],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )

        submitted = pqz("submit", str(checkpoint), "--arch", "lenet-300-100", "--wait", "--json")
        assert submitted.returncode == 0, submitted.stderr
        job = json.loads(submitted.stdout)
        assert job["status"] == "succeeded"
        assert job["metrics"]["compression_ratio"] > 10
        downloaded = pqz("download", job["id"], "-o", str(tmp_path / "out.pqz"))
        assert downloaded.returncode == 0, downloaded.stderr
        assert "sha256 ok" in downloaded.stdout
        images = torch.randn(4, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(
                load_pqz(tmp_path / "out.pqz")(images), _expected_outputs(checkpoint_bytes, images)
            )
        failed = pqz("submit", str(checkpoint), "--arch", "lenet-5", "--wait")
        assert failed.returncode == 1
        assert failed.stdout == ""  # a failed job is an error: one line on stderr, the last
        (line,) = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
        assert failed.stderr.rstrip().endswith(line)
        assert line.startswith("error: job-")
        assert ": failed (validate" in line
        assert "invalid_checkpoint" in line
        missing = pqz("status", "job-missing")
        assert missing.returncode == 1
        assert missing.stderr.strip() == "error: no job 'job-missing' (HTTP 404)"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
    time.sleep(1)
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)  # the worker it started is gone too


@pytest.mark.sqlite_only
def test_keys_create_prints_a_working_key_once(settings: Settings) -> None:
    created = subprocess.run(
        [PQZ, "keys", "create", "carol", "--json"],
        env=_env(settings),
        capture_output=True,
        text=True,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["name"] == "carol"
    assert key["key"].startswith("pqz_")
    with TestClient(create_app(settings)) as client:
        assert (
            client.get("/v1/jobs", headers={"Authorization": f"Bearer {key['key']}"}).status_code
            == 200
        )


def test_keys_create_refuses_a_home_without_a_database(tmp_path: Path) -> None:
    """A key written into a fresh database that no server reads would be refused later: a
    mistyped PQZ_HOME is said at once, in one line, and nothing is created there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PQZ_")}
    env["PQZ_HOME"] = str(tmp_path / "typo")
    created = subprocess.run(
        [PQZ, "keys", "create", "carol"], env=env, capture_output=True, text=True, check=False
    )
    assert created.returncode == 1
    assert created.stderr.startswith(f"error: no database at {tmp_path / 'typo' / 'pqz.db'}")
    assert created.stderr.count("\n") == 1
    assert not (tmp_path / "typo").exists()


def _children(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return {int(line) for line in found.stdout.split()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.sqlite_only
def test_serve_replaces_a_worker_that_dies_and_its_workers_end_with_it(
    tmp_path: Path, checkpoint_bytes: bytes
) -> None:
    server, port, key = _start_serve(tmp_path)
    groups: set[int] = set()
    try:
        assert server.stdout is not None
        (first,) = _children(server.pid)
        os.kill(first, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        for line in server.stdout:
            if "starting another" in line:
                break
        assert line.startswith("the worker exited with status -9; starting another (its log: ")
        groups = _children(server.pid) - {first}  # each worker leads a process group
        assert len(groups) == 1
        job_id = _running_job(port, key, checkpoint_bytes)
        # Killed outright, serve runs no cleanup: its worker, and the process running the
        # job, must still not outlive it, and the job goes back to the queue.
        server.kill()
        server.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_group_alive(group) for group in groups) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(_group_alive(group) for group in groups)
        assert _job_row(tmp_path, job_id)[:2] == ("queued", 0)
    finally:
        if server.poll() is None:
            server.kill()
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    found = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True, check=False)
    return any(_alive(int(pid)) for pid in found.stdout.split())


def _running_job(port: int, key: str | None, checkpoint_bytes: bytes) -> str:
    """A job submitted to the served API that runs for minutes, once it is pruning."""
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}
    )
    file_id = api.post("/v1/files", params={"filename": "m.pt"}, content=checkpoint_bytes).json()[
        "id"
    ]
    spec = {"arch": "lenet-300-100", "data": "digits", "prune": {"rounds": 50}}
    job_id: str = api.post("/v1/jobs", json={"checkpoint_file": file_id, "spec": spec}).json()["id"]
    deadline = time.monotonic() + 120
    while api.get(f"/v1/jobs/{job_id}").json()["stage"] != "prune":
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.2)
    return job_id


def _job_row(tmp_path: Path, job_id: str) -> tuple[Any, ...]:
    """(status, attempts, stage, progress, last event) from the served database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'pqz.db'}")
    with engine.connect() as connection:
        job = connection.execute(
            text("SELECT status, attempts, stage, progress FROM job WHERE id = :id"), {"id": job_id}
        ).one()
        last = connection.execute(
            text("SELECT message FROM job_event WHERE job_id = :id ORDER BY id DESC LIMIT 1"),
            {"id": job_id},
        ).scalar_one()
    engine.dispose()
    return (*job, last)


def test_serve_on_a_port_in_use_says_so_before_anything_else(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PQZ_")}
    env["PQZ_HOME"] = str(tmp_path / "var")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [PQZ, "serve", "--port", str(port)], env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""  # no first API key for a server that never started
    assert done.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another with --port)\n"
    )
    assert not (tmp_path / "var").exists()


@pytest.mark.sqlite_only
def test_stopping_serve_puts_a_running_job_back_without_spending_an_attempt(
    tmp_path: Path, checkpoint_bytes: bytes
) -> None:
    server, port, key = _start_serve(tmp_path)
    try:
        job_id = _running_job(port, key, checkpoint_bytes)
        server.send_signal(signal.SIGTERM)  # as systemd or docker stop would
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    *job, last = _job_row(tmp_path, job_id)
    assert tuple(job) == ("queued", 0, None, 0.0)
    assert last.startswith("the worker is stopping (the service shuts down): the job goes back")


@pytest.mark.sqlite_only
def test_keys_are_listed_and_a_revoked_key_is_refused(settings: Settings) -> None:
    def pqz(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PQZ, "keys", *args], env=_env(settings), capture_output=True, text=True, check=False
        )

    key = json.loads(pqz("create", "dave", "--json").stdout)["key"]
    listed = json.loads(pqz("list", "--json").stdout)
    assert [(row["user"], row["prefix"]) for row in listed] == [("dave", key[:10])]
    assert key not in pqz("list").stdout  # only its first characters are known
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        revoked = pqz("revoke", key)  # the leaked key itself; its id or prefix do as well
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout == f"revoked {listed[0]['id']} ({key[:10]}..., dave)\n"
        assert client.get("/v1/jobs", headers=headers).status_code == 401
    again = pqz("revoke", listed[0]["id"])
    assert again.returncode == 1
    assert again.stderr == (
        f"error: no API key with id, key or prefix '{listed[0]['id']}' (`pqz keys list` "
        "shows them)\n"
    )
