"""The accuracy promise: back-off, the confirm split's looks, and the pipeline that keeps it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import compression.pipeline as pipeline_module
from compression import CompressionSpec, build_model, load_pqz
from compression.config import (
    FinetuneConfig,
    PromiseConfig,
    PruneConfig,
    QuantConfig,
    QuantRule,
    TrainConfig,
)
from compression.data import Dataset, Split, fit_to, load_dataset
from compression.finish import finer
from compression.promise import Start, confirm_confidence, keep_promise
from compression.train import evaluate, train

CPU = torch.device("cpu")
N = 1000


def _verdicts(lost: int) -> torch.Tensor:
    """(N,) verdicts: the baseline's (wrong on the last 100 images) with `lost` more wrong."""
    verdicts = torch.ones(N, dtype=torch.bool)
    verdicts[N - 100 :] = False
    verdicts[:lost] = False
    return verdicts


class Tagged(nn.Module):
    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label


def _run(
    losses: dict[str, tuple[int, int]], config: PromiseConfig, tolerance: float = 0.003
) -> tuple[Any, list[str]]:
    """keep_promise over starts named by `losses` (label -> images lost on search, confirm)."""
    calls: list[str] = []
    starts = [Start(label, 0.9 - 0.1 * index) for index, label in enumerate(losses)]

    def finish(start: Start, index: int) -> nn.Module:
        calls.append(f"finish {start.label}")
        return Tagged(start.label)

    def search(model: nn.Module) -> torch.Tensor:
        return _verdicts(losses[model.label][0])

    def confirm(model: nn.Module) -> torch.Tensor:
        calls.append(f"confirm {model.label}")
        return _verdicts(losses[model.label][1])

    def baseline_confirm() -> torch.Tensor:
        calls.append("baseline confirm")
        return _verdicts(0)

    outcome = keep_promise(
        starts,
        config=config,
        tolerance=tolerance,
        finish=finish,
        search=search,
        confirm=confirm,
        baseline_search=_verdicts(0),
        baseline_confirm=baseline_confirm,
        report=lambda message: None,
    )
    return outcome, calls


def test_a_miss_on_the_search_split_backs_off_without_a_look_at_the_confirm_split() -> None:
    outcome, calls = _run(
        {"round 3": (9, 0), "round 2": (2, 1), "round 1": (0, 0)}, PromiseConfig()
    )
    assert calls == ["finish round 3", "finish round 2", "baseline confirm", "confirm round 2"]
    assert outcome.model.label == "round 2"
    assert outcome.tolerance_met
    assert outcome.looks == 1
    assert [entry["kept"] for entry in outcome.tries] == [False, True]
    assert "confirm" not in outcome.tries[0]


def test_a_miss_on_the_confirm_split_is_a_look_and_backs_off_again() -> None:
    outcome, calls = _run(
        {"round 3": (3, 5), "round 2": (1, 2), "round 1": (0, 0)}, PromiseConfig()
    )
    assert outcome.model.label == "round 2"
    assert outcome.looks == 2
    assert calls.count("baseline confirm") == 1  # the baseline is judged once, lazily
    assert outcome.confirm is not None
    assert outcome.confirm.drop == pytest.approx(0.002)


def test_the_upper_bound_is_held_with_the_interval_widened_for_every_possible_look() -> None:
    # 8 of 1,000 lost: the estimate holds at 1 point; the upper bound (1.49 at 95%) does not.
    config = PromiseConfig(hold_on="upper_bound", max_tries=4)
    outcome, _ = _run({"round 2": (0, 8), "round 1": (0, 0)}, config, tolerance=0.01)
    first = outcome.tries[0]["confirm"]
    assert first["decision_confidence"] == pytest.approx(confirm_confidence(config)) == 0.9875
    assert first["decision_interval"][1] > first["drop_ci95"][1] > 0.01 > first["drop"]
    assert outcome.model.label == "round 1"
    assert outcome.tolerance_met


def test_when_every_try_misses_the_least_compressed_is_kept_with_a_reason() -> None:
    outcome, calls = _run({"round 2": (9, 9), "round 1": (8, 8)}, PromiseConfig())
    assert not outcome.tolerance_met
    assert outcome.model.label == "round 1"
    assert calls[-1] == "confirm round 1"  # judged for the record
    assert outcome.reason.startswith("2 tries missed the tolerance of 0.30 points; the last, ")
    assert "no less compressed state is left" in outcome.reason


def test_max_tries_bounds_the_back_off_and_says_what_was_left() -> None:
    outcome, calls = _run(
        {"round 3": (9, 9), "round 2": (9, 9), "round 1": (0, 0)}, PromiseConfig(max_tries=2)
    )
    assert [call for call in calls if call.startswith("finish")] == [
        "finish round 3",
        "finish round 2",
    ]
    assert not outcome.tolerance_met
    assert "promise.max_tries 2 left 1 less compressed state untried" in outcome.reason


