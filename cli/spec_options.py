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
        help="Classes of the model's last layer (default: the data set's, else the checkpoint's).",
    ),
]
SparsityOption = Annotated[float | None, typer.Option(help="Prune this fraction of each layer.")]
ThresholdOption = Annotated[float | None, typer.Option(help="Prune every |w| below this.")]
MaxDropOption = Annotated[
    float | None,
    typer.Option(help="Most accuracy the finished model may lose (0.003 = 0.3 points)."),
]
MethodOption = Annotated[Method | None, typer.Option(help="pq (product) or kmeans (scalar).")]
BlockSizeOption = Annotated[int | None, typer.Option(help="Sub-vector size d (default per layer).")]
CentroidsOption = Annotated[int | None, typer.Option(help="Centroids per layer, 2..256.")]
MeanOption = Annotated[
    str | None,
    typer.Option(
        help="The model's input normalisation (with --std), on pixels / 255: one value, or one "
        "per channel, comma-separated (0.5 with --std 0.5 maps to -1..1); default: the "
        "training split's own mean and std, as pqz train uses.",
    ),
]
StdOption = Annotated[
    str | None, typer.Option(help="Standard deviations for --mean, one value or one per channel.")
]
ScalarOption = Annotated[
    bool | None,
    typer.Option(
        "--scalar-when-smaller/--pq-everywhere",
        help="With pq, give a layer scalar k-means where that is smaller and no less "
        "accurate (the default), or keep PQ on every layer.",
    ),
]


# `--fast`: the cheap path. Fewer and shorter pruning rounds without distillation, and only the
# codebooks fine-tuned, all layers quantized at once: a few times quicker than the defaults,
# which the promise needs to keep the ratio (bench/RESULTS.md, "The promise").
FAST: dict[str, dict[str, Any]] = {
    "prune": {"rounds": 6, "retrain_epochs": 2.0, "retrain_lr": 0.01, "distill": False},
    "finetune": {"scope": "codebooks", "distill": False, "layerwise_epochs": 0.0},
}
FastOption = Annotated[
    bool,
    typer.Option(
        "--fast",
        help="The cheap path: fewer, shorter pruning rounds and codebook-only fine-tuning "
        "(a lower ratio for the same tolerance).",
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
    mean: str | None = None
    std: str | None = None
    fast: bool = False

    def __post_init__(self) -> None:
        if self.sparsity is not None and self.threshold is not None:
            fail("give --sparsity or --threshold, not both", code=2)
        normalization(self.mean, self.std)  # refused here, before anything runs

    def refuse_without_data(self, data: object) -> None:
        """Without data the job is post-training (no scan, no training): an option that only
        those use would be ignored, so it is refused instead."""
        if data is not None:
            return
        for option, value in (
            ("--max-accuracy-drop", self.max_accuracy_drop),
            ("--augment", self.augment),
            ("--fast", self.fast or None),
        ):
            if value is not None:
                fail(
                    f"{option} applies only with data (--data, or the spec's data): without it "
                    "the job is post-training, with no scan and no training",
                    code=2,
                )

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
        if self.fast and not ("prune" in spec and spec["prune"] is None):  # prune: null stays
            prune = {**FAST["prune"], **prune}
        sections = [("prune", prune), ("quantize", quantize)]
        if self.fast:
            sections.append(("finetune", FAST["finetune"]))
        for section, values in sections:
            base = merged.get(section)
            if values and (base is None or isinstance(base, dict)):
                merged[section] = {**(base or {}), **values}
        if self.augment is not None:
            merged["augment"] = self.augment.value
        given = normalization(self.mean, self.std)
        if given is not None:
            merged["normalize"] = given
        return merged


def normalization(mean: str | None, std: str | None) -> dict[str, list[float]] | None:
    """--mean and --std as a spec's `normalize`, or None when neither is given; the values
    themselves are checked by the spec (`Normalize`), in its words."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        fail("give --mean and --std together", code=2)
    values = {}
    for name, text in (("mean", mean), ("std", std)):
        try:
            values[name] = [float(part) for part in text.split(",")]
        except ValueError:
            fail(f"--{name} {text!r} is not a comma-separated list of numbers", code=2)
    return values
