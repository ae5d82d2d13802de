"""pqz's compression library: zoo, pruning, k-means and product quantization, the `.pqz` format.

Pure: torch and numpy in, plain values out; nothing here knows about the service.
"""

from compression.checkpoint import check_state_dict, load_checkpoint, read_checkpoint
from compression.config import (
    CompressionSpec,
    FinetuneConfig,
    PruneConfig,
    PruneRule,
    QuantConfig,
    QuantRule,
    TrainConfig,
)
from compression.data import Dataset, load_dataset
from compression.errors import (
    CompressionError,
    CorruptArtifactError,
    InvalidCheckpointError,
    InvalidConfigError,
    TrainingDivergedError,
    UnsupportedLayerError,
)
from compression.kmeans import kmeans, kmeans_1d
from compression.pipeline import compress_model
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
from compression.preprocessing import Preprocessing
from compression.prune import LayerPruning, get_mask, prune_, remove_masks_
from compression.zoo import Architecture, build_model, get_architecture, list_architectures

__all__ = [
    "FORMAT_VERSION",
    "Architecture",
    "CompressionError",
    "CompressionSpec",
    "CorruptArtifactError",
    "Dataset",
    "FinetuneConfig",
    "InvalidCheckpointError",
    "InvalidConfigError",
    "LayerPruning",
    "LayerQuantization",
    "PqzInfo",
    "Preprocessing",
    "ProductQuantized",
    "PruneConfig",
    "PruneRule",
    "QuantConfig",
    "QuantRule",
    "TrainConfig",
    "TrainingDivergedError",
    "UnsupportedLayerError",
    "build_model",
    "check_state_dict",
    "compress_model",
    "decompress_pqz",
    "get_architecture",
    "get_mask",
    "inspect_pqz",
    "kmeans",
    "kmeans_1d",
    "list_architectures",
    "load_checkpoint",
    "load_dataset",
    "load_pqz",
    "prune_",
    "quantize_",
    "read_checkpoint",
    "read_state_dict",
    "remove_masks_",
    "save_pqz",
]
