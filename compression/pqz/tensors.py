"""Per-tensor encodings of a `.pqz` manifest: how each state-dict entry is stored and restored.

    raw     values in `storage_dtype` (float16 only where that is lossless), optionally only the
            kept ones behind a mask
    pq      float16 codebook (n_centroids, block_size) + packed codes + optional mask
    kmeans  pq with block_size 1 (scalar weight sharing)

A mask is a bitmap or gaps between kept weights, whichever compresses smaller.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from compression.errors import CorruptArtifactError
from compression.pq import ProductQuantized, code_bits, decode_weight
from compression.pqz import packing
from compression.pqz.container import PqzContainer, SectionWriter, compress
from compression.prune import WeightMask

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
STORAGE = {name: np.dtype(name) for name in DTYPES if name != "bfloat16"}
MAX_TENSOR_ELEMENTS = 1 << 32
MAX_DIMS = 8
ENTRY_KEYS = {"name", "shape", "dtype", "encoding", "sparsity", "mask", "n_kept", "sections"}
PQ_KEYS = {"block_size", "n_centroids", "code_bits", "n_codes"}
PARAMETRIZED = re.compile(r"(?:(.*)\.)?parametrizations\.([^.]+)\.(.+)")


def encode_model(model: nn.Module, writer: SectionWriter) -> list[dict[str, Any]]:
    """Manifest entries for every state-dict tensor of `model`, sections added to `writer`."""
    return [_encode(name, tensor, plist, writer) for name, tensor, plist in logical_tensors(model)]


def logical_tensors(
    model: nn.Module,
) -> Iterator[tuple[str, torch.Tensor, parametrize.ParametrizationList | None]]:
    """The state dict as the plain architecture names it, parametrized weights taken whole."""
    for key, value in model.state_dict().items():
        match = PARAMETRIZED.fullmatch(key)
        if match is None:
            yield key, value.detach(), None
            continue
        prefix, attribute, tail = match.groups()
        if tail != "original":
            continue  # masks and codes of a parametrization: encoded with the weight
        module = model.get_submodule(prefix or "")
        name = f"{prefix}.{attribute}" if prefix else attribute
        container = module.parametrizations
        assert isinstance(container, nn.ModuleDict)
        plist = container[attribute]
        assert isinstance(plist, parametrize.ParametrizationList)
        yield name, getattr(module, attribute).detach(), plist


def _encode(
    name: str,
    tensor: torch.Tensor,
    plist: parametrize.ParametrizationList | None,
    writer: SectionWriter,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "sparsity": float((tensor == 0).sum()) / max(tensor.numel(), 1),
    }
    if entry["dtype"] not in DTYPES:
        raise CorruptArtifactError(
            f"tensor '{name}' has dtype {tensor.dtype}, which .pqz cannot store"
        )
    quantized = [p for p in plist or () if isinstance(p, ProductQuantized)]
    masks = [p.mask for p in plist or () if isinstance(p, WeightMask)]
    if quantized:
        assert plist is not None
        return {**entry, **_encode_pq(tensor, plist, quantized[0], writer)}
    mask = masks[0] if masks else None
    if mask is None and tensor.is_floating_point() and bool((tensor == 0).any()):
        # A weight pruned before it reached pqz: store only its non-zeros where that is smaller.
        dense, sparse = SectionWriter(), SectionWriter()
        _encode_raw(tensor, None, dense)
        _encode_raw(tensor, tensor != 0, sparse)
        if sparse.offset < dense.offset:
            mask = tensor != 0
    return {**entry, **_encode_raw(tensor, mask, writer)}


def _encode_raw(
    tensor: torch.Tensor, mask: torch.Tensor | None, writer: SectionWriter
) -> dict[str, Any]:
    values = tensor.flatten() if mask is None else tensor.flatten()[mask.flatten()]
    storage = _lossless_storage(values)
    array = values.to(DTYPES[storage]).cpu().numpy()
    fields: dict[str, Any] = {"encoding": "raw", "storage_dtype": storage}
    fields.update(_encode_mask(mask, tensor.numel(), writer))
    fields["sections"]["values"] = writer.add(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return fields


def _encode_pq(
    tensor: torch.Tensor,
    plist: parametrize.ParametrizationList,
    pq: ProductQuantized,
    writer: SectionWriter,
) -> dict[str, Any]:
    original = plist.original
    assert isinstance(original, torch.Tensor)
    codebook = original.detach().to(torch.float16).cpu()  # (k, d)
    k, block_size = codebook.shape
    bits = code_bits(k)
    codes = pq.codes.cpu().numpy()
    fields: dict[str, Any] = {
        "encoding": "kmeans" if block_size == 1 else "pq",
        "block_size": block_size,
        "n_centroids": k,
        "code_bits": bits,
        "n_codes": int(codes.size),
    }
    fields.update(_encode_mask(pq.mask, tensor.numel(), writer))
    fields["sections"]["codebook"] = writer.add(codebook.numpy().astype("<f2").tobytes())
    fields["sections"]["codes"] = writer.add(packing.pack_codes(codes, bits))
    return fields


def _encode_mask(mask: torch.Tensor | None, numel: int, writer: SectionWriter) -> dict[str, Any]:
    if mask is None or bool(mask.all()):  # nothing pruned: the layout is the same without it
        return {"mask": None, "n_kept": numel, "sections": {}}
    flat = mask.flatten().cpu().numpy()
    candidates = {
        "bitmap": packing.encode_bitmap(flat),
        "gaps": packing.encode_gaps(flat),
    }
    kind = min(candidates, key=lambda name: len(compress(candidates[name])))
    return {
        "mask": kind,
        "n_kept": int(flat.sum()),
        "sections": {"mask": writer.add(candidates[kind])},
    }


def _lossless_storage(values: torch.Tensor) -> str:
    if not values.is_floating_point():
        return str(values.dtype).removeprefix("torch.")
    for name in ("float16", "float32"):
        if torch.equal(values.to(DTYPES[name]).to(values.dtype), values):
            return name
    return "float64"


def check_entries(container: PqzContainer, max_elements: int) -> list[dict[str, Any]]:
    """Validate every tensor entry against its sections before anything is decoded."""
    entries = container.manifest.get("tensors")
    if not isinstance(entries, list):
        raise CorruptArtifactError("manifest has no tensor list")
    names: set[str] = set()
    used: set[int] = set()
    total = 0
    for position, entry in enumerate(entries):
        where = f"tensor entry {position}"
        if not isinstance(entry, dict):
            raise CorruptArtifactError(f"{where} is not an object")
        name = entry.get("name")
        if not isinstance(name, str) or name in names:
            raise CorruptArtifactError(f"{where} has a missing or repeated name")
        names.add(name)
        total += _check_entry(entry, f"tensor '{name}'", container, used)
        if total > max_elements:
            raise CorruptArtifactError(
                f"the file declares more than {max_elements} elements, too many for its size"
            )
    return entries


def _check_entry(entry: dict[str, Any], where: str, container: PqzContainer, used: set[int]) -> int:
    encoding = entry.get("encoding")
    extra = (
        {"storage_dtype"}
        if encoding == "raw"
        else PQ_KEYS
        if encoding in ("pq", "kmeans")
        else None
    )
    if extra is None or set(entry) != ENTRY_KEYS | extra:
        raise CorruptArtifactError(f"{where} has an unknown encoding or unexpected fields")
    shape = entry["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_size(s) for s in shape):
        raise CorruptArtifactError(f"{where} has an invalid shape {shape!r}")
    numel = math.prod(shape)
    if numel > MAX_TENSOR_ELEMENTS or entry["dtype"] not in DTYPES:
        raise CorruptArtifactError(f"{where} declares an absurd size or an unknown dtype")
    n_kept, mask_kind = entry["n_kept"], entry["mask"]
    if not _is_size(n_kept) or n_kept > numel or (mask_kind is None and n_kept != numel):
        raise CorruptArtifactError(f"{where} declares {n_kept!r} kept weights of {numel}")
    expected: dict[str, tuple[int, int]] = {}  # section kind -> (least, most) raw bytes
    if mask_kind == "bitmap":
        expected["mask"] = ((numel + 7) // 8,) * 2
    elif mask_kind == "gaps":
        expected["mask"] = (n_kept, n_kept + numel // 255 + 1)
    elif mask_kind is not None:
        raise CorruptArtifactError(f"{where} has an unknown mask encoding {mask_kind!r}")
    if encoding == "raw":
        storage = entry["storage_dtype"]
        if storage not in STORAGE:
            raise CorruptArtifactError(f"{where} has an unknown storage dtype {storage!r}")
        expected["values"] = (n_kept * STORAGE[storage].itemsize,) * 2
    else:
        d, k, bits, n_codes = (
            entry[key] for key in ("block_size", "n_centroids", "code_bits", "n_codes")
        )
        if not all(_is_size(v) for v in (d, k, bits, n_codes)) or not (
            1 <= d <= 64 and 1 <= k <= 256
        ):
            raise CorruptArtifactError(f"{where} has invalid quantization fields")
        if bits != code_bits(k) or n_codes != -(-n_kept // d):
            raise CorruptArtifactError(f"{where} has inconsistent code width or code count")
        expected["codebook"] = (k * d * 2,) * 2
        expected["codes"] = (packing.packed_size(n_codes, bits),) * 2
    sections = entry["sections"]
    if not isinstance(sections, dict) or set(sections) != set(expected):
        raise CorruptArtifactError(f"{where} does not list the sections its encoding needs")
    for kind, index in sections.items():
        if not _is_size(index) or index >= len(container.sections) or index in used:
            raise CorruptArtifactError(f"{where} refers to a missing or shared section")
        used.add(index)
        least, most = expected[kind]
        if not least <= container.sections[index].raw_size <= most:
            raise CorruptArtifactError(f"{where} has a {kind} section of the wrong size")
    return numel


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_entry(container: PqzContainer, entry: Mapping[str, Any]) -> torch.Tensor:
    """The tensor of one validated entry, as the model held it (pruned weights exactly zero)."""
    shape = tuple(entry["shape"])
    numel = math.prod(shape)
    sections = entry["sections"]
    mask = None
    if entry["mask"] is not None:
        raw = container.section_bytes(sections["mask"])
        flat = (
            packing.decode_bitmap(raw, numel)
            if entry["mask"] == "bitmap"
            else packing.decode_gaps(raw, numel, entry["n_kept"])
        )
        if int(flat.sum()) != entry["n_kept"]:
            raise CorruptArtifactError(
                f"tensor '{entry['name']}' mask keeps {int(flat.sum())} weights"
            )
        mask = torch.from_numpy(flat)
    dtype = DTYPES[entry["dtype"]]
    if entry["encoding"] == "raw":
        storage = STORAGE[entry["storage_dtype"]].newbyteorder("<")
        values = torch.from_numpy(
            np.frombuffer(container.section_bytes(sections["values"]), storage).copy()
        )
        if mask is None:
            return values.to(dtype).view(shape)
        out = torch.zeros(numel, dtype=dtype)
        out[mask] = values.to(dtype)
        return out.view(shape)
    k, d = entry["n_centroids"], entry["block_size"]
    codebook = np.frombuffer(container.section_bytes(sections["codebook"]), "<f2").reshape(k, d)
    codes = packing.unpack_codes(
        container.section_bytes(sections["codes"]), entry["code_bits"], entry["n_codes"]
    )
    if codes.size and int(codes.max()) >= k:
        raise CorruptArtifactError(f"tensor '{entry['name']}' has a code beyond its {k} centroids")
    weight = decode_weight(
        torch.from_numpy(codebook.astype(np.float32)), torch.from_numpy(codes), mask, shape
    )
    return weight.to(dtype)
