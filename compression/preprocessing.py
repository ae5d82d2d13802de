"""How raw images become a model's input, recorded in every `.pqz` made with data.

pqz feeds a model pixels divided by 255, resized where the architecture documents it (LeNet-5's
28x28), then normalised per channel with the training split's mean and standard deviation. A
user's code must do the same to get the accuracy the file reports, so the file keeps the recipe
and `Preprocessing` applies it: `info.input(images)` for `info = inspect_pqz(path)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compression.errors import InvalidConfigError

__all__ = ["Preprocessing", "resize_pixels"]


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """Pixels / 255, resized from `source_size` (height, width) to `shape`'s where that is set,
    then `(x - mean) / std` per channel; `classes` names the model's outputs where the data set
    did (an image folder's class folders, a built-in data set's labels).

    `Preprocessing((1, 28, 28), (0.5,), (0.25,))` turns a uint8 image of 255s into 2.0s.
    """

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_size: tuple[int, int] | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or not all(_positive_int(size) for size in self.shape):
            raise InvalidConfigError(f"input shape must be 3 positive sizes, got {self.shape}")
        channels = self.shape[0]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != channels or not all(_finite(value) for value in values):
                raise InvalidConfigError(
                    f"input {name} must be {channels} finite numbers (one per channel), "
                    f"got {list(values)}"
                )
        if any(value <= 0 for value in self.std):
            raise InvalidConfigError(f"input std must be positive, got {list(self.std)}")
        if self.source_size is not None and (
            len(self.source_size) != 2 or not all(_positive_int(size) for size in self.source_size)
        ):
            raise InvalidConfigError(
                f"input source_size must be 2 positive sizes, got {self.source_size}"
            )
        if self.classes is not None and (
            len(self.classes) == 0 or not all(isinstance(name, str) for name in self.classes)
        ):
            raise InvalidConfigError(f"input classes must be names, got {self.classes!r}")

    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The model's input for `images` (a tensor or numpy array): pixel values 0..255 as
        integers, or floats in 0..1 as torchvision's ToTensor gives them (floats above 1 are
        taken as 0..255, as pqz reads an `.npz`), shaped (n, c, h, w) or (c, h, w), channels
        last ((n, h, w, c) or (h, w, c), as PIL's images come as arrays), or (n, h, w) or
        (h, w) when grey."""
        channels, height, width = self.shape
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # torch warns of a read-only array (np.asarray of a PIL image)
        x = torch.as_tensor(images)
        if x.dtype == torch.bool or x.is_complex():
            raise InvalidConfigError(f"images must be pixel values, got {x.dtype}")
        if x.dim() == 2 and channels == 1:
            x = x[None, None]  # (1, 1, h, w): one grey image
        if x.dim() == 3 and (channels != 1 or channels in (x.shape[0], x.shape[2])):
            x = x.unsqueeze(0)  # (1, c, h, w) or (1, h, w, c): one image
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (n, 1, h, w): grey images without a channel axis
        if x.dim() == 4 and x.shape[1] != channels and x.shape[3] == channels:
            x = x.permute(0, 3, 1, 2)  # (n, c, h, w) from channels last
        if x.dim() != 4 or x.shape[1] != channels:
            raise InvalidConfigError(
                f"images of shape {list(images.shape)} do not fit this model's input "
                f"{channels}x{height}x{width} (want n x {channels} x h x w)"
            )
        pixels = x.float()  # (n, c, h, w)
        if x.is_floating_point() and x.numel() and float(x.max()) <= 1.0:
            pixels = pixels.mul(255.0)  # ToTensor's 0..1
        if x.numel() and not 0.0 <= float(pixels.min()) <= float(pixels.max()) <= 255.0:
            raise InvalidConfigError(
                f"images run from {float(x.min()):.4g} to {float(x.max()):.4g}; give pixel "
                "values 0..255 or floats in 0..1, before any normalisation (this does it)"
            )
        if tuple(pixels.shape[2:]) != (height, width):
            pixels = resize_pixels(pixels, height, width)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (pixels / 255.0 - mean) / std  # (n, c, height, width)

    def describe(self) -> str:
        """One line for `pqz inspect`."""
        channels, height, width = self.shape
        resized = (
            ""
            if self.source_size is None
            else f", resized from {self.source_size[0]}x{self.source_size[1]} (bilinear)"
        )
        mean = ", ".join(f"{value:.4f}" for value in self.mean)
        std = ", ".join(f"{value:.4f}" for value in self.std)
        return (
            f"{channels}x{height}x{width} images{resized}: pixels / 255, then (x - [{mean}]) / "
            f"[{std}] per channel"
        )

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "shape": list(self.shape),
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.source_size is not None:
            document["source_size"] = list(self.source_size)
        if self.classes is not None:
            document["classes"] = list(self.classes)
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """From a manifest's `input`; anything malformed is an InvalidConfigError."""
        unknown = set(data) - {"shape", "mean", "std", "source_size", "classes"}
        if unknown:
            raise InvalidConfigError(f"input has unknown fields {sorted(unknown)}")
        try:
            source_size, classes = data.get("source_size"), data.get("classes")
            return cls(
                shape=tuple(data["shape"]),
                mean=tuple(data["mean"]),
                std=tuple(data["std"]),
                source_size=None if source_size is None else tuple(source_size),
                classes=None if classes is None else tuple(classes),
            )
        except (KeyError, TypeError) as error:
            raise InvalidConfigError(f"input is malformed: {error}") from None


def resize_pixels(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Float pixel values (n, c, h, w) in 0..255 resized as pqz resizes a data set: bilinear,
    antialiased, rounded back to whole pixel values."""
    resized = F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255)  # (n, c, height, width)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
