"""Configs of the compression stages: frozen, validated on creation, strict `from_dict`.

Per-layer rules follow one pattern everywhere: a default, overridden by module type
(`"Linear"`, `"Conv2d"`) and then by module name (a regular expression that must match the
whole name); an override of `None` skips the layer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from compression.errors import InvalidConfigError

SUPPORTED_LAYER_TYPES = ("Linear", "Conv2d")
MAX_CENTROIDS = 256  # codes are stored in 8 bits or fewer
MAX_BLOCK_SIZE = 64
# What training does to each batch of images: "auto" is the data set's own recipe (random
# crops and flips for colour images, nothing for grey ones); "shift" moves each image by up to
# 2 pixels each way, for centred grey images such as digits, where a flip changes the class.
Augment = Literal["auto", "none", "shift", "crop-flip"]
AUGMENTS: tuple[Augment, ...] = ("auto", "none", "shift", "crop-flip")

Rule = TypeVar("Rule")
Built = TypeVar("Built")


def check_keys(data: object, allowed: tuple[str, ...], where: str) -> Mapping[str, Any]:
    """Return `data` as a mapping after rejecting unknown keys, naming the first one."""
    if not isinstance(data, Mapping):
        raise InvalidConfigError(f"{where} must be an object, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise InvalidConfigError(
                f"unknown field '{key}' in {where} (allowed: {', '.join(allowed)})"
            )
    return data


def check_number(
    value: object,
    name: str,
    *,
    low: float,
    high: float,
    integer: bool = False,
    high_open: bool = False,
) -> None:
    """Reject a value that is not a finite number in [low, high] (or [low, high))."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an integer" if integer else "a number"
        raise InvalidConfigError(f"{name} must be {expected}, got {shown(value)}")
    number = float(value)
    too_high = number >= high if high_open else number > high
    if not math.isfinite(number) or number < low or too_high:
        bracket = ")" if high_open else "]"
        raise InvalidConfigError(
            f"{name} {value!r} is outside [{_bound(low)}, {_bound(high)}{bracket}"
        )


def _bound(value: float) -> str:
    if math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def shown(value: object) -> str:
    """A spec value as its JSON document wrote it (null, true, false), else as Python quotes it."""
    return json.dumps(value) if value is None or isinstance(value, bool) else repr(value)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidConfigError(f"{name} {shown(value)} is not one of {', '.join(choices)}")


def check_overrides(module_types: Mapping[str, object], modules: Mapping[str, object]) -> None:
    for type_name in module_types:
        check_choice(type_name, "module type", SUPPORTED_LAYER_TYPES)
    for pattern in modules:
        try:
            re.compile(pattern)
        except re.error as error:
            raise InvalidConfigError(
                f"module name pattern {pattern!r} is not a valid regular expression: {error}"
            ) from None


def resolve_rule(
    name: str,
    type_name: str,
    default: Rule | None,
    module_types: Mapping[str, Rule | None],
    modules: Mapping[str, Rule | None],
) -> Rule | None:
    """The rule for one layer: the first matching name pattern's, else its type's, else default."""
    for pattern, rule in modules.items():
        if re.fullmatch(pattern, name):
            return rule
    if type_name in module_types:
        return module_types[type_name]
    return default


def check_patterns(modules: Mapping[str, object], names: list[str], field: str) -> None:
    """Refuse a `modules` pattern that matches no layer of the model: a typo or a partial name
    (patterns match whole names) would otherwise leave its layers to the default unsaid."""
    for pattern in modules:
        if not any(re.fullmatch(pattern, name) for name in names):
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if names[12:] else "")
            raise InvalidConfigError(
                f"{field} pattern {pattern!r} matches no layer (a pattern matches whole layer "
                f"names; the model's are {shown})"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class PruneRule:
    """How much of one layer to prune: exactly one of `sparsity` or `threshold`."""

    sparsity: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.threshold is None):
            raise InvalidConfigError(
                "a prune rule takes exactly one of sparsity or threshold, "
                f"got sparsity={self.sparsity!r}, threshold={self.threshold!r}"
            )
        if self.sparsity is not None:
            check_number(self.sparsity, "sparsity", low=0.0, high=1.0, high_open=True)
        if self.threshold is not None:
            check_number(self.threshold, "threshold", low=0.0, high=math.inf, high_open=True)

    def to_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: object, where: str = "prune rule") -> PruneRule:
        return _build(cls, check_keys(data, ("sparsity", "threshold"), where), where)


