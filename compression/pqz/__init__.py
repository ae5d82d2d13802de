"""The `.pqz` file format: `save_pqz`, `load_pqz`, `inspect_pqz`, `decompress_pqz`.

This package alone writes and reads the format; FORMAT_VERSION is its version. The compression
ratio it reports is always the real file size against the fp32 bytes of every parameter and
buffer of the original model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from compression.errors import CorruptArtifactError, InvalidConfigError
from compression.pqz.container import (
    FORMAT_VERSION,
    PqzContainer,
    SectionWriter,
    atomic_path,
    read_container,
    write_container,
)
from compression.pqz.tensors import check_entries, decode_entry, encode_model, logical_tensors
from compression.preprocessing import Preprocessing
from compression.runtime import RUNTIMES, compile_runtime
from compression.zoo import build_model, get_architecture

__all__ = [
    "FORMAT_VERSION",
    "PqzInfo",
    "decompress_pqz",
    "inspect_pqz",
    "load_pqz",
    "read_state_dict",
    "save_pqz",
]

# A file may declare this many elements per byte it holds, on top of a fixed allowance: a
# fully pruned layer compresses to almost nothing, a forged size does not get past this.
ELEMENTS_PER_FILE_BYTE = 4096
BASE_ELEMENTS = 1 << 28


@dataclass(frozen=True, kw_only=True, slots=True)
class PqzInfo:
    """What `pqz inspect` shows: sizes, ratio, checksum, and one row per tensor."""

    path: str
    format_version: int
    architecture: dict[str, Any]
    file_size_bytes: int
    dense_size_bytes: int
    checksum_ok: bool
    size_breakdown: dict[str, int]
    layers: list[dict[str, Any]]
    spec: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # How to feed the model (pixels / 255, resize, mean and std, class names): recorded by the
    # pipeline, which knows the data; None for a file compressed without data.
    input: Preprocessing | None = None

    @property
    def compression_ratio(self) -> float:
        return self.dense_size_bytes / self.file_size_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format_version": self.format_version,
            "architecture": self.architecture,
            "file_size_bytes": self.file_size_bytes,
            "dense_size_bytes": self.dense_size_bytes,
            "compression_ratio": self.compression_ratio,
            "checksum_ok": self.checksum_ok,
            "size_breakdown": self.size_breakdown,
            "layers": self.layers,
            "input": None if self.input is None else self.input.to_dict(),
            "spec": self.spec,
            "metrics": self.metrics,
        }


def _producer() -> str:
    try:
        return f"pqz {version('pqz')}"
    except PackageNotFoundError:
        return "pqz"


def save_pqz(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    architecture: str,
    num_classes: int,
    spec: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    preprocessing: Preprocessing | None = None,
) -> PqzInfo:
    """Write `model` (pruned and/or quantized or not) as a `.pqz` file, atomically, with how
    its inputs are prepared where that is known."""
    writer = SectionWriter()
    entries = encode_model(model, writer)
    dense_bytes = sum(tensor.numel() * 4 for _, tensor, _ in logical_tensors(model))
    manifest = {
        "format": "pqz",
        "format_version": FORMAT_VERSION,
        "producer": _producer(),
        "architecture": {"name": architecture, "num_classes": num_classes},
        "spec": dict(spec or {}),
        "metrics": dict(metrics or {}),
        "dense_size_bytes": dense_bytes,
        "tensors": entries,
    }
    if preprocessing is not None:
        manifest["input"] = preprocessing.to_dict()
    write_container(path, manifest, writer)
    return inspect_pqz(path)


def inspect_pqz(path: str | os.PathLike[str]) -> PqzInfo:
    """Read the manifest and section table; a failed checksum is reported, not raised."""
    container = read_container(path, verify=False)
    entries = check_entries(container, _element_budget(container.file_size))
    manifest = container.manifest
    architecture = _architecture(manifest)
    dense_bytes = manifest.get("dense_size_bytes")
    if not isinstance(dense_bytes, int) or dense_bytes < 0:
        raise CorruptArtifactError("manifest has no valid dense_size_bytes")
    layers = []
    for entry in entries:
        layers.append(
            {
                "name": entry["name"],
                "shape": entry["shape"],
                "dtype": entry["dtype"],
                "encoding": entry["encoding"],
                "storage_dtype": entry.get("storage_dtype"),
                "sparsity": entry["sparsity"],
                "mask": entry["mask"],
                "block_size": entry.get("block_size"),
                "n_centroids": entry.get("n_centroids"),
                "size_bytes": sum(container.sections[i].size for i in entry["sections"].values()),
            }
        )
    return PqzInfo(
        path=str(path),
        format_version=FORMAT_VERSION,
        architecture=architecture,
        file_size_bytes=container.file_size,
        dense_size_bytes=dense_bytes,
        checksum_ok=container.checksum_ok,
        size_breakdown=container.size_breakdown(),
        layers=layers,
        spec=_object(manifest.get("spec")),
        metrics=_object(manifest.get("metrics")),
        input=_preprocessing(manifest.get("input")),
    )


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of a verified `.pqz`, decoded, and the architecture it belongs to."""
    container = read_container(path, verify=True)
    return _decoded(container), _architecture(container.manifest)


