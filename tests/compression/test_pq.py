from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compression import (
    PruneConfig,
    QuantConfig,
    QuantRule,
    UnsupportedLayerError,
    build_model,
    get_mask,
    prune_,
    quantize_,
    save_pqz,
)
from compression.pq import ProductQuantized, default_block_size, encoded_bytes
from tests.conftest import TinyNet


def _quantizer(module: nn.Module) -> ProductQuantized:
    (parametrization,) = [
        p for p in module.parametrizations["weight"] if isinstance(p, ProductQuantized)
    ]
    return parametrization


@pytest.mark.parametrize(
    ("method", "block_size"), [("pq", None), ("pq", 2), ("pq", 8), ("kmeans", None)]
)
def test_pruned_weights_stay_exactly_zero_after_quantization(
    method: str, block_size: int | None
) -> None:
    model = build_model("lenet-300-100")
    prune_(model, PruneConfig(sparsity=0.9))
    masks = {
        name: get_mask(m).clone() for name, m in model.named_modules() if isinstance(m, nn.Linear)
    }
    results = quantize_(model, QuantConfig(method=method, block_size=block_size, n_centroids=32))
    for result in results:
        module = model.get_submodule(result.name)
        assert torch.equal(module.weight != 0, masks[result.name])
        assert result.sparsity == pytest.approx(0.9, abs=1e-6)
    assert results[0].encoding == method
    assert results[0].block_size == (1 if method == "kmeans" else block_size or 4)


def test_quantized_weight_is_codebook_rows_at_kept_positions(tiny_net: TinyNet) -> None:
    prune_(tiny_net, PruneConfig(sparsity=0.5))
    quantize_(tiny_net, QuantConfig(n_centroids=16, block_size=4))
    layer = tiny_net.fc1
    codebook = layer.parametrizations["weight"].original.detach()
    quantizer = _quantizer(layer)
    kept = layer.weight.detach().flatten()[quantizer.mask]
    expected = codebook[quantizer.codes].flatten()[: kept.numel()]
    assert torch.equal(kept, expected)
    assert torch.equal(codebook, codebook.half().float())  # float16-exact, as stored


def test_relative_error_is_bounded_and_falls_with_centroids() -> None:
    errors = []
    for n_centroids in (4, 32, 256):
        model = build_model("lenet-300-100")
        results = quantize_(model, QuantConfig(block_size=4, n_centroids=n_centroids))
        errors.append(results[0].relative_error)
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.3


def test_default_block_sizes_follow_layer_type() -> None:
    assert default_block_size(nn.Conv2d(3, 8, 3)) == 9
    assert default_block_size(nn.Conv2d(3, 8, 5)) == 5
    assert default_block_size(nn.Conv2d(3, 8, 1)) == 4
    assert default_block_size(nn.Linear(8, 8)) == 4


def test_skipped_and_too_small_layers_are_reported_not_dropped(tiny_net: TinyNet) -> None:
    config = QuantConfig(
        n_centroids=256,
        modules={"fc2": None},
        fallback_dtype="float16",
        scalar_when_smaller=False,
    )
    before = tiny_net.conv.weight.detach().clone()
    results = {result.name: result for result in quantize_(tiny_net, config)}
    assert results["fc2"].encoding == "float16"
    assert results["fc2"].note == "skipped by rule"
    # 216 conv weights: 256 float16 centroids of 9 values would outweigh them.
    assert results["conv"].encoding == "float16"
    assert results["conv"].note.startswith("too small to gain")
    assert torch.equal(tiny_net.conv.weight, before.half().float())
    assert results["fc1"].encoding == "pq"


def test_pq_gives_scalar_kmeans_to_a_layer_where_it_is_smaller_and_no_less_accurate(
    tmp_path: Path,
) -> None:
    """fc2 keeps 3,000 weights: 750 sub-vectors cannot amortise 256 centroids of 4 values,
    and 8 scalar centroids restore the weights better in a third of the bytes. fc1's 5,880
    sub-vectors can; fc3's 25 centroids hold its weights exactly, which no scalar codebook
    smaller than PQ's does."""
    files, results = {}, {}
    for scalar in (True, False):
        torch.manual_seed(0)
        model = build_model("lenet-300-100")
        prune_(model, PruneConfig(sparsity=0.9))
        layers = quantize_(model, QuantConfig(scalar_when_smaller=scalar))
        results[scalar] = {layer.name: layer for layer in layers}
        files[scalar] = save_pqz(
            model, tmp_path / f"{scalar}.pqz", architecture="lenet-300-100", num_classes=10
        )
    mixed, plain = results[True], results[False]
    assert [mixed[name].encoding for name in ("fc1", "fc2", "fc3")] == ["pq", "kmeans", "pq"]
    assert mixed["fc2"].note == "scalar k-means: fewer bytes than PQ, no larger error"
    assert mixed["fc2"].relative_error <= plain["fc2"].relative_error
    assert mixed["fc2"].block_size == 1
    k = mixed["fc2"].n_centroids
    assert k is not None
    assert encoded_bytes(3000, 1, k) < encoded_bytes(3000, 4, 256)
    for name in ("fc1", "fc3"):
        assert mixed[name] == plain[name]
    assert files[True].file_size_bytes < files[False].file_size_bytes - 1000
    assert [layer["encoding"] for layer in files[True].layers if layer["name"] == "fc2.weight"] == [
        "kmeans"
    ]


