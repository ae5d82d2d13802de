"""Product quantization of Linear and Conv2d weights (`quantize_`), scalar k-means included.

The kept (unpruned) weights of a layer, in row-major order, are cut into
n_sub = ceil(n_kept / d) sub-vectors of `block_size` d values (the last one padded); each is
replaced by the nearest of k centroids of a float16 codebook (k, d). Pruned weights get no
code at all: the mask says where the kept ones go, so a 90%-pruned layer pays codes for a
tenth of its weights. Without pruning, the sub-vectors follow the weight's own layout (d = 9
puts each 3x3 kernel in one sub-vector). A layer too small to amortise its PQ codebook gets
scalar k-means (d = 1) where that is both smaller and no less accurate (`scalar_when_smaller`).
After `quantize_` the weight is a parametrization of the codebook, so fine-tuning can train the
centroids while codes and masks stay fixed.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from compression.config import QuantConfig, QuantRule, check_patterns
from compression.errors import UnsupportedLayerError
from compression.kmeans import kmeans, kmeans_1d
from compression.prune import (
    get_mask,
    parametrizations_of,
    prunable_layers,
    stored_weight,
    weight_of,
)

FLOAT16_MAX = 65504.0


class ProductQuantized(nn.Module):
    """The parametrization weight = codebook[codes] placed at the kept positions, zero elsewhere."""

    def __init__(
        self, codes: torch.Tensor, mask: torch.Tensor | None, shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("codes", codes.to(torch.int64))  # (n_sub,)
        self.register_buffer("mask", None if mask is None else mask.flatten().to(torch.bool))
        self.codes: torch.Tensor
        self.mask: torch.Tensor | None

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return decode_weight(codebook, self.codes, self.mask, self.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The codebook that best reproduces `weight` with the fixed codes (least squares)."""
        k = int(self.codes.max()) + 1 if self.codes.numel() else 1
        values = kept_values(weight.detach(), self.mask)
        block_size = -(-values.numel() // max(self.codes.numel(), 1))
        X, M = subvectors(values, block_size)
        sums = X.new_zeros(k, block_size).index_add_(0, self.codes, X)
        counts = torch.ones_like(X) if M is None else M
        counts = X.new_zeros(k, block_size).index_add_(0, self.codes, counts)
        return sums / counts.clamp(min=1.0)


@dataclass(frozen=True, slots=True)
class LayerQuantization:
    """What quantization did to one layer's weight."""

    name: str
    shape: tuple[int, ...]
    encoding: str  # "pq", "kmeans", "float32" or "float16"
    block_size: int | None
    n_centroids: int | None
    sparsity: float
    relative_error: float
    note: str = ""


def kept_values(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The weights that survived pruning, in row-major order: (n_kept,)."""
    flat = weight.flatten()
    return flat if mask is None else flat[mask.flatten()]


def subvectors(values: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """X (n_sub, d) from values (n,), and its float mask M when the last row needs padding."""
    n = values.numel()
    n_sub = -(-n // block_size)
    if n_sub * block_size == n:
        return values.view(n_sub, block_size), None
    X = values.new_zeros(n_sub * block_size)
    X[:n] = values
    M = values.new_zeros(n_sub * block_size)
    M[:n] = 1.0
    return X.view(n_sub, block_size), M.view(n_sub, block_size)


def decode_weight(
    codebook: torch.Tensor,
    codes: torch.Tensor,
    mask: torch.Tensor | None,
    shape: tuple[int, ...],
) -> torch.Tensor:
    """The dense weight: the codebook rows of the codes at the kept positions, zero elsewhere."""
    values = codebook.index_select(0, codes).flatten()  # (n_sub * d,), n_kept of them used
    if mask is None:
        return values[: math.prod(shape)].view(shape)
    # masked_scatter takes the first mask.sum() values in order: the kept weights.
    return values.new_zeros(mask.numel()).masked_scatter(mask, values).view(shape)


def default_block_size(module: nn.Module) -> int:
    """9 for 3x3 kernels (one kernel per sub-vector), kw for larger kernels, 4 otherwise."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        if kh * kw > 1:
            return kh * kw if kh * kw <= 9 else kw
    return 4


def quantize_(
    model: nn.Module, config: QuantConfig, *, names: Collection[str] | None = None
) -> list[LayerQuantization]:
    """Quantize every Linear and Conv2d weight of `model` in place, by the config's rules; with
    `names`, only those layers (the others are left as they are)."""
    layers = prunable_layers(model)
    check_patterns(config.modules, [name for name, _, _ in layers], "quantize.modules")
    results = []
    for name, module, type_name in layers:
        if names is not None and name not in names:
            continue
        rule = config.rule_for(name, type_name)
        if any(isinstance(p, ProductQuantized) for p in parametrizations_of(module) or ()):
            raise UnsupportedLayerError(f"layer '{name}' is already quantized")
        weight = weight_of(module).detach()
        _check_weight(name, weight)
        if rule is None:
            results.append(_keep(name, module, config, "skipped by rule"))
            continue
        # What the user wrote for a layer is what it gets: the swap to scalar k-means is for
        # layers left to the defaults.
        swap = config.scalar_when_smaller and not config.names_layer(name, type_name)
        results.append(_quantize_layer(name, module, rule, config, swap=swap))
    return results


def _check_weight(name: str, weight: torch.Tensor) -> None:
    if not weight.is_floating_point():
        raise UnsupportedLayerError(f"layer '{name}' has a {weight.dtype} weight, not a float one")
    if not bool(torch.isfinite(weight).all()):
        raise UnsupportedLayerError(f"layer '{name}' has weights that are NaN or infinite")
    largest = float(weight.abs().max()) if weight.numel() else 0.0
    if largest > FLOAT16_MAX:
        raise UnsupportedLayerError(
            f"layer '{name}' has a weight of magnitude {largest:g}, "
            f"beyond float16's {FLOAT16_MAX:g}"
        )


def _layer_mask(module: nn.Module, weight: torch.Tensor) -> torch.Tensor | None:
    """The pruning mask, or the weight's zeros when it was pruned before it reached pqz."""
    mask = get_mask(module)
    if mask is not None:
        return mask
    nonzero = weight != 0
    return None if bool(nonzero.all()) else nonzero


def _quantize_layer(
    name: str, module: nn.Module, rule: QuantRule, config: QuantConfig, *, swap: bool
) -> LayerQuantization:
    weight = weight_of(module).detach().float()
    mask = _layer_mask(module, weight)
    method = rule.method or config.method
    block_size = 1 if method == "kmeans" else rule.block_size or default_block_size(module)
    n_centroids = rule.n_centroids or config.n_centroids
    values = kept_values(weight, mask)  # (n_kept,)
    k = min(n_centroids, -(-values.numel() // block_size))
    quantized_bytes = encoded_bytes(values.numel(), block_size, k)
    fallback_bytes = values.numel() * (2 if config.fallback_dtype == "float16" else 4)
    if k == 0 or quantized_bytes >= fallback_bytes:
        return _keep(name, module, config, f"too small to gain ({values.numel()} kept weights)")

    codebook, codes = _fit(values, block_size, k, config)
    note = ""
    if block_size > 1 and swap:
        error = _error(values, codebook, codes)
        exact = k == codes.numel()
        if exact:
            # A centroid per sub-vector stores the weights rather than quantizing them: the
            # reference is then scalar k-means at the configured code width.
            error = _error(values, *_fit(values, 1, n_centroids, config))
        scalar = _smaller_scalar(values, error, quantized_bytes, n_centroids, config)
        if scalar is not None:
            codebook, codes = scalar
            block_size, k = 1, codebook.shape[0]
            note = (
                "scalar k-means: PQ would need a centroid per sub-vector"
                if exact
                else "scalar k-means: fewer bytes than PQ, no larger error"
            )
    parametrization = ProductQuantized(codes, mask, tuple(weight.shape))
    parametrization.to(weight.device)
    if parametrize.is_parametrized(module, "weight"):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    parametrize.register_parametrization(module, "weight", parametrization, unsafe=True)
    plist = parametrizations_of(module)
    assert plist is not None
    plist.original = nn.Parameter(codebook.to(weight_of(module).dtype))
    decoded = weight_of(module).detach().float()
    error = float((decoded - weight).norm() / weight.norm().clamp(min=1e-30))
    return LayerQuantization(
        name=name,
        shape=tuple(weight.shape),
        encoding="kmeans" if block_size == 1 else "pq",
        block_size=block_size,
        n_centroids=k,
        sparsity=float((decoded == 0).float().mean()),
        relative_error=error,
        note=note,
    )


def code_bits(k: int) -> int:
    """Bits per code for a codebook of `k` centroids (at least one), as the file packs them."""
    return max(1, math.ceil(math.log2(max(k, 2))))


def encoded_bytes(n_values: int, block_size: int, k: int) -> int:
    """Codes and fp16 codebook of `n_values` weights in sub-vectors of `block_size`, before
    entropy coding."""
    n_sub = -(-n_values // block_size)
    return math.ceil(n_sub * code_bits(k) / 8) + k * block_size * 2


def _fit(
    values: torch.Tensor, block_size: int, k: int, config: QuantConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook (k, d), rounded to the float16 the file stores, and codes (n_sub,)."""
    if block_size == 1:
        codebook, codes = kmeans_1d(values, k, n_iter=config.n_iter, seed=config.seed)
    else:
        X, M = subvectors(values, block_size)  # (n_sub, d)
        codebook, codes = kmeans(
            X,
            M,
            k,
            n_iter=config.n_iter,
            samples_per_centroid=config.samples_per_centroid,
            seed=config.seed,
        )
    return codebook.to(torch.float16).float(), codes


def _error(values: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor) -> float:
    """Relative L2 error of the kept weights as the codebook and codes restore them."""
    restored = codebook.index_select(0, codes).flatten()[: values.numel()]  # (n_kept,)
    return float((restored - values).norm() / values.norm().clamp(min=1e-30))


def _smaller_scalar(
    values: torch.Tensor, pq_error: float, pq_bytes: int, n_centroids: int, config: QuantConfig
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fewest-bit scalar k-means of `values` that is smaller than PQ's `pq_bytes` and at
    most `pq_error` off, or None. Only widths that could still be smaller are tried, so a large
    layer, where PQ's codebook is cheap, costs one or two histogram k-means at most."""
    for bits in range(1, 9):
        k = min(1 << bits, n_centroids)
        if encoded_bytes(values.numel(), 1, k) >= pq_bytes:
            return None
        codebook, codes = _fit(values, 1, k, config)
        if _error(values, codebook, codes) <= pq_error:
            return codebook, codes
        if k == n_centroids:
            return None
    return None


def _keep(name: str, module: nn.Module, config: QuantConfig, note: str) -> LayerQuantization:
    """Leave the weight unquantized; in float16 it is rounded now so the file holds it exactly."""
    weight = weight_of(module).detach()
    before = weight.float().clone()
    if config.fallback_dtype == "float16":
        with torch.no_grad():
            target = stored_weight(module)
            target.copy_(target.to(torch.float16).to(target.dtype))
    after = weight_of(module).detach().float()
    return LayerQuantization(
        name=name,
        shape=tuple(weight.shape),
        encoding=config.fallback_dtype,
        block_size=None,
        n_centroids=None,
        sparsity=float((after == 0).float().mean()),
        relative_error=float((after - before).norm() / before.norm().clamp(min=1e-30)),
        note=note,
    )
