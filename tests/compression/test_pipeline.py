"""The thesis pipeline on scikit-learn's digits: scan, retraining, fine-tuning, packaging."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compression import (
    CompressionSpec,
    PqzInfo,
    PruneConfig,
    PruneRule,
    QuantConfig,
    build_model,
    get_mask,
    load_pqz,
    prune_,
    quantize_,
    scan,
)
from compression.config import FinetuneConfig, TrainConfig
from compression.data import Dataset, fit_to, load_dataset
from compression.errors import InvalidConfigError
from compression.finetune import codebooks, finetune
from compression.pipeline import Pipeline, compress_model, prune_block_sizes
from compression.prune import clone_model, prunable_layers
from compression.scan import (
    Retrain,
    ScanResult,
    SensitivityCurve,
    Step,
    choose,
    prune_by_scan_,
    sensitivity,
)
from compression.train import evaluate, train

CPU = torch.device("cpu")
LENET5 = ("conv1", "conv2", "fc1", "fc2")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return fit_to(load_dataset("digits"), (1, 28, 28), True, "lenet-300-100")


@pytest.fixture(scope="module")
def trained(digits: Dataset) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet-300-100")
    train(model, digits, TrainConfig(epochs=8, lr=0.05), device=CPU)
    return model


def retraining(digits: Dataset) -> Retrain:
    """The scan's retraining for these tests: one epoch at lr 0.01, seeded by the round."""

    def retrain(candidate: nn.Module, round_index: int, before_step: Step | None) -> None:
        config = TrainConfig(epochs=1, lr=0.01)
        train(candidate, digits, config, device=CPU, seed=round_index, before_step=before_step)

    return retrain


def test_training_learns_digits(trained: nn.Module, digits: Dataset) -> None:
    assert evaluate(trained, digits, digits.test, device=CPU) > 0.9


@pytest.mark.parametrize("tolerance", [0.01, 0.04])
def test_scan_keeps_validation_accuracy_within_tolerance(
    trained: nn.Module, digits: Dataset, tolerance: float
) -> None:
    model = copy.deepcopy(trained)

    def score(candidate: nn.Module) -> float:
        return evaluate(candidate, digits, digits.val, device=CPU)

    baseline = score(model)
    result = prune_by_scan_(
        model,
        PruneConfig(max_accuracy_drop=tolerance, rounds=3),
        scan_score=score,
        val_score=score,
        retrain=retraining(digits),
    )
    assert baseline - score(model) <= tolerance + 1e-9
    assert result.final_accuracy == score(model)
    assert result.rounds, "at least one round ran"
    assert all(
        len(curve["accuracy"]) == len(curve["sparsity"]) for curve in result.rounds[0]["curves"]
    )
    sparsities = [
        1 - float(get_mask(module).float().mean()) for _, module, _ in prunable_layers(model)
    ]
    assert max(sparsities) >= 0.2  # the scan pruned something


@pytest.mark.parametrize("gradual", [0.0, 0.5])
def test_a_round_reaches_its_sparsity_gradually_over_the_first_part_of_retraining(
    trained: nn.Module, digits: Dataset, gradual: float
) -> None:
    """Zhu & Gupta's ramp: the cut grows step by step and is whole by `gradual` of the
    round's steps; with 0 the whole cut is made before the first step."""
    model = copy.deepcopy(trained)
    seen: list[tuple[float, float]] = []  # (fraction of the steps done, sparsity of fc1)

    def score(candidate: nn.Module) -> float:
        return evaluate(candidate, digits, digits.val, device=CPU)

    def retrain(candidate: nn.Module, round_index: int, before_step: Step | None) -> None:
        def step(fraction: float) -> None:
            if before_step is not None:
                before_step(fraction)
            seen.append((fraction, 1 - float(get_mask(candidate.fc1).float().mean())))

        train(candidate, digits, TrainConfig(epochs=1), device=CPU, before_step=step)

    result = prune_by_scan_(
        model,
        PruneConfig(max_accuracy_drop=1.0, rounds=1, gradual=gradual),
        scan_score=score,
        val_score=score,
        retrain=retrain,
    )
    target = result.rounds[0]["target_sparsity"]["fc1"]
    sparsities = [sparsity for _, sparsity in seen]
    assert sparsities == sorted(sparsities), "a ramp never gives weights back"
    assert sparsities[-1] == pytest.approx(target, abs=0.01)
    reached = next(fraction for fraction, sparsity in seen if sparsity >= target - 0.01)
    if gradual:
        assert 0 < sparsities[0] < target / 2, "the first cut is a small part of the round's"
        assert 0.4 <= reached <= gradual
    else:
        assert reached == 0.0


