"""Choosing each layer's kernel by measurement, never by rule of thumb.

Every candidate kernel is checked against the dense layer on the sample batch (relative L2
error within the kernel's tolerance) and timed on the layer's real input shape, interleaved
with the dense layer so that a busy machine slows all of them alike. Timings are cached per
machine, torch version, thread count, layer shape, input shape and weight density.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compression.runtime.kernels import Kernel, LayerSample, candidates, dense_bytes

CACHE_VERSION = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class LayerChoice:
    """What the autotune measured for one layer and what it kept."""

    name: str
    layer_type: str
    kernel: str
    density: float  # fraction of non-zero weights
    timings_ms: dict[str, float] = field(default_factory=dict)  # "dense" included
    errors: dict[str, float] = field(default_factory=dict)  # relative L2 error per kernel
    rejected: dict[str, str] = field(default_factory=dict)  # kernel -> why not
    resident_bytes: int
    dense_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TimingCache:
    """A JSON file of measured kernel timings; unreadable or foreign files are ignored."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.timings: dict[str, float] = {}
        self.changed = False
        if path is None or not path.is_file():
            return
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
            stored = data.get("timings")
            if isinstance(stored, dict):
                self.timings = {
                    key: float(value)
                    for key, value in stored.items()
                    if isinstance(value, int | float) and value > 0
                }

    def get(self, key: str) -> float | None:
        return self.timings.get(key)

    def put(self, key: str, milliseconds: float) -> None:
        self.timings[key] = milliseconds
        self.changed = True

    def save(self) -> None:
        """Write atomically; a cache that cannot be written only costs the next load time."""
        if self.path is None or not self.changed:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(handle, "w") as file:
                json.dump({"version": CACHE_VERSION, "timings": self.timings}, file)
            os.replace(temporary, self.path)


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pqz" / "autotune.json"


def machine_key(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} sm{major}{minor}"
    return f"{_cpu_name()} threads={torch.get_num_threads()}"


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    functions: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    repeats: int = 7,
    min_repeat_s: float = 0.002,
) -> dict[str, float]:
    """Median milliseconds per call of each function, measured in alternating rounds."""
    rounds = time_rounds(functions, device, repeats=repeats, min_repeat_s=min_repeat_s)
    return {name: statistics.median(values) for name, values in rounds.items()}


