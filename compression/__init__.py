"""pqz's compression library: zoo, pruning, k-means and product quantization, the `.pqz` format.

Pure: torch and numpy in, plain values out; nothing here knows about the service.
Names are imported on first use (PEP 562), so that `compression.errors` and `compression.config`
stay cheap: the API process and the CLI's error handling use them without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compression.checkpoint import check_state_dict, load_checkpoint, read_checkpoint
    from compression.config import CompressionSpec, PruneConfig, PruneRule, QuantConfig, QuantRule
    from compression.errors import (
        CompressionError,
        CorruptArtifactError,
        InvalidCheckpointError,
        InvalidConfigError,
        UnsupportedLayerError,
    )
    from compression.kmeans import kmeans, kmeans_1d
    from compression.pq import LayerQuantization, ProductQuantized, quantize_
    from compression.pqz import (
        FORMAT_VERSION,
        PqzInfo,
        decompress_pqz,
        inspect_pqz,
        load_pqz,
        read_state_dict,
        save_pqz,
    )
    from compression.prune import LayerPruning, get_mask, prune_, remove_masks_
    from compression.zoo import Architecture, build_model, get_architecture, list_architectures

_SOURCES = {
    "Architecture": "compression.zoo",
    "CompressionError": "compression.errors",
    "CompressionSpec": "compression.config",
    "CorruptArtifactError": "compression.errors",
    "FORMAT_VERSION": "compression.pqz",
    "InvalidCheckpointError": "compression.errors",
    "InvalidConfigError": "compression.errors",
    "LayerPruning": "compression.prune",
    "LayerQuantization": "compression.pq",
    "PqzInfo": "compression.pqz",
    "ProductQuantized": "compression.pq",
    "PruneConfig": "compression.config",
    "PruneRule": "compression.config",
    "QuantConfig": "compression.config",
    "QuantRule": "compression.config",
    "UnsupportedLayerError": "compression.errors",
    "build_model": "compression.zoo",
    "check_state_dict": "compression.checkpoint",
    "decompress_pqz": "compression.pqz",
    "get_architecture": "compression.zoo",
    "get_mask": "compression.prune",
    "inspect_pqz": "compression.pqz",
    "kmeans": "compression.kmeans",
    "kmeans_1d": "compression.kmeans",
    "list_architectures": "compression.zoo",
    "load_checkpoint": "compression.checkpoint",
    "load_pqz": "compression.pqz",
    "prune_": "compression.prune",
    "quantize_": "compression.pq",
    "read_checkpoint": "compression.checkpoint",
    "read_state_dict": "compression.pqz",
    "remove_masks_": "compression.prune",
    "save_pqz": "compression.pqz",
}

__all__ = [
    "FORMAT_VERSION",
    "Architecture",
    "CompressionError",
    "CompressionSpec",
    "CorruptArtifactError",
    "InvalidCheckpointError",
    "InvalidConfigError",
    "LayerPruning",
    "LayerQuantization",
    "PqzInfo",
    "ProductQuantized",
    "PruneConfig",
    "PruneRule",
    "QuantConfig",
    "QuantRule",
    "UnsupportedLayerError",
    "build_model",
    "check_state_dict",
    "decompress_pqz",
    "get_architecture",
    "get_mask",
    "inspect_pqz",
    "kmeans",
    "kmeans_1d",
    "list_architectures",
    "load_checkpoint",
    "load_pqz",
    "prune_",
    "quantize_",
    "read_checkpoint",
    "read_state_dict",
    "remove_masks_",
    "save_pqz",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'compression' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value
