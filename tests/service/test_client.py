"""`pqz submit` against the real API over HTTP: what it says and leaves behind when refused."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import func, select

from app.main import create_app
from db import catalog
from db.jobs import add_event
from db.models import Blob, BlobChunk, File, Job, JobStatus
from db.session import session_scope
from db.settings import Settings

PQZ = str(Path(sys.executable).parent / "pqz")
pytestmark = pytest.mark.sqlite_only  # the client's behaviour does not depend on the database


@pytest.fixture
def server_url(settings: Settings) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client_env(server_url: str, alice: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PQZ_")}
    env.update(PQZ_URL=server_url, PQZ_API_KEY=alice["Authorization"].removeprefix("Bearer "))
    return env


@pytest.fixture
def pqz(client_env: dict[str, str]) -> object:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PQZ, *args], env=client_env, capture_output=True, text=True, timeout=120, check=False
        )

    return run


@pytest.fixture
def checkpoint(tmp_path: Path, checkpoint_bytes: bytes) -> Path:
    """The tiny LeNet's state dict as a file, for `pqz submit` to upload."""
    path = tmp_path / "model.pt"
    path.write_bytes(checkpoint_bytes)
    return path


def _stored(settings: Settings) -> tuple[int, ...]:
    """How many files, blobs and blob chunks the database holds."""
    with session_scope(settings.resolved_database_url) as session:
        return tuple(
            int(session.execute(select(func.count()).select_from(model)).scalar_one())
            for model in (File, Blob, BlobChunk)
        )


def test_submit_refused_by_the_server_deletes_what_it_uploaded(
    pqz, settings: Settings, checkpoint: Path
) -> None:
    with session_scope(settings.resolved_database_url) as session:
        catalog.publish(session, "architecture", ["lenet-300-100", "lenet-5"])
    result = pqz("submit", str(checkpoint), "--arch", "lenet-6")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown architecture 'lenet-6' (`pqz zoo` lists them) (HTTP 422)"
    ]
    assert _stored(settings) == (0, 0, 0)
    # The same upload for a job the server accepts is kept, and the job refers to it.
    result = pqz("submit", str(checkpoint), "--arch", "lenet-300-100", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "queued"
    assert _stored(settings)[0] == 1


def test_submit_of_a_file_no_job_could_read_is_refused_before_uploading_in_one_line(
    pqz, settings: Settings, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "model.pkl"
    checkpoint.write_bytes(pickle.dumps({"fc1.weight": [0.0] * 1000}, protocol=2))
    result = pqz("submit", str(checkpoint), "--arch", "lenet-5")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {checkpoint} is in the legacy (non-zip) torch.save format or a bare "
        "pickle, never unpickled; upload a state dict saved with "
        "torch.save(model.state_dict(), path) or a .safetensors file"
    ]
    assert _stored(settings) == (0, 0, 0)


def test_submit_with_an_invalid_spec_says_so_before_uploading(
    pqz, settings: Settings, tmp_path: Path, checkpoint: Path
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"finetune": {"epochs": 2, "lrate": 0.1}}))
    result = pqz("submit", str(checkpoint), "--arch", "lenet-5", "--spec", str(spec))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: invalid spec: unknown field 'lrate' in spec.finetune "
        "(allowed: epochs, lr, batch_size, distill, scope, layerwise_epochs)"
    )
    assert _stored(settings) == (0, 0, 0)
    spec.write_text(json.dumps({"quantize": {"n_centroids": 999}, "finetune": {"epochs": -2}}))
    result = pqz("submit", str(checkpoint), "--arch", "lenet-5", "--spec", str(spec))
    assert result.stderr.strip() == (  # every mistake at once, not one per try
        "error: invalid spec: spec.quantize.n_centroids must be at most 256, got 999 (and 1 "
        "more: spec.finetune.epochs must be at least 0, got -2)"
    )


def test_submit_options_override_the_spec_file_as_compress_does(
    pqz, settings: Settings, tmp_path: Path, checkpoint: Path
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"data": "digits", "prune": {"threshold": 0.1}, "quantize": {"n_iter": 5}})
    )
    args = ["--sparsity", "0.5", "--method", "kmeans", "--centroids", "16", "--pq-everywhere"]
    result = pqz(
        "submit", str(checkpoint), "--arch", "lenet-5", "--spec", str(spec), *args,
        "--augment", "shift", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)["spec"]
    assert (job["prune"]["sparsity"], job["prune"]["threshold"]) == (0.5, None)
    quantize = job["quantize"]
    assert (quantize["method"], quantize["n_centroids"], quantize["n_iter"]) == ("kmeans", 16, 5)
    assert quantize["scalar_when_smaller"] is False
    assert job["augment"] == "shift"


