"""The job-spec options `pqz compress` and `pqz submit` share, and how they override a spec file.

Both commands take the same spec document (README, "Spec file"); an option given on the command
line replaces the file's value, an option left out keeps it. Torch-free: `pqz submit` never
loads torch.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Annotated, Any

import typer

from cli.output import fail


class Method(StrEnum):
    pq = "pq"
    kmeans = "kmeans"


class Augmentation(StrEnum):  # compression.config.AUGMENTS (the CLI imports torch lazily)
    auto = "auto"
    none = "none"
    shift = "shift"
    crop_flip = "crop-flip"


AugmentOption = Annotated[
    Augmentation | None,
    typer.Option(
        help="Augment training batches: shift (by up to 2 pixels), crop-flip, none; "
        "default: auto (crop-flip for colour images, none for grey)."
    ),
]


def positive(value: float | None) -> float | None:
    """A typer callback: a count or amount that must be more than zero, or left out."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be more than 0, got {value:g}")
    return value


NumClassesOption = Annotated[
    int | None,
    typer.Option(
        callback=positive,
        help="Classes of the model's last layer (default: the data set's, else the zoo's).",
    ),
]
SparsityOption = Annotated[float | None, typer.Option(help="Prune this fraction of each layer.")]
ThresholdOption = Annotated[float | None, typer.Option(help="Prune every |w| below this.")]
MaxDropOption = Annotated[
    float | None,
    typer.Option(help="Scan tolerance on validation accuracy (0.003 = 0.3 points)."),
]
MethodOption = Annotated[Method | None, typer.Option(help="pq (product) or kmeans (scalar).")]
BlockSizeOption = Annotated[int | None, typer.Option(help="Sub-vector size d (default per layer).")]
CentroidsOption = Annotated[int | None, typer.Option(help="Centroids per layer, 2..256.")]
ScalarOption = Annotated[
    bool | None,
    typer.Option(
        "--scalar-when-smaller/--pq-everywhere",
        help="With pq, give a layer scalar k-means where that is smaller and no less "
        "accurate (the default), or keep PQ on every layer.",
    ),
]


@dataclasses.dataclass(frozen=True, slots=True)
class SpecOptions:
    """The command line's spec settings; None keeps the spec file's (or the default) value."""

    sparsity: float | None = None
    threshold: float | None = None
    max_accuracy_drop: float | None = None
    method: Method | None = None
    block_size: int | None = None
    centroids: int | None = None
    scalar_when_smaller: bool | None = None
    augment: Augmentation | None = None

    def __post_init__(self) -> None:
        if self.sparsity is not None and self.threshold is not None:
            fail("give --sparsity or --threshold, not both", code=2)

    def apply(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The spec document with these options in force. A section the document holds as
        something other than an object is left for the spec's validation to name."""
        prune: dict[str, Any] = {}
        if self.sparsity is not None or self.threshold is not None:
            # One replaces the other: --sparsity overrides a spec file's threshold.
            prune |= {"sparsity": self.sparsity, "threshold": self.threshold}
        if self.max_accuracy_drop is not None:
            prune["max_accuracy_drop"] = self.max_accuracy_drop
        quantize = {
            "method": self.method and self.method.value,
            "block_size": self.block_size,
            "n_centroids": self.centroids,
            "scalar_when_smaller": self.scalar_when_smaller,
        }
        quantize = {key: value for key, value in quantize.items() if value is not None}
        merged = dict(spec)
        for section, values in (("prune", prune), ("quantize", quantize)):
            base = merged.get(section)
            if values and (base is None or isinstance(base, dict)):
                merged[section] = {**(base or {}), **values}
        if self.augment is not None:
            merged["augment"] = self.augment.value
        return merged