def time_rounds(
    functions: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    repeats: int,
    min_repeat_s: float,
) -> dict[str, list[float]]:
    """Milliseconds per call of each function in each of `repeats` alternating rounds.

    Each round runs every function in turn, enough calls to last `min_repeat_s`, so that the
    i-th samples of two functions saw the same machine: comparisons can be paired.
    """
    calls: dict[str, int] = {}
    for name, function in functions.items():
        function()  # warm-up: lazy initialisation, caches, oneDNN primitives
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        once = time.perf_counter() - start
        calls[name] = max(1, min(1000, int(min_repeat_s / max(once, 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls[name]):
                function()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / calls[name] * 1000)
    return samples


@contextlib.contextmanager
def captured_io(
    model: nn.Module, layers: dict[str, nn.Module]
) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Record each layer's first input and output while the caller runs the model."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if name not in seen:  # cloned: an in-place ReLU after the layer would overwrite it
                seen[name] = (args[0].detach().clone(), out.detach().clone())

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.float()
    return float((y.float() - reference).norm() / reference.norm().clamp(min=1e-12))


@torch.inference_mode()
def choose_kernel(
    name: str,
    layer: nn.Module,
    sample: LayerSample,
    timing_input: torch.Tensor,
    *,
    device: torch.device,
    family: str | None,
    cache: TimingCache,
    margin: float,
) -> tuple[nn.Module, LayerChoice]:
    """The layer itself (dense) or the kernel module that replaces it, and why.

    `family=None` is the autotune: the fastest correct kernel, kept only when it beats dense by
    `margin` (0.05 = 5% faster). A family forces its fastest correct kernel whatever dense costs.
    """
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)  # a Linear or Conv2d
    density = float((weight != 0).float().mean())
    built: dict[str, nn.Module] = {}
    errors: dict[str, float] = {}
    rejected: dict[str, str] = {}
    for kernel in candidates(layer, sample, device):
        if family is not None and kernel.family != family:
            continue
        module, output, problem = _build_checked(kernel, layer, sample)
        if module is None or output is None:
            rejected[kernel.name] = problem
            continue
        error = relative_error(output, sample.outputs)
        errors[kernel.name] = error
        if error > kernel.tolerance:
            rejected[kernel.name] = f"error {error:.2e} above its tolerance {kernel.tolerance:.0e}"
            continue
        built[kernel.name] = module

    timings = _timings(name, layer, built, timing_input, density, device, cache)
    kept = "dense"
    if built:
        fastest = min(built, key=lambda candidate: timings[candidate])
        if family is not None or timings[fastest] < timings["dense"] * (1 - margin):
            kept = fastest
        for candidate in built:
            if candidate != kept and family is None:
                why = "not faster than dense" if candidate == fastest else "not the fastest"
                rejected.setdefault(candidate, why)
    module = layer if kept == "dense" else built[kept]
    choice = LayerChoice(
        name=name,
        layer_type=type(layer).__name__,
        kernel=kept,
        density=density,
        timings_ms=timings,
        errors=errors,
        rejected=rejected,
        resident_bytes=dense_bytes(layer) if kept == "dense" else module.resident_bytes(),  # type: ignore[operator]
        dense_bytes=dense_bytes(layer),
    )
    return module, choice


def _build_checked(
    kernel: Kernel, layer: nn.Module, sample: LayerSample
) -> tuple[nn.Module | None, torch.Tensor | None, str]:
    """Build the kernel and run it on the sample; one the backend cannot run is rejected."""
    try:
        with warnings.catch_warnings():
            # torch 2.14 announces that quantized tensors go away in a later release; pqz pins
            # torch, and each kernel is checked against dense right after this.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
            module = kernel.build(layer, sample)
        output = module(sample.inputs)
    except (RuntimeError, NotImplementedError, ValueError) as error:
        return None, None, f"not runnable here: {str(error).splitlines()[0][:120]}"
    return module, output, ""


def _timings(
    name: str,
    layer: nn.Module,
    built: dict[str, nn.Module],
    timing_input: torch.Tensor,
    density: float,
    device: torch.device,
    cache: TimingCache,
) -> dict[str, float]:
    signature = _signature(layer, timing_input, density, device)
    keys = {kernel: f"{signature}|{kernel}" for kernel in ["dense", *built]}
    timings = {kernel: cache.get(key) for kernel, key in keys.items()}
    missing = {kernel for kernel, value in timings.items() if value is None}
    if missing:
        # Re-time dense beside whatever is missing: ratios must come from one run.
        missing.add("dense")
        modules = {"dense": layer, **built}
        functions = {kernel: functools.partial(modules[kernel], timing_input) for kernel in missing}
        for kernel, milliseconds in time_interleaved(functions, device).items():
            timings[kernel] = milliseconds
            cache.put(keys[kernel], milliseconds)
    return {kernel: float(value) for kernel, value in timings.items() if value is not None}


def _signature(
    layer: nn.Module, timing_input: torch.Tensor, density: float, device: torch.device
) -> str:
    if isinstance(layer, nn.Conv2d):
        shape = (
            f"Conv2d({layer.in_channels},{layer.out_channels},k={layer.kernel_size},"
            f"s={layer.stride},p={layer.padding},d={layer.dilation},g={layer.groups})"
        )
    else:
        shape = f"{type(layer).__name__}({[p.shape for p in layer.parameters(False)]})"
    return (
        f"{machine_key(device)}|torch {torch.__version__}|{shape}|"
        f"input {tuple(timing_input.shape)}|density {density:.2f}"
    )
