from __future__ import annotations

import pytest
import torch
from torch import nn

from compression import (
    PruneConfig,
    PruneRule,
    QuantConfig,
    build_model,
    get_mask,
    prune_,
    quantize_,
    remove_masks_,
)
from compression.errors import InvalidConfigError
from compression.prune import prunable_layers
from tests.conftest import TinyNet


def _zero_fraction(module: nn.Module) -> float:
    return float((module.weight == 0).float().mean())


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_per_layer_sparsity_is_exact(tiny_net: TinyNet, sparsity: float) -> None:
    results = prune_(tiny_net, PruneConfig(sparsity=sparsity))
    for result, (_, module, _) in zip(results, prunable_layers(tiny_net), strict=True):
        expected = round(sparsity * module.weight.numel())
        assert result.n_pruned == expected
        assert int((module.weight == 0).sum()) == expected


def test_pruning_removes_the_smallest_magnitudes() -> None:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.4], [0.3, -0.2]]))
    model = nn.Sequential(layer)
    prune_(model, PruneConfig(sparsity=0.5))
    assert torch.equal(layer.weight, torch.tensor([[0.0, -0.4], [0.3, 0.0]]))


def test_threshold_prunes_every_weight_below_it(tiny_net: TinyNet) -> None:
    before = {name: module.weight.detach().clone() for name, module, _ in prunable_layers(tiny_net)}
    results = prune_(tiny_net, PruneConfig(threshold=0.05))
    for result in results:
        module = tiny_net.get_submodule(result.name)
        expected = torch.where(before[result.name].abs() < 0.05, 0.0, before[result.name])
        assert torch.equal(module.weight, expected)
        assert result.threshold < 0.05


def test_global_scope_reaches_the_total_sparsity_across_layers(tiny_net: TinyNet) -> None:
    results = prune_(tiny_net, PruneConfig(sparsity=0.7, scope="global"))
    pruned = sum(result.n_pruned for result in results)
    total = sum(result.numel for result in results)
    assert pruned == round(0.7 * total)
    assert len({round(result.sparsity, 3) for result in results}) > 1  # layers differ


def test_overrides_by_type_and_name_and_skip(tiny_net: TinyNet) -> None:
    config = PruneConfig(
        sparsity=0.5,
        module_types={"Conv2d": PruneRule(sparsity=0.25)},
        modules={"fc2": None},
    )
    results = {result.name: result for result in prune_(tiny_net, config)}
    assert set(results) == {"conv", "fc1"}
    assert results["conv"].sparsity == pytest.approx(0.25, abs=1 / 216)
    assert results["fc1"].sparsity == 0.5
    assert get_mask(tiny_net.fc2) is None


def test_masks_survive_training_and_combine(tiny_net: TinyNet) -> None:
    prune_(tiny_net, PruneConfig(sparsity=0.6))
    masks = {name: get_mask(module).clone() for name, module, _ in prunable_layers(tiny_net)}
    optimizer = torch.optim.SGD(tiny_net.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    tiny_net.train()
    for _ in range(5):
        loss = tiny_net(torch.randn(8, 3, 8, 8)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, module, _ in prunable_layers(tiny_net):
        assert torch.equal(module.weight == 0, ~masks[name])  # pruned stay exactly zero
    prune_(tiny_net, PruneConfig(sparsity=0.8))
    for name, module, _ in prunable_layers(tiny_net):
        mask = get_mask(module)
        assert not bool((mask & ~masks[name]).any())  # a pruned weight never comes back
        assert _zero_fraction(module) == pytest.approx(0.8, abs=1 / module.weight.numel())


def test_remove_masks_keeps_the_zeros_as_plain_weights(tiny_net: TinyNet) -> None:
    prune_(tiny_net, PruneConfig(sparsity=0.5))
    before = tiny_net.fc1.weight.detach().clone()
    remove_masks_(tiny_net)
    assert get_mask(tiny_net.fc1) is None
    assert isinstance(tiny_net.fc1.weight, nn.Parameter)
    assert torch.equal(tiny_net.fc1.weight.detach(), before)
    assert set(tiny_net.state_dict()) == set(TinyNet().state_dict())


def test_a_clone_can_be_quantized_without_touching_the_original(tiny_net: TinyNet) -> None:
    from compression import QuantConfig, quantize_
    from compression.prune import clone_model

    prune_(tiny_net, PruneConfig(sparsity=0.5))
    clone = clone_model(tiny_net)
    quantize_(clone, QuantConfig(n_centroids=4))  # removes the clone's mask parametrizations
    assert get_mask(tiny_net.fc1) is not None
    assert torch.equal(tiny_net.fc1.weight == 0, ~get_mask(tiny_net.fc1))
    quantize_(tiny_net, QuantConfig(n_centroids=4))


def test_blocks_are_pruned_whole_by_their_root_mean_square() -> None:
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.4, 0.3, -0.2], [0.01, 0.02, 0.0, 0.01]]))
    prune_(nn.Sequential(layer), PruneConfig(sparsity=0.5), block_sizes={"0": 4})
    assert torch.equal(layer.weight[0], torch.tensor([0.1, -0.4, 0.3, -0.2]))
    assert torch.equal(layer.weight[1], torch.zeros(4))


@pytest.mark.parametrize("block_size", [2, 4, 9])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_block_pruning_reaches_its_sparsity_in_whole_runs(
    tiny_net: TinyNet, block_size: int, sparsity: float
) -> None:
    sizes = {name: block_size for name, _, _ in prunable_layers(tiny_net)}
    prune_(tiny_net, PruneConfig(sparsity=sparsity), block_sizes=sizes)
    for _, module, _ in prunable_layers(tiny_net):
        mask = get_mask(module)
        assert mask is not None
        flat = mask.flatten()
        n_blocks = -(-flat.numel() // block_size)
        padded = torch.cat([flat, flat[-1:].expand(n_blocks * block_size - flat.numel())])
        runs = padded.view(n_blocks, block_size)
        assert bool((runs.all(dim=1) | ~runs.any(dim=1)).all())  # each run kept or pruned whole
        assert int((~runs[:, 0]).sum()) == round(sparsity * n_blocks)


def test_layers_without_a_block_size_are_pruned_weight_by_weight(tiny_net: TinyNet) -> None:
    prune_(tiny_net, PruneConfig(sparsity=0.5), block_sizes={"fc1": 8})
    runs = tiny_net.fc1.weight.flatten().view(-1, 8) != 0
    assert bool((runs.all(dim=1) | ~runs.any(dim=1)).all())
    assert int((tiny_net.fc2.weight == 0).sum()) == 320  # exactly half of 640, any positions


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (PruneConfig(modules={"^fc": PruneRule(sparsity=0.5)}), "prune.modules"),
        (PruneConfig(modules={"fc9": None}), "prune.modules"),
    ],
)
def test_a_layer_pattern_that_matches_no_layer_is_refused(config: PruneConfig, field: str) -> None:
    model = build_model("lenet-300-100")
    pattern = next(iter(config.modules))
    with pytest.raises(InvalidConfigError) as error:
        prune_(model, config)
    assert str(error.value) == (
        f"{field} pattern {pattern!r} matches no layer (a pattern matches whole layer names; "
        "the model's are fc1, fc2, fc3)"
    )
    with pytest.raises(InvalidConfigError, match="quantize.modules pattern 'fc' matches no"):
        quantize_(model, QuantConfig(modules={"fc": None}))
    assert get_mask(model.fc1) is None  # refused before anything was pruned
