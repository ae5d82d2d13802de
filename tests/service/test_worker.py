"""The worker's job run, in this process: claim, intake, pipeline, artifact, terminal states."""

from __future__ import annotations

import io
import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from compression import QuantConfig, build_model, inspect_pqz, load_pqz, quantize_
from db.jobs import claim, reap
from db.models import Job, JobStatus
from db.session import session_scope
from db.settings import Settings
from tests.service.conftest import store_unchecked, submit, upload
from worker.pipeline import Recorder, run_job


def _job(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, object]:
    job: dict[str, object] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    return job


def test_post_training_job_end_to_end(
    client: TestClient,
    alice: dict[str, str],
    settings: Settings,
    checkpoint_bytes: bytes,
    tmp_path: Path,
) -> None:
    job_id = submit(client, alice, upload(client, alice, checkpoint_bytes))["id"]
    run_job(job_id, settings, worker="test-worker")
    job = _job(client, alice, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0
    events = client.get(f"/v1/jobs/{job_id}/events", headers=alice).json()["data"]
    assert {"validate", "quantize", "package"} <= {event["stage"] for event in events}
    progress = [event["progress"] for event in events if event["progress"] is not None]
    assert progress == sorted(progress)  # the bar never goes back, stage shares changing or not
    response = client.get(f"/v1/jobs/{job_id}/artifact", headers=alice)
    assert response.status_code == 200
    etag = response.headers["etag"]
    assert int(response.headers["content-length"]) == len(response.content)
    assert f'filename="{job_id}.pqz"' in response.headers["content-disposition"]
    artifact = f"/v1/jobs/{job_id}/artifact"
    for cached in (etag, f"W/{etag}", f'"other", {etag}', "*"):  # RFC 9110's comparison
        answer = client.get(artifact, headers={**alice, "If-None-Match": cached})
        assert answer.status_code == 304, cached
    assert client.get(artifact, headers={**alice, "If-None-Match": '"x"'}).status_code == 200
    path = tmp_path / "model.pqz"
    path.write_bytes(response.content)
    # The same compression done locally gives the very same model.
    expected = build_model("lenet-300-100")
    expected.load_state_dict(torch.load(io.BytesIO(checkpoint_bytes), weights_only=True))
    quantize_(expected, QuantConfig())
    images = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_pqz(path)(images), expected(images))
    # A duplicate delivery of the same message finds nothing to claim.
    run_job(job_id, settings, worker="another-worker")
    assert _job(client, alice, job_id)["status"] == "succeeded"


