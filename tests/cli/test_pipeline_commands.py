"""`pqz train`, `pqz eval` and `pqz compress --data` on scikit-learn's digits, as users run them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli.test_local_commands import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    path = tmp_path_factory.mktemp("train") / "digits.pt"
    result = run(
        "train",
        "--arch",
        "lenet-300-100",
        "--data",
        "digits",
        "--epochs",
        "4",
        "--json",
        "-o",
        str(path),
    )
    assert result.returncode == 0, result.stderr
    return path, json.loads(result.stdout)


def test_train_reports_accuracy_and_eval_agrees(trained: tuple[Path, dict[str, object]]) -> None:
    path, summary = trained
    assert summary["n"] == 360
    assert summary["accuracy"] > 0.8
    result = run("eval", str(path), "--arch", "lenet-300-100", "--data", "digits", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == summary["accuracy"]


def test_train_augments_as_asked(tmp_path: Path) -> None:
    args = ("train", "--arch", "lenet-300-100", "--data", "digits", "--epochs", "1", "--json")
    plain = run(*args, "-o", str(tmp_path / "plain.pt"))
    shifted = run(*args, "--augment", "shift", "-o", str(tmp_path / "shifted.pt"))
    assert plain.returncode == shifted.returncode == 0, plain.stderr + shifted.stderr
    assert json.loads(plain.stdout)["augment"] == "none"  # auto, for grey images
    assert json.loads(shifted.stdout)["augment"] == "shift"
    # Same seed, other batches: the two models differ.
    weights = [
        torch.load(tmp_path / f"{name}.pt", weights_only=True) for name in ("plain", "shifted")
    ]
    assert not torch.equal(weights[0]["fc1.weight"], weights[1]["fc1.weight"])


def test_compress_with_data_runs_the_pipeline_and_eval_reads_the_pqz(
    trained: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    path, _ = trained
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "arch": "lenet-300-100",  # no --arch: the spec's
                "prune": {"rounds": 1, "retrain_epochs": 1, "max_accuracy_drop": 0.05},
                "finetune": {"epochs": 1},
            }
        )
    )
    out = tmp_path / "digits.pqz"
    result = run(
        "compress",
        str(path),
        "--data",
        "digits",
        "--spec",
        str(spec),
        "--augment",
        "shift",
        "--json",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    final = info["metrics"]["final"]
    assert info["spec"]["data"] == "digits"
    assert info["spec"]["augment"] == "shift"  # the option overrides the spec file's default
    assert info["spec"]["prune"]["rounds"] == 1
    evaluated = run("eval", str(out), "--data", "digits", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout) == {
        "accuracy": final["test_accuracy"],
        "n": 360,
        "data": "digits",
        "arch": "lenet-300-100",
        "runtime": "dense",
    }
    # The claim, checked as a user would: both models on the same test images.
    paired = run("eval", str(out), "--data", "digits", "--against", str(path), "--json")
    assert paired.returncode == 0, paired.stderr
    claim = json.loads(paired.stdout)
    test = info["metrics"]["test"]
    assert claim["accuracy"] == final["test_accuracy"] == test["accuracy"]
    assert claim["baseline_accuracy"] == info["metrics"]["baseline"]["test_accuracy"]
    assert claim["drop"] == pytest.approx(info["metrics"]["accuracy_drop"])
    assert claim["drop_ci95"] == pytest.approx(test["drop_ci95"])
    assert (claim["n"], claim["lost"], claim["gained"]) == (360, test["lost"], test["gained"])
    assert claim["drop"] == pytest.approx((claim["lost"] - claim["gained"]) / 360)
    said = run("eval", str(out), "--data", "digits", "--against", str(path))
    assert said.returncode == 0, said.stderr
    assert f"against {path}: " in said.stdout
    assert "(95% CI " in said.stdout
    # Another data set whose training images are darker, with the same test images: the file's
    # recorded normalisation is used, not the statistics of the data it meets.
    from compression.sources import digits

    read = digits()
    darker = tmp_path / "darker.npz"
    np.savez(
        darker,
        x_train=read.train.x[:, 0].numpy() // 2,
        y_train=read.train.y.numpy(),
        x_test=read.test.x[:, 0].numpy(),
        y_test=read.test.y.numpy(),
    )
    evaluated = run("eval", str(out), "--data", str(darker), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == final["test_accuracy"]
    assert evaluated.stderr == ""  # the .npz names no classes: nothing to compare
    # Data of other classes: named otherwise is a warning; more classes than outputs, an error.
    labels = np.arange(24) % 12
    images = np.zeros((24, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "twelve.npz", x_train=images, y_train=labels, x_test=images,
             y_test=labels, classes=np.array([f"c{i}" for i in range(12)]))  # fmt: skip
    refused = run("eval", str(out), "--data", str(tmp_path / "twelve.npz"))
    assert refused.returncode == 1
    assert f"has 12 classes, but {out} holds a model of 10" in refused.stderr
    np.savez(tmp_path / "two.npz", x_train=images, y_train=labels % 2, x_test=images,
             y_test=labels % 2, classes=np.array(["cat", "dog"]))  # fmt: skip
    warned = run("eval", str(out), "--data", str(tmp_path / "two.npz"))
    assert warned.returncode == 0, warned.stderr
    assert "warning: " in warned.stderr
    assert "was made for the classes 0, 1, 2, 3, 4, 5, 6, 7, 8, 9; data set" in warned.stderr
    assert info["input"]["source_size"] == [8, 8]
    assert info["input"]["classes"] == [str(digit) for digit in range(10)]
    # What the pipeline recorded, read back from the file alone.
    inspected = run("inspect", str(out), "--scan")
    assert inspected.returncode == 0, inspected.stderr
    assert f"-> {final['test_accuracy']:.4f} on 360 images" in inspected.stdout
    assert "input: 1x28x28 images, resized from 8x8 (bilinear): pixels / 255, then (x - [0." in (
        inspected.stdout
    )
    assert "classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in inspected.stdout
    prune = info["metrics"]["prune"]
    (first,) = prune["rounds"]
    assert "threshold scan, first round: validation accuracy with one layer pruned" in (
        inspected.stdout
    )
    assert f"{first['scan_reference']:.3f} with none pruned" in inspected.stdout
    rows = [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in inspected.stdout.splitlines()
        if line.startswith("│")
    ]
    scan = {row[0]: row[1:] for row in rows if row[0].endswith("%") or row[0] == "pruned to"}
    for column, curve in enumerate(first["curves"]):  # a curve reads down its layer's column
        for level, accuracy in zip(curve["sparsity"], curve["accuracy"], strict=True):
            assert scan[f"{level:.1%}"][column] == f"{accuracy:.3f}"
        assert scan["pruned to"][column] == f"{prune['layers'][curve['name']]:.1%}"
    outcome = "yes" if first["kept"] else "undone"
    assert re.search(rf"│ +1 │ .* │ +{first['val_accuracy']:.4f} │ +{outcome} │", inspected.stdout)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["eval", "{ckpt}", "--data", "digits"], 2, "a checkpoint needs --arch"),
        (
            [
                "eval",
                "{ckpt}",
                "--arch",
                "lenet-300-100",
                "--data",
                "digits",
                "--against",
                "{ckpt}",
            ],
            2,
            "--against compares a .pqz with its checkpoint, and",
        ),
        (
            ["eval", "{ckpt}", "--arch", "lenet-300-100", "--data", "imagenet"],
            1,
            "unknown data set 'imagenet'",
        ),
        (
            ["train", "--arch", "vgg16-cifar", "--data", "digits", "-o", "{out}"],
            1,
            "has 1x8x8 images; architecture 'vgg16-cifar' takes 3x32x32",
        ),
        (
            ["submit", "{ckpt}", "--arch", "lenet-5", "--data", "{folder}"],
            2,
            "data {folder} is a local folder: the service takes a built-in data set's name or "
            "an .npz file to upload (pqz pack {folder} -o data.npz makes one)",
        ),
        (
            ["eval", "{ckpt}", "--arch", "lenet-5", "--data", "{spec}"],
            1,
            "data set '{spec}' is a file but not an .npz: pqz reads .npz files",
        ),
        (["pack", "digits", "-o", "{out}"], 2, "-o {out} must end in .npz"),
        (
            ["compress", "{ckpt}", "--arch", "lenet-300-100", "--spec", "{spec}", "-o", "{out}"],
            1,
            "unknown field 'epoch' in spec.finetune",
        ),
        (
            ["train", "--arch", "lenet-300-100", "--data", "digits", "--augment", "flip"],
            2,
            "Invalid value for '--augment': 'flip' is not one of 'auto', 'none', 'shift', "
            "'crop-flip' (see 'pqz train --help')",
        ),
        (
            [
                "train",
                "--arch",
                "lenet-300-100",
                "--data",
                "digits",
                "--num-classes",
                "3",
                "-o",
                "{out}",
            ],
            1,
            "the model has 3 outputs, but data set 'digits' has 10 classes: num_classes must "
            "be at least 10",
        ),
        (
            [
                "train",
                "--arch",
                "lenet-300-100",
                "--data",
                "digits",
                "--epochs",
                "0",
                "-o",
                "{out}",
            ],
            2,
            "Invalid value for '--epochs': must be more than 0, got 0",
        ),
        (
            ["compress", "{ckpt}", "-o", "{out}"],
            2,
            'give the architecture: --arch, or "arch" in the --spec file',
        ),
        (["eval", "{empty}", "--data", "digits"], 1, "is empty: neither a .pqz file nor a"),
        (  # a learning rate of 0 would save the random initial weights as a baseline
            ["train", "--arch", "lenet-5", "--data", "digits", "--lr", "0", "-o", "{out}"],
            2,
            "Invalid value for '--lr': must be more than 0, got 0",
        ),
        (
            ["train", "--arch", "lenet-5", "--data", "digits", "--batch-size", "0", "-o", "{out}"],
            2,
            "Invalid value for '--batch-size': Input should be greater than or equal to 1",
        ),
        (
            ["compress", "{ckpt}", "--arch", "lenet-300-100", "-o", "{ckpt}/x.pqz"],
            2,
            "cannot write {ckpt}/x.pqz: {ckpt} is not a directory",
        ),
        (  # writable by its permissions (to root), yet no file can be made there
            ["compress", "{ckpt}", "--arch", "lenet-300-100", "-o", "/proc/x.pqz"],
            1,
            "error: cannot write /proc/x.pqz: ",
        ),
        (
            ["compress", "{ckpt}", "--arch", "lenet-300-100", "--num-classes", "0", "-o", "{out}"],
            2,
            "Invalid value for '--num-classes': must be more than 0, got 0",
        ),
    ],
)
def test_bad_input_is_one_clear_line(
    trained: tuple[Path, dict[str, object]],
    tmp_path: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"finetune": {"epoch": 3}}))
    (tmp_path / "empty.pqz").touch()
    values = {
        "ckpt": str(trained[0]),
        "out": str(tmp_path / "out"),
        "spec": str(spec),
        "empty": str(tmp_path / "empty.pqz"),
        "folder": str(tmp_path),
    }
    result = run(*[arg.format(**values) for arg in args])
    assert result.returncode == code
    assert message.format(**values) in result.stderr
    assert result.stderr.count("\n") == 1


def test_submit_checks_the_spec_before_uploading(
    trained: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    import os
    import subprocess

    from tests.cli.test_local_commands import PQZ

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"prune": {"rouns": 3}}))
    env = {
        **os.environ,
        "PQZ_URL": "http://127.0.0.1:9",
        "PQZ_API_KEY": "pqz_unused",
    }  # nothing listens
    result = subprocess.run(
        [PQZ, "submit", str(trained[0]), "--arch", "lenet-300-100", "--spec", str(spec)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: invalid spec: unknown field 'rouns' in spec.prune (allowed: sparsity, "
        "threshold, scope, module_types, modules, max_accuracy_drop, rounds, retrain_epochs, "
        "retrain_lr, scan_samples, distill, gradual)"
    )


def test_pack_writes_an_npz_that_reads_back_as_the_same_data_set(tmp_path: Path) -> None:
    from PIL import Image

    from compression.data import load_dataset

    for split in ("train", "test"):
        for label, name in enumerate(("cat", "dog")):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            for i in range(3):
                image = np.full((8, 8, 3), (40 * i, 100 * label, 7), dtype=np.uint8)
                Image.fromarray(image).save(tmp_path / "imgs" / split / name / f"{i}.png")
    out = tmp_path / "imgs.npz"
    result = run("pack", str(tmp_path / "imgs"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out} (")
    assert "6 training and 6 test images of 3x8x8, 2 classes" in result.stdout
    folder, packed = load_dataset(str(tmp_path / "imgs")), load_dataset(str(out))
    assert packed.classes == folder.classes == ("cat", "dog")
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(packed, split).x, getattr(folder, split).x)
        assert torch.equal(getattr(packed, split).y, getattr(folder, split).y)


def test_a_model_trained_on_other_inputs_says_so_with_mean_and_std(tmp_path: Path) -> None:
    """Pixels / 255 alone (mean 0, std 1): train, eval and compress feed the model that way,
    and the .pqz records it for whoever runs the file."""
    model = tmp_path / "plain.pt"
    scale = ("--mean", "0", "--std", "1")
    arch = ("--arch", "lenet-300-100", "--data", "digits")
    trained = run("train", *arch, "--epochs", "2", *scale, "--json", "-o", str(model))
    assert trained.returncode == 0, trained.stderr
    evaluated = run("eval", str(model), *arch, "--json", *scale)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == json.loads(trained.stdout)["accuracy"]
    out = tmp_path / "plain.pqz"
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {"prune": {"retrain_epochs": 0}, "finetune": {"epochs": 0, "layerwise_epochs": 0}}
        )
    )
    options = ("--sparsity", "0.5", "--spec", str(spec), *scale, "--json", "-o", str(out))
    compressed = run("compress", str(model), *arch, *options)
    assert compressed.returncode == 0, compressed.stderr
    info = json.loads(compressed.stdout)
    assert info["spec"]["normalize"] == {"mean": [0.0], "std": [1.0]}
    assert (info["input"]["mean"], info["input"]["std"]) == ([0.0], [1.0])
    assert info["metrics"]["baseline"]["test_accuracy"] == json.loads(trained.stdout)["accuracy"]
    refused = run("eval", str(out), "--data", "digits", *scale)
    assert refused.returncode == 2
    assert "--mean and --std apply to checkpoints: a .pqz records its own" in refused.stderr
    half = run("train", "--arch", "lenet-5", "--data", "digits", "--mean", "0.5", "-o", "x.pt")
    assert half.returncode == 2
    assert "give --mean and --std together" in half.stderr
    three = run("eval", str(model), *arch, "--mean", "0,0,0", "--std", "1,1,1")
    assert three.returncode == 1
    assert "normalize gives 3 values per statistic, but the images have 1 channel" in three.stderr