@pytest.mark.parametrize(
    "override",
    [{"modules": {"fc2": {"block_size": 4}}}, {"module_types": {"Linear": {"n_centroids": 256}}}],
)
def test_a_layer_with_a_rule_of_its_own_gets_what_the_rule_says(override: dict[str, Any]) -> None:
    """The swap to scalar k-means is for layers left to the defaults: fc2 (the layer the test
    above swaps) named by its name or its type keeps the PQ its user asked for."""
    torch.manual_seed(0)
    model = build_model("lenet-300-100")
    prune_(model, PruneConfig(sparsity=0.9))
    layers = {r.name: r for r in quantize_(model, QuantConfig.from_dict(override))}
    assert (layers["fc2"].encoding, layers["fc2"].block_size, layers["fc2"].note) == ("pq", 4, "")


def test_a_layer_pq_would_store_verbatim_gets_scalar_kmeans_at_the_code_width() -> None:
    """95% of LeNet-5's conv2 pruned leaves 250 sub-vectors of 5: 256 centroids hold them
    verbatim in 2,750 bytes; scalar k-means with at most 256 levels takes 1,250 bytes of codes
    and a small codebook. fc2's 63 sub-vectors are cheaper as PQ than as 8-bit codes."""
    results = {}
    for scalar in (True, False):
        torch.manual_seed(0)
        model = build_model("lenet-5")
        prune_(model, PruneConfig(sparsity=0.95))
        results[scalar] = {
            r.name: r for r in quantize_(model, QuantConfig(scalar_when_smaller=scalar))
        }
    conv2, plain = results[True]["conv2"], results[False]["conv2"]
    assert (plain.encoding, plain.n_centroids) == ("pq", 250)
    assert conv2.encoding == "kmeans"
    assert conv2.note == "scalar k-means: PQ would need a centroid per sub-vector"
    assert conv2.n_centroids is not None
    assert conv2.n_centroids <= 256
    assert encoded_bytes(1250, 1, conv2.n_centroids) < encoded_bytes(1250, 5, 250)
    assert conv2.relative_error < 0.01
    assert results[True]["fc1"] == results[False]["fc1"]


def test_codebook_trains_while_codes_and_mask_stay(tiny_net: TinyNet) -> None:
    prune_(tiny_net, PruneConfig(sparsity=0.6))
    quantize_(tiny_net, QuantConfig(n_centroids=8, block_size=4, modules={"conv|fc2": None}))
    codebook = tiny_net.fc1.parametrizations["weight"].original
    codes = _quantizer(tiny_net.fc1).codes.clone()
    zeros = tiny_net.fc1.weight == 0
    before = codebook.detach().clone()
    optimizer = torch.optim.SGD([codebook], lr=0.1)
    loss = tiny_net(torch.randn(4, 3, 8, 8)).pow(2).sum()
    loss.backward()
    optimizer.step()
    assert not torch.equal(codebook.detach(), before)
    assert torch.equal(_quantizer(tiny_net.fc1).codes, codes)
    assert torch.equal(tiny_net.fc1.weight == 0, zeros)


def test_quantizing_twice_or_non_finite_weights_is_refused(tiny_net: TinyNet) -> None:
    quantize_(
        tiny_net, QuantConfig(n_centroids=4, module_types={"Conv2d": QuantRule(block_size=1)})
    )
    with pytest.raises(UnsupportedLayerError, match="layer 'conv' is already quantized"):
        quantize_(tiny_net, QuantConfig())
    broken = TinyNet()
    with torch.no_grad():
        broken.fc1.weight[0, 0] = float("nan")
    with pytest.raises(UnsupportedLayerError, match="layer 'fc1' has weights that are NaN"):
        quantize_(broken, QuantConfig())


@pytest.mark.gpu
def test_quantize_runs_on_cuda() -> None:
    model = build_model("lenet-5").cuda()
    prune_(model, PruneConfig(sparsity=0.8))
    results = quantize_(model, QuantConfig())
    assert all(result.relative_error < 0.5 for result in results)
    assert model.fc1.weight.device.type == "cuda"
