"""The API against a real database: files, jobs, ownership, errors, health."""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import safetensors.numpy
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.api.routes import files as files_routes
from app.api.routes import jobs as jobs_routes
from db import catalog
from db.models import Blob, BlobChunk, File, Job, JobStatus
from db.session import session_scope
from db.settings import Settings
from tests.service.conftest import submit, upload


def _count(settings: Settings, model: type) -> int:
    with session_scope(settings.resolved_database_url) as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def test_upload_streams_into_chunks_and_reports_size_and_sha(
    client: TestClient, alice: dict[str, str], settings: Settings, checkpoint_bytes: bytes
) -> None:
    import hashlib

    file_id = upload(client, alice, checkpoint_bytes)
    file = client.get(f"/v1/files/{file_id}", headers=alice).json()
    assert file["size_bytes"] == len(checkpoint_bytes)
    assert file["sha256"] == hashlib.sha256(checkpoint_bytes).hexdigest()
    assert _count(settings, BlobChunk) == -(-len(checkpoint_bytes) // settings.chunk_bytes)


def test_upload_over_the_cap_is_413_and_leaves_nothing(
    client: TestClient, alice: dict[str, str], settings: Settings
) -> None:
    too_big = b"\0" * (settings.max_upload_bytes + 1)
    response = client.post(
        "/v1/files", params={"filename": "big.pt"}, content=too_big, headers=alice
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"

    def chunks():  # no Content-Length: the cap is enforced while streaming
        yield b"PK\x03\x04"  # a zip's first bytes, so that it is the size that is refused
        for _ in range(settings.max_upload_bytes // (1 << 20) + 2):
            yield b"\1" * (1 << 20)

    response = client.post(
        "/v1/files", params={"filename": "big.pt"}, content=chunks(), headers=alice
    )
    assert response.status_code == 413
    assert "over the limit" in response.json()["detail"]
    assert _count(settings, Blob) == 0
    assert _count(settings, BlobChunk) == 0


def test_an_upload_sent_as_a_form_is_415_saying_to_send_the_raw_body(
    client: TestClient, alice: dict[str, str], settings: Settings
) -> None:
    response = client.post(  # what curl -F file=@model.pt sends
        "/v1/files", params={"filename": "model.pt"}, files={"file": _zip()}, headers=alice
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"].startswith(
        "the file came as a form (multipart/form-data): send it as the raw request body"
    )
    assert _count(settings, Blob) == 0


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("purpose", "data"),
    [
        ("checkpoint", _zip()),  # torch.save's zip format (what is inside, the worker checks)
        ("checkpoint", safetensors.numpy.save({"w": np.zeros(3, np.float32)})),
        ("dataset", _zip()),  # numpy.savez's
        ("checkpoint", b""),  # refused when a job names it, with its own message
    ],
)
def test_uploads_a_job_could_read_are_kept(
    client: TestClient, alice: dict[str, str], purpose: str, data: bytes
) -> None:
    file_id = upload(client, alice, data, purpose)
    assert client.get(f"/v1/files/{file_id}", headers=alice).json()["size_bytes"] == len(data)


LEGACY = pickle.dumps({"w": [1.0]}, protocol=2)
WHAT_TO_UPLOAD = (
    "; upload a state dict saved with torch.save(model.state_dict(), path) or a .safetensors file"
)


@pytest.mark.parametrize(
    ("purpose", "data", "detail"),
    [
        (
            "checkpoint",
            LEGACY,
            "the checkpoint upload is in the legacy (non-zip) torch.save format or a bare "
            "pickle, never unpickled" + WHAT_TO_UPLOAD,
        ),
        (
            "checkpoint",
            b"\x7fELF\x02\x01\x01" + bytes(100),
            "the checkpoint upload is not a PyTorch checkpoint or safetensors file (it starts "
            "with bytes 7f 45 4c 46 02 01 01 00)" + WHAT_TO_UPLOAD,
        ),
        (  # a safetensors header that says it is longer than the whole file
            "checkpoint",
            (1000).to_bytes(8, "little") + b'{"w": {}}',
            "the checkpoint upload is not a PyTorch checkpoint or safetensors file (it starts "
            "with bytes e8 03 00 00 00 00 00 00)" + WHAT_TO_UPLOAD,
        ),
        (
            "dataset",
            b"\x93NUMPY\x01\x00" + bytes(100),
            "the dataset upload is a single .npy array, not an .npz archive; upload an .npz "
            "file (numpy.savez) with x_train, y_train, x_test and y_test",
        ),
        (
            "dataset",
            b"x,y",
            "the dataset upload is not an .npz (it starts with bytes 78 2c 79); upload an .npz "
            "file (numpy.savez) with x_train, y_train, x_test and y_test",
        ),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
def test_an_upload_no_job_could_read_is_refused_at_once_and_leaves_nothing(
    client: TestClient,
    alice: dict[str, str],
    settings: Settings,
    purpose: str,
    data: bytes,
    detail: str,
    streamed: bool,
) -> None:
    def pieces() -> Iterator[bytes]:  # no Content-Length; the head split, a tail to drop
        yield from (data[:5], data[5:20], data[20:])

    response = client.post(
        "/v1/files",
        params={"filename": "model.pt", "purpose": purpose},
        content=pieces() if streamed else data,
        headers=alice,
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == detail
    assert _count(settings, Blob) == 0
    assert _count(settings, BlobChunk) == 0


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer pqz_wrong"}, {"Authorization": "Basic abc"}]
)
def test_missing_or_wrong_api_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/v1/jobs", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 401


def test_a_wrong_key_on_an_existing_job_or_file_is_401_not_404(
    client: TestClient, alice: dict[str, str], checkpoint_bytes: bytes
) -> None:
    """The job is looked up together with the key: no row can mean either, and the answer
    must still say which."""
    file_id = upload(client, alice, checkpoint_bytes)
    job_id = submit(client, alice, file_id)["id"]
    for path in [f"/v1/jobs/{job_id}", f"/v1/files/{file_id}"]:
        for headers in [{}, {"Authorization": "Bearer pqz_wrong"}]:
            assert client.get(path, headers=headers).status_code == 401, (path, headers)
    missing = client.get("/v1/jobs/no-such-job", headers=alice)
    assert (missing.status_code, missing.json()["detail"]) == (404, "no job 'no-such-job'")


def test_job_is_queued_with_location_and_listed_newest_first(
    client: TestClient, alice: dict[str, str], checkpoint_bytes: bytes
) -> None:
    file_id = upload(client, alice, checkpoint_bytes)
    body = {"checkpoint_file": file_id, "spec": {"arch": "lenet-300-100"}}
    response = client.post("/v1/jobs", json=body, headers=alice)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["spec"]["quantize"]["n_centroids"] == 256  # defaults filled in
    ids = [job["id"]] + [submit(client, alice, file_id)["id"] for _ in range(3)]
    first = client.get("/v1/jobs", params={"limit": 3}, headers=alice).json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:3]
    assert first["has_more"] is True
    rest = client.get(
        "/v1/jobs", params={"limit": 3, "after": first["data"][-1]["id"]}, headers=alice
    ).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False


def test_idempotency_key_returns_the_first_resource(
    client: TestClient, alice: dict[str, str], checkpoint_bytes: bytes
) -> None:
    headers = {**alice, "Idempotency-Key": "upload-1"}
    first = client.post(
        "/v1/files", params={"filename": "a.pt"}, content=checkpoint_bytes, headers=headers
    )
    again = client.post(
        "/v1/files", params={"filename": "a.pt"}, content=checkpoint_bytes, headers=headers
    )
    assert first.json()["id"] == again.json()["id"]
    body = {"checkpoint_file": first.json()["id"], "spec": {"arch": "lenet-300-100"}}
    headers = {**alice, "Idempotency-Key": "job-1"}
    job = client.post("/v1/jobs", json=body, headers=headers).json()
    assert client.post("/v1/jobs", json=body, headers=headers).json()["id"] == job["id"]
    assert len(client.get("/v1/jobs", headers=alice).json()["data"]) == 1
    # The same key for another job is a client's bug: said, not answered with the first job.
    other = {**body, "spec": {"arch": "lenet-300-100", "seed": 1}}
    reused = client.post("/v1/jobs", json=other, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["detail"].startswith("Idempotency-Key 'job-1' was used for a different")
    assert len(client.get("/v1/jobs", headers=alice).json()["data"]) == 1


def test_requests_sent_at_once_with_one_idempotency_key_get_the_first_ones_resource(
    client: TestClient,
    alice: dict[str, str],
    settings: Settings,
    checkpoint_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def post_file() -> httpx.Response:
        return client.post(
            "/v1/files",
            params={"filename": "a.pt"},
            content=checkpoint_bytes,
            headers={**alice, "Idempotency-Key": "upload-race"},
        )

    def post_job(file_id: str) -> httpx.Response:
        body = {"checkpoint_file": file_id, "spec": {"arch": "lenet-300-100"}}
        return client.post("/v1/jobs", json=body, headers={**alice, "Idempotency-Key": "race"})

    first_file = post_file().json()
    first_job = post_job(first_file["id"]).json()
    # Each second request looked for its key before the first one committed (sent at once):
    # it makes its own resource, and the key's unique row turns it back.
    monkeypatch.setattr(files_routes, "replay", lambda *args: None)
    monkeypatch.setattr(jobs_routes, "replay", lambda *args: None)
    second_file = post_file()
    assert second_file.status_code == 201, second_file.text
    assert second_file.json() == first_file
    second_job = post_job(first_file["id"])
    assert second_job.status_code == 202, second_job.text
    assert second_job.json()["id"] == first_job["id"]
    assert second_job.headers["Location"] == f"/v1/jobs/{first_job['id']}"
    assert [_count(settings, model) for model in (File, Blob, Job)] == [1, 1, 1]


def test_delete_file_removes_it_and_its_bytes(
    client: TestClient, alice: dict[str, str], settings: Settings, checkpoint_bytes: bytes
) -> None:
    headers = {**alice, "Idempotency-Key": "upload-1"}
    first = client.post(
        "/v1/files", params={"filename": "a.pt"}, content=checkpoint_bytes, headers=headers
    ).json()
    response = client.delete(f"/v1/files/{first['id']}", headers=alice)
    assert response.status_code == 200
    assert response.json() == {"id": first["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{first['id']}", headers=alice).status_code == 404
    assert client.delete(f"/v1/files/{first['id']}", headers=alice).status_code == 404
    assert _count(settings, Blob) == 0
    assert _count(settings, BlobChunk) == 0
    # The key no longer replays a deleted file: the same upload again makes a new one.
    again = client.post(
        "/v1/files", params={"filename": "a.pt"}, content=checkpoint_bytes, headers=headers
    )
    assert again.status_code == 201
    assert again.json()["id"] != first["id"]


def test_delete_file_used_by_a_job_is_409(
    client: TestClient, alice: dict[str, str], settings: Settings, checkpoint_bytes: bytes
) -> None:
    file_id = upload(client, alice, checkpoint_bytes)
    job_id = submit(client, alice, file_id)["id"]
    response = client.delete(f"/v1/files/{file_id}", headers=alice)
    assert response.status_code == 409
    assert response.json()["detail"] == f"file '{file_id}' is used by job '{job_id}'"
    assert client.get(f"/v1/files/{file_id}", headers=alice).status_code == 200
    assert _count(settings, Blob) == 1


def test_other_users_resources_are_404(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], checkpoint_bytes: bytes
) -> None:
    file_id = upload(client, alice, checkpoint_bytes)
    job_id = submit(client, alice, file_id)["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/artifact"),
        ("GET", f"/v1/files/{file_id}"),
        ("DELETE", f"/v1/files/{file_id}"),
    ]:
        response = client.request(method, path, headers=bob)
        assert response.status_code == 404, path
        assert response.json()["detail"].startswith("no ")
    body = {"checkpoint_file": file_id, "spec": {"arch": "lenet-300-100"}}
    assert client.post("/v1/jobs", json=body, headers=bob).status_code == 404
    assert client.get("/v1/jobs", headers=bob).json()["data"] == []


ALLOWED_PRUNE = (
    "sparsity, threshold, scope, module_types, modules, max_accuracy_drop, rounds, "
    "retrain_epochs, retrain_lr, scan_samples, distill, gradual"
)


@pytest.mark.parametrize(
    ("spec", "field", "detail"),
    [
        (
            {"prune": {"foo": 1}},
            "spec.prune.foo",
            f"unknown field 'foo' in spec.prune (allowed: {ALLOWED_PRUNE})",
        ),
        (
            {"quantize": {"modules": {"features.0": {"bits": 4}}}},
            "spec.quantize.modules['features.0'].bits",
            "unknown field 'bits' in spec.quantize.modules['features.0'] "
            "(allowed: method, block_size, n_centroids)",
        ),
        (
            {"surprise": True},
            "spec.surprise",
            "unknown field 'surprise' in spec (allowed: arch, num_classes, data, prune, "
            "quantize, finetune, promise, augment, normalize, seed, device)",
        ),
        (
            {"augment": "mixup"},
            "spec.augment",
            "spec.augment must be 'auto', 'none', 'shift' or 'crop-flip', got 'mixup'",
        ),
        (
            {"quantize": {"block_size": 2.5}},
            "spec.quantize.block_size",
            "spec.quantize.block_size must be an integer, got 2.5",
        ),
        (
            {"finetune": {"distill": "yes"}},
            "spec.finetune.distill",
            "spec.finetune.distill must be true or false, got 'yes'",
        ),
        (
            {"quantize": {"n_centroids": 999}},
            "spec.quantize.n_centroids",
            "spec.quantize.n_centroids must be at most 256, got 999",
        ),
        (
            {"prune": {"sparsity": 1.5}},
            "spec.prune.sparsity",
            "spec.prune.sparsity must be less than 1, got 1.5",
        ),
        (
            {"prune": {"scope": "row"}},
            "spec.prune.scope",
            "spec.prune.scope must be 'layer' or 'global', got 'row'",
        ),
        ({"device": "tpu"}, "spec.device", "spec.device 'tpu' is not auto, cpu, cuda or cuda:N"),
        ({"arch": None}, "spec.arch", "spec.arch must be a string, got null"),
    ],
)
def test_invalid_spec_is_422_naming_the_field_and_the_value(
    client: TestClient,
    alice: dict[str, str],
    checkpoint_bytes: bytes,
    spec: dict[str, object],
    field: str,
    detail: str,
) -> None:
    file_id = upload(client, alice, checkpoint_bytes)
    body = {"checkpoint_file": file_id, "spec": {"arch": "lenet-300-100", **spec}}
    response = client.post("/v1/jobs", json=body, headers=alice)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["detail"] == detail
    assert problem["errors"] == [{"field": field, "message": detail}]


def test_several_invalid_fields_are_all_listed(client: TestClient, alice: dict[str, str]) -> None:
    body = {"spec": {"quantize": {}, "seed": -1}}
    problem = client.post("/v1/jobs", json=body, headers=alice).json()
    assert problem["detail"] == "checkpoint_file is required (and 2 more in 'errors')"
    assert [error["message"] for error in problem["errors"]] == [
        "checkpoint_file is required",
        "spec.arch is required",
        "spec.seed must be at least 0, got -1",
    ]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            b'{"checkpoint_file": "file-x", "spec": {',
            "application/json",
            "the request body is not valid JSON at character 39: Expecting property name "
            "enclosed in double quotes",
        ),
        (b"[1]", "application/json", "the request body must be an object, got [1]"),
        (
            b'{"checkpoint_file": "file-x"}',
            "text/plain",
            "the request body must be a JSON object sent with Content-Type: application/json",
        ),
    ],
)
def test_a_body_that_is_not_a_json_object_is_named_as_the_body(
    client: TestClient, alice: dict[str, str], body: bytes, content_type: str, message: str
) -> None:
    response = client.post(
        "/v1/jobs", content=body, headers={**alice, "Content-Type": content_type}
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["detail"] == message
    assert problem["errors"] == [{"field": "", "message": message}]


def test_spec_echoes_numbers_as_given(
    client: TestClient, alice: dict[str, str], checkpoint_bytes: bytes
) -> None:
    """An integer given for a float field comes back as written (1, not 1.0): the spec the API
    shows is the one the library keeps and writes into the .pqz."""
    spec = {"prune": {"retrain_epochs": 1, "max_accuracy_drop": 0.01}, "finetune": {"lr": 1}}
    job = submit(client, alice, upload(client, alice, checkpoint_bytes), **spec)
    response = client.get(f"/v1/jobs/{job['id']}", headers=alice)
    assert '"retrain_epochs":1,' in response.text
    assert '"max_accuracy_drop":0.01,' in response.text
    assert '"lr":1,' in response.text
    assert '"epochs":2.0,' in response.text  # a default is the library's default, a float


def test_unknown_architecture_or_data_set_is_422(
    client: TestClient, alice: dict[str, str], settings: Settings, checkpoint_bytes: bytes
) -> None:
    with session_scope(settings.resolved_database_url) as session:
        catalog.publish(session, "architecture", ["lenet-300-100", "lenet-5"])
        catalog.publish(session, "data", ["digits", "mnist"])
    file_id = upload(client, alice, checkpoint_bytes)
    for spec, field, message in [
        ({"arch": "lenet-6"}, "spec.arch", "unknown architecture 'lenet-6'"),
        (
            {"arch": "lenet-5", "data": "imagenet"},
            "spec.data",
            "unknown data set 'imagenet' (known here: digits, mnist)",
        ),
    ]:
        response = client.post(
            "/v1/jobs", json={"checkpoint_file": file_id, "spec": spec}, headers=alice
        )
        assert response.status_code == 422
        assert message in response.json()["detail"]
        (error,) = response.json()["errors"]
        assert error["field"] == field
        assert message in error["message"]


def test_an_empty_checkpoint_is_refused_at_submit(
    client: TestClient, alice: dict[str, str]
) -> None:
    file_id = upload(client, alice, b"")
    response = client.post(
        "/v1/jobs", json={"checkpoint_file": file_id, "spec": {"arch": "lenet-5"}}, headers=alice
    )
    assert response.status_code == 422
    assert (
        response.json()["detail"] == f"file '{file_id}' is empty: it cannot be the job's checkpoint"
    )


def test_cancel_queued_job_ends_it_at_once(
    client: TestClient, alice: dict[str, str], checkpoint_bytes: bytes
) -> None:
    job_id = submit(client, alice, upload(client, alice, checkpoint_bytes))["id"]
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice).json()
    assert cancelled["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert again.status_code == 409
    events = client.get(f"/v1/jobs/{job_id}/events", headers=alice).json()["data"]
    assert [event["message"] for event in events] == ["queued", "cancelled before it started"]
    stream = client.get(
        f"/v1/jobs/{job_id}/events", headers={**alice, "Accept": "text/event-stream"}
    )
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text.count("event: job.event") == 2
    assert 'event: job.end\ndata: {"status": "cancelled"}' in stream.text
    # An EventSource that reconnects sends the last id it saw, and gets only what came after.
    first_id = events[0]["id"]
    resumed = client.get(
        f"/v1/jobs/{job_id}/events",
        headers={**alice, "Accept": "text/event-stream", "Last-Event-ID": str(first_id)},
    )
    assert resumed.text.count("event: job.event") == 1
    assert f"id: {events[1]['id']}\n" in resumed.text
    assert client.get(f"/v1/jobs/{job_id}/artifact", headers=alice).status_code == 409


def test_health_readiness_and_metrics(
    client: TestClient, alice: dict[str, str], checkpoint_bytes: bytes
) -> None:
    submit(client, alice, upload(client, alice, checkpoint_bytes))
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    metrics = client.get("/metrics").text
    assert 'pqz_jobs{status="queued"} 1.0' in metrics
    assert client.get("/openapi.json").json()["info"]["title"] == "pqz"


def test_the_api_reference_needs_nothing_from_the_internet(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
    for asset in assets:
        assert asset.startswith("/"), asset  # served by the API itself
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 1000, asset


def test_readiness_fails_when_the_broker_is_unreachable(settings: Settings) -> None:
    from app.main import create_app

    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken)) as test_client:
        response = test_client.get("/readyz")
    assert response.status_code == 503
    assert "broker unreachable" in response.json()["detail"]


def test_job_rows_keep_the_validated_spec(
    client: TestClient, alice: dict[str, str], settings: Settings, checkpoint_bytes: bytes
) -> None:
    job_id = submit(client, alice, upload(client, alice, checkpoint_bytes), data="digits")["id"]
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status == JobStatus.queued
        assert job.published_at is not None
        assert json.loads(json.dumps(job.spec))["data"] == "digits"


def test_the_api_reference_documents_what_the_api_sends(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    upload_op = spec["paths"]["/v1/files"]["post"]
    body = upload_op["requestBody"]["content"]["application/octet-stream"]
    assert body["schema"] == {"type": "string", "format": "binary"}  # /docs can send a file
    problem = {"$ref": "#/components/schemas/ProblemDetail"}
    for path, method, status in [
        ("/v1/files", "post", "413"),
        ("/v1/files", "post", "422"),
        ("/v1/jobs", "post", "401"),
        ("/v1/jobs/{job_id}", "get", "404"),
        ("/v1/jobs/{job_id}/cancel", "post", "409"),
    ]:
        content = spec["paths"][path][method]["responses"][status]["content"]
        assert content["application/problem+json"]["schema"] == problem, (path, status)
    assert "HTTPValidationError" not in json.dumps(spec)  # FastAPI's 422 shape is never sent
    fields = spec["components"]["schemas"]["ProblemDetail"]["properties"]
    assert {"type", "title", "status", "detail", "instance", "errors"} <= set(fields)
