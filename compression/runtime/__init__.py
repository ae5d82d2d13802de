"""The inference runtime: a decoded model whose layers run on the fastest kernel measured here.

`compile_runtime(model, runtime="auto")` folds batch norm into the layer before it, then for each
Linear and Conv2d layer checks and times the kernels of `kernels.py` on the layer's real input
shape (`autotune.py`), keeps the fastest correct one where it beats dense, and finally times the
whole model against the decoded dense one in paired rounds: unless it is faster in nearly all
of them, the dense model is kept.
`runtime="sparse" | "int8" | "half" | "semi-structured"` forces that family wherever it applies
and passes the correctness check, whatever its speed (for tests and for users who know).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from compression.errors import InvalidConfigError
from compression.runtime.autotune import (
    LayerChoice,
    TimingCache,
    captured_io,
    choose_kernel,
    default_cache_path,
    relative_error,
    time_rounds,
)
from compression.runtime.kernels import FAMILIES, KERNELS, LayerSample, dense_bytes

__all__ = [
    "KERNELS",
    "RUNTIMES",
    "LayerChoice",
    "RuntimeReport",
    "compile_runtime",
    "model_resident_bytes",
    "runtime_report",
]

RUNTIMES = ("dense", "auto", *FAMILIES)
# The compiled model's logits may differ from the decoded model's by this much (relative L2)
# on the sample batch before `auto` gives up and keeps the dense model.
MODEL_TOLERANCE = 5e-2
SAMPLE_ROWS = 64  # rows used for the correctness checks and int8 calibration
# `auto` keeps its kernels only if the whole model beats dense in MODEL_WINS of MODEL_ROUNDS
# paired rounds (by chance alone, at equal speeds, that happens with probability 9%) and its
# median is faster by the margin: noise on a busy machine does not pass for a speed-up.
MODEL_ROUNDS = 9
MODEL_WINS = 7
REPORT_ATTRIBUTE = "pqz_runtime"


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeReport:
    """What `compile_runtime` chose and measured, kept on the model it returns."""

    runtime: str
    device: str
    batch_size: int
    layers: tuple[LayerChoice, ...]
    resident_bytes: int  # parameters, buffers and kernel weights of the returned model
    dense_resident_bytes: int  # the same for the decoded dense model
    output_error: float  # relative L2 error of the logits against the decoded model
    top1_agreement: float  # on the sample batch (random inputs unless example_inputs given)
    model_ms: dict[str, float]  # whole model at batch_size: "dense" and "compiled" (auto only)
    note: str = ""

    @property
    def kernels(self) -> dict[str, str]:
        return {layer.name: layer.kernel for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compile_runtime(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    runtime: str = "auto",
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    example_inputs: torch.Tensor | None = None,
    cache_path: str | Path | None = None,
    use_cache: bool = True,
    margin: float = 0.05,
    seed: int = 0,
) -> tuple[nn.Module, RuntimeReport]:
    """`model` (decoded, dense) with its layers on the chosen kernels, and the report.

    `example_inputs` (real inputs, any number of rows) make the checks meaningful and allow
    kernels calibrated on data (static int8); without them a seeded random batch is used.
    `batch_size` is the batch the model will serve: kernels are timed at that size.
    """
    if runtime not in RUNTIMES:
        raise InvalidConfigError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if batch_size < 1:
        raise InvalidConfigError(f"batch size {batch_size} must be >= 1")
    device = torch.device(device)
    if runtime in FAMILIES:
        devices = sorted({d for k in KERNELS if k.family == runtime for d in k.devices})
        if device.type not in devices:
            raise InvalidConfigError(
                f"runtime {runtime!r} runs on {' or '.join(devices)} only, not on {device.type}"
            )
    reference = model.to(device).eval()
    check_inputs, timing_input = sample_inputs(
        example_inputs, input_shape, batch_size, device, seed
    )
    dense_resident = model_resident_bytes(reference)
    if runtime == "dense":
        return reference, _dense_report(runtime, device, batch_size, [], dense_resident, {}, "")

    with torch.inference_mode():
        compiled = _fold_batch_norm(reference)
        layers = {
            name: module
            for name, module in compiled.named_modules()
            if type(module) in (nn.Linear, nn.Conv2d)
        }
        with captured_io(compiled, layers) as check_io:
            compiled(check_inputs)
        with captured_io(compiled, layers) as timing_io:
            compiled(timing_input)
        cache = TimingCache(
            (Path(cache_path) if cache_path else default_cache_path()) if use_cache else None
        )
        choices = []
        for name, layer in layers.items():
            if name not in check_io or name not in timing_io:
                continue  # never called on this input
            inputs, outputs = check_io[name]
            sample = LayerSample(inputs, outputs, real=example_inputs is not None)
            module, choice = choose_kernel(
                name,
                layer,
                sample,
                timing_io[name][0],
                device=device,
                family=None if runtime == "auto" else runtime,
                cache=cache,
                margin=margin,
            )
            if module is not layer:
                compiled.set_submodule(name, module)
            choices.append(choice)
        cache.save()

        expected = reference(check_inputs)
        actual = compiled(check_inputs)
        error = relative_error(actual, expected)
        agreement = _top1_agreement(actual, expected)
        model_ms: dict[str, float] = {}
        note = ""
        unchanged = all(choice.kernel == "dense" for choice in choices) and _norms(
            compiled
        ) == _norms(reference)
        if runtime == "auto" and unchanged:
            note = "kept dense: no layer had a kernel measured faster than dense"
        elif runtime == "auto":
            whole = {
                "dense": lambda: reference(timing_input),
                "compiled": lambda: compiled(timing_input),
            }
            rounds = time_rounds(whole, device, repeats=MODEL_ROUNDS, min_repeat_s=0.01)
            model_ms = {name: statistics.median(values) for name, values in rounds.items()}
            wins = sum(c < d for c, d in zip(rounds["compiled"], rounds["dense"], strict=True))
            if error > MODEL_TOLERANCE:
                note = f"kept dense: logits error {error:.2e} above {MODEL_TOLERANCE:.0e}"
            elif wins < MODEL_WINS or model_ms["compiled"] > model_ms["dense"] * (1 - margin):
                note = (
                    f"kept dense: timed while loading, the model on its chosen kernels was "
                    f"faster in {wins} of {MODEL_ROUNDS} paired rounds, median "
                    f"{model_ms['compiled']:.3f} ms against {model_ms['dense']:.3f} ms dense "
                    f"(it must win {MODEL_WINS} and be {margin:.0%} faster)"
                )
    if note:
        report = _dense_report(runtime, device, batch_size, choices, dense_resident, model_ms, note)
        setattr(reference, REPORT_ATTRIBUTE, report)
        return reference, report
    report = RuntimeReport(
        runtime=runtime,
        device=str(device),
        batch_size=batch_size,
        layers=tuple(choices),
        resident_bytes=model_resident_bytes(compiled),
        dense_resident_bytes=dense_resident,
        output_error=error,
        top1_agreement=agreement,
        model_ms=model_ms,
    )
    setattr(compiled, REPORT_ATTRIBUTE, report)
    return compiled, report


def runtime_report(model: nn.Module) -> RuntimeReport | None:
    """The report `compile_runtime` (or `load_pqz(..., runtime=...)`) left on `model`."""
    report = getattr(model, REPORT_ATTRIBUTE, None)
    return report if isinstance(report, RuntimeReport) else None


def model_resident_bytes(model: nn.Module) -> int:
    """Bytes of every parameter, buffer and kernel weight the model holds, counted once."""
    total = 0
    stack = [model]
    while stack:
        module = stack.pop()
        resident = getattr(module, "resident_bytes", None)
        if callable(resident):
            total += int(resident())
            continue
        total += dense_bytes(module)
        stack.extend(module.children())
    return total


def _dense_report(
    runtime: str,
    device: torch.device,
    batch_size: int,
    choices: list[LayerChoice],
    dense_resident: int,
    model_ms: dict[str, float],
    note: str,
) -> RuntimeReport:
    """The report of a model left dense: each layer's measurements kept, its choice undone."""
    layers = tuple(
        LayerChoice(
            name=layer.name,
            layer_type=layer.layer_type,
            kernel="dense",
            density=layer.density,
            timings_ms=layer.timings_ms,
            errors=layer.errors,
            rejected={**layer.rejected, layer.kernel: note}
            if layer.kernel != "dense"
            else layer.rejected,
            resident_bytes=layer.dense_bytes,
            dense_bytes=layer.dense_bytes,
        )
        for layer in choices
    )
    return RuntimeReport(
        runtime=runtime,
        device=str(device),
        batch_size=batch_size,
        layers=layers,
        resident_bytes=dense_resident,
        dense_resident_bytes=dense_resident,
        output_error=0.0,
        top1_agreement=1.0,
        model_ms=model_ms,
        note=note,
    )