def test_submit_with_a_spec_that_is_not_an_object_fails_in_one_line(
    pqz, settings: Settings, tmp_path: Path, checkpoint: Path
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("[1]")
    result = pqz(
        "submit", str(checkpoint), "--arch", "lenet-5", "--spec", str(spec), "--sparsity", "0.5"
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: invalid spec: spec must be an object, got [1]"
    assert _stored(settings) == (0, 0, 0)


def test_wait_stopped_by_ctrl_c_says_the_job_goes_on_and_waits_again(
    pqz, client_env: dict[str, str], checkpoint: Path
) -> None:
    submitted = pqz("submit", str(checkpoint), "--arch", "lenet-300-100", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]  # queued: no worker runs in these tests

    waiting = subprocess.Popen(
        [PQZ, "wait", job_id], env=client_env, stderr=subprocess.PIPE, text=True
    )
    time.sleep(3)  # importing the CLI and the first poll
    waiting.send_signal(signal.SIGINT)
    _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode == 130
    assert stderr.strip().splitlines()[-1] == (
        f"error: stopped waiting; {job_id} goes on (`pqz wait {job_id}` follows it again, "
        f"`pqz cancel {job_id}` stops it)"
    )
    assert json.loads(pqz("status", job_id, "--json").stdout)["status"] == "queued"

    cancelled = pqz("cancel", job_id, "--json")
    assert json.loads(cancelled.stdout)["status"] == "cancelled", cancelled.stderr
    again = pqz("wait", job_id)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == f"error: {job_id}: cancelled"


def test_a_jobs_warning_is_counted_in_the_list_and_said_by_status(
    pqz, settings: Settings, checkpoint: Path
) -> None:
    job_id = json.loads(pqz("submit", str(checkpoint), "--arch", "lenet-300-100", "--json").stdout)[
        "id"
    ]
    warning = "validation accuracy fell 2.00 points, more than the 0.30 that ... allows (...)"
    with session_scope(settings.resolved_database_url) as session:  # as a worker records it
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.stage, job.progress = JobStatus.succeeded, "package", 1.0
        job.metrics = {
            "baseline": {"test_accuracy": 0.9},
            "final": {"test_accuracy": 0.88},
            "warnings": [warning],
        }
        submitted = f"{job.created_at:%Y-%m-%d %H:%M}"
    listed = pqz("jobs")
    assert listed.stdout.strip() == (
        f"{submitted}  lenet-300-100  {job_id}: succeeded, test accuracy 0.9000 -> 0.8800 "
        f"(1 warning: `pqz status {job_id}`)"
    )
    shown = pqz("status", job_id)
    assert shown.stdout.strip() == f"{job_id}: succeeded, test accuracy 0.9000 -> 0.8800"
    assert shown.stderr.strip() == f"warning: {warning}"
    # Following the job, the warning is said when its event comes, and not again at the end.
    with session_scope(settings.resolved_database_url) as session:
        add_event(session, job_id, f"warning: {warning}", stage="finetune", progress=1.0)
    followed = pqz("wait", job_id)
    assert followed.returncode == 0, followed.stderr
    assert followed.stderr.count(warning) == 1


def test_submit_takes_the_architecture_from_the_spec_file(
    pqz, settings: Settings, tmp_path: Path, checkpoint: Path
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"arch": "lenet-300-100"}))
    result = pqz("submit", str(checkpoint), "--spec", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spec"]["arch"] == "lenet-300-100"
    result = pqz("submit", str(checkpoint))
    assert result.returncode == 2
    assert result.stderr == 'error: give the architecture: --arch, or "arch" in the --spec file\n'


def test_jobs_pages_through_the_list(pqz, settings: Settings, checkpoint: Path) -> None:
    ids = [
        json.loads(pqz("submit", str(checkpoint), "--arch", "lenet-5", "--json").stdout)["id"]
        for _ in range(3)
    ]
    first = pqz("jobs", "--limit", "2").stdout.strip().splitlines()
    assert [line.split("  ")[2].split(":")[0] for line in first[:2]] == ids[::-1][:2]
    assert first[2] == f"more: pqz jobs --limit 2 --after {ids[1]}"
    rest = pqz("jobs", "--limit", "2", "--after", ids[1]).stdout.strip().splitlines()
    assert len(rest) == 1
    assert f"  lenet-5  {ids[0]}: queued" in rest[0]
    too_many = pqz("jobs", "--limit", "200")
    assert too_many.returncode == 2
    assert "'--limit': Input should be less than or equal to 100" in too_many.stderr


def test_a_pqz_url_with_a_path_is_named_as_the_mistake(
    client_env: dict[str, str], server_url: str
) -> None:
    env = {**client_env, "PQZ_URL": f"{server_url}/v1"}
    listed = subprocess.run(
        [PQZ, "jobs"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert listed.returncode == 1
    assert listed.stderr == (
        f"error: /v1/v1/jobs is not a pqz API path: PQZ_URL must be the server's root "
        f"(http://HOST:PORT), not {server_url}/v1 (HTTP 404)\n"
    )


def test_submit_uploads_a_local_npz_named_in_the_spec_file(
    pqz, settings: Settings, tmp_path: Path, checkpoint: Path
) -> None:
    import numpy as np

    images = np.zeros((4, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", x_train=images, y_train=np.arange(4) % 2, x_test=images,
             y_test=np.arange(4) % 2)  # fmt: skip
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"arch": "lenet-5", "data": str(tmp_path / "mine.npz")}))
    result = pqz("submit", str(checkpoint), "--spec", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["data_file"] is not None
    assert job["spec"]["data"] is None
    spec.write_text(json.dumps({"arch": "lenet-5", "data": str(tmp_path)}))
    before = _stored(settings)
    result = pqz("submit", str(checkpoint), "--spec", str(spec))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: data {tmp_path} is a local folder: the service")
    assert _stored(settings) == before  # refused before anything was uploaded
