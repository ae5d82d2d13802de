"""Measure a `.pqz` both ways in one run: the decoded dense fp32 model against the runtime.

Latency is the median of interleaved rounds (a busy machine slows both alike); throughput is
batch / latency. Peak memory is the model's own bytes (parameters, buffers, kernel weights)
plus the most memory a call adds: on CPU the growth of the peak resident set of a fresh child
process that loaded only that model and ran it once (so neither the one-off decoding nor the
code pages of the kernels count); on CUDA `torch.cuda.max_memory_allocated` around the calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import gc
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compression.errors import InvalidConfigError
from compression.pqz import inspect_pqz, load_pqz
from compression.runtime import model_resident_bytes, runtime_report, sample_inputs
from compression.runtime.autotune import time_interleaved
from compression.zoo import get_architecture

PEAK_TIMEOUT_S = 600


@dataclass(frozen=True, kw_only=True, slots=True)
class InferenceResult:
    """One row of `pqz bench-infer`: one device and batch size, both models."""

    device: str
    batch: int
    dense_ms: float
    compressed_ms: float
    dense_peak_bytes: int | None
    compressed_peak_bytes: int | None
    dense_resident_bytes: int
    compressed_resident_bytes: int
    agreement: float | None  # top-1 agreement on the data set's test images, when given
    agreement_n: int
    kernels: dict[str, int]  # layers per kernel in the compressed model
    note: str = ""

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.compressed_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "speedup": self.speedup,
            "dense_throughput": self.batch / self.dense_ms * 1000,  # images per second
            "compressed_throughput": self.batch / self.compressed_ms * 1000,
        }


def benchmark_inference(
    path: str | os.PathLike[str],
    *,
    batches: tuple[int, ...] = (1, 64),
    device: str | torch.device = "cpu",
    example_inputs: torch.Tensor | None = None,
    eval_inputs: torch.Tensor | None = None,
    cache_path: str | os.PathLike[str] | None = None,
    repeats: int = 11,
    measure_memory: bool = True,
) -> list[InferenceResult]:
    """Dense against `runtime="auto"` for each batch size.

    `example_inputs`: a few real inputs (calibration and checks); `eval_inputs`: test images on
    which the two models' top-1 predictions are compared.
    """
    if not batches or min(batches) < 1:
        raise InvalidConfigError(f"batch sizes {list(batches)} must be >= 1")
    device = torch.device(device)
    dense = load_pqz(path, device=device)
    dense_resident = model_resident_bytes(dense)
    input_shape = get_architecture(inspect_pqz(path).architecture["name"]).input_shape
    results = []
    for batch in batches:
        compressed = load_pqz(
            path,
            device=device,
            runtime="auto",
            batch_size=batch,
            example_inputs=example_inputs,
            cache_path=cache_path,
        )
        report = runtime_report(compressed)
        _, inputs = sample_inputs(example_inputs, input_shape, batch, device)
        if report is None or report.note.startswith("kept dense"):
            # The runtime kept the decoded model: timing it twice would only measure noise.
            timings = _time({"dense": dense}, inputs, device, repeats)
            timings["compressed"] = timings["dense"]
        else:
            timings = _time({"dense": dense, "compressed": compressed}, inputs, device, repeats)
        agreement, n = _agreement(dense, compressed, eval_inputs, batch, device)
        peaks: dict[str, int | None] = {"dense": None, "compressed": None}
        if measure_memory:
            for variant, runtime in (("dense", "dense"), ("compressed", "auto")):
                peaks[variant] = peak_bytes(
                    path, runtime, batch, device, example_inputs, inputs.cpu(), cache_path
                )
        results.append(
            InferenceResult(
                device=str(device),
                batch=batch,
                dense_ms=timings["dense"],
                compressed_ms=timings["compressed"],
                dense_peak_bytes=peaks["dense"],
                compressed_peak_bytes=peaks["compressed"],
                dense_resident_bytes=dense_resident,
                compressed_resident_bytes=model_resident_bytes(compressed),
                agreement=agreement,
                agreement_n=n,
                kernels=dict(Counter(layer.kernel for layer in report.layers)) if report else {},
                note=report.note if report else "",
            )
        )
        del compressed
        gc.collect()
    return results


@torch.inference_mode()
def _time(
    models: dict[str, nn.Module], inputs: torch.Tensor, device: torch.device, repeats: int
) -> dict[str, float]:
    functions = {name: functools.partial(model, inputs) for name, model in models.items()}
    return time_interleaved(functions, device, repeats=repeats, min_repeat_s=0.05)


@torch.inference_mode()
def _agreement(
    dense: nn.Module,
    compressed: nn.Module,
    eval_inputs: torch.Tensor | None,
    batch: int,
    device: torch.device,
) -> tuple[float | None, int]:
    if eval_inputs is None or len(eval_inputs) == 0:
        return None, 0
    same = 0
    for start in range(0, len(eval_inputs), batch):
        x = eval_inputs[start : start + batch].float().to(device)
        same += int((dense(x).argmax(dim=1) == compressed(x).argmax(dim=1)).sum())
    return same / len(eval_inputs), len(eval_inputs)


def peak_bytes(
    path: str | os.PathLike[str],
    runtime: str,
    batch: int,
    device: torch.device,
    example_inputs: torch.Tensor | None,
    inputs: torch.Tensor,
    cache_path: str | os.PathLike[str] | None,
) -> int | None:
    """Peak memory of running one model alone: None where the platform cannot tell."""
    arguments = (str(path), runtime, batch, str(device), example_inputs, inputs, cache_path)
    if device.type == "cuda":
        return _cuda_peak(*arguments)
    if not Path("/proc/self/clear_refs").exists():
        return None
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result = pool.apply_async(_cpu_peak, (*arguments, torch.get_num_threads()))
        return int(result.get(timeout=PEAK_TIMEOUT_S))


def _load(
    path: str,
    runtime: str,
    batch: int,
    device: str,
    example_inputs: torch.Tensor | None,
    cache_path: str | os.PathLike[str] | None,
) -> nn.Module:
    return load_pqz(
        path,
        device=device,
        runtime=runtime,
        batch_size=batch,
        example_inputs=example_inputs,
        cache_path=cache_path,
    )


def _cpu_peak(
    path: str,
    runtime: str,
    batch: int,
    device: str,
    example_inputs: torch.Tensor | None,
    inputs: torch.Tensor,
    cache_path: str | os.PathLike[str] | None,
    threads: int,
) -> int:
    """In a fresh process: the model's bytes plus the most memory running it added."""
    torch.set_num_threads(threads)
    model = _load(path, runtime, batch, device, example_inputs, cache_path)
    with torch.inference_mode():
        model(inputs)  # first call: kernels' code pages and one-off buffers, not per-call memory
    gc.collect()
    _release_free_memory()  # what decoding and the autotune freed is not the model's
    settled = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    with torch.inference_mode():
        for _ in range(3):
            model(inputs)
    return model_resident_bytes(model) + (_status_kib("VmHWM") - settled) * 1024


def _release_free_memory() -> None:
    """glibc keeps freed heap pages resident; malloc_trim returns them (elsewhere: no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _cuda_peak(
    path: str,
    runtime: str,
    batch: int,
    device: str,
    example_inputs: torch.Tensor | None,
    inputs: torch.Tensor,
    cache_path: str | os.PathLike[str] | None,
) -> int:
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    model = _load(path, runtime, batch, device, example_inputs, cache_path)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for _ in range(3):
            model(inputs.to(device))
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del model
    return peak
