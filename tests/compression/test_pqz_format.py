from __future__ import annotations

import contextlib
import copy
import hashlib
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from compression import (
    CorruptArtifactError,
    PruneConfig,
    QuantConfig,
    build_model,
    decompress_pqz,
    inspect_pqz,
    load_pqz,
    prune_,
    quantize_,
    read_state_dict,
    save_pqz,
)
from compression.pqz.container import (
    HEADER,
    SectionWriter,
    atomic_path,
    parse_container,
    write_container,
)
from compression.pqz.tensors import logical_tensors

HYPOTHESIS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _compressed_lenet(tmp_path: Path, method: str = "pq") -> tuple[nn.Module, Path]:
    model = build_model("lenet-5").eval()
    prune_(model, PruneConfig(sparsity=0.85))
    quantize_(model, QuantConfig(method=method, n_centroids=64))
    path = tmp_path / "lenet5.pqz"
    save_pqz(model, path, architecture="lenet-5", num_classes=10, spec={"note": "test"})
    return model, path


@pytest.mark.parametrize("method", ["pq", "kmeans"])
def test_loaded_model_equals_the_quantized_model_exactly(tmp_path: Path, method: str) -> None:
    model, path = _compressed_lenet(tmp_path, method)
    loaded = load_pqz(path)
    images = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    for name, tensor, _ in logical_tensors(model):
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_size_breakdown_and_layer_bytes_sum_to_the_file_size(tmp_path: Path) -> None:
    _, path = _compressed_lenet(tmp_path)
    info = inspect_pqz(path)
    size = path.stat().st_size
    assert info.file_size_bytes == size
    assert sum(info.size_breakdown.values()) == size
    overhead = (
        info.size_breakdown["header"]
        + info.size_breakdown["manifest"]
        + info.size_breakdown["checksum"]
    )
    assert sum(layer["size_bytes"] for layer in info.layers) + overhead == size
    assert info.dense_size_bytes == 4 * sum(
        p.numel() for p in build_model("lenet-5").state_dict().values()
    )
    assert info.compression_ratio == info.dense_size_bytes / size
    assert info.checksum_ok
    assert info.spec == {"note": "test"}


def test_reported_sparsity_is_exact(tmp_path: Path) -> None:
    _, path = _compressed_lenet(tmp_path)
    state, _ = read_state_dict(path)
    for layer in inspect_pqz(path).layers:
        assert (
            layer["sparsity"]
            == float((state[layer["name"]] == 0).sum()) / state[layer["name"]].numel()
        )
    assert inspect_pqz(path).layers[1]["sparsity"] == pytest.approx(0.85, abs=1e-3)


def test_decompress_writes_the_decoded_state_dict(tmp_path: Path) -> None:
    model, path = _compressed_lenet(tmp_path)
    out = decompress_pqz(path, tmp_path / "weights.safetensors")
    state = load_file(out)
    expected = {name: tensor for name, tensor, _ in logical_tensors(model)}
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[name], expected[name]) for name in state)


@st.composite
def _models(draw: st.DrawFn) -> tuple[nn.Module, dict[str, Any]]:
    layers: list[nn.Module] = []
    if draw(st.booleans()):
        layers.append(
            nn.Conv2d(
                draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.sampled_from([1, 3, 5]))
            )
        )
    layers.append(
        nn.Linear(draw(st.integers(1, 40)), draw(st.integers(1, 40)), bias=draw(st.booleans()))
    )
    if draw(st.booleans()):
        layers.append(nn.BatchNorm1d(draw(st.integers(1, 8))))
    torch.manual_seed(draw(st.integers(0, 1000)))
    model = nn.Sequential(*layers)
    options = {
        "sparsity": draw(st.sampled_from([None, 0.0, 0.5, 0.95, 1.0 - 1e-9])),
        "method": draw(st.sampled_from(["pq", "kmeans"])),
        "block_size": draw(st.sampled_from([None, 1, 2, 3, 8])),
        "n_centroids": draw(st.sampled_from([2, 3, 16, 256])),
        "fallback_dtype": draw(st.sampled_from(["float32", "float16"])),
        "quantize": draw(st.booleans()),
    }
    return model, options


@HYPOTHESIS
@given(case=_models())
def test_round_trip_preserves_every_tensor_exactly(
    tmp_path: Path, case: tuple[nn.Module, dict[str, Any]]
) -> None:
    model, options = case
    if options["sparsity"] is not None:
        prune_(model, PruneConfig(sparsity=options["sparsity"]))
    if options["quantize"]:
        quantize_(
            model,
            QuantConfig(
                method=options["method"],
                block_size=options["block_size"],
                n_centroids=options["n_centroids"],
                fallback_dtype=options["fallback_dtype"],
            ),
        )
    path = tmp_path / "model.pqz"
    info = save_pqz(model, path, architecture="custom", num_classes=1)
    state, architecture = read_state_dict(path)
    expected = {name: tensor for name, tensor, _ in logical_tensors(model)}
    assert architecture == {"name": "custom", "num_classes": 1}
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype
        assert torch.equal(state[name], tensor), name
    assert sum(info.size_breakdown.values()) == path.stat().st_size


