"""The service's client (httpx + rich): `pqz` submit, wait, jobs, status, cancel, download.

`PQZ_URL` (default http://127.0.0.1:8000) and `PQZ_API_KEY` configure it. Network errors and
problem+json answers become one clear line each.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from cli.output import (
    ForceOption,
    check_output,
    console,
    errors,
    fail,
    human_bytes,
    print_json,
    print_warnings,
    require_file,
)
from cli.progress import WARNING, StageBars
from cli.spec_options import (
    AugmentOption,
    BlockSizeOption,
    CentroidsOption,
    FastOption,
    MaxDropOption,
    MeanOption,
    MethodOption,
    NumClassesOption,
    ScalarOption,
    SparsityOption,
    SpecOptions,
    StdOption,
    ThresholdOption,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the job as one JSON object.")]
TERMINAL = ("succeeded", "failed", "cancelled")


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command()(wait)
    app.command()(jobs)
    app.command()(status)
    app.command()(cancel)
    app.command()(download)


class Client:
    """A thin httpx client that turns every failure into one line and exit status 1."""

    def __init__(self) -> None:
        self.url = os.environ.get("PQZ_URL", "http://127.0.0.1:8000").rstrip("/")
        key = os.environ.get("PQZ_API_KEY")
        if not key:
            fail("set PQZ_API_KEY (create one with `pqz keys create NAME` on the server)")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60.0
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            fail(f"cannot reach pqz at {self.url}: {error}")
        self.check(response)
        return response

    def check(self, response: httpx.Response) -> None:
        if response.is_success or response.status_code == 304:
            return
        try:
            problem = response.json()
            detail = problem.get("detail") or problem.get("title")
        except (ValueError, AttributeError):
            detail = response.text[:200] or response.reason_phrase
        if response.status_code == 404 and detail == "Not Found":  # no such route, not no job
            detail = (
                f"{response.request.url.path} is not a pqz API path: PQZ_URL must be the "
                f"server's root (http://HOST:PORT), not {self.url}"
            )
        fail(f"{detail} (HTTP {response.status_code})")

    def stream(self, path: str) -> Iterator[httpx.Response]:
        try:
            with self.http.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                self.check(response)
                yield response
        except httpx.HTTPError as error:
            fail(f"cannot reach pqz at {self.url}: {error}")


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def _check_upload(path: Path, purpose: str) -> None:
    """What the server would refuse from its first bytes, refused before anything is sent."""
    from app.uploads import HEAD_BYTES, refusal

    require_file(path)
    with path.open("rb") as handle:
        refused = refusal(purpose, handle.read(HEAD_BYTES), path.stat().st_size, str(path))
    if refused is not None:
        fail(refused)


def _upload(client: Client, path: Path, purpose: str) -> str:
    """Upload a file `_check_upload` has passed."""
    response = client.request(
        "POST",
        "/v1/files",
        params={"filename": path.name, "purpose": purpose},
        content=_chunks(path),
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(path.stat().st_size),
        },
    )
    file_id: str = response.json()["id"]
    return file_id


def submit(
    checkpoint: Annotated[Path, typer.Argument(help="State dict (.pt/.pth, zip) or .safetensors.")],
    arch: Annotated[
        str | None,
        typer.Option("--arch", help="Architecture name (see `pqz zoo`); else the spec's arch."),
    ] = None,
    num_classes: NumClassesOption = None,
    data: Annotated[
        str | None, typer.Option(help="A built-in data set name, or a local .npz to upload.")
    ] = None,
    sparsity: SparsityOption = None,
    threshold: ThresholdOption = None,
    max_accuracy_drop: MaxDropOption = None,
    method: MethodOption = None,
    block_size: BlockSizeOption = None,
    centroids: CentroidsOption = None,
    scalar_when_smaller: ScalarOption = None,
    augment: AugmentOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    fast: FastOption = False,
    spec: Annotated[Path | None, typer.Option(help="JSON job spec (see README).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Upload a checkpoint and submit a compression job (post-training without --data)."""
    options = SpecOptions(
        sparsity=sparsity,
        threshold=threshold,
        max_accuracy_drop=max_accuracy_drop,
        method=method,
        block_size=block_size,
        centroids=centroids,
        scalar_when_smaller=scalar_when_smaller,
        augment=augment,
        mean=mean,
        std=std,
        fast=fast,
    )
    require_file(checkpoint)
    body: dict[str, Any] = {}
    if spec is not None:
        require_file(spec)
        try:
            body = json.loads(spec.read_text())
        except json.JSONDecodeError as error:
            fail(f"spec {spec} is not valid JSON: {error}")
    if not isinstance(body, dict):
        _check_spec(body)  # refuses it, in the server's words
    body = options.apply(body)
    if arch is not None:
        body["arch"] = arch
    if body.get("arch") is None:
        fail('give the architecture: --arch, or "arch" in the --spec file', code=2)
    if num_classes is not None:
        body["num_classes"] = num_classes
    if data is not None:
        body["data"] = data
    options.refuse_without_data(body.get("data"))
    # A local file or folder, from --data or the spec file's "data", is the user's own data:
    # an .npz is uploaded; anything else the service could not read.
    local = body.get("data")
    upload_data = None
    if isinstance(local, str) and (local.endswith(".npz") or Path(local).exists()):
        path = Path(local)
        if path.is_dir() or (path.exists() and path.suffix != ".npz"):
            kind = "folder" if path.is_dir() else "file"
            fail(
                f"data {local} is a local {kind}: the service takes a built-in data set's name "
                f"or an .npz file to upload (pqz pack {local} -o data.npz makes one)",
                code=2,
            )
        upload_data = path
        del body["data"]
    _check_spec(body)  # before anything is uploaded, as far as the spec alone can tell
    if upload_data is not None:
        _check_upload(upload_data, "dataset")
    _check_upload(checkpoint, "checkpoint")
    client = Client()
    uploaded: list[str] = []
    try:
        data_file = None
        if upload_data is not None:
            data_file = _upload(client, upload_data, "dataset")
            uploaded.append(data_file)
        file_id = _upload(client, checkpoint, "checkpoint")
        uploaded.append(file_id)
        job = client.request(
            "POST",
            "/v1/jobs",
            json={"checkpoint_file": file_id, "data_file": data_file, "spec": body},
        )
    except BaseException:
        # The error line is out already. These uploads were made for this job alone: when it is
        # refused (an architecture the server does not know, say), they must not stay behind.
        _discard(client, uploaded)
        raise
    payload = job.json()
    if wait:
        errors.print(f"submitted {payload['id']}", highlight=False)
        _finish(client, payload["id"], json_output=json_output)
    elif json_output:
        print_json(payload)
    else:
        console.print(_summary(payload), highlight=False, soft_wrap=True)


