"""Magnitude pruning: masks kept as weight parametrizations, in force until removed.

A pruned layer's `weight` is `original.masked_fill(~mask, 0)`, so pruned weights stay exactly
zero through retraining (their gradient is zero too) and the mask survives `state_dict()`.
Weights are pruned alone or in blocks: runs of `block_size` consecutive weights (row-major),
scored by their root mean square, so that a PQ sub-vector is pruned whole or kept whole.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from compression.config import PruneConfig, PruneRule, check_patterns
from compression.errors import UnsupportedLayerError


class WeightMask(nn.Module):
    """The parametrization that keeps pruned weights at zero."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.mask: torch.Tensor

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.masked_fill(~self.mask, 0.0)


@dataclass(frozen=True, slots=True)
class LayerPruning:
    """What pruning did to one layer. `threshold`: the largest pruned magnitude (0 if none)."""

    name: str
    numel: int
    n_pruned: int
    threshold: float

    @property
    def sparsity(self) -> float:
        return self.n_pruned / self.numel


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, type name) of every layer whose weight pqz compresses."""
    layers: list[tuple[str, nn.Module, str]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            layers.append((name, module, "Linear"))
        elif isinstance(module, nn.Conv2d):
            layers.append((name, module, "Conv2d"))
    return layers


def weight_of(module: nn.Module) -> torch.Tensor:
    """The layer's effective weight, through any parametrization."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def parametrizations_of(module: nn.Module) -> parametrize.ParametrizationList | None:
    """The parametrizations of the layer's weight, or None if it is a plain parameter."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    container = module.parametrizations
    assert isinstance(container, nn.ModuleDict)
    plist = container["weight"]
    assert isinstance(plist, parametrize.ParametrizationList)
    return plist


def original_of(module: nn.Module) -> torch.Tensor:
    """The tensor a parametrized weight is computed from (the masked weight, or a codebook)."""
    plist = parametrizations_of(module)
    assert plist is not None
    original = plist.original
    assert isinstance(original, torch.Tensor)
    return original


def stored_weight(module: nn.Module) -> torch.Tensor:
    """The tensor training updates for the layer's weight: a parametrization's original (the
    masked weight, or a codebook), else the plain weight."""
    if parametrize.is_parametrized(module, "weight"):
        return original_of(module)
    return weight_of(module)


def get_mask(module: nn.Module) -> torch.Tensor | None:
    """The layer's pruning mask (True = kept), or None if it has none."""
    for parametrization in parametrizations_of(module) or ():
        if isinstance(parametrization, WeightMask):
            return parametrization.mask
        mask = getattr(parametrization, "mask", None)
        if isinstance(mask, torch.Tensor):
            return mask
    return None


def block_scores(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """Root mean square of each run of `block_size` consecutive weights: (n_blocks,).

    With block_size=2 the weight [[0.1, -0.4], [0.3, -0.2]] scores [0.29, 0.25]; block_size=1
    gives the magnitudes themselves. A last, shorter run is padded with zeros.
    """
    flat = weight.detach().abs().flatten()  # (n,)
    if block_size == 1:
        return flat
    pad = -flat.numel() % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block_size).pow(2).mean(dim=1).sqrt()  # (n_blocks,)


def expand_blocks(keep: torch.Tensor, block_size: int, shape: torch.Size) -> torch.Tensor:
    """The per-weight mask of `shape` from a per-block one (n_blocks,)."""
    return keep.repeat_interleave(block_size)[: math.prod(shape)].view(shape)