def _decoded(container: PqzContainer) -> dict[str, torch.Tensor]:
    entries = check_entries(container, _element_budget(container.file_size))
    return {entry["name"]: decode_entry(container, entry) for entry in entries}


def load_pqz(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    runtime: str = "dense",
    batch_size: int = 1,
    example_inputs: torch.Tensor | None = None,
    cache_path: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """The compressed model, decoded into its architecture, in eval mode on `device`.

    `runtime="dense"` gives the decoded fp32 model. `runtime="auto"` measures, layer by layer,
    the kernels of `compression.runtime` at `batch_size` on this machine (cached in
    `cache_path`, default ~/.cache/pqz/autotune.json) and keeps the fastest one that matches the
    decoded layer; `example_inputs` (a few real inputs) make the checks meaningful and allow
    calibrated int8 convolutions. `compression.runtime.runtime_report(model)` says what was
    chosen, measured and how many bytes the model holds. A model on runtime kernels is a
    `torch.fx.GraphModule` (batch norm folded) with the same forward, not the original class.
    """
    if runtime not in RUNTIMES:
        raise InvalidConfigError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise InvalidConfigError(f"device {str(device)!r} asked for, but no CUDA GPU is available")
    container = read_container(path, verify=True)
    entries = check_entries(container, _element_budget(container.file_size))
    architecture = _architecture(container.manifest)
    model = build_model(architecture["name"], architecture["num_classes"])
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    declared = {entry["name"]: tuple(entry["shape"]) for entry in entries}
    if declared != expected:
        mismatch = sorted(set(declared.items()) ^ set(expected.items()))[0]
        raise CorruptArtifactError(
            f"the file's tensors do not fit architecture '{architecture['name']}' "
            f"(first difference: {mismatch[0]} {list(mismatch[1])})"
        )
    state = {entry["name"]: decode_entry(container, entry) for entry in entries}
    model.load_state_dict(state)
    del state  # the decoded fp32 tensors are not kept beside the kernels built from them
    model = model.to(device).eval()
    if runtime == "dense":
        return model
    compiled, _ = compile_runtime(
        model,
        input_shape=get_architecture(architecture["name"]).input_shape,
        runtime=runtime,
        device=device,
        batch_size=batch_size,
        example_inputs=example_inputs,
        cache_path=None if cache_path is None else Path(cache_path),
    )
    return compiled


def decompress_pqz(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the decoded state dict as a safetensors file, atomically; its metadata names the
    architecture and, where the file records it, how inputs are prepared (`input`, JSON)."""
    container = read_container(path, verify=True)  # read once: tensors and manifest
    state, architecture = _decoded(container), _architecture(container.manifest)
    metadata = {
        "architecture": architecture["name"],
        "num_classes": str(architecture["num_classes"]),
    }
    recorded = _preprocessing(container.manifest.get("input"))
    if recorded is not None:
        metadata["input"] = json.dumps(recorded.to_dict())
    with atomic_path(out) as temporary:
        save_file(
            {name: tensor.contiguous() for name, tensor in state.items()}, temporary, metadata
        )
    return Path(out)


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _preprocessing(value: object) -> Preprocessing | None:
    if value is None:
        return None  # files from before the format recorded it, or compressed without data
    try:
        if not isinstance(value, dict):
            raise InvalidConfigError("input is not an object")
        return Preprocessing.from_dict(value)
    except InvalidConfigError as error:
        raise CorruptArtifactError(f"manifest's {error}") from None


def _element_budget(file_size: int) -> int:
    return BASE_ELEMENTS + ELEMENTS_PER_FILE_BYTE * file_size


def _architecture(manifest: Mapping[str, Any]) -> dict[str, Any]:
    architecture = manifest.get("architecture")
    if (
        not isinstance(architecture, dict)
        or not isinstance(architecture.get("name"), str)
        or not isinstance(architecture.get("num_classes"), int)
        or isinstance(architecture.get("num_classes"), bool)
    ):
        raise CorruptArtifactError("manifest does not name a valid architecture")
    return {"name": architecture["name"], "num_classes": architecture["num_classes"]}