def wait(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    json_output: JsonOption = False,
) -> None:
    """Follow a job with a progress bar until it ends; exit status 1 unless it succeeds."""
    _finish(Client(), job_id, json_output=json_output)


def _finish(client: Client, job_id: str, *, json_output: bool) -> None:
    """Follow the job, then print it; a job that did not succeed is one line and exit 1."""
    try:
        job, warned = _follow(client, job_id, quiet=json_output)
    except KeyboardInterrupt:
        fail(
            f"stopped waiting; {job_id} goes on (`pqz wait {job_id}` follows it again, "
            f"`pqz cancel {job_id}` stops it)",
            code=130,
        )
    if json_output:
        print_json(job)
    if job["status"] != "succeeded":
        if not json_output:
            fail(_summary(job))  # one line on stderr, exit status 1
        raise typer.Exit(1)
    if not json_output:
        _show(job, warned)


def _discard(client: Client, file_ids: list[str]) -> None:
    """Best effort: a file a job did get (409) or an unreachable server is left as it is."""
    for file_id in file_ids:
        with contextlib.suppress(httpx.HTTPError):
            client.http.delete(f"/v1/files/{file_id}", timeout=10.0)


def _check_spec(body: object) -> None:
    """The server's own (torch-free) validation of the job spec, run locally first, with the
    server's wording."""
    from pydantic import ValidationError

    from app.spec import JobSpec
    from app.validation import describe

    try:
        JobSpec.model_validate(body)
    except ValidationError as error:
        messages = []
        for item in error.errors():
            item["loc"] = ("spec", *item["loc"])  # the field's path in the request
            messages.append(describe(item)[1])
        more = f" (and {len(messages) - 1} more: {'; '.join(messages[1:])})" if messages[1:] else ""
        fail(f"invalid spec: {messages[0]}{more}")


