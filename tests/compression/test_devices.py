"""The whole pipeline on each device: on the CPU everywhere, on CUDA where there is a GPU.

The same test body runs on both, so the CUDA variants (bf16 autocast, data moved per batch,
k-means and masks on the GPU) are checked by code that passes here on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from compression import CompressionSpec, PruneConfig, QuantConfig, build_model, load_pqz
from compression.config import FinetuneConfig, TrainConfig
from compression.data import Dataset, Split, fit_to, load_dataset
from compression.pipeline import compress_model
from compression.pq import quantize_
from compression.prune import get_mask, prunable_layers, prune_
from compression.train import evaluate, train

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return fit_to(load_dataset("digits"), (1, 28, 28), True, "lenet-5")


@pytest.mark.parametrize("device_name", DEVICES)
def test_the_pipeline_runs_on_the_device_and_its_file_reads_alike_on_the_cpu(
    device_name: str, digits: Dataset, tmp_path: Path
) -> None:
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = build_model("lenet-5")  # convolutions and linear layers
    train(model, digits, TrainConfig(epochs=4, lr=0.05), device=device)
    spec = CompressionSpec(
        data="digits",
        prune=PruneConfig(max_accuracy_drop=0.03, rounds=2, retrain_epochs=1, distill=True),
        quantize=QuantConfig(n_centroids=16),
        finetune=FinetuneConfig(epochs=1, distill=True, layerwise_epochs=0.25),
    )
    stages: list[str] = []
    info = compress_model(
        model,
        spec,
        tmp_path / "lenet5.pqz",
        architecture="lenet-5",
        num_classes=10,
        dataset=digits,
        device=device,
        progress=lambda stage, fraction, message: stages.append(stage),
    )
    assert list(dict.fromkeys(stages)) == ["baseline", "prune", "quantize", "finetune", "package"]
    assert info.metrics["device"] == str(device)
    assert info.metrics["weight_sparsity"] > 0.2
    for name, module, _ in prunable_layers(model):
        assert module.weight.device.type == device.type, name
        mask = get_mask(module)
        assert mask is not None, name
        kept = mask.reshape(module.weight.shape)  # quantized layers hold it flat
        assert bool((module.weight[~kept] == 0).all()), name  # pruned weights stayed zero
    # On the GPU the pipeline evaluates under bf16 autocast; the file decodes to fp32 weights,
    # so the CPU may disagree on an image or two, never on more.
    loaded = load_pqz(tmp_path / "lenet5.pqz")
    accuracy = evaluate(loaded, digits, digits.test, device=torch.device("cpu"))
    reported = info.metrics["final"]["test_accuracy"]
    if device.type == "cpu":
        assert accuracy == reported
    else:
        assert abs(accuracy - reported) <= 2 / len(digits.test)
    assert accuracy > 0.8


def random_images(n: int, shape: tuple[int, int, int], classes: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
    return Split(x, torch.randint(0, classes, (n,), generator=generator))


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["alexnet-cifar", "vgg16-cifar", "resnet18-cifar"])
def test_cifar_architectures_train_prune_and_quantize_on_cuda(arch: str) -> None:
    """A few steps each on random 32x32 images: every layer type of the CIFAR rows under
    autocast, masks and codebooks on the GPU (too slow for the CPU variant: 11-15 M weights)."""
    device = torch.device("cuda")
    shape = (3, 32, 32)
    data = Dataset(
        "random",
        random_images(256, shape, 10, 0),
        random_images(64, shape, 10, 1),
        random_images(64, shape, 10, 2),
        10,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        True,
    )
    torch.manual_seed(0)
    model: nn.Module = build_model(arch, 10)
    losses = train(model, data, TrainConfig(epochs=1, lr=0.01, batch_size=64), device=device)
    assert all(torch.isfinite(torch.tensor(losses)))
    prune_(model, PruneConfig(sparsity=0.5))
    results = quantize_(model, QuantConfig())
    assert all(result.relative_error < 0.6 for result in results)
    train(model, data, TrainConfig(epochs=1, lr=0.001, batch_size=64), device=device)
    for name, module, _ in prunable_layers(model):
        mask = get_mask(module)
        assert mask is not None, name
        assert mask.device.type == "cuda", name
        assert bool((module.weight[~mask.reshape(module.weight.shape)] == 0).all()), name
    assert 0.0 <= evaluate(model, data, data.test, device=device) <= 1.0
