"""One job, stage by stage: claim, intake, the library's pipeline, the artifact, a terminal state.

Progress callbacks of the library become job events and `progress`; a heartbeat thread keeps
the claim alive and notices cancellation, which the next callback turns into a clean stop.
Every way out ends the job in a terminal state with an error code when it fails.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, update

from compression import (
    CompressionSpec,
    InvalidCheckpointError,
    InvalidConfigError,
    TrainingDivergedError,
    UnsupportedLayerError,
    build_model,
)
from compression.checkpoint import checkpoint_classes
from compression.data import Dataset, load_dataset
from compression.errors import DataNotFoundError
from compression.pipeline import Pipeline
from compression.prune import prunable_layers
from compression.train import STEP_MESSAGE, resolve_device
from compression.zoo import get_architecture
from db.blobs import read_blob, write_blob
from db.jobs import add_event, claim, finish, heartbeat, release
from db.models import File, Job, JobStatus
from db.session import session_scope
from db.settings import Settings
from worker.intake import read_checkpoint_isolated

log = logging.getLogger("pqz.worker")

# Share of the whole job each stage stands for, in order: progress = start + share * fraction.
# Until the spec and the model are known; then `stage_shares` weighs the stages by their work.
STAGE_SHARES = {
    "validate": 0.05,
    "baseline": 0.05,
    "prune": 0.5,
    "quantize": 0.1,
    "finetune": 0.25,
    "package": 0.05,
}
EVENT_INTERVAL_S = 1.0


def stage_shares(spec: CompressionSpec, n_layers: int, with_data: bool) -> dict[str, float]:
    """Each stage's share of the job, by its passes over the training data, so the progress
    bar moves at an even pace: pruning rounds of retraining, one training run per quantized
    layer in layer-wise mode (or only the k-means), the fine-tuning epochs. Validation and
    packaging keep 5% each; every stage that runs has at least a small share."""
    work = {"baseline": 0.0, "prune": 0.1, "quantize": 0.3, "finetune": 0.0}
    prune = spec.prune
    if with_data:
        work["baseline"] = 0.05  # two evaluations
        if prune is not None:
            # Without a default sparsity or threshold the pipeline scans; a scanned round also
            # evaluates every layer at several levels: about one pass more.
            scanned = prune.default is None
            rounds = prune.rounds if scanned else 1
            work["prune"] = rounds * (prune.retrain_epochs + (1.0 if scanned else 0.0)) or 0.1
        work["quantize"] += spec.finetune.layerwise_epochs * max(n_layers - 1, 0)
        work["finetune"] = spec.finetune.epochs or 0.05
    elif prune is None:
        work["prune"] = 0.0
    total = sum(work.values())
    return {
        "validate": 0.05,
        **{stage: 0.9 * amount / total for stage, amount in work.items()},
        "package": 0.05,
    }


class JobCancelledError(Exception):
    """Raised from a progress callback once the job is marked `cancelling`."""


class JobLostError(Exception):
    """The job was taken from this worker (the reaper judged it lost)."""


class WorkerStoppingError(Exception):
    """Raised from a progress callback once the worker is told to stop (SIGTERM)."""


class InvalidDataError(Exception):
    """The data file uploaded with the job cannot be used (the message names no server path)."""


@dataclass
class Recorder:
    """Turns progress callbacks into throttled job events and the job's stage and progress."""

    job_id: str
    worker: str
    settings: Settings
    cancelled: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    last_event: float = 0.0
    last_stage: str | None = None
    shares: dict[str, float] = field(default_factory=lambda: dict(STAGE_SHARES))

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if self.cancelled.is_set():
            raise JobCancelledError
        if self.lost.is_set():
            raise JobLostError
        if self.stopping.is_set():
            raise WorkerStoppingError
        moment = time.monotonic()
        if (
            message.startswith(STEP_MESSAGE)  # periodic; a round's outcome is never dropped
            and stage == self.last_stage
            and fraction < 1.0
            and moment - self.last_event < EVENT_INTERVAL_S
        ):
            return
        self.last_stage, self.last_event = stage, moment
        start = 0.0
        for name, share in self.shares.items():
            if name == stage:
                break
            start += share
        progress = min(start + self.shares.get(stage, 0.0) * min(max(fraction, 0.0), 1.0), 1.0)
        progress = round(progress, 4)  # 0.9999999999999999 is 1.0 to anyone reading it
        with session_scope(self.settings.resolved_database_url) as session:
            session.execute(
                update(Job).where(Job.id == self.job_id).values(stage=stage, progress=progress)
            )
            level = "warning" if message.startswith("warning: ") else "info"
            add_event(session, self.job_id, message, stage=stage, progress=progress, level=level)
            status = session.execute(select(Job.status).where(Job.id == self.job_id)).scalar()
        # Seen here, a cancel stops the job at this step; the heartbeat alone would see it up to
        # heartbeat_interval_s later, after the end of a job shorter than that.
        if status == JobStatus.cancelling:
            self.cancelled.set()
            raise JobCancelledError

    def beat(self, stop: threading.Event) -> None:
        """Heartbeat loop (its own thread): keeps the claim fresh, notices cancel and loss."""
        while not stop.wait(self.settings.heartbeat_interval_s):
            try:
                with session_scope(self.settings.resolved_database_url) as session:
                    status = heartbeat(session, self.job_id, self.worker)
            except Exception:
                log.exception("heartbeat of %s failed; trying again", self.job_id)
                continue
            if status == JobStatus.cancelling:
                self.cancelled.set()
            elif status != JobStatus.running:
                self.lost.set()


