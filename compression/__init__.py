"""pqz's compression library: zoo, pruning, k-means and product quantization, the `.pqz` format.

Pure: torch and numpy in, plain values out; nothing here knows about the service.
"""

from compression.checkpoint import check_state_dict, load_checkpoint, read_checkpoint
from compression.config import CompressionSpec, PruneConfig, PruneRule, QuantConfig, QuantRule
from compression.errors import (
    CompressionError,
    CorruptArtifactError,
    InvalidCheckpointError,
    InvalidConfigError,
    TrainingDivergedError,
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
    "TrainingDivergedError",
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
