"""`pqz bench-infer` and `pqz export` as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from compression import (
    Preprocessing,
    PruneConfig,
    QuantConfig,
    build_model,
    inspect_pqz,
    load_pqz,
    prune_,
    quantize_,
    save_pqz,
)

PQZ = str(Path(sys.executable).parent / "pqz")
CACHE = tempfile.mkdtemp(prefix="pqz-test-cache-")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PQZ, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            "OMP_NUM_THREADS": "1",
            "PATH": str(Path(sys.executable).parent),
            "XDG_CACHE_HOME": CACHE,  # the autotune's timings, not in the user's home
        },
    )


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("lenet-5", 10).eval()
    prune_(model, PruneConfig(sparsity=0.9))
    quantize_(model, QuantConfig(n_iter=3))
    path = tmp_path_factory.mktemp("runtime-cli") / "lenet5.pqz"
    recipe = Preprocessing((1, 28, 28), (0.1307,), (0.3081,), classes=tuple("0123456789"))
    save_pqz(model, path, architecture="lenet-5", num_classes=10, preprocessing=recipe)
    return path


def test_bench_infer_json_compares_both_models_on_real_data(lenet: Path, tmp_path: Path) -> None:
    result = run(
        "bench-infer", str(lenet), "--batch", "1,4", "--data", "digits", "--samples", "100",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["batch"] for row in report["results"]] == [1, 4]
    for row in report["results"]:
        assert row["device"] == "cpu"
        assert row["dense_ms"] > 0
        assert row["compressed_ms"] > 0
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["compressed_ms"])
        # Peak = the model's bytes + what a call adds; LeNet-5 dense holds 1.7 MB of fp32.
        assert row["dense_peak_bytes"] >= 1_724_320
        assert row["compressed_peak_bytes"] > 0
        assert row["agreement_n"] == 100
        assert 0.0 <= row["agreement"] <= 1.0
        assert sum(row["kernels"].values()) == 4  # conv1, conv2, fc1, fc2


def test_bench_infer_table_without_memory_fits_an_80_column_terminal(lenet: Path) -> None:
    result = run("bench-infer", str(lenet), "--batch", "2,3", "--no-memory")
    assert result.returncode == 0, result.stderr
    assert "dense fp32 against the compressed runtime" in result.stdout
    lines = result.stdout.splitlines()
    assert any("batch 2" in line and "batch 3" in line for line in lines)  # one column each
    assert any("speed-up" in line for line in lines)
    held = next(line for line in lines if "model held, dense" in line)
    assert "1.6 MiB" in held
    # Piped output is 200 columns wide: a table that needs no more than 80 is not cut on a
    # terminal either (rich shrinks cells to "…" where it does not fit).
    table = lines[1 : next(i for i, line in enumerate(lines) if line.startswith("batch 2:"))]
    assert max(len(line) for line in table) <= 80, "\n".join(table)
    assert "batch 2: layers on " in result.stdout


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--batch", "1,x"], "--batch '1,x' is not a comma-separated list of integers", 2),
        (["--batch", "0"], "batch sizes must be >= 1", 2),
        (["--batch", "100000000"], "--batch 100000000 is above 4096", 2),
        (["--device", "tpu"], "device 'tpu' is not cpu, cuda, cuda:N or auto", 1),
    ],
)
def test_bench_infer_refuses_bad_options_in_one_line(
    lenet: Path, args: list[str], message: str, code: int
) -> None:
    result = run("bench-infer", str(lenet), *args)
    assert result.returncode == code
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bench_infer_names_a_missing_file(tmp_path: Path) -> None:
    result = run("bench-infer", str(tmp_path / "absent.pqz"))
    assert result.returncode == 1
    assert "absent.pqz" in result.stderr


def test_export_onnx_runs_in_onnxruntime_with_any_batch(lenet: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    out = tmp_path / "lenet5.onnx"
    result = run("export", str(lenet), "--format", "onnx", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "holds the decoded dense weights" in result.stderr.replace("\n", " ")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inputs = torch.rand(3, 1, 28, 28)
    (logits,) = session.run(None, {"input": inputs.numpy()})
    with torch.inference_mode():
        expected = load_pqz(lenet)(inputs).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    props = {prop.key: prop.value for prop in onnx.load(str(out)).metadata_props}
    assert json.loads(props["pqz.input"]) == inspect_pqz(lenet).to_dict()["input"]


def test_export_safetensors_holds_the_decoded_weights(lenet: Path, tmp_path: Path) -> None:
    out = tmp_path / "lenet5.safetensors"
    result = run("export", str(lenet), "--format", "safetensors", "-o", str(out))
    assert result.returncode == 0, result.stderr
    state = load_file(out)
    decoded = load_pqz(lenet).state_dict()
    assert set(state) == set(decoded)
    assert torch.equal(state["fc1.weight"], decoded["fc1.weight"])
    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["architecture"] == "lenet-5"
    assert json.loads(metadata["input"])["mean"] == [0.1307]


def test_export_into_a_missing_directory_fails_and_leaves_nothing(
    lenet: Path, tmp_path: Path
) -> None:
    out = tmp_path / "missing" / "model.onnx"
    result = run("export", str(lenet), "--format", "onnx", "-o", str(out))
    assert result.returncode == 2
    assert "missing does not exist" in result.stderr
    assert not out.parent.exists()


def test_eval_runs_a_pqz_on_the_runtime_it_is_given(lenet: Path) -> None:
    results = {}
    for runtime in ("dense", "int8", "sparse"):
        result = run("eval", str(lenet), "--data", "digits", "--runtime", runtime, "--json")
        assert result.returncode == 0, result.stderr
        results[runtime] = json.loads(result.stdout)
        assert results[runtime]["runtime"] == runtime
    assert results["sparse"]["kernels"] == {"sparse": 4}
    assert "kernels" not in results["dense"]
    # An untrained LeNet-5: near-tied logits, so a few predictions may flip under int8.
    assert results["sparse"]["accuracy"] == pytest.approx(results["dense"]["accuracy"], abs=1e-3)
    assert results["int8"]["accuracy"] == pytest.approx(results["dense"]["accuracy"], abs=0.05)


def test_eval_refuses_an_unknown_runtime(lenet: Path) -> None:
    result = run("eval", str(lenet), "--data", "digits", "--runtime", "warp")
    assert result.returncode == 2
    assert "--runtime 'warp' is not one of dense, auto" in result.stderr


def test_eval_refuses_options_that_do_not_apply(lenet: Path, tmp_path: Path) -> None:
    wrong_arch = run("eval", str(lenet), "--data", "digits", "--arch", "lenet-300-100")
    assert wrong_arch.returncode == 2
    assert "holds a 'lenet-5', not --arch 'lenet-300-100'" in wrong_arch.stderr
    checkpoint = tmp_path / "model.pt"
    torch.save(build_model("lenet-5").state_dict(), checkpoint)
    on_checkpoint = run(
        "eval", str(checkpoint), "--arch", "lenet-5", "--data", "digits", "--runtime", "int8"
    )
    assert on_checkpoint.returncode == 2
    assert "--runtime applies to .pqz files" in on_checkpoint.stderr


@pytest.mark.parametrize("command", [["export", "--format", "onnx"], ["decompress"]])
def test_writing_over_the_input_is_refused_and_the_input_kept(
    lenet: Path, tmp_path: Path, command: list[str]
) -> None:
    copy = tmp_path / "model.pqz"
    copy.write_bytes(lenet.read_bytes())
    result = run(command[0], str(copy), *command[1:], "-o", str(copy))
    assert result.returncode == 2
    assert "is the input file itself" in result.stderr
    assert copy.read_bytes() == lenet.read_bytes()


def test_output_that_is_a_directory_is_named_as_given(lenet: Path, tmp_path: Path) -> None:
    target = tmp_path / "adir"
    target.mkdir()
    result = run("export", str(lenet), "--format", "safetensors", "-o", str(target))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: cannot write {target}: it is a directory"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left beside it


def test_input_that_is_a_directory_says_so(tmp_path: Path) -> None:
    result = run("bench-infer", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: cannot read {tmp_path}: Is a directory"
