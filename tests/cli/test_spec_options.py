"""The spec options `pqz compress` and `pqz submit` share, applied to a spec document."""

from __future__ import annotations

import pytest

from cli.spec_options import FAST, Augmentation, Method, SpecOptions
from compression import CompressionSpec


def test_options_replace_the_files_values_and_keep_the_rest() -> None:
    document = {
        "prune": {"threshold": 0.1, "rounds": 3},
        "quantize": {"n_iter": 5, "method": "pq"},
        "seed": 7,
    }
    options = SpecOptions(
        sparsity=0.5,
        method=Method.kmeans,
        centroids=16,
        scalar_when_smaller=False,
        augment=Augmentation.shift,
    )
    assert options.apply(document) == {
        "prune": {"threshold": None, "rounds": 3, "sparsity": 0.5},
        "quantize": {
            "n_iter": 5,
            "method": "kmeans",
            "n_centroids": 16,
            "scalar_when_smaller": False,
        },
        "seed": 7,
        "augment": "shift",
    }
    assert document["prune"] == {"threshold": 0.1, "rounds": 3}  # the caller's is untouched


def test_no_options_change_nothing_and_a_null_prune_section_takes_them() -> None:
    document = {"prune": None, "quantize": {"block_size": 8}}
    assert SpecOptions().apply(document) == document
    assert SpecOptions(max_accuracy_drop=0.01).apply(document)["prune"] == {
        "max_accuracy_drop": 0.01
    }


def test_fast_is_the_cheap_preset_under_the_explicit_options() -> None:
    document = {"prune": {"rounds": 3, "max_accuracy_drop": 0.01}, "finetune": {"epochs": 1}}
    fast = SpecOptions(fast=True, max_accuracy_drop=0.005).apply(document)
    assert fast["prune"] == {**FAST["prune"], "max_accuracy_drop": 0.005}  # the option wins
    assert fast["finetune"] == {"epochs": 1, **FAST["finetune"]}
    spec = CompressionSpec.from_dict(fast)  # a valid spec, cheaper than the defaults
    default = CompressionSpec()
    assert spec.finetune.layerwise_epochs < default.finetune.layerwise_epochs
    assert spec.prune is not None
    assert default.prune is not None
    assert spec.prune.retrain_epochs * spec.prune.rounds < (
        default.prune.retrain_epochs * default.prune.rounds
    )
    assert SpecOptions(fast=True).apply({"prune": None})["prune"] is None  # no pruning stays


def test_a_section_that_is_not_an_object_is_left_for_validation_to_name() -> None:
    document = {"quantize": [1, 2]}
    assert SpecOptions(centroids=16).apply(document) == {"quantize": [1, 2]}


def test_sparsity_and_threshold_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        SpecOptions(sparsity=0.5, threshold=0.1)
    assert raised.value.code == 2
    assert "give --sparsity or --threshold, not both" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (SpecOptions(max_accuracy_drop=0.01), "--max-accuracy-drop"),
        (SpecOptions(augment=Augmentation.shift), "--augment"),
        (SpecOptions(fast=True), "--fast"),
    ],
)
def test_an_option_only_data_uses_is_refused_without_data_not_ignored(
    capsys: pytest.CaptureFixture[str], options: SpecOptions, named: str
) -> None:
    options.refuse_without_data("digits")  # with data: taken
    SpecOptions(sparsity=0.5, mean="0.5", std="0.5").refuse_without_data(None)  # post-training's
    with pytest.raises(SystemExit) as raised:
        options.refuse_without_data(None)
    assert raised.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {named} applies only with data (--data, or the spec's data): without it the "
        "job is post-training, with no scan and no training"
    )