@dataclass(frozen=True, kw_only=True, slots=True)
class PruneConfig:
    """Magnitude pruning of Linear and Conv2d weights.

    `sparsity=0.5` on the 2x2 weight [[0.1, -0.4], [0.3, -0.2]] zeroes the two smallest
    magnitudes: [[0, -0.4], [0.3, 0]]. `threshold=0.25` zeroes every |w| < 0.25, the same here.
    With `scope="global"` a sparsity is reached over all default-ruled layers together, so
    layers with many small weights lose more of them.

    In the pipeline each layer is pruned in runs of the quantizer's sub-vector size (see
    `prune_`'s `block_sizes`), so a PQ sub-vector is kept or pruned whole.

    With data and neither `sparsity` nor `threshold`, the thresholds come from a scan: each
    round prunes every layer as far as its sensitivity curve allows, retrains for
    `retrain_epochs` at `retrain_lr`, and is kept only while validation accuracy stays within
    `max_accuracy_drop` (0.003 = 0.3 points) of the baseline. `scan_samples` validation images
    score each point of a curve (0 = all). `distill=true` makes the retraining learn from the
    unpruned model's soft predictions too (temperature 4), as the fine-tuning's `distill` does.
    `gradual=0.5` reaches a round's sparsity gradually over the first half of its retraining
    (a cubic ramp, Zhu & Gupta 2017); 0 prunes at once and retrains.
    """

    sparsity: float | None = None
    threshold: float | None = None
    scope: Literal["layer", "global"] = "layer"
    module_types: Mapping[str, PruneRule | None] = field(default_factory=dict)
    modules: Mapping[str, PruneRule | None] = field(default_factory=dict)
    max_accuracy_drop: float = 0.003
    rounds: int = 12
    retrain_epochs: float = 3.0
    retrain_lr: float = 0.02
    scan_samples: int = 2000
    distill: bool = True
    gradual: float = 0.5

    def __post_init__(self) -> None:
        if self.sparsity is not None or self.threshold is not None:
            PruneRule(sparsity=self.sparsity, threshold=self.threshold)
        check_choice(self.scope, "prune scope", ("layer", "global"))
        check_overrides(self.module_types, self.modules)
        check_number(self.max_accuracy_drop, "max_accuracy_drop", low=0.0, high=1.0)
        check_number(self.rounds, "rounds", low=0, high=100, integer=True)
        check_number(self.retrain_epochs, "retrain_epochs", low=0.0, high=10_000.0)
        check_number(self.retrain_lr, "retrain_lr", low=0.0, high=10.0)
        check_number(self.scan_samples, "scan_samples", low=0, high=1 << 30, integer=True)
        check_number(self.gradual, "gradual", low=0.0, high=1.0)
        if not isinstance(self.distill, bool):
            raise InvalidConfigError(
                f"prune distill must be true or false, got {shown(self.distill)}"
            )

    @property
    def default(self) -> PruneRule | None:
        if self.sparsity is None and self.threshold is None:
            return None
        return PruneRule(sparsity=self.sparsity, threshold=self.threshold)

    def rule_for(self, name: str, type_name: str) -> PruneRule | None:
        return resolve_rule(name, type_name, self.default, self.module_types, self.modules)

    def to_dict(self) -> dict[str, Any]:
        return _fields_to_dict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = "prune") -> PruneConfig:
        return _build(cls, _fields_from_dict(cls, data, PruneRule, where), where)


@dataclass(frozen=True, kw_only=True, slots=True)
class QuantRule:
    """A per-layer override of the quantization settings; unset fields keep the default's."""

    method: Literal["pq", "kmeans"] | None = None
    block_size: int | None = None
    n_centroids: int | None = None

    def __post_init__(self) -> None:
        if self.method is not None:
            check_choice(self.method, "quantization method", ("pq", "kmeans"))
        if self.block_size is not None:
            check_number(self.block_size, "block_size", low=1, high=MAX_BLOCK_SIZE, integer=True)
        if self.n_centroids is not None:
            check_number(self.n_centroids, "n_centroids", low=2, high=MAX_CENTROIDS, integer=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "block_size": self.block_size,
            "n_centroids": self.n_centroids,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "quantize rule") -> QuantRule:
        return _build(cls, check_keys(data, _field_names(cls), where), where)


@dataclass(frozen=True, kw_only=True, slots=True)
class QuantConfig:
    """Weight sharing for Linear and Conv2d weights.

    `method="pq"` cuts the flattened weight into sub-vectors of `block_size` values and replaces
    each by the nearest of `n_centroids` shared centroids (k-means, k-means++ start), so a layer
    becomes a small fp16 codebook plus one code per sub-vector. With block_size=2 and
    n_centroids=2 the row [0.9, 1.1, -1.0, -0.8] becomes codes [0, 1] and codebook
    [[0.9, 1.1], [-1.0, -0.8]]. `method="kmeans"` is scalar weight sharing (block_size 1).
    `block_size=None` picks per layer: kh*kw for Conv2d kernels up to 3x3 (9 for 3x3), kw for
    larger kernels, 4 for Linear and 1x1 convolutions. Pruned weights stay exactly zero and do
    not pull the centroids. With `scalar_when_smaller`, a PQ layer whose weights scalar k-means
    stores in fewer bytes with no larger error gets scalar k-means instead: a small layer cannot
    amortise 256 centroids of d values (a 90%-pruned 100x300 layer has 750 sub-vectors of 4,
    and their 2 KB codebook outweighs their codes). Where PQ would give every sub-vector its
    own centroid, storing the weights rather than quantizing them, the error to match is that
    of scalar k-means with `n_centroids` levels. A layer that `modules` or `module_types` names
    gets what its rule says: the swap is for layers left to the defaults. A layer whose codes
    would not be smaller than its values, or that a rule skips, keeps its values in
    `fallback_dtype`.
    """

    method: Literal["pq", "kmeans"] = "pq"
    block_size: int | None = None
    n_centroids: int = 256
    n_iter: int = 25
    samples_per_centroid: int = 32
    scalar_when_smaller: bool = True
    fallback_dtype: Literal["float32", "float16"] = "float32"
    seed: int = 0
    module_types: Mapping[str, QuantRule | None] = field(default_factory=dict)
    modules: Mapping[str, QuantRule | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The rule checks the values; unlike a rule's, the defaults' method and n_centroids
        # cannot be left unset (null in a spec).
        check_choice(self.method, "quantization method", ("pq", "kmeans"))
        check_number(self.n_centroids, "n_centroids", low=2, high=MAX_CENTROIDS, integer=True)
        QuantRule(method=self.method, block_size=self.block_size, n_centroids=self.n_centroids)
        check_number(self.n_iter, "n_iter", low=1, high=1000, integer=True)
        check_number(
            self.samples_per_centroid, "samples_per_centroid", low=1, high=1 << 20, integer=True
        )
        if not isinstance(self.scalar_when_smaller, bool):
            raise InvalidConfigError(
                f"quantize scalar_when_smaller must be true or false, "
                f"got {shown(self.scalar_when_smaller)}"
            )
        check_choice(self.fallback_dtype, "fallback_dtype", ("float32", "float16"))
        check_number(self.seed, "seed", low=0, high=2**63 - 1, integer=True)
        check_overrides(self.module_types, self.modules)

    @property
    def default(self) -> QuantRule:
        return QuantRule(
            method=self.method, block_size=self.block_size, n_centroids=self.n_centroids
        )

    def rule_for(self, name: str, type_name: str) -> QuantRule | None:
        """The layer's effective rule, with the default's values where the override is silent."""
        rule = resolve_rule(name, type_name, self.default, self.module_types, self.modules)
        if rule is None:
            return None
        return QuantRule(
            method=rule.method or self.method,
            block_size=rule.block_size if rule.block_size is not None else self.block_size,
            n_centroids=rule.n_centroids if rule.n_centroids is not None else self.n_centroids,
        )

    def names_layer(self, name: str, type_name: str) -> bool:
        """Whether an override (`modules` or `module_types`), not the default, rules the layer."""
        default = QuantRule()  # a fresh object: it comes back only where no override matches
        rule = resolve_rule(name, type_name, default, self.module_types, self.modules)
        return rule is not default

    def to_dict(self) -> dict[str, Any]:
        return _fields_to_dict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = "quantize") -> QuantConfig:
        return _build(cls, _fields_from_dict(cls, data, QuantRule, where), where)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    """One training run: `epochs` passes of SGD with Nesterov momentum (or Adam), cosine lr.

    `lr=0.05, epochs=2` over 1,000 steps per epoch starts at 0.05 and ends near 0 after 2,000.
    `augment` says what each batch goes through (see `Augment`).
    """

    epochs: float = 10.0
    lr: float = 0.05
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: Augment = "auto"

    def __post_init__(self) -> None:
        check_number(self.epochs, "epochs", low=0.0, high=10_000.0)
        check_number(self.lr, "lr", low=0.0, high=10.0)
        check_number(self.batch_size, "batch_size", low=1, high=1 << 16, integer=True)
        check_choice(self.optimizer, "optimizer", ("sgd", "adam"))
        check_number(self.momentum, "momentum", low=0.0, high=1.0, high_open=True)
        check_number(self.weight_decay, "weight_decay", low=0.0, high=1.0)
        check_choice(self.augment, "augment", AUGMENTS)


@dataclass(frozen=True, kw_only=True, slots=True)
class FinetuneConfig:
    """Codebook fine-tuning after quantization (Adam, codes and masks fixed).

    `scope="codebooks"` trains the centroids only; `"all"` also biases, norms and unquantized
    layers. `distill=true` adds a loss towards the uncompressed model's soft predictions.

    `layerwise_epochs > 0` quantizes the layers one at a time, input side first, and trains for
    that many epochs after each but the last (as "And the Bit Goes Down" and INQ do): the layers
    still in float, their masks kept, learn to make up for the error of those already
    quantized, whose codebooks train too. With 0 every layer is quantized at once.
    """

    epochs: float = 2.0
    lr: float = 1e-3
    batch_size: int = 128
    distill: bool = True
    scope: Literal["codebooks", "all"] = "all"
    layerwise_epochs: float = 1.0

    def __post_init__(self) -> None:
        check_number(self.epochs, "finetune epochs", low=0.0, high=10_000.0)
        check_number(self.layerwise_epochs, "finetune layerwise_epochs", low=0.0, high=10_000.0)
        check_number(self.lr, "finetune lr", low=0.0, high=10.0)
        check_number(self.batch_size, "finetune batch_size", low=1, high=1 << 16, integer=True)
        if not isinstance(self.distill, bool):
            raise InvalidConfigError(
                f"finetune distill must be true or false, got {shown(self.distill)}"
            )
        check_choice(self.scope, "finetune scope", ("codebooks", "all"))

    def to_dict(self) -> dict[str, Any]:
        return _fields_to_dict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = "finetune") -> FinetuneConfig:
        return _build(cls, check_keys(data, _field_names(cls), where), where)


@dataclass(frozen=True, kw_only=True, slots=True)
class Normalize:
    """The per-channel mean and std a model was trained with, on pixels / 255: one value for
    every channel (a bare number, or a list of one), or one per channel. `mean=[0.5],
    std=[0.5]` maps pixels to -1..1, as torchvision's Normalize((0.5,), (0.5,)) does;
    `mean=[0], std=[1]` is pixels / 255 alone.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if isinstance(values, int | float) and not isinstance(values, bool):
                values = (values,)  # one number for every channel
            if not isinstance(values, tuple | list) or not 1 <= len(values) <= 4:
                raise InvalidConfigError(
                    f"{name} must be a list of 1 to 4 numbers (one per channel), got "
                    f"{shown(values)}"
                )
            for value in values:
                check_number(value, name, low=-1e3, high=1e3)
                if not 0 <= value <= 1:
                    # Pixels / 255 lie in 0..1, and so do their mean and any sensible std.
                    raise InvalidConfigError(
                        f"{name} {value!r} is outside [0, 1]: normalize applies to pixels / 255, "
                        "so statistics of 0..255 pixels are divided by 255 (127.5 -> 0.5)"
                    )
            object.__setattr__(self, name, tuple(values))  # as given: 0 stays 0 in the JSON
        if len(self.mean) != len(self.std):
            raise InvalidConfigError(
                f"mean has {len(self.mean)} values but std {len(self.std)}: give as many of each"
            )
        if any(value <= 0 for value in self.std):
            raise InvalidConfigError(f"std must be positive, got {list(self.std)}")

    def for_channels(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) with one value per channel of `channels`-channel images."""
        if len(self.mean) == 1:
            return self.mean * channels, self.std * channels
        if len(self.mean) != channels:
            raise InvalidConfigError(
                f"normalize gives {len(self.mean)} values per statistic, but the images have "
                f"{channels} channel{'s' if channels != 1 else ''}: give one, or one per channel"
            )
        return self.mean, self.std

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: object, where: str = "normalize") -> Normalize:
        values = dict(check_keys(data, _field_names(cls), where))
        missing = [name for name in ("mean", "std") if name not in values]
        if missing:
            raise InvalidConfigError(f"{where} needs both mean and std, lacks {missing[0]}")
        return _build(cls, values, where)


@dataclass(frozen=True, kw_only=True, slots=True)
class PromiseConfig:
    """How the finished model is held to `prune.max_accuracy_drop` (see compression.promise).

    After quantization and fine-tuning, the model is compared with the baseline on the search
    (validation) split, image by image; a miss backs off to the previous kept pruning round and
    finishes again, at most `max_tries` times in all. A candidate that holds on the search
    split is judged on the confirm split, which no decision has seen. `hold_on="estimate"`
    asks the measured drop to be within the tolerance; `"upper_bound"` asks the same of the
    upper end of its paired interval (95%, widened to 1 - 0.05 / max_tries for the looks the
    confirm split may take): with 6,000 images and 100 discordant ones, that is about 0.2
    points stricter.
    """

    hold_on: Literal["estimate", "upper_bound"] = "estimate"
    max_tries: int = 4

    def __post_init__(self) -> None:
        check_choice(self.hold_on, "hold_on", ("estimate", "upper_bound"))
        check_number(self.max_tries, "promise max_tries", low=1, high=20, integer=True)

    def to_dict(self) -> dict[str, Any]:
        return _fields_to_dict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = "promise") -> PromiseConfig:
        return _build(cls, check_keys(data, _field_names(cls), where), where)


@dataclass(frozen=True, kw_only=True, slots=True)
class CompressionSpec:
    """A whole compression job: one JSON document, shared by `pqz compress --spec` and the API.

    Without `data` the job is post-training: prune by `prune.sparsity` / `prune.threshold` (or
    not at all), then quantize; no accuracy is claimed. With `data` it runs the thesis pipeline:
    baseline, threshold-scan pruning with retraining, quantization, codebook fine-tuning, and
    holds the finished model to `prune.max_accuracy_drop` as `promise` says. `prune: null`
    skips pruning altogether. `augment` applies to every training pass of the job (retraining,
    layer-wise training, fine-tuning); give the baseline the same, or the compressed model may
    win accuracy only because it was trained with more regularisation.
    `normalize` says how the model was trained to see its inputs (see `Normalize`); by default
    pqz normalises with the training split's own mean and std, as `pqz train` does.
    """

    arch: str | None = None
    num_classes: int | None = None
    data: str | None = None
    prune: PruneConfig | None = field(default_factory=PruneConfig)
    quantize: QuantConfig = field(default_factory=QuantConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    promise: PromiseConfig = field(default_factory=PromiseConfig)
    augment: Augment = "auto"
    normalize: Normalize | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_choice(self.augment, "augment", AUGMENTS)
        if self.normalize is not None and not isinstance(self.normalize, Normalize):
            raise InvalidConfigError(f"normalize must be an object, got {shown(self.normalize)}")
        for name in ("arch", "data"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidConfigError(f"{name} must be a non-empty string, got {shown(value)}")
        if self.num_classes is not None:
            check_number(self.num_classes, "num_classes", low=1, high=1 << 20, integer=True)
        check_number(self.seed, "seed", low=0, high=2**63 - 1, integer=True)
        if not isinstance(self.device, str) or not re.fullmatch(
            r"auto|cpu|cuda(:\d+)?", self.device
        ):
            raise InvalidConfigError(f"device {self.device!r} is not auto, cpu, cuda or cuda:N")

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "data": self.data,
            "prune": None if self.prune is None else self.prune.to_dict(),
            "quantize": self.quantize.to_dict(),
            "finetune": self.finetune.to_dict(),
            "promise": self.promise.to_dict(),
            "augment": self.augment,
            "normalize": None if self.normalize is None else self.normalize.to_dict(),
            "seed": self.seed,
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "spec") -> CompressionSpec:
        values = dict(check_keys(data, _field_names(cls), where))
        if "prune" in values and values["prune"] is not None:
            values["prune"] = PruneConfig.from_dict(values["prune"], f"{where}.prune")
        if "quantize" in values:
            values["quantize"] = QuantConfig.from_dict(values["quantize"], f"{where}.quantize")
        if "finetune" in values:
            values["finetune"] = FinetuneConfig.from_dict(values["finetune"], f"{where}.finetune")
        if "promise" in values:
            values["promise"] = PromiseConfig.from_dict(values["promise"], f"{where}.promise")
        if values.get("normalize") is not None:
            values["normalize"] = Normalize.from_dict(values["normalize"], f"{where}.normalize")
        return _build(cls, values, where)


def _build(cls: Callable[..., Built], values: Mapping[str, Any], where: str) -> Built:
    """`cls(**values)`, its error prefixed with where the values sit in the spec: a bare
    "sparsity 2 is outside [0, 1)" does not say which of a spec's rules holds it."""
    try:
        return cls(**values)
    except InvalidConfigError as error:
        raise InvalidConfigError(f"{where}: {error}") from None


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]


def _fields_to_dict(config: object) -> dict[str, Any]:
    """Every field by name; per-layer rule maps become plain dicts."""
    values = {name: getattr(config, name) for name in _field_names(type(config))}
    for key in ("module_types", "modules"):
        if key in values:
            values[key] = _rules_to_dict(values[key])
    return values


def _fields_from_dict(cls: type, data: object, rule_type: Any, where: str) -> dict[str, Any]:
    """Keyword arguments for `cls` from JSON-like data, rule maps made into rule objects."""
    values = dict(check_keys(data, _field_names(cls), where))
    for key in ("module_types", "modules"):
        if key in values:
            values[key] = _rules_from_dict(values[key], rule_type, f"{where}.{key}")
    return values


def _rules_to_dict(rules: Mapping[str, Any]) -> dict[str, Any]:
    return {key: None if rule is None else rule.to_dict() for key, rule in rules.items()}


def _rules_from_dict(data: object, rule_type: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidConfigError(f"{where} must be an object, got {type(data).__name__}")
    return {
        key: None if value is None else rule_type.from_dict(value, f"{where}[{key!r}]")
        for key, value in data.items()
    }