@pytest.fixture
def artifact(tmp_path: Path) -> bytes:
    _, path = _compressed_lenet(tmp_path)
    return path.read_bytes()


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "damaged.pqz"
    path.write_bytes(data)
    return path


@HYPOTHESIS
@given(cut=st.floats(0.0, 0.9999))
def test_truncated_files_are_rejected(tmp_path: Path, artifact: bytes, cut: float) -> None:
    path = _write(tmp_path, artifact[: int(cut * len(artifact))])
    with pytest.raises(CorruptArtifactError):
        load_pqz(path)
    with pytest.raises(CorruptArtifactError):
        inspect_pqz(path)


@HYPOTHESIS
@given(where=st.floats(0.0, 0.9999), flip=st.integers(1, 255))
def test_flipped_bytes_are_rejected(
    tmp_path: Path, artifact: bytes, where: float, flip: int
) -> None:
    data = bytearray(artifact)
    data[int(where * len(data))] ^= flip
    path = _write(tmp_path, bytes(data))
    with pytest.raises(CorruptArtifactError):
        load_pqz(path)
    with contextlib.suppress(CorruptArtifactError):
        assert not inspect_pqz(path).checksum_ok  # inspect reports what it can read


def test_wrong_magic_is_named(tmp_path: Path, artifact: bytes) -> None:
    with pytest.raises(CorruptArtifactError, match="not a .pqz file"):
        load_pqz(_write(tmp_path, b"PK\x03\x04" + artifact[4:]))
    path = _write(tmp_path, b"hello")
    with pytest.raises(CorruptArtifactError) as raised:
        load_pqz(path)
    assert str(raised.value) == f"{path}: not a .pqz file (wrong magic bytes)"


def _resign(data: bytes) -> bytes:
    body = data[:-32]
    return body + hashlib.sha256(body).digest()


def test_other_format_version_is_refused_even_with_a_valid_checksum(
    tmp_path: Path, artifact: bytes
) -> None:
    data = artifact[:8] + struct.pack("<H", 2) + artifact[10:]
    with pytest.raises(CorruptArtifactError, match="format version 2 is not supported"):
        load_pqz(_write(tmp_path, _resign(data)))


def _rewrite(tmp_path: Path, artifact: bytes, mutate: Callable[[dict[str, Any]], None]) -> Path:
    """A re-signed file whose manifest (section table included) was edited by `mutate`."""
    container = parse_container(artifact)
    manifest = copy.deepcopy(container.manifest)
    mutate(manifest)
    writer = SectionWriter()
    writer.table = manifest.pop("sections")
    for section in container.sections:
        start = container.data_start + section.offset
        writer.frames.append(container.data[start : start + section.size])
    path = tmp_path / "forged.pqz"
    write_container(path, manifest, writer)
    return path


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(manifest: dict[str, Any]) -> None:
        target: Any = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        _set(["tensors", 1, "shape"], [1 << 40]),
        _set(["tensors", 1, "shape"], [1 << 20, 1 << 20]),
        _set(["tensors", 1, "n_kept"], 10**12),
        _set(["tensors", 1, "n_codes"], 10**9),
        _set(["tensors", 1, "n_centroids"], 100_000),
        _set(["tensors", 1, "block_size"], -3),
        _set(["tensors", 1, "shape"], "big"),
        _set(["tensors", 1, "encoding"], "pickle"),
        _set(["tensors", 1, "sections", "codes"], 0),
        _set(["tensors", 1, "surprise"], 1),
        _set(["sections", 0, "raw_size"], 1 << 45),
        _set(["sections", 0, "size"], 1 << 45),
        _set(["sections", 1, "offset"], 0),
        _set(["tensors"], {"not": "a list"}),
        _set(["architecture"], None),
    ],
)
def test_forged_sizes_and_fields_are_rejected_without_large_allocations(
    tmp_path: Path, artifact: bytes, mutate: Callable[[dict[str, Any]], None]
) -> None:
    path = _rewrite(tmp_path, artifact, mutate)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptArtifactError):
            load_pqz(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_unmodified_rewrite_still_loads(tmp_path: Path, artifact: bytes) -> None:
    path = _rewrite(tmp_path, artifact, lambda manifest: None)
    assert isinstance(load_pqz(path), nn.Module)


def test_header_is_fixed_size() -> None:
    assert HEADER.size == 24


def test_failed_write_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model("lenet-300-100")
    target = tmp_path / "out.pqz"

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("compression.pqz.container.os.fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        save_pqz(model, target, architecture="lenet-300-100", num_classes=10)
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_names_the_users_path_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model.pqz"

    def write_half() -> None:
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half")
            raise OSError(28, "disk full", str(temporary))

    with pytest.raises(OSError, match="disk full") as raised:
        write_half()
    assert raised.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_where_no_file_can_be_made_is_named_as_given() -> None:
    # /proc refuses new files (ENOENT) even to root: the temporary file is never created, and
    # the error names the path the user asked for, not the temporary name.
    target = Path("/proc/pqz-model.pqz")
    with pytest.raises(FileNotFoundError) as raised, atomic_path(target):
        pass
    assert raised.value.filename == str(target)