def _follow(client: Client, job_id: str, *, quiet: bool) -> tuple[dict[str, Any], list[str]]:
    """Progress bars from the job's events until it ends, its warnings printed as they come;
    returns the final job and the warnings said."""
    cursor = 0
    with StageBars(enabled=not quiet) as bars:
        while True:
            events = client.request(
                "GET", f"/v1/jobs/{job_id}/events", params={"after": cursor}
            ).json()
            for event in events["data"]:
                cursor = event["id"]
                if event["message"].startswith(WARNING):
                    bars.warn(event["message"].removeprefix(WARNING))
                if event["progress"] is not None:
                    stage = f"{event['stage']}: " if event["stage"] else ""
                    bars("job", event["progress"], f"{stage}{event['message']}")
            job: dict[str, Any] = client.request("GET", f"/v1/jobs/{job_id}").json()
            if job["status"] in TERMINAL and not events["has_more"]:
                bars("job", 1.0 if job["status"] == "succeeded" else job["progress"], job["status"])
                return job, bars.warned
            time.sleep(0.5)


def _show(job: dict[str, Any], said: Collection[str] = ()) -> None:
    """One job in full: its line, then its warnings (on stderr) but those `said` already."""
    console.print(_summary(job, warnings_below=True), highlight=False, soft_wrap=True)
    print_warnings(job.get("metrics") or {}, said)


def _summary(job: dict[str, Any], *, warnings_below: bool = False) -> str:
    """One line for a job; its warnings are counted here unless printed below it."""
    line = f"{job['id']}: {job['status']}"
    if job.get("stage") and job["status"] != "succeeded":  # where it is, or where it stopped
        line += f" ({job['stage']}, {job['progress']:.0%})"
    if job.get("error"):
        line += f" - {job['error']['code']}: {job['error']['message']}"
    metrics = job.get("metrics") or {}
    if "compression_ratio" in metrics:
        size = human_bytes(metrics["file_size_bytes"])
        line += f" - {size}, {metrics['compression_ratio']:.1f}x smaller"
    if "final" in metrics:
        before, after = metrics["baseline"]["test_accuracy"], metrics["final"]["test_accuracy"]
        line += f", test accuracy {before:.4f} -> {after:.4f}"
    count = len(metrics.get("warnings", []))
    if count and not warnings_below:
        line += f" ({count} warning{'s' if count > 1 else ''}: `pqz status {job['id']}`)"
    return line


def jobs(
    limit: Annotated[int, typer.Option(help="How many, newest first.", min=1, max=100)] = 20,
    after: Annotated[
        str | None, typer.Option(help="Only jobs older than this one (the next page).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List your jobs: when each was submitted, its architecture, where it is."""
    params: dict[str, Any] = {"limit": limit} | ({"after": after} if after else {})
    page = Client().request("GET", "/v1/jobs", params=params).json()
    if json_output:
        print_json(page)
        return
    if not page["data"]:
        console.print("no jobs yet" if after is None else f"no jobs older than {after}")
    for job in page["data"]:
        submitted = job["created_at"][:16].replace("T", " ")  # ISO 8601, to the minute
        line = f"{submitted}  {job['spec'].get('arch', '?')}  {_summary(job)}"
        console.print(line, highlight=False, soft_wrap=True)
    if page.get("has_more"):
        size = "" if limit == 20 else f" --limit {limit}"
        console.print(f"more: pqz jobs{size} --after {page['data'][-1]['id']}", highlight=False)


def status(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    json_output: JsonOption = False,
) -> None:
    """Show one job."""
    job = Client().request("GET", f"/v1/jobs/{job_id}").json()
    if json_output:
        print_json(job)
    else:
        _show(job)


def cancel(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    json_output: JsonOption = False,
) -> None:
    """Cancel a job: a queued one at once, a running one between two of its steps."""
    job = Client().request("POST", f"/v1/jobs/{job_id}/cancel").json()
    if json_output:
        print_json(job)
    else:
        console.print(_summary(job), highlight=False, soft_wrap=True)


def download(
    job_id: Annotated[str, typer.Argument(help="A succeeded job's id.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Default: JOB_ID.pqz")
    ] = None,
    force: ForceOption = False,
) -> None:
    """Download a job's .pqz, verifying its SHA-256 against the server's ETag."""
    target = output or Path(f"{job_id}.pqz")
    check_output(target, force=force)
    partial = target.with_name(f".{target.name}.part")
    digest = hashlib.sha256()
    try:
        for response in Client().stream(f"/v1/jobs/{job_id}/artifact"):
            expected = response.headers.get("etag", "").strip('"')
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    handle.write(chunk)
        if digest.hexdigest() != expected:
            fail(f"download of {job_id} is corrupt: SHA-256 {digest.hexdigest()} != {expected}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    console.print(
        f"wrote {target} ({human_bytes(target.stat().st_size)}, sha256 ok)", highlight=False
    )
