"""The API's torch-free spec validation agrees with the library's, field for field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.spec import JobSpec
from compression import CompressionSpec, InvalidConfigError

SPECS: list[dict[str, Any]] = [
    {},
    {"data": "digits", "seed": 3, "device": "cuda:1", "num_classes": 7},
    {"data": "digits", "augment": "shift"},
    {"augment": "crop-flip"},
    {"prune": None},
    {
        "prune": {
            "sparsity": 0.9,
            "scope": "global",
            "modules": {"fc3": None, "fc2": {"threshold": 0.01}},
        }
    },
    {"prune": {"max_accuracy_drop": 0.01, "rounds": 3, "retrain_epochs": 0.5, "scan_samples": 0}},
    {
        "quantize": {
            "method": "kmeans",
            "n_centroids": 32,
            "module_types": {"Conv2d": {"block_size": 9}},
        }
    },
    {"quantize": {"fallback_dtype": "float16", "modules": {"conv.*": None}}},
    {"finetune": {"epochs": 0, "distill": True, "scope": "all", "layerwise_epochs": 0.5}},
    {"finetune": {"epochs": 3, "lr": 1}, "prune": {"retrain_epochs": 1, "retrain_lr": 0.5}},
    {"prune": {"threshold": 0, "max_accuracy_drop": 1, "modules": {"fc1": {"sparsity": 0}}}},
    {"data": "digits", "normalize": {"mean": [0.5], "std": [0.5]}},
    {"data": "digits", "promise": {"hold_on": "upper_bound", "max_tries": 1}},
    {"promise": {}},
    {"normalize": {"mean": [0, 0.5, 1], "std": [1, 0.25, 2]}},
    {"normalize": None},
    {"normalize": {"mean": 0.5, "std": [0.25]}},
    {"normalize": {"mean": 0, "std": 1}},
    # invalid from here on
    {"promise": {"hold_on": "interval"}},
    {"promise": {"max_tries": 0}},
    {"promise": {"max_tries": 2.5}},
    {"promise": {"confidence": 0.9}},
    {"normalize": {"mean": [0.5]}},
    {"normalize": {"mean": [0.5, 0.5], "std": [1]}},
    {"normalize": {"mean": [0.5], "std": [0]}},
    {"normalize": {"mean": "0.5", "std": 0.5}},
    {"normalize": {"mean": 0.5, "std": 0}},
    {"normalize": {"mean": 127.5, "std": 127.5}},
    {"normalize": {"mean": [0.5], "std": [-0.5]}},
    {"normalize": {"mean": [-0.1], "std": [0.5]}},
    {"normalize": {"mean": [], "std": []}},
    {"normalize": {"mean": [1] * 5, "std": [1] * 5}},
    {"normalize": {"mean": [True], "std": [1]}},
    {"normalize": {"mean": [0], "std": [1], "scale": 255}},
    {"normalize": "imagenet"},
    {"prune": {"sparsity": 1.0}},
    {"prune": {"sparsity": 0.5, "threshold": 0.1}},
    {"prune": {"modules": {"fc1": {"sparsity": 0.5, "threshold": 0.1}}}},
    {"prune": {"modules": {"fc[": None}}},
    {"prune": {"rounds": -1}},
    {"prune": {"scope": "row"}},
    {"quantize": {"n_centroids": 1}},
    {"quantize": {"n_centroids": 257}},
    {"quantize": {"block_size": 0}},
    {"quantize": {"block_size": 2.5}},
    {"quantize": {"method": "svd"}},
    {"quantize": {"module_types": {"LSTM": None}}},
    {"quantize": {"modules": {"fc1": {"bits": 4}}}},
    {"quantize": {"n_iter": True}},
    {"finetune": {"epochs": -1}},
    {"finetune": {"distill": "yes"}},
    {"finetune": {"scope": "head"}},
    {"finetune": {"layerwise_epochs": -1}},
    {"augment": "mixup"},
    {"augment": True},
    {"device": "tpu"},
    {"seed": -1},
    {"num_classes": 0},
    {"surprise": 1},
]


@pytest.mark.parametrize("spec", SPECS, ids=[str(i) for i in range(len(SPECS))])
def test_api_and_library_accept_and_reject_alike(spec: dict[str, Any]) -> None:
    body = {"arch": "lenet-5", **spec}
    try:
        library = CompressionSpec.from_dict(body).to_dict()
    except InvalidConfigError:
        library = None
    try:
        api = JobSpec.model_validate(body).model_dump(mode="json")
    except ValidationError:
        api = None
    assert (library is None) == (api is None), (library, api)
    if library is not None:
        # The same defaults, filled in the same way, down to the JSON text (1 stays 1, not 1.0).
        assert json.dumps(api) == json.dumps(library)
