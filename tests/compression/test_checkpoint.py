from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compression import InvalidCheckpointError, build_model, load_checkpoint, read_checkpoint
from compression.checkpoint import checkpoint_classes


class RunsACommand:
    """Unpickling this runs a shell command: the test checks it never does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    return build_model("lenet-300-100").state_dict()


def test_state_dict_in_zip_format_loads(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "model.pt"
    torch.save(state, path)
    model = load_checkpoint(path, "lenet-300-100")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_safetensors_loads(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    assert read_checkpoint(path).keys() == state.keys()


def test_wrapped_and_data_parallel_state_dicts_are_unwrapped(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    assert read_checkpoint(path).keys() == state.keys()


@pytest.mark.parametrize("legacy", [False, True])
def test_hostile_pickle_never_executes(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.save({"weight": RunsACommand(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(InvalidCheckpointError):
        read_checkpoint(path)
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps(RunsACommand(marker)))
    with pytest.raises(InvalidCheckpointError, match="legacy"):
        read_checkpoint(bare)
    assert not marker.exists()


def test_hostile_pickle_message_names_the_refused_object(tmp_path: Path) -> None:
    path = tmp_path / "hostile.pt"
    torch.save(RunsACommand(tmp_path / "pwned"), path)
    with pytest.raises(InvalidCheckpointError, match=r"pickled object \((posix|os|nt)\.system\)"):
        read_checkpoint(path)


def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(build_model("lenet-300-100")).save(str(path))
    with pytest.raises(InvalidCheckpointError, match="TorchScript archive; use a state dict"):
        read_checkpoint(path)


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(build_model("lenet-300-100"), path)
    with pytest.raises(
        InvalidCheckpointError, match="pickled object .*LeNet300100.*model.state_dict"
    ):
        read_checkpoint(path)


def test_legacy_format_is_refused(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    with pytest.raises(InvalidCheckpointError, match="legacy \\(non-zip\\) torch.save format"):
        read_checkpoint(path)


def test_truncated_zip_and_random_bytes_are_refused(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "model.pt"
    torch.save(state, path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InvalidCheckpointError, match="truncated or damaged zip"):
        read_checkpoint(truncated)
    noise = tmp_path / "noise.bin"
    # Seeded: os.urandom began with 0x80, a pickle's first byte, one run in 256.
    noise.write_bytes(random.Random(0).randbytes(4096))
    assert noise.read_bytes()[:1] not in (b"\x80", b"P")  # neither a pickle nor a zip
    with pytest.raises(
        InvalidCheckpointError, match="not a PyTorch checkpoint or safetensors file"
    ):
        read_checkpoint(noise)


def test_archive_whose_declared_sizes_disagree_is_refused(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", b"\x00" * 10_000_000)
    with pytest.raises(InvalidCheckpointError, match="declares sizes that torch.save never writes"):
        read_checkpoint(path)
    with pytest.raises(InvalidCheckpointError, match="over the limit"):
        read_checkpoint(path, max_bytes=1_000_000)


def test_oversized_file_is_refused_before_reading(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with pytest.raises(InvalidCheckpointError, match="over the limit of 1000"):
        read_checkpoint(path, max_bytes=1000)


def test_shape_mismatch_names_the_first_tensor(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with pytest.raises(InvalidCheckpointError) as error:
        load_checkpoint(path, "lenet-300-100", num_classes=7)
    assert str(error.value) == (
        "tensor 'fc3.weight' has shape [10, 100] in the checkpoint but [7, 100] in architecture "
        "'lenet-300-100': the checkpoint's model has 10 classes (num_classes, --num-classes 10)"
    )
    with pytest.raises(InvalidCheckpointError) as error:
        load_checkpoint(path, "lenet-5")
    assert str(error.value) == (
        "checkpoint lacks tensor 'conv1.weight' of architecture 'lenet-5' (its tensors begin "
        "'fc1.weight', 'fc1.bias', 'fc2.weight': is it another architecture?)"
    )
    extra = tmp_path / "extra.pt"
    torch.save({**state, "head.weight": torch.zeros(1)}, extra)
    with pytest.raises(InvalidCheckpointError, match="has tensor 'head.weight', which"):
        load_checkpoint(extra, "lenet-300-100")


def test_without_num_classes_the_checkpoints_output_layer_says_how_many(tmp_path: Path) -> None:
    four = build_model("resnet20-cifar", 4).state_dict()  # its output layer: fc, 4 x 64
    path = tmp_path / "four.pt"
    torch.save({f"model.{name}": tensor for name, tensor in four.items()}, path)  # prefixed too
    model = load_checkpoint(path, "resnet20-cifar")
    assert torch.equal(model.state_dict()["fc.weight"], four["fc.weight"])
    assert checkpoint_classes(four, "resnet20-cifar") == 4
    assert checkpoint_classes(build_model("resnet20-cifar").state_dict(), "resnet20-cifar") is None
    # Another input width is not a class count: the shape error names the tensor.
    wider = dict(four, **{"fc.weight": torch.zeros(4, 65)})
    assert checkpoint_classes(wider, "resnet20-cifar") is None
    torch.save(wider, path)
    with pytest.raises(InvalidCheckpointError, match=r"'fc.weight' has shape \[4, 65\]"):
        load_checkpoint(path, "resnet20-cifar")


def test_a_prefix_on_every_name_is_removed_where_the_rest_are_the_models_names(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    """A Lightning module's checkpoint names its network's tensors `model.fc1.weight`."""
    path = tmp_path / "lightning.pt"
    torch.save({"state_dict": {f"model.{name}": tensor for name, tensor in state.items()}}, path)
    model = load_checkpoint(path, "lenet-300-100")
    assert torch.equal(model.state_dict()["fc1.weight"], state["fc1.weight"])
    extra = tmp_path / "extra.pt"  # the network beside a loss's weights
    prefixed = {f"model.{name}": tensor for name, tensor in state.items()}
    torch.save({**prefixed, "criterion.weight": state["fc3.bias"]}, extra)
    with pytest.raises(InvalidCheckpointError) as error:
        load_checkpoint(extra, "lenet-300-100")
    assert str(error.value) == (
        "checkpoint holds architecture 'lenet-300-100' under the prefix 'model.', beside tensors "
        "it does not have ('criterion.weight'): save the network's own state dict"
    )
    other = tmp_path / "other.pt"  # a prefix, but the rest are not this model's names
    torch.save({f"net.{i}.weight": torch.zeros(2) for i in range(3)}, other)
    with pytest.raises(InvalidCheckpointError, match=r"begin 'net.0.weight', 'net.1.weight'"):
        load_checkpoint(other, "lenet-300-100")