def test_a_post_training_job_takes_its_classes_from_the_checkpoint(
    client: TestClient, alice: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    torch.save(build_model("lenet-300-100", 4).state_dict(), buffer)  # no num_classes given
    file_id = upload(client, alice, buffer.getvalue())
    job_id = submit(client, alice, file_id, normalize={"mean": 0.5, "std": 0.5})["id"]
    run_job(job_id, settings, worker="test-worker")
    job = _job(client, alice, job_id)
    assert job["status"] == "succeeded", job["error"]
    # The one thing its user said of the input is recorded: how to feed the model.
    assert job["metrics"]["input"] == {"shape": [1, 28, 28], "mean": [0.5], "std": [0.5]}
    path = tmp_path / "four.pqz"
    path.write_bytes(client.get(f"/v1/jobs/{job_id}/artifact", headers=alice).content)
    assert load_pqz(path)(torch.zeros(2, 1, 28, 28)).shape == (2, 4)


def test_a_pipeline_job_says_how_to_feed_its_model_and_what_it_kept_of_the_promise(
    client: TestClient,
    alice: dict[str, str],
    settings: Settings,
    checkpoint_bytes: bytes,
    tmp_path: Path,
) -> None:
    spec = {
        "prune": {"sparsity": 0.5, "retrain_epochs": 0},
        "finetune": {"epochs": 0, "layerwise_epochs": 0},
    }
    file_id = upload(client, alice, checkpoint_bytes)
    job_id = submit(client, alice, file_id, data="digits", **spec)["id"]
    run_job(job_id, settings, worker="test-worker")
    job = _job(client, alice, job_id)
    assert job["status"] == "succeeded", job["error"]
    recipe = job["metrics"]["input"]
    assert (recipe["shape"], recipe["source_size"]) == ([1, 28, 28], [8, 8])
    assert recipe["classes"] == [str(digit) for digit in range(10)]
    # The promise, as the library recorded it in the file, is the job's too.
    artifact = client.get(f"/v1/jobs/{job_id}/artifact", headers=alice)
    path = tmp_path / "job.pqz"
    path.write_bytes(artifact.content)
    manifest = inspect_pqz(path).metrics
    for key in ("promise", "confirm", "test", "tolerance_met", "accuracy_drop_ci95"):
        assert job["metrics"][key] == manifest[key], key
    assert job["metrics"]["test"]["method"] == "newcombe-paired"
    assert job["metrics"]["promise"]["confirm_split"] == "confirm"


class RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.sqlite_only  # this is about intake, not the database
@pytest.mark.parametrize(
    "kind",
    [
        "hostile pickle",
        "torchscript",
        "pickled module",
        "legacy",
        "truncated",
        "noise",
        "wrong shapes",
    ],
)
def test_bad_checkpoints_fail_with_invalid_checkpoint_and_run_nothing(
    client: TestClient,
    alice: dict[str, str],
    settings: Settings,
    checkpoint_bytes: bytes,
    tmp_path: Path,
    kind: str,
) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    if kind == "hostile pickle":
        torch.save({"weight": RunsACommand(marker)}, buffer)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(build_model("lenet-300-100")), buffer)
    elif kind == "pickled module":
        torch.save(build_model("lenet-300-100"), buffer)
    elif kind == "legacy":
        buffer.write(pickle.dumps(RunsACommand(marker), protocol=2))
    elif kind == "truncated":
        buffer.write(checkpoint_bytes[: len(checkpoint_bytes) // 2])
    elif kind == "noise":
        buffer.write(os.urandom(4096))
    else:
        torch.save(build_model("lenet-5").state_dict(), buffer)
    file_id = store_unchecked(client, alice, settings, buffer.getvalue())
    job_id = submit(client, alice, file_id)["id"]
    run_job(job_id, settings, worker="test-worker")
    job = _job(client, alice, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_checkpoint", job["error"]
    assert not marker.exists()


@pytest.mark.parametrize("heartbeat_s", [0.2, 600.0])  # 600: only its next step can see it
def test_cancelling_a_running_job_stops_it_between_steps(
    client: TestClient,
    alice: dict[str, str],
    settings: Settings,
    checkpoint_bytes: bytes,
    heartbeat_s: float,
) -> None:
    settings = settings.model_copy(
        update={"heartbeat_interval_s": heartbeat_s, "heartbeat_timeout_s": 10 * heartbeat_s}
    )
    spec = {
        "data": "digits",
        "prune": {"rounds": 50, "retrain_epochs": 5},
        "finetune": {"epochs": 50},
    }
    job_id = submit(client, alice, upload(client, alice, checkpoint_bytes), **spec)["id"]
    runner = threading.Thread(
        target=run_job, args=(job_id, settings), kwargs={"worker": "test-worker"}
    )
    runner.start()
    deadline = time.monotonic() + 120
    while (
        _job(client, alice, job_id)["stage"] in (None, "validate") and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=alice).json()["status"] == "cancelling"
    runner.join(timeout=60)  # the job itself would run for many minutes
    assert not runner.is_alive()
    job = _job(client, alice, job_id)
    assert job["status"] == "cancelled"
    assert job["artifact"] is None


@pytest.mark.parametrize(
    ("max_attempts", "expected"), [(2, JobStatus.queued), (1, JobStatus.failed)]
)
def test_job_of_a_vanished_worker_is_requeued_or_failed(
    client: TestClient,
    alice: dict[str, str],
    settings: Settings,
    checkpoint_bytes: bytes,
    max_attempts: int,
    expected: JobStatus,
) -> None:
    job_id = submit(client, alice, upload(client, alice, checkpoint_bytes))["id"]
    url = settings.resolved_database_url
    published = []
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.max_attempts = max_attempts
        session.commit()
        assert claim(session, job_id, "doomed-worker")
    with session_scope(url) as session:  # fresh heartbeat: not lost yet
        assert reap(session, published.append, timeout_s=60) == []
    time.sleep(0.3)
    with session_scope(url) as session:
        assert (
            reap(session, published.append, timeout_s=0.1)
            == [job_id, job_id][: 2 if expected == JobStatus.queued else 1]
        )
    job = _job(client, alice, job_id)
    assert job["status"] == expected
    events = client.get(f"/v1/jobs/{job_id}/events", headers=alice).json()["data"]
    assert any(e["message"] == f"worker doomed-worker lost; job {expected}" for e in events)
    if expected == JobStatus.failed:
        assert job["error"]["code"] == "worker_lost"
        assert job["error"]["message"] == "the worker stopped answering (doomed-worker)"
    else:
        assert published == [job_id]
        run_job(job_id, settings, worker="rescuer")  # the re-published message runs it again
        job = _job(client, alice, job_id)
        assert job["status"] == "succeeded"
        assert job["attempts"] == 2


def test_reaper_drops_uploads_abandoned_mid_stream(settings: Settings) -> None:
    from datetime import timedelta

    from db.blobs import BlobWriter
    from db.models import Blob, BlobChunk, now

    url = settings.resolved_database_url
    with session_scope(url) as session:
        stale = BlobWriter(session, chunk_bytes=4)
        stale.write(b"0123456789")  # two chunks written, never closed: the API died
        fresh = BlobWriter(session, chunk_bytes=4)
        fresh.write(b"0123456789")  # still streaming
        stale.blob.created_at = now() - timedelta(days=2)
        session.commit()
        stale_id, fresh_id = stale.blob.id, fresh.blob.id
    with session_scope(url) as session:
        reap(session, lambda job_id: None, timeout_s=60)
    with session_scope(url) as session:
        assert session.get(Blob, stale_id) is None
        assert session.get(Blob, fresh_id) is not None
        chunks = session.query(BlobChunk.blob_id).distinct().all()
        assert [row[0] for row in chunks] == [fresh_id]


@pytest.mark.sqlite_only
def test_events_thin_out_training_steps_but_keep_every_round(
    client: TestClient, alice: dict[str, str], settings: Settings, checkpoint_bytes: bytes
) -> None:
    job_id = submit(client, alice, upload(client, alice, checkpoint_bytes))["id"]
    record = Recorder(job_id, "test-worker", settings)
    for round_index in range(3):  # all within one second: only the steps may be dropped
        for step in range(1, 4):
            record("prune", (round_index + step / 4) / 3, f"step {step}/4, loss 0.1, 0 s")
        record("prune", (round_index + 1) / 3, f"round {round_index + 1} kept: val 0.9")
    events = client.get(f"/v1/jobs/{job_id}/events", headers=alice).json()["data"]
    messages = [event["message"] for event in events if event["stage"] == "prune"]
    assert [m for m in messages if m.startswith("round")] == [
        "round 1 kept: val 0.9",
        "round 2 kept: val 0.9",
        "round 3 kept: val 0.9",
    ]
    assert sum(m.startswith("step") for m in messages) == 1  # the first; the rest came too soon


@pytest.mark.sqlite_only
def test_a_built_in_data_set_the_workers_lack_is_said_in_the_services_terms(
    client: TestClient,
    alice: dict[str, str],
    settings: Settings,
    checkpoint_bytes: bytes,
    tmp_path: Path,
) -> None:
    job_id = submit(client, alice, upload(client, alice, checkpoint_bytes), data="mnist")["id"]
    empty = settings.model_copy(update={"data_dir": tmp_path / "no-data", "allow_download": False})
    run_job(job_id, empty, worker="test-worker")
    job = _job(client, alice, job_id)
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "invalid_data",
        "message": "data set 'mnist' is not on this service's workers: whoever runs them puts "
        "it under their PQZ_DATA_DIR, or lets them download it (PQZ_ALLOW_DOWNLOAD=true); or "
        "upload it as an .npz (pqz submit --data file.npz)",
    }


@pytest.mark.sqlite_only
def test_an_unusable_data_upload_fails_the_job_without_naming_server_paths(
    client: TestClient, alice: dict[str, str], settings: Settings, checkpoint_bytes: bytes
) -> None:
    checkpoint = upload(client, alice, checkpoint_bytes)
    data = store_unchecked(client, alice, settings, os.urandom(2000), purpose="dataset")
    body = {"checkpoint_file": checkpoint, "data_file": data, "spec": {"arch": "lenet-300-100"}}
    job_id = client.post("/v1/jobs", json=body, headers=alice).json()["id"]
    run_job(job_id, settings, worker="test-worker")
    job = _job(client, alice, job_id)
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "invalid_data",
        "message": "the uploaded data file 'model.pt.npz' is not an .npz file (a zip archive of "
        ".npy arrays)",
    }


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (
            np.zeros((4, 8, 8), dtype=np.uint8),
            np.eye(4),
            "my_labels.npz train: labels of shape [4, 4] look one-hot; save the class numbers "
            "instead (y.argmax(1))",
        ),
        (
            np.zeros((4, 8, 8), dtype=np.uint8),
            np.zeros(4, dtype=int),
            "data set the uploaded data file 'my_labels.npz' has a single class: a classifier "
            "needs at least two",
        ),
        (  # colour images for a grey architecture: no server path in the message
            np.zeros((4, 3, 8, 8), dtype=np.uint8),
            np.arange(4) % 2,
            "data set the uploaded data file 'my_labels.npz' has 3x8x8 images; architecture "
            "'lenet-300-100' takes 1x28x28",
        ),
    ],
)
def test_a_data_uploads_errors_quote_the_users_file_name(
    client: TestClient,
    alice: dict[str, str],
    settings: Settings,
    checkpoint_bytes: bytes,
    images: np.ndarray,
    labels: np.ndarray,
    message: str,
) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x_train=images, y_train=labels, x_test=images, y_test=np.zeros(4, dtype=int))
    response = client.post(
        "/v1/files",
        params={"filename": "../my labels.npz", "purpose": "dataset"},
        content=buffer.getvalue(),
        headers=alice,
    )
    assert response.status_code == 201, response.text
    checkpoint = upload(client, alice, checkpoint_bytes)
    body = {
        "checkpoint_file": checkpoint,
        "data_file": response.json()["id"],
        "spec": {"arch": "lenet-300-100"},
    }
    job_id = client.post("/v1/jobs", json=body, headers=alice).json()["id"]
    run_job(job_id, settings, worker="test-worker")
    assert _job(client, alice, job_id)["error"] == {"code": "invalid_data", "message": message}


@pytest.mark.sqlite_only
def test_files_of_an_earlier_killed_attempt_are_removed(
    client: TestClient, alice: dict[str, str], settings: Settings, checkpoint_bytes: bytes
) -> None:
    import tempfile

    job_id = submit(client, alice, upload(client, alice, checkpoint_bytes))["id"]
    stale = Path(tempfile.mkdtemp(prefix=f"pqz-{job_id}-"))  # as a SIGKILLed attempt leaves it
    (stale / "state.safetensors").write_bytes(b"x" * 1000)
    run_job(job_id, settings, worker="test-worker")
    assert _job(client, alice, job_id)["status"] == "succeeded"
    assert not stale.exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"pqz-{job_id}-*"))