@pytest.mark.parametrize("budget", [0.0, 0.02, 0.1])
def test_a_curve_stopped_at_the_budget_is_a_prefix_that_chooses_the_same(
    trained: nn.Module, digits: Dataset, budget: float
) -> None:
    model = copy.deepcopy(trained)
    layers = [(name, module) for name, module, _ in prunable_layers(model)]
    prune_(model, PruneConfig(sparsity=0.0))  # every layer masked, all kept, as the scan wants

    def score(candidate: nn.Module) -> float:
        return evaluate(candidate, digits, digits.val, device=CPU)

    reference = score(model)
    whole = sensitivity(model, layers, score)
    stopped = sensitivity(model, layers, score, stop=lambda accuracy: reference - accuracy > budget)
    assert choose(stopped, reference, budget) == choose(whole, reference, budget)
    for short, full in zip(stopped, whole, strict=True):
        n = len(short.accuracy)
        assert (short.sparsity, short.accuracy) == (full.sparsity[:n], full.accuracy[:n])
        beyond = [reference - accuracy > budget for accuracy in full.accuracy]
        assert n == (beyond.index(True) + 1 if True in beyond else len(full.accuracy))
    assert sum(len(c.accuracy) for c in stopped) < sum(len(c.accuracy) for c in whole)


