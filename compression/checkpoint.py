"""Safe checkpoint reading: state dicts only, never code.

Accepted: a state dict saved by `torch.save` (zip format, read with `weights_only=True`) or a
`.safetensors` file. Refused with a message that says what to upload instead: TorchScript
archives, pickled modules, the legacy (non-zip) format, and archives whose declared sizes
disagree with their contents.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from compression.errors import InvalidCheckpointError
from compression.zoo import build_model

DEFAULT_MAX_BYTES = 4 << 30
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
WHAT_TO_GIVE = (
    "use a state dict saved with torch.save(model.state_dict(), path) or a .safetensors file"
)


def read_checkpoint(
    path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, on the CPU, after every safety check."""
    file_path = Path(path)
    try:
        size = file_path.stat().st_size
        with file_path.open("rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise InvalidCheckpointError(f"cannot read {file_path}: {error.strerror}") from None
    if size > max_bytes:
        raise InvalidCheckpointError(f"checkpoint is {size} bytes, over the limit of {max_bytes}")
    if zipfile.is_zipfile(file_path):
        state = _read_torch_zip(file_path, max_bytes)
    elif _looks_like_safetensors(head, size):
        state = _read_safetensors(file_path)
    elif head[:2] == b"PK":
        raise InvalidCheckpointError(
            f"checkpoint is a truncated or damaged zip archive; {WHAT_TO_GIVE}"
        )
    elif head[:1] == b"\x80":
        raise InvalidCheckpointError(
            "checkpoint is in the legacy (non-zip) torch.save format or a bare pickle, which "
            f"cannot be read safely; {WHAT_TO_GIVE}"
        )
    else:
        raise InvalidCheckpointError(
            f"not a PyTorch checkpoint or safetensors file; {WHAT_TO_GIVE}"
        )
    return _strip_prefix(state)


def load_checkpoint(
    path: str | os.PathLike[str],
    architecture: str,
    num_classes: int | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> nn.Module:
    """Build the architecture and load a checked checkpoint into it; without `num_classes`, as
    many classes as the checkpoint's output layer has."""
    state = read_checkpoint(path, max_bytes=max_bytes)
    model = build_model(architecture, num_classes or checkpoint_classes(state, architecture))
    model.load_state_dict(check_state_dict(model, state, architecture))
    return model


def checkpoint_classes(state: Mapping[str, torch.Tensor], architecture: str) -> int | None:
    """The number of classes of the checkpoint's model, where its output layer (the
    architecture's last Linear) has another number of rows than the architecture's default and
    the same inputs; None otherwise (the default then stands, or the names or shapes differ
    and `check_state_dict` says where)."""
    with torch.device("meta"):  # shapes only: no memory, however large the architecture
        model = build_model(architecture)
    expected = model.state_dict()
    output = output_layer(model)
    if output is None:
        return None
    key = f"{output}.weight"
    found = _without_prefix(dict(state), set(expected)).get(key)
    if found is None or found.dim() != 2 or found.shape[1:] != expected[key].shape[1:]:
        return None
    return int(found.shape[0]) if found.shape[0] != expected[key].shape[0] else None


def output_layer(model: nn.Module) -> str | None:
    """The name of the model's output layer, its last Linear (the layer `num_classes` sizes)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], architecture: str
) -> dict[str, torch.Tensor]:
    """`state` with the model's names, or raise naming the first tensor that is missing,
    unexpected or of the wrong shape. A prefix on every name that the model lacks (a Lightning
    module's `model.`) is removed where what is left are exactly the model's names."""
    expected = model.state_dict()
    state = _without_prefix(dict(state), set(expected))
    for name, tensor in expected.items():
        if name not in state:
            prefix = _prefix_of(state, set(expected))
            if prefix is not None:
                others = [key for key in state if not key.startswith(prefix)]
                shown_others = ", ".join(f"'{key}'" for key in others[:3])
                raise InvalidCheckpointError(
                    f"checkpoint holds architecture '{architecture}' under the prefix "
                    f"'{prefix}', beside tensors it does not have ({shown_others}): save the "
                    "network's own state dict"
                )
            found = ", ".join(f"'{key}'" for key in list(state)[:3])
            raise InvalidCheckpointError(
                f"checkpoint lacks tensor '{name}' of architecture '{architecture}' (its "
                f"tensors begin {found}: is it another architecture?)"
            )
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise InvalidCheckpointError(
                f"tensor '{name}' has shape {list(state[name].shape)} in the checkpoint but "
                f"{list(tensor.shape)} in architecture '{architecture}'"
                + _classes_hint(model, name, state[name].shape, tensor.shape)
            )
    for name in state:
        if name not in expected:
            raise InvalidCheckpointError(
                f"checkpoint has tensor '{name}', which architecture '{architecture}' does not have"
            )
    return state


def _prefix_of(state: Mapping[str, torch.Tensor], names: set[str]) -> str | None:
    """The prefix under which `state` holds every one of `names`, if there is one."""
    anchor = next(iter(sorted(names)))
    for key in state:
        if key.endswith(f".{anchor}"):
            prefix = key.removesuffix(anchor)
            if all(f"{prefix}{name}" in state for name in names):
                return prefix
    return None


def _without_prefix(state: dict[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    if set(state) == names or not state:
        return state
    first = next(iter(state))
    for end in (i for i, char in enumerate(first) if char == "."):
        prefix = first[: end + 1]
        if all(key.startswith(prefix) for key in state):
            stripped = {key.removeprefix(prefix): tensor for key, tensor in state.items()}
            if set(stripped) == names:
                return stripped
    return state


def _read_torch_zip(path: Path, max_bytes: int) -> dict[str, torch.Tensor]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if any(
                name.endswith(("/constants.pkl", "/code/")) or "/code/__torch__" in name
                for name in names
            ):
                raise InvalidCheckpointError(f"checkpoint is a TorchScript archive; {WHAT_TO_GIVE}")
            if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
                raise InvalidCheckpointError(
                    f"zip file is not a torch.save checkpoint; {WHAT_TO_GIVE}"
                )
            declared = sum(info.file_size for info in infos)
            if declared > max_bytes:
                raise InvalidCheckpointError(
                    f"archive declares {declared} bytes, over the limit of {max_bytes}"
                )
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                    raise InvalidCheckpointError(
                        f"archive member '{info.filename}' declares sizes that torch.save "
                        "never writes"
                    )
            broken = archive.testzip()
            if broken is not None:
                raise InvalidCheckpointError(f"archive member '{broken}' is corrupt")
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise InvalidCheckpointError(f"checkpoint is a damaged zip archive: {error}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise InvalidCheckpointError(_explain_unpickling(str(error))) from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise InvalidCheckpointError(
            f"checkpoint cannot be read: {str(error).splitlines()[0]}"
        ) from None
    return _as_state_dict(loaded)


def _explain_unpickling(message: str) -> str:
    """Name the object the pickle wanted to build; it was refused before it was built."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    what = f" ({found.group(1)})" if found else ""
    return (
        f"checkpoint holds a pickled object{what}, not only tensors, and was not loaded; "
        f"{WHAT_TO_GIVE}"
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_size,) = struct.unpack("<Q", head[:8])
    return 8 + header_size <= size and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise InvalidCheckpointError(f"safetensors file cannot be read: {error}") from None


def _as_state_dict(loaded: object) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping) and not _all_tensors(loaded):
        for key in WRAPPER_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and _all_tensors(inner):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not _all_tensors(loaded) or not loaded:
        raise InvalidCheckpointError(
            f"checkpoint is a {type(loaded).__name__} without a state dict of tensors; "
            f"{WHAT_TO_GIVE}"
        )
    return dict(loaded)


def _all_tensors(mapping: Mapping[object, object]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints of nn.DataParallel models carry 'module.' on every name."""
    if state and all(name.startswith("module.") for name in state):
        return {name.removeprefix("module."): tensor for name, tensor in state.items()}
    return state


def _classes_hint(model: nn.Module, name: str, found: torch.Size, expected: torch.Size) -> str:
    """Where only the output layer's rows differ, the checkpoint has another number of classes."""
    output = output_layer(model)
    if output is None or not name.startswith(f"{output}.") or found[1:] != expected[1:]:
        return ""
    return (
        f": the checkpoint's model has {found[0]} class{'es' if found[0] != 1 else ''} "
        f"(num_classes, --num-classes {found[0]})"
    )
