"""The job spec as the API validates it, without torch: the same fields and rules as
`compression.config.CompressionSpec` (a test checks that both accept and reject alike, and
fill in the same JSON)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

LAYER_TYPES = ("Linear", "Conv2d")


def _as_given(value: object, check: Callable[[object], object]) -> object:
    checked = check(value)
    return value if type(value) is int else checked


class AsGiven:
    """A float field that keeps an integer as given: `"epochs": 1` is stored and echoed as 1, as
    the library keeps it (and writes it into the .pqz), not as pydantic's 1.0."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_wrap_validator_function(
            _as_given,
            handler(source),  # the float's own checks (type, bounds) still run first
            serialization=core_schema.plain_serializer_function_ser_schema(lambda value: value),
        )


Fraction = Annotated[float, Field(ge=0.0, lt=1.0), AsGiven]
NonNegative = Annotated[float, Field(ge=0.0), AsGiven]
Epochs = Annotated[float, Field(ge=0.0, le=10_000.0), AsGiven]
LearningRate = Annotated[float, Field(ge=0.0, le=10.0), AsGiven]


class KnownFields(BaseModel):
    """Rejects an unknown key naming the fields allowed there, as the library does (pydantic
    would only say "Extra inputs are not permitted"); app/validation.py words the error."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_field",
                        "unknown field {field!r} (allowed: {allowed})",
                        {"field": key, "allowed": ", ".join(cls.model_fields)},
                    )
        return data


class Strict(KnownFields):
    model_config = ConfigDict(extra="forbid", strict=True)


class PruneRule(Strict):
    sparsity: Fraction | None = None
    threshold: NonNegative | None = None

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and value == float("inf"):
            raise ValueError(f"{value!r} is not finite")
        return value

    def model_post_init(self, context: object) -> None:
        if (self.sparsity is None) == (self.threshold is None):
            raise ValueError(
                "takes exactly one of sparsity or threshold, "
                f"got sparsity={self.sparsity!r}, threshold={self.threshold!r}"
            )


def _check_rules(rules: dict[str, object], kind: str) -> dict[str, object]:
    # Worded to follow the field's path: "spec.quantize.module_types key 'LSTM' is not ...".
    for key in rules:
        if kind == "type" and key not in LAYER_TYPES:
            raise ValueError(f"key {key!r} is not one of {', '.join(LAYER_TYPES)}")
        if kind == "name":
            try:
                re.compile(key)
            except re.error as error:
                raise ValueError(
                    f"key {key!r} is not a valid regular expression: {error}"
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
    threshold: NonNegative | None = None
    scope: Literal["layer", "global"] = "layer"
    module_types: dict[str, PruneRule | None] = Field(default_factory=dict)
    modules: dict[str, PruneRule | None] = Field(default_factory=dict)
    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=1.0), AsGiven] = 0.003
    rounds: Annotated[int, Field(ge=0, le=100)] = 12
    retrain_epochs: Epochs = 3.0
    retrain_lr: LearningRate = 0.02
    scan_samples: Annotated[int, Field(ge=0, le=1 << 30)] = 2000
    distill: bool = True
    gradual: Annotated[float, Field(ge=0.0, le=1.0), AsGiven] = 0.5

    def model_post_init(self, context: object) -> None:
        if self.sparsity is not None and self.threshold is not None:
            raise ValueError(
                "takes exactly one of sparsity or threshold, "
                f"got sparsity={self.sparsity!r}, threshold={self.threshold!r}"
            )


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
    scalar_when_smaller: bool = True
    fallback_dtype: Literal["float32", "float16"] = "float32"
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    module_types: dict[str, QuantRule | None] = Field(default_factory=dict)
    modules: dict[str, QuantRule | None] = Field(default_factory=dict)


class FinetuneSpec(Strict):
    epochs: Epochs = 2.0
    lr: LearningRate = 1e-3
    batch_size: Annotated[int, Field(ge=1, le=1 << 16)] = 128
    distill: bool = True
    scope: Literal["codebooks", "all"] = "all"
    layerwise_epochs: Epochs = 1.0


class PromiseSpec(Strict):
    hold_on: Literal["estimate", "upper_bound"] = "estimate"
    max_tries: Annotated[int, Field(ge=1, le=20)] = 4


Statistic = Annotated[
    list[Annotated[float, Field(ge=0.0, le=1.0), AsGiven]], Field(min_length=1, max_length=4)
]


class NormalizeSpec(Strict):
    mean: Statistic
    std: Statistic

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _one_number(cls, value: object) -> object:
        # One number for every channel may be given bare, as the library takes it.
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        return [value] if numeric else value

    def model_post_init(self, context: object) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values but std {len(self.std)}: give as many of each"
            )
        if any(value <= 0 for value in self.std):
            raise ValueError(f"std must be positive, got {self.std}")


class JobSpec(Strict):
    """A compression job. `arch` is required here; `data` makes it run the whole pipeline."""

    arch: Annotated[str, Field(min_length=1, max_length=100)]
    num_classes: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    data: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    prune: PruneSpec | None = Field(default_factory=PruneSpec)
    quantize: QuantSpec = Field(default_factory=QuantSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    promise: PromiseSpec = Field(default_factory=PromiseSpec)
    augment: Literal["auto", "none", "shift", "crop-flip"] = "auto"
    normalize: NormalizeSpec | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: object) -> object:
        # Before the pattern, to say it as the library does rather than quote a regex.
        if isinstance(value, str) and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"{value!r} is not auto, cpu, cuda or cuda:N")
        return value