def prune_(
    model: nn.Module, config: PruneConfig, *, block_sizes: Mapping[str, int] | None = None
) -> list[LayerPruning]:
    """Prune `model` in place by its rules; masks combine with any already present.

    `block_sizes` (layer name -> size) prunes runs of that many consecutive weights together,
    scored by their root mean square (see `block_scores`); the pipeline passes the quantizer's
    sub-vector sizes. Layers it does not name are pruned weight by weight.
    """

    def block_of(name: str) -> int:
        return 1 if block_sizes is None else block_sizes.get(name, 1)

    layers = prunable_layers(model)
    check_patterns(config.modules, [name for name, _, _ in layers], "prune.modules")
    per_layer: list[tuple[str, nn.Module, PruneRule]] = []
    global_group: list[tuple[str, nn.Module]] = []
    for name, module, type_name in layers:
        rule = config.rule_for(name, type_name)
        if rule is None:
            continue
        if config.scope == "global" and rule == config.default and rule.sparsity is not None:
            global_group.append((name, module))
        else:
            per_layer.append((name, module, rule))

    results: list[LayerPruning] = []
    for name, module, rule in per_layer:
        weight = weight_of(module)
        scores = block_scores(weight, block_of(name))
        if rule.threshold is not None:
            keep = scores >= rule.threshold
        else:
            assert rule.sparsity is not None
            (keep,) = keep_largest([scores], rule.sparsity)
        results.append(_apply_mask(name, module, expand_blocks(keep, block_of(name), weight.shape)))
    if global_group:
        assert config.sparsity is not None
        grouped = [block_scores(weight_of(module), block_of(name)) for name, module in global_group]
        keeps = keep_largest(grouped, config.sparsity)
        for (name, module), keep in zip(global_group, keeps, strict=True):
            shape = weight_of(module).shape
            results.append(_apply_mask(name, module, expand_blocks(keep, block_of(name), shape)))
    order = {name: index for index, (name, _, _) in enumerate(prunable_layers(model))}
    return sorted(results, key=lambda result: order[result.name])


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy that shares nothing with `model`, parametrizations included.

    `copy.deepcopy` gives a parametrized module's copy the very same generated class, so
    removing a parametrization from the copy would delete the property from the original too;
    each parametrized module of the copy gets a class of its own here.
    """
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if parametrize.is_parametrized(module):
            generated = type(module)
            members = {
                key: value
                for key, value in vars(generated).items()
                if key not in ("__dict__", "__weakref__")
            }
            module.__class__ = type(generated.__name__, generated.__bases__, members)
    return clone


def remove_masks_(model: nn.Module) -> None:
    """Make pruning permanent: plain weights with the zeros in place, no masks any more."""
    for _, module, _ in prunable_layers(model):
        if get_mask(module) is not None and _only_masks(module):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def _only_masks(module: nn.Module) -> bool:
    return all(isinstance(p, WeightMask) for p in parametrizations_of(module) or ())


def keep_largest(magnitudes: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Masks that prune exactly round(sparsity * n) of the smallest magnitudes, ties by position."""
    flat = torch.cat([magnitude.flatten() for magnitude in magnitudes])  # (n,)
    n_prune = round(sparsity * flat.numel())
    prune = torch.zeros_like(flat, dtype=torch.bool)
    if n_prune > 0:
        cutoff = flat.kthvalue(n_prune).values
        prune = flat < cutoff
        ties = (flat == cutoff).nonzero().flatten()
        prune[ties[: n_prune - int(prune.sum())]] = True
    keeps = torch.split(~prune, [magnitude.numel() for magnitude in magnitudes])
    return [keep.view_as(magnitude) for keep, magnitude in zip(keeps, magnitudes, strict=True)]


def _apply_mask(name: str, module: nn.Module, keep: torch.Tensor) -> LayerPruning:
    existing = get_mask(module)
    if existing is not None and not _only_masks(module):
        raise UnsupportedLayerError(
            f"layer '{name}' is already quantized; prune before quantizing, not after"
        )
    with torch.no_grad():
        before = weight_of(module).detach().clone()
        if existing is None:
            parametrize.register_parametrization(module, "weight", WeightMask(keep))
            existing = get_mask(module)
            assert existing is not None
        else:
            existing &= keep
        original_of(module).masked_fill_(~existing, 0.0)
        pruned = before[~existing].abs()
    return LayerPruning(
        name=name,
        numel=existing.numel(),
        n_pruned=int((~existing).sum()),
        threshold=float(pruned.max()) if pruned.numel() else 0.0,
    )


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all Linear and Conv2d weights."""
    zeros = total = 0
    for _, module, _ in prunable_layers(model):
        weight = weight_of(module)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / max(total, 1)