def test_finer_quantization_halves_each_sub_vector_and_quadruples_scalar_levels() -> None:
    layers = [
        {"name": "conv1", "encoding": "pq", "block_size": 9, "n_centroids": 256},
        {"name": "fc1.weight", "encoding": "pq", "block_size": 1, "n_centroids": 256},
        {"name": "fc2", "encoding": "kmeans", "block_size": None, "n_centroids": 16},
        {"name": "fc3", "encoding": "kmeans", "block_size": None, "n_centroids": 128},
        {"name": "out", "encoding": "float16", "block_size": None, "n_centroids": None},
    ]
    user = QuantConfig(modules={"fc.*": QuantRule(method="kmeans", n_centroids=16)})
    config = finer(user, layers)
    assert config.modules == {
        "conv1": QuantRule(method="pq", block_size=4),
        "fc2": QuantRule(method="kmeans", n_centroids=64),
        "fc3": QuantRule(method="kmeans", n_centroids=256),  # at most 256 levels
        "fc.*": QuantRule(method="kmeans", n_centroids=16),  # after: the first match wins
    }
    assert list(config.modules)[-1] == "fc.*"
    assert (config.method, config.block_size) == (user.method, user.block_size)


# The pipeline on real data: tiny codebooks push the most pruned state past the tolerance.


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return fit_to(load_dataset("digits"), (1, 28, 28), True, "lenet-300-100")


@pytest.fixture(scope="module")
def trained(digits: Dataset) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet-300-100")
    train(model, digits, TrainConfig(epochs=8, lr=0.05), device=CPU)
    return model


def test_the_pipeline_backs_off_until_the_finished_model_holds_on_the_confirm_split(
    trained: nn.Module, digits: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 centroids of 4 values cost the last round's 74%-sparse model about 9 points (with
    gradual pruning, 32 no longer did): the pipeline finishes again from the less pruned
    states, and the one that holds is kept; the confirm split is read only to judge finished
    candidates (the evaluator is instrumented)."""
    assert digits.confirm is not None
    stage: list[str] = ["start"]
    reads: list[tuple[str, str]] = []  # (split, stage at the time)
    evaluator = pipeline_module.predictions_correct

    def instrumented(model: nn.Module, dataset: Dataset, split: Split, **kwargs: Any) -> Any:
        name = next(n for n in ("val", "confirm", "test") if getattr(dataset, n) is split)
        reads.append((name, stage[0]))
        return evaluator(model, dataset, split, **kwargs)

    monkeypatch.setattr(pipeline_module, "predictions_correct", instrumented)

    def progress(name: str, fraction: float, message: str) -> None:
        stage[0] = "judging" if "split" in message else name

    spec = CompressionSpec(
        data="digits",
        prune=PruneConfig(
            max_accuracy_drop=0.05,
            rounds=4,
            retrain_epochs=0.5,
            retrain_lr=0.01,
            scan_samples=0,
            distill=False,
        ),
        quantize=QuantConfig(n_centroids=16),
        # The cheap finish (`--fast`'s): it cannot make up for 16 centroids on a sparse model.
        finetune=FinetuneConfig(epochs=0.5, scope="codebooks", distill=False, layerwise_epochs=0),
    )
    info = pipeline_module.compress_model(
        copy.deepcopy(trained),
        spec,
        tmp_path / "backed-off.pqz",
        architecture="lenet-300-100",
        num_classes=10,
        dataset=digits,
        device=CPU,
        progress=progress,
    )
    promise = info.metrics["promise"]
    tries = promise["tries"]
    assert len(tries) >= 2
    assert not tries[0]["kept"]
    assert tries[-1]["kept"]
    assert tries[0]["search"]["drop"] > 0.05
    assert tries[-1]["sparsity"] < tries[0]["sparsity"]
    assert promise["tolerance_met"] is True
    assert info.metrics["tolerance_met"] is True
    assert info.metrics["confirm"]["drop"] <= 0.05
    assert info.metrics["weight_sparsity"] == pytest.approx(tries[-1]["sparsity"], abs=1e-6)
    # The confirm split: the baseline once and each look, all after a candidate was finished.
    confirm_reads = [when for split, when in reads if split == "confirm"]
    assert len(confirm_reads) == promise["looks"] + 1
    assert all(when in ("finetune", "judging") for when in confirm_reads)
    first = reads.index(("confirm", confirm_reads[0]))
    assert ("val", "finetune") in reads[:first]  # the search split judged the candidate first
    # The test split is reported, from the file's own contents.
    model = load_pqz(tmp_path / "backed-off.pqz")
    accuracy = evaluate(model, digits, digits.test, device=CPU)
    assert accuracy == pytest.approx(info.metrics["test"]["accuracy"], abs=1e-9)
    assert info.metrics["accuracy_drop"] == info.metrics["test"]["drop"]
    low, high = info.metrics["accuracy_drop_ci95"]
    assert low <= info.metrics["accuracy_drop"] <= high