def run_job(job_id: str, settings: Settings, *, worker: str) -> None:
    """Claim and run one job; does nothing when another worker has it or it has ended."""
    url = settings.resolved_database_url
    with session_scope(url) as session:
        if not claim(session, job_id, worker):
            log.info("job %s is not queued; nothing to do", job_id)
            return
    recorder = Recorder(job_id, worker, settings)
    stop = threading.Event()
    beating = threading.Thread(
        target=recorder.beat, args=(stop,), name=f"heartbeat-{job_id}", daemon=True
    )
    beating.start()
    # An earlier attempt killed on this machine (SIGKILL runs no cleanup) left its files here.
    for leftover in Path(tempfile.gettempdir()).glob(f"pqz-{job_id}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"pqz-{job_id}-"))
    outcome: tuple[JobStatus, tuple[str, str] | None] = (
        JobStatus.failed,
        ("internal_error", "unknown"),
    )
    metrics: dict[str, Any] | None = None
    artifact: str | None = None
    try:
        with _stop_on_sigterm(recorder.stopping):
            metrics, artifact = _run(job_id, settings, recorder, workdir)
        outcome = (JobStatus.succeeded, None)
    except JobCancelledError:
        outcome = (JobStatus.cancelled, None)
    except JobLostError:
        log.warning("job %s was taken from this worker; stopping", job_id)
        return
    except WorkerStoppingError:
        with session_scope(url) as session:
            if release(session, job_id, worker):
                add_event(
                    session,
                    job_id,
                    "the worker is stopping (the service shuts down): the job goes back to the "
                    "queue, and this attempt does not count",
                    level="warning",
                    progress=0.0,
                )
        return
    except InvalidCheckpointError as error:
        outcome = (JobStatus.failed, ("invalid_checkpoint", str(error)))
    except InvalidDataError as error:
        outcome = (JobStatus.failed, ("invalid_data", str(error)))
    except InvalidConfigError as error:
        outcome = (JobStatus.failed, ("invalid_spec", str(error)))
    except UnsupportedLayerError as error:
        outcome = (JobStatus.failed, ("unsupported_layer", str(error)))
    except TrainingDivergedError as error:
        outcome = (JobStatus.failed, ("training_diverged", str(error)))
    except torch.cuda.OutOfMemoryError as error:
        outcome = (JobStatus.failed, ("out_of_memory", str(error).splitlines()[0]))
    except SoftTimeLimitExceeded:
        outcome = (
            JobStatus.failed,
            ("timeout", f"the job ran longer than {settings.job_time_limit_s} s"),
        )
    except Exception as error:
        log.exception("job %s failed", job_id)
        outcome = (JobStatus.failed, ("internal_error", f"{type(error).__name__}: {error}"))
    finally:
        stop.set()
        shutil.rmtree(workdir, ignore_errors=True)
    status, failure = outcome
    with session_scope(url) as session:
        if finish(
            session,
            job_id,
            worker,
            status,
            error=failure,
            metrics=metrics,
            artifact_blob_id=artifact,
        ):
            message = (
                status.value if failure is None else f"{status.value}: {failure[0]}: {failure[1]}"
            )
            add_event(
                session,
                job_id,
                message,
                level="error" if failure else "info",
                progress=1.0 if artifact else None,
            )
        else:
            log.warning("job %s ended here but was no longer this worker's", job_id)


@contextlib.contextmanager
def _stop_on_sigterm(stopping: threading.Event) -> Iterator[None]:
    """SIGTERM (`pqz serve` or `pqz worker` stopping, a container stopped) sets `stopping`, and
    the job stops at its next progress step instead of being killed mid-way and counted as a
    failed attempt. Only the main thread can take signals: elsewhere (tests) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(
    job_id: str, settings: Settings, recorder: Recorder, workdir: Path
) -> tuple[dict[str, Any], str]:
    url = settings.resolved_database_url
    recorder("validate", 0.0, "validating the spec")
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        spec = CompressionSpec.from_dict(job.spec)
        checkpoint_file, data_file = job.checkpoint_file_id, job.data_file_id
    if spec.arch is None:
        raise InvalidConfigError("spec.arch is missing")
    architecture = get_architecture(spec.arch)
    checkpoint = workdir / "checkpoint"
    _download(url, checkpoint_file, checkpoint)
    dataset = _dataset(spec, url, data_file, workdir, settings)
    # Post-training, without num_classes: as many as the checkpoint's output layer has.
    num_classes = spec.num_classes or (dataset.num_classes if dataset else None)
    recorder("validate", 0.5, "reading the checkpoint in an isolated process")
    state = read_checkpoint_isolated(
        checkpoint,
        workdir / "state.safetensors",
        arch=spec.arch,
        num_classes=num_classes,
        max_bytes=settings.max_upload_bytes,
        memory_bytes=settings.intake_memory_bytes,
        timeout_s=settings.intake_timeout_s,
    )
    num_classes = num_classes or checkpoint_classes(state, spec.arch) or architecture.num_classes
    model = build_model(spec.arch, num_classes)
    model.load_state_dict(state)
    device = resolve_device(spec.device)
    recorder("validate", 1.0, f"checkpoint fits {spec.arch}; running on {device}")
    recorder.shares = stage_shares(spec, len(prunable_layers(model)), dataset is not None)
    pipeline = Pipeline(model, spec, dataset, device, recorder)
    pipeline.baseline()
    pipeline.prune()
    pipeline.finish()
    output = workdir / f"{job_id}.pqz"
    info = pipeline.package(output, architecture=spec.arch, num_classes=num_classes)
    with session_scope(url) as session:
        blob = write_blob(session, _read_file(output), chunk_bytes=settings.chunk_bytes)
    metrics = {
        **info.metrics,
        "file_size_bytes": info.file_size_bytes,
        "dense_size_bytes": info.dense_size_bytes,
        "compression_ratio": info.compression_ratio,
    }
    if info.input is not None:
        metrics["input"] = info.input.to_dict()  # how to feed the model, without the file
    return metrics, blob.id


def _download(url: str, file_id: str, target: Path) -> str:
    """Write the file's bytes to `target`; return the name it was uploaded under."""
    with session_scope(url) as session, target.open("wb") as handle:
        file = session.get(File, file_id)
        if file is None:
            raise InvalidCheckpointError(f"file {file_id} no longer exists")
        for chunk in read_blob(session, file.blob_id):
            handle.write(chunk)
        return file.filename


def _dataset(
    spec: CompressionSpec, url: str, data_file: str | None, workdir: Path, settings: Settings
) -> Dataset | None:
    assert spec.arch is not None
    if data_file is not None:
        # Kept under the user's own file name (made safe), which the reader's messages quote.
        (workdir / "data").mkdir()
        download = workdir / "data" / "upload"
        filename = _download(url, data_file, download)
        name = re.sub(r"[^\w.-]", "_", Path(filename).name).lstrip(".") or "data"
        path = download.rename(download.with_name(name if name.endswith(".npz") else f"{name}.npz"))
        try:
            return load_dataset(str(path), seed=spec.seed, arch=spec.arch)
        except InvalidConfigError as error:
            named = f"the uploaded data file '{path.name}'"
            message = str(error).replace(repr(str(path)), named).replace(str(path), named)
            raise InvalidDataError(message) from None
    elif spec.data is not None:
        try:
            return load_dataset(
                spec.data,
                data_dir=settings.data_dir,
                download=settings.allow_download,
                seed=spec.seed,
                arch=spec.arch,
            )
        except DataNotFoundError as error:  # said for the service's user, not the CLI's
            raise InvalidDataError(
                f"data set '{error.name}' is not on this service's workers: whoever runs them "
                "puts it under their PQZ_DATA_DIR, or lets them download it "
                "(PQZ_ALLOW_DOWNLOAD=true); or upload it as an .npz (pqz submit --data file.npz)"
            ) from None
    return None


def _read_file(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk
