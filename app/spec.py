"""The job spec as the API validates it, without torch: the same fields and rules as
`compression.config.CompressionSpec` (a test checks that both accept and reject alike)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
Epochs = Annotated[float, Field(ge=0.0, le=10_000.0)]
LearningRate = Annotated[float, Field(ge=0.0, le=10.0)]
LAYER_TYPES = ("Linear", "Conv2d")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PruneRule(Strict):
    sparsity: Fraction | None = None
    threshold: Annotated[float, Field(ge=0.0)] | None = None

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and value == float("inf"):
            raise ValueError("threshold must be finite")
        return value

    def model_post_init(self, context: object) -> None:
        if (self.sparsity is None) == (self.threshold is None):
            raise ValueError("a prune rule takes exactly one of sparsity or threshold")


def _check_rules(rules: dict[str, object], kind: str) -> dict[str, object]:
    for key in rules:
        if kind == "type" and key not in LAYER_TYPES:
            raise ValueError(f"module type {key!r} is not one of {', '.join(LAYER_TYPES)}")
        if kind == "name":
            try:
                re.compile(key)
            except re.error as error:
                raise ValueError(
                    f"module name pattern {key!r} is not a valid regular expression: {error}"
                ) from None
    return rules


class LayerRules(Strict):
    """Per-layer overrides: keys of `module_types` are layer types, of `modules` name patterns."""

    @field_validator("module_types", check_fields=False)
    @classmethod
    def _types(cls, value: dict[str, object]) -> dict[str, object]:
        return _check_rules(value, "type")

    @field_validator("modules", check_fields=False)
    @classmethod
    def _names(cls, value: dict[str, object]) -> dict[str, object]:
        return _check_rules(value, "name")


class PruneSpec(LayerRules):
    sparsity: Fraction | None = None
    threshold: Annotated[float, Field(ge=0.0)] | None = None
    scope: Literal["layer", "global"] = "layer"
    module_types: dict[str, PruneRule | None] = Field(default_factory=dict)
    modules: dict[str, PruneRule | None] = Field(default_factory=dict)
    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=1.0)] = 0.003
    rounds: Annotated[int, Field(ge=0, le=100)] = 6
    retrain_epochs: Epochs = 2.0
    retrain_lr: LearningRate = 0.01
    scan_samples: Annotated[int, Field(ge=0, le=1 << 30)] = 2000

    def model_post_init(self, context: object) -> None:
        if self.sparsity is not None and self.threshold is not None:
            raise ValueError("a prune rule takes exactly one of sparsity or threshold")


class QuantRule(Strict):
    method: Literal["pq", "kmeans"] | None = None
    block_size: Annotated[int, Field(ge=1, le=64)] | None = None
    n_centroids: Annotated[int, Field(ge=2, le=256)] | None = None


class QuantSpec(LayerRules):
    method: Literal["pq", "kmeans"] = "pq"
    block_size: Annotated[int, Field(ge=1, le=64)] | None = None
    n_centroids: Annotated[int, Field(ge=2, le=256)] = 256
    n_iter: Annotated[int, Field(ge=1, le=1000)] = 25
    samples_per_centroid: Annotated[int, Field(ge=1, le=1 << 20)] = 32
    fallback_dtype: Literal["float32", "float16"] = "float32"
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    module_types: dict[str, QuantRule | None] = Field(default_factory=dict)
    modules: dict[str, QuantRule | None] = Field(default_factory=dict)


class FinetuneSpec(Strict):
    epochs: Epochs = 2.0
    lr: LearningRate = 1e-3
    batch_size: Annotated[int, Field(ge=1, le=1 << 16)] = 128
    distill: bool = False
    scope: Literal["codebooks", "all"] = "codebooks"


class JobSpec(Strict):
    """A compression job. `arch` is required here; `data` makes it run the whole pipeline."""

    arch: Annotated[str, Field(min_length=1, max_length=100)]
    num_classes: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    data: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    prune: PruneSpec | None = Field(default_factory=PruneSpec)
    quantize: QuantSpec = Field(default_factory=QuantSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