def test_later_scans_stop_each_curve_where_the_choice_is_made(
    trained: nn.Module, digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ending a steering scan's curves at the first level beyond the budget changes no round,
    no mask and no kept curve; it only saves evaluations."""

    def run() -> tuple[ScanResult, nn.Module, int]:
        model = copy.deepcopy(trained)
        calls = 0

        def score(candidate: nn.Module) -> float:
            nonlocal calls
            calls += 1
            return evaluate(candidate, digits, digits.val, device=CPU)

        result = prune_by_scan_(
            model,
            PruneConfig(max_accuracy_drop=0.04, rounds=4),
            scan_score=score,
            val_score=score,
            retrain=retraining(digits),
        )
        return result, model, calls

    stopped, stopped_model, stopped_calls = run()
    original = scan.sensitivity

    def whole_curves(*args: Any, stop: object = None, **kwargs: Any) -> list[SensitivityCurve]:
        return original(*args, **kwargs)

    monkeypatch.setattr(scan, "sensitivity", whole_curves)
    whole, whole_model, whole_calls = run()

    assert sum(r["kept"] for r in whole.rounds) >= 2  # a later scan steered
    assert stopped.rounds == whole.rounds
    for (_, a, _), (_, b, _) in zip(
        prunable_layers(stopped_model), prunable_layers(whole_model), strict=True
    ):
        assert torch.equal(get_mask(a), get_mask(b))
    assert stopped_calls < whole_calls


def test_masks_survive_retraining_and_finetuning(trained: nn.Module, digits: Dataset) -> None:
    model = copy.deepcopy(trained)
    from compression import prune_

    prune_(model, PruneConfig(sparsity=0.8))
    zeros = {name: (module.weight == 0).clone() for name, module, _ in prunable_layers(model)}
    train(model, digits, TrainConfig(epochs=1, lr=0.05), device=CPU)
    quantize_(model, QuantConfig(n_centroids=16))
    finetune(model, digits, FinetuneConfig(epochs=1, lr=0.01), device=CPU)
    for name, module, _ in prunable_layers(model):
        assert torch.equal(module.weight == 0, zeros[name])


def test_finetuning_changes_only_centroids_and_keeps_codes(
    trained: nn.Module, digits: Dataset
) -> None:
    model = copy.deepcopy(trained)
    quantize_(model, QuantConfig(n_centroids=8))
    pairs = codebooks(model)
    codes = [quantizer.codes.clone() for _, quantizer in pairs]
    before_books = [codebook.detach().clone() for codebook, _ in pairs]
    books = {id(codebook) for codebook, _ in pairs}
    before_other = {
        name: p.detach().clone() for name, p in model.named_parameters() if id(p) not in books
    }
    accuracy = evaluate(model, digits, digits.val, device=CPU)
    finetune(
        model,
        digits,
        FinetuneConfig(epochs=3, lr=0.01, scope="codebooks", distill=False),
        device=CPU,
    )
    assert all(torch.equal(q.codes, c) for (_, q), c in zip(pairs, codes, strict=True))
    assert any(
        not torch.equal(b.detach(), old) for (b, _), old in zip(pairs, before_books, strict=True)
    )
    for name, p in model.named_parameters():
        if id(p) not in books:
            assert torch.equal(p.detach(), before_other[name]), name
    for codebook, _ in pairs:  # rounded to what the file stores
        assert torch.equal(codebook.detach(), codebook.detach().half().float())
    assert evaluate(model, digits, digits.val, device=CPU) >= accuracy - 0.02


def test_pipeline_writes_a_pqz_whose_accuracy_is_what_it_reports(
    trained: nn.Module, digits: Dataset, tmp_path: Path
) -> None:
    model = copy.deepcopy(trained)
    spec = CompressionSpec(
        data="digits",
        prune=PruneConfig(max_accuracy_drop=0.03, rounds=2, retrain_epochs=1),
        finetune=FinetuneConfig(epochs=1),
    )
    stages = []
    info = compress_model(
        model,
        spec,
        tmp_path / "digits.pqz",
        architecture="lenet-300-100",
        num_classes=10,
        dataset=digits,
        device=CPU,
        progress=lambda stage, fraction, message: stages.append(stage),
    )
    assert list(dict.fromkeys(stages)) == ["baseline", "prune", "quantize", "finetune", "package"]
    metrics = info.metrics
    loaded = load_pqz(tmp_path / "digits.pqz")
    assert evaluate(loaded, digits, digits.test, device=CPU) == metrics["final"]["test_accuracy"]
    assert metrics["weight_sparsity"] > 0.3
    assert info.compression_ratio > 10
    assert CompressionSpec.from_dict(info.spec) == spec
    assert set(metrics["duration_s"]) >= {"baseline", "prune", "quantize", "finetune"}
    for _, module, _ in prunable_layers(model):  # pruned in whole sub-vectors of 4
        mask = get_mask(module)
        assert mask is not None
        runs = mask.flatten().view(-1, 4)
        assert bool((runs.all(dim=1) | ~runs.any(dim=1)).all())
    assert len([r for r in metrics["prune"]["rounds"] if "curves" in r]) == 1
    val_drop = metrics["baseline"]["val_accuracy"] - metrics["final"]["val_accuracy"]
    assert ("warnings" in metrics) == (val_drop > 0.03)


def _compress(
    trained: nn.Module, spec: CompressionSpec, path: Path, digits: Dataset
) -> tuple[PqzInfo, list[str]]:
    """A copy of the trained LeNet-300-100 compressed by `spec`, and its progress messages."""
    messages: list[str] = []
    info = compress_model(
        copy.deepcopy(trained),
        spec,
        path,
        architecture="lenet-300-100",
        num_classes=10,
        dataset=digits,
        device=CPU,
        progress=lambda stage, fraction, message: messages.append(message),
    )
    return info, messages


def test_a_model_that_lost_more_than_the_tolerance_says_so(
    trained: nn.Module, digits: Dataset, tmp_path: Path
) -> None:
    spec = CompressionSpec(
        data="digits",
        prune=PruneConfig(sparsity=0.98, max_accuracy_drop=0.01, retrain_epochs=0),
        quantize=QuantConfig(n_centroids=2),
        finetune=FinetuneConfig(epochs=0.1, layerwise_epochs=0),
    )
    info, messages = _compress(trained, spec, tmp_path / "lossy.pqz", digits)
    metrics = info.metrics
    confirm = metrics["confirm"]
    low, high = confirm["drop_ci95"]
    assert metrics["tolerance_met"] is False
    assert metrics["promise"]["tolerance_met"] is False
    # A fixed sparsity leaves no pruning state to back off to: only finer quantization.
    tries = metrics["promise"]["tries"]
    assert [entry["start"] for entry in tries] == [
        "the model as pruned",
        "the model as pruned, finer quantization",
    ]
    assert info.spec["quantize"]["modules"]  # the file's spec says how it was quantized
    assert metrics["warnings"] == [
        f"the finished model lost {100 * confirm['drop']:.2f} points on the confirm split "
        f"(95% CI {100 * low:.2f} to {100 * high:.2f}), more than the 1.00 that "
        "max_accuracy_drop 0.01 allows (prune.sparsity and prune.threshold are applied as "
        "given, so there is no pruning state to back off to; without them the threshold scan "
        "prunes within the tolerance)"
    ]
    assert f"warning: {metrics['warnings'][0]}" in messages


def test_a_validation_split_too_small_for_the_tolerance_is_said_at_the_start(
    trained: nn.Module, digits: Dataset
) -> None:
    messages: list[str] = []
    spec = CompressionSpec(data="digits")  # max_accuracy_drop 0.003: 0.3 points
    pipeline = Pipeline(
        copy.deepcopy(trained), spec, digits, CPU, lambda *event: messages.append(event[2])
    )
    pipeline.baseline()
    warnings = pipeline.metrics["warnings"]
    assert warnings == [
        f"the {split} split has 144 images, so one image is 0.69 points, more than the 0.30 "
        "that max_accuracy_drop 0.003 allows: one image lost there misses the tolerance, so the "
        "decisions made on it are coarse (more data, or a larger max_accuracy_drop)"
        for split in ("validation", "confirm")
    ]
    assert all(f"warning: {warning}" in messages for warning in warnings)


def test_a_layer_pattern_that_matches_nothing_is_refused_before_any_stage(
    trained: nn.Module, digits: Dataset
) -> None:
    spec = CompressionSpec(data="digits", quantize=QuantConfig(modules={"^fc": None}))
    with pytest.raises(InvalidConfigError, match="quantize.modules pattern '\\^fc' matches no"):
        Pipeline(copy.deepcopy(trained), spec, digits, CPU)


def test_fixed_layer_rules_count_against_the_tolerance_from_the_unpruned_model(
    trained: nn.Module, digits: Dataset
) -> None:
    spec = CompressionSpec(
        data="digits",
        prune=PruneConfig(
            max_accuracy_drop=0.03,
            rounds=2,
            retrain_epochs=1,
            modules={"fc2": PruneRule(sparsity=0.5)},
        ),
    )
    pipeline = Pipeline(copy.deepcopy(trained), spec, digits, CPU)
    pipeline.baseline()
    pipeline.prune()
    pruned = pipeline.metrics["prune"]
    baseline = pipeline.metrics["baseline"]["val_accuracy"]
    assert pruned["baseline_accuracy"] == baseline  # not the model after the fixed rule
    assert baseline - pruned["fixed_accuracy"] <= 0.03
    for record in pruned["rounds"]:
        assert record["kept"] == (baseline - record["val_accuracy"] <= 0.03)
    assert pruned["layers"]["fc2"] == pytest.approx(0.5, abs=0.01)
    assert pruned["layers"]["fc1"] > 0.3  # the scan pruned the others


def test_fixed_layer_rules_that_lose_more_than_the_tolerance_stop_the_scan_and_are_named(
    trained: nn.Module, digits: Dataset, tmp_path: Path
) -> None:
    spec = CompressionSpec(
        data="digits",
        prune=PruneConfig(
            max_accuracy_drop=0.01,
            rounds=3,
            retrain_epochs=0,  # nothing wins the fixed rule's loss back
            modules={"fc1": PruneRule(sparsity=0.999)},
        ),
        finetune=FinetuneConfig(epochs=0.1, layerwise_epochs=0),
    )
    info, messages = _compress(trained, spec, tmp_path / "fixed.pqz", digits)
    pruned = info.metrics["prune"]
    assert pruned["rounds"] == []
    assert "the fixed rules alone lost more than the tolerance: no scan" in messages
    lost = pruned["baseline_accuracy"] - pruned["final_accuracy"]
    assert (
        f"pruning lost {100 * lost:.2f}: the layers that prune.modules gives a sparsity or "
        "threshold (fc1) are pruned as given" in info.metrics["warnings"][0]
    )


@pytest.mark.parametrize(
    ("method", "sizes"),
    [("pq", {"conv1": 5, "conv2": 5, "fc1": 4, "fc2": 4}), ("kmeans", dict.fromkeys(LENET5, 1))],
)
def test_pipeline_prunes_in_the_quantizers_sub_vectors(method: str, sizes: dict[str, int]) -> None:
    spec = CompressionSpec(quantize=QuantConfig(method=method))  # type: ignore[arg-type]
    assert prune_block_sizes(build_model("lenet-5"), spec) == sizes


def test_layerwise_quantization_trains_the_float_layers_between_steps(
    trained: nn.Module, digits: Dataset
) -> None:
    """`finetune.layerwise_epochs`: fc1 is quantized from the trained weights as at once; fc2 and
    fc3 only after training has made up for fc1's error, so from other weights."""
    model = copy.deepcopy(trained)
    prune_(model, PruneConfig(sparsity=0.8))
    zeros = {name: (module.weight == 0).clone() for name, module, _ in prunable_layers(model)}
    # 8 centroids and 4 epochs: layer-wise beat all at once by 5-15 validation points with
    # four seeds of the trained model; with 4 centroids or 2 epochs, by -4 to 16 (fc3's 50
    # sub-vectors on 4 centroids decide the outcome).
    quant = QuantConfig(n_centroids=8, scalar_when_smaller=False)
    at_once = clone_model(model)  # deepcopy would share the parametrized classes
    quantize_(at_once, quant)
    spec = CompressionSpec(
        data="digits", prune=None, quantize=quant, finetune=FinetuneConfig(layerwise_epochs=4)
    )
    messages: list[str] = []
    pipeline = Pipeline(model, spec, digits, CPU, lambda _, __, message: messages.append(message))
    pipeline.quantize()

    layers = pipeline.metrics["quantize"]["layers"]
    assert [layer["name"] for layer in layers] == ["fc1", "fc2", "fc3"]
    said = [message for message in messages if "quantized; training" in message]
    assert said == ["fc1 quantized; training for 4 epochs", "fc2 quantized; training for 4 epochs"]
    assert all(layer["encoding"] == "pq" for layer in layers)
    (_, first), *_, (_, last) = codebooks(model)
    (_, first_at_once), *_, (_, last_at_once) = codebooks(at_once)
    assert torch.equal(first.codes, first_at_once.codes)
    assert not torch.equal(last.codes, last_at_once.codes)
    for name, module, _ in prunable_layers(model):
        assert torch.equal(module.weight == 0, zeros[name]), name
    assert pipeline.metrics["quantize"]["val_accuracy"] > evaluate(
        at_once, digits, digits.val, device=CPU
    )


def test_quantize_reports_each_layer_that_is_not_plain_pq() -> None:
    torch.manual_seed(0)
    model = build_model("lenet-300-100")
    prune_(model, PruneConfig(sparsity=0.9))
    spec = CompressionSpec(prune=None, quantize=QuantConfig(modules={"fc3": None}))
    messages: list[tuple[str, str]] = []
    pipeline = Pipeline(
        model, spec, None, CPU, lambda stage, _, message: messages.append((stage, message))
    )
    pipeline.quantize()
    assert ("quantize", "fc2: scalar k-means: fewer bytes than PQ, no larger error") in messages
    assert ("quantize", "fc3: skipped by rule") in messages
    assert not any(message.startswith("fc1:") for _, message in messages)


@pytest.mark.parametrize("pruned", [True, False])
def test_layerwise_quantization_leaves_a_layer_kept_in_float_as_the_file_stores_it(
    trained: nn.Module, digits: Dataset, pruned: bool
) -> None:
    model = copy.deepcopy(trained)
    if pruned:
        prune_(model, PruneConfig(sparsity=0.5))
    quant = QuantConfig(n_centroids=4, modules={"fc1": None}, fallback_dtype="float16")
    spec = CompressionSpec(
        data="digits", prune=None, quantize=quant, finetune=FinetuneConfig(layerwise_epochs=1)
    )
    pipeline = Pipeline(model, spec, digits, CPU)
    pipeline.quantize()

    assert [layer["encoding"] for layer in pipeline.metrics["quantize"]["layers"]] == [
        "float16",
        "pq",
        "pq",
    ]
    weight = model.fc1.weight.detach()  # fc2's step trained the model after fc1 was kept
    assert torch.equal(weight, weight.half().float())
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_finetuning_everything_rounds_biases_to_what_the_file_stores(
    trained: nn.Module, digits: Dataset
) -> None:
    model = copy.deepcopy(trained)
    quantize_(model, QuantConfig(n_centroids=16))
    finetune(model, digits, FinetuneConfig(epochs=0.2, scope="all"), device=CPU)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter.detach(), parameter.detach().half().float()), name


