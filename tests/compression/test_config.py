from __future__ import annotations

import pytest

from compression import CompressionSpec, InvalidConfigError, PruneConfig, QuantConfig, QuantRule


def test_spec_round_trips_through_dict() -> None:
    spec = CompressionSpec(
        arch="lenet-5",
        data="digits",
        seed=3,
        device="cuda:1",
        prune=PruneConfig(sparsity=0.8, scope="global", modules={"fc2": None}),
        quantize=QuantConfig(
            method="pq",
            block_size=8,
            n_centroids=64,
            module_types={"Conv2d": QuantRule(block_size=9)},
        ),
    )
    assert CompressionSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"quantize": {"n_centroid": 3}}, "unknown field 'n_centroid' in spec.quantize"),
        ({"prune": {"sparsity": 1.5}}, "sparsity 1.5 is outside [0, 1)"),
        ({"prune": {"sparsity": 0.5, "threshold": 0.1}}, "exactly one of sparsity or threshold"),
        ({"quantize": {"n_centroids": 300}}, "n_centroids 300 is outside [2, 256]"),
        ({"quantize": {"n_centroids": None}}, "n_centroids must be an integer, got null"),
        ({"quantize": {"method": None}}, "quantization method null is not one of pq, kmeans"),
        ({"quantize": {"block_size": 0}}, "block_size 0 is outside [1, 64]"),
        ({"quantize": {"block_size": 2.5}}, "block_size must be an integer, got 2.5"),
        ({"quantize": {"method": "svd"}}, "quantization method 'svd' is not one of pq, kmeans"),
        ({"quantize": {"module_types": {"LSTM": None}}}, "module type 'LSTM' is not one of"),
        ({"quantize": {"modules": {"fc[": None}}}, "module name pattern 'fc[' is not a valid"),
        (
            {"quantize": {"modules": {"fc1": {"bits": 4}}}},
            "unknown field 'bits' in spec.quantize.modules['fc1']",
        ),
        ({"quantize": {"n_iter": True}}, "n_iter must be an integer, got true"),
        ({"prune": {"scope": "row"}}, "prune scope 'row' is not one of layer, global"),
        ({"extra": 1}, "unknown field 'extra' in spec"),
        ({"finetune": {"epochs": -1}}, "finetune epochs -1 is outside [0, 10000]"),
        ({"finetune": {"distill": "yes"}}, "finetune distill must be true or false, got 'yes'"),
        (
            {"quantize": {"scalar_when_smaller": 1}},
            "quantize scalar_when_smaller must be true or false, got 1",
        ),
        ({"finetune": {"scope": "head"}}, "finetune scope 'head' is not one of codebooks, all"),
        (
            {"finetune": {"layerwise_epochs": -0.5}},
            "finetune layerwise_epochs -0.5 is outside [0, 10000]",
        ),
        ({"prune": {"max_accuracy_drop": 2}}, "max_accuracy_drop 2 is outside [0, 1]"),
        ({"prune": {"rounds": 1.5}}, "rounds must be an integer, got 1.5"),
        ({"device": "tpu"}, "device 'tpu' is not auto, cpu, cuda or cuda:N"),
        ({"augment": "mixup"}, "augment 'mixup' is not one of auto, none, shift, crop-flip"),
        ({"arch": ""}, "arch must be a non-empty string, got ''"),
        ({"num_classes": 0}, "num_classes 0 is outside [1, 1048576]"),
        ([], "spec must be an object, got list"),
        (
            {"normalize": {"mean": 127.5, "std": 127.5}},
            "spec.normalize: mean 127.5 is outside [0, 1]: normalize applies to pixels / 255, so "
            "statistics of 0..255 pixels are divided by 255 (127.5 -> 0.5)",
        ),
        ({"normalize": {"mean": [0.5]}}, "spec.normalize needs both mean and std, lacks std"),
        (
            {"normalize": {"mean": [0.5, 0.5], "std": [0.5]}},
            "spec.normalize: mean has 2 values but std 1: give as many of each",
        ),
        ({"normalize": {"mean": 0.5, "std": 0}}, "spec.normalize: std must be positive, got [0]"),
    ],
)
def test_spec_rejects_invalid_values_naming_the_field(data: object, message: str) -> None:
    with pytest.raises(InvalidConfigError) as raised:
        CompressionSpec.from_dict(data)
    assert message in str(raised.value)


def test_a_bad_value_in_a_layer_rule_says_which_rule_holds_it() -> None:
    data = {"prune": {"modules": {"fc1": {"sparsity": 2}}}}
    with pytest.raises(InvalidConfigError) as raised:
        CompressionSpec.from_dict(data)
    assert str(raised.value) == "spec.prune.modules['fc1']: sparsity 2 is outside [0, 1)"


def test_layer_rules_prefer_name_over_type_over_default() -> None:
    config = QuantConfig(
        n_centroids=128,
        module_types={"Linear": QuantRule(block_size=8)},
        modules={r"head\..*": None, "fc1": QuantRule(n_centroids=16)},
    )
    assert config.rule_for("fc1", "Linear") == QuantRule(
        method="pq", block_size=None, n_centroids=16
    )
    assert config.rule_for("fc2", "Linear") == QuantRule(method="pq", block_size=8, n_centroids=128)
    assert config.rule_for("conv", "Conv2d") == QuantRule(
        method="pq", block_size=None, n_centroids=128
    )
    assert config.rule_for("head.out", "Linear") is None