def sample_inputs(
    example_inputs: torch.Tensor | None,
    input_shape: tuple[int, ...],
    batch_size: int,
    device: torch.device,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows for the checks and calibration, one batch of `batch_size` rows for timing)."""
    if example_inputs is None:
        generator = torch.Generator().manual_seed(seed)
        rows = max(SAMPLE_ROWS, batch_size)
        example_inputs = torch.randn((rows, *input_shape), generator=generator)
    elif tuple(example_inputs.shape[1:]) != tuple(input_shape) or len(example_inputs) == 0:
        raise InvalidConfigError(
            f"example inputs of shape {list(example_inputs.shape)} are not a batch of the "
            f"model's inputs {list(input_shape)}"
        )
    example_inputs = example_inputs.float().to(device)
    check = example_inputs[:SAMPLE_ROWS]
    repeats = -(-batch_size // len(example_inputs))
    timing = example_inputs.repeat(repeats, *([1] * (example_inputs.ndim - 1)))[:batch_size]
    return check, timing.contiguous()


def _fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy with each BatchNorm folded into the Conv2d/Linear before it (fx), if traceable."""
    try:
        return fuse(model)
    except (fx.proxy.TraceError, TypeError, NotImplementedError, RuntimeError):
        return copy.deepcopy(model)


def _norms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


def _top1_agreement(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.ndim != 2:
        return 1.0 if torch.equal(actual, expected) else 0.0
    return float((actual.argmax(dim=1) == expected.argmax(dim=1)).float().mean())