def test_retraining_with_distillation_learns_from_the_unpruned_model(
    trained: nn.Module, digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prune.distill`: every masked retraining gets the baseline, unpruned and unchanged, as
    its teacher (`train` itself is what runs; it is only watched)."""
    from compression import pipeline as pipeline_module

    teachers: list[nn.Module | None] = []
    real_train = pipeline_module.train

    def watched(*args: object, teacher: nn.Module | None = None, **kwargs: object) -> object:
        teachers.append(teacher)
        return real_train(*args, teacher=teacher, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline_module, "train", watched)
    spec = CompressionSpec(
        prune=PruneConfig(
            max_accuracy_drop=0.05, rounds=2, retrain_epochs=0.5, scan_samples=100, distill=True
        ),
        finetune=FinetuneConfig(epochs=0),
    )
    model = copy.deepcopy(trained)
    pipe = pipeline_module.Pipeline(model, spec, digits, CPU)
    pipe.baseline()
    pipe.prune()
    assert teachers, "no retraining ran"
    for teacher in teachers:
        assert teacher is not None
        assert get_mask(teacher.fc1) is None  # type: ignore[arg-type]
        assert torch.equal(teacher.fc1.weight, trained.fc1.weight)  # type: ignore[union-attr]
    assert pipe.metrics["prune"]["sparsity"] > 0.3  # and the pruning went on as usual


@pytest.mark.parametrize("stage", ["prune", "quantize", "finetune"])
def test_the_specs_augmentation_reaches_every_training_pass(
    trained: nn.Module, digits: Dataset, stage: str
) -> None:
    """`augment` applies to masked retraining, layer-wise training and fine-tuning alike: with
    "shift" the stage trains on other batches than with "none", so its result differs (and
    only that stage trains in each case)."""
    prune = PruneConfig(sparsity=0.5, retrain_epochs=0.5 if stage == "prune" else 0)
    finetune = FinetuneConfig(
        epochs=0.5 if stage == "finetune" else 0,
        layerwise_epochs=0.5 if stage == "quantize" else 0,
    )

    def run(augment: str) -> dict[str, torch.Tensor]:
        spec = CompressionSpec(
            data="digits",
            augment=augment,  # type: ignore[arg-type]
            prune=prune,
            quantize=QuantConfig(n_centroids=8),
            finetune=finetune,
        )
        pipeline = Pipeline(copy.deepcopy(trained), spec, digits, CPU)
        pipeline.baseline()
        pipeline.prune()
        if stage != "prune":
            pipeline.quantize()
            pipeline.finetune()
        return {key: value.clone() for key, value in pipeline.model.state_dict().items()}

    plain, again, shifted = run("none"), run("none"), run("shift")
    assert all(torch.equal(plain[key], again[key]) for key in plain)  # seeded: only augment differs
    assert not all(torch.equal(plain[key], shifted[key]) for key in plain)


def test_pruning_progress_never_goes_back(trained: nn.Module, digits: Dataset) -> None:
    """Retraining reports 0..1 per round; the stage's progress runs once over all rounds."""
    from compression.pipeline import Pipeline

    seen: list[tuple[str, float, str]] = []
    spec = CompressionSpec(
        prune=PruneConfig(max_accuracy_drop=0.05, rounds=3, retrain_epochs=0.5, scan_samples=100)
    )
    pipe = Pipeline(copy.deepcopy(trained), spec, digits, CPU, progress=lambda *a: seen.append(a))
    pipe.baseline()
    pipe.prune()
    fractions = [fraction for stage, fraction, _ in seen if stage == "prune"]
    assert len(fractions) > 5
    assert fractions == sorted(fractions)
    assert any("(round 2)" in message for _, _, message in seen)


def test_a_model_with_fewer_outputs_than_the_data_has_classes_is_refused(digits: Dataset) -> None:
    model = build_model("lenet-300-100", 3)
    message = "the model has 3 outputs, but data set 'digits' has 10 classes"
    with pytest.raises(InvalidConfigError, match=message):
        train(model, digits, TrainConfig(epochs=1), device=CPU)
    with pytest.raises(InvalidConfigError, match=message):
        evaluate(model, digits, digits.test, device=CPU)


def test_training_that_diverges_stops_with_a_clear_error(digits: Dataset) -> None:
    from compression import TrainingDivergedError

    model = build_model("lenet-300-100")
    with pytest.raises(
        TrainingDivergedError,
        match=r"training diverged: loss (nan|inf) at step \d+ of \d+ \(lr 10.0\)",
    ):
        train(model, digits, TrainConfig(epochs=2, lr=10.0), device=CPU)


def test_distillation_keeps_a_freshly_pruned_model_stable(
    trained: nn.Module, digits: Dataset
) -> None:
    """Retraining right after a deep cut, at a learning rate plain training takes, with the
    unpruned model as teacher: the loss stays finite and accuracy comes back."""
    model = copy.deepcopy(trained)
    prune_(model, PruneConfig(sparsity=0.8))
    train(model, digits, TrainConfig(epochs=4, lr=0.1), device=CPU, teacher=copy.deepcopy(trained))
    assert evaluate(model, digits, digits.val, device=CPU) > 0.85
