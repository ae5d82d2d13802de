"""The `pqz` console script as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compression import build_model, load_pqz

PQZ = str(Path(sys.executable).parent / "pqz")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PQZ, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "lenet5.pt"
    torch.manual_seed(0)
    torch.save(build_model("lenet-5").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def compressed(checkpoint: Path) -> tuple[Path, dict[str, object]]:
    out = checkpoint.with_suffix(".pqz")
    result = run(
        "compress",
        str(checkpoint),
        "--arch",
        "lenet-5",
        "--sparsity",
        "0.9",
        "--json",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_compress_writes_a_pqz_and_reports_the_real_ratio(
    compressed: tuple[Path, dict[str, object]],
) -> None:
    path, summary = compressed
    assert summary["file_size_bytes"] == path.stat().st_size
    assert summary["compression_ratio"] == pytest.approx(1_724_320 / path.stat().st_size)
    assert summary["compression_ratio"] > 20
    assert load_pqz(path).fc1.weight.eq(0).float().mean() == pytest.approx(0.9)


def test_inspect_json_has_the_documented_fields(compressed: tuple[Path, dict[str, object]]) -> None:
    path, _ = compressed
    result = run("inspect", str(path), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["file_size_bytes"] == path.stat().st_size
    assert info["dense_size_bytes"] == 1_724_320
    assert info["compression_ratio"] == info["dense_size_bytes"] / info["file_size_bytes"]
    assert info["checksum_ok"] is True
    layer = next(layer for layer in info["layers"] if layer["name"] == "fc1.weight")
    assert layer["shape"] == [500, 800]
    assert layer["encoding"] == "pq"
    assert layer["sparsity"] == pytest.approx(0.9)
    assert layer["size_bytes"] > 0


def test_inspect_table_and_decompress(
    compressed: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    path, _ = compressed
    table = run("inspect", str(path))
    assert table.returncode == 0
    assert "compression ratio" in table.stdout
    assert "fc1.weight" in table.stdout
    out = tmp_path / "weights.safetensors"
    result = run("decompress", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 1_700_000


def test_inspect_of_a_damaged_file_fails_with_one_line(
    compressed: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    path, _ = compressed
    damaged = tmp_path / "damaged.pqz"
    damaged.write_bytes(path.read_bytes()[:-100])
    result = run("inspect", str(damaged))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--arch", "lenet-6"], 1, "unknown architecture 'lenet-6'"),
        (["--arch", "lenet-300-100"], 1, "has shape [500, 800] in the checkpoint"),
        (["--arch", "lenet-5", "--centroids", "999"], 1, "n_centroids 999 is outside [2, 256]"),
        (["--arch", "lenet-5", "--sparsity", "0.5", "--threshold", "0.1"], 2, "not both"),
        ([], 2, 'give the architecture: --arch, or "arch" in the --spec file'),
    ],
)
def test_bad_input_is_one_clear_line(
    checkpoint: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    out = tmp_path / "out.pqz"
    result = run("compress", str(checkpoint), "-o", str(out), *args)
    assert result.returncode == code
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not out.exists()


def test_an_existing_output_is_replaced_only_with_force(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.pqz"
    out.write_bytes(b"an earlier result")
    args = ["compress", str(checkpoint), "--arch", "lenet-5", "--sparsity", "0.5", "-o", str(out)]
    refused = run(*args)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"error: {out} exists; pass --force to replace it"
    assert out.read_bytes() == b"an earlier result"
    replaced = run(*args, "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert load_pqz(out).fc1.weight.eq(0).float().mean() == pytest.approx(0.5)


def test_compress_says_which_layers_got_scalar_kmeans(checkpoint: Path, tmp_path: Path) -> None:
    args = ["compress", str(checkpoint), "--arch", "lenet-5", "--sparsity", "0.9"]
    result = run(*args, "-o", str(tmp_path / "mixed.pqz"))
    assert result.returncode == 0, result.stderr
    # conv2 keeps 2,500 of its weights, 500 sub-vectors of 5: 256 centroids would not pay off.
    assert "conv2: kmeans (scalar k-means: fewer bytes than PQ, no larger error)" in result.stdout
    assert "kept kmeans" not in result.stdout
    plain = run(*args, "--pq-everywhere", "-o", str(tmp_path / "plain.pqz"))
    assert plain.returncode == 0, plain.stderr
    assert "conv2: kmeans" not in plain.stdout
    encodings = {}
    for name in ("mixed", "plain"):
        info = json.loads(run("inspect", str(tmp_path / f"{name}.pqz"), "--json").stdout)
        encodings[name] = {layer["name"]: layer["encoding"] for layer in info["layers"]}
        assert info["spec"]["quantize"]["scalar_when_smaller"] is (name == "mixed")
    assert encodings["mixed"]["conv2.weight"] == "kmeans"
    assert encodings["plain"]["conv2.weight"] == "pq"


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("{tmp}", "cannot write {tmp}: it is a directory"),
        (
            "{tmp}/absent/out.pqz",
            "cannot write {tmp}/absent/out.pqz: directory {tmp}/absent does not exist",
        ),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, output: str, message: str
) -> None:
    # The checkpoint does not exist either: the output is checked first, before anything runs
    # (a real compression would take minutes or hours before finding out).
    target = output.format(tmp=tmp_path)
    result = run("compress", str(tmp_path / "nope.pt"), "--arch", "lenet-5", "-o", target)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: " + message.format(tmp=tmp_path)


def test_zoo_lists_architectures_with_parameter_counts() -> None:
    result = run("zoo", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["architectures"]}
    assert rows["lenet-300-100"]["parameters"] == 266_610
    assert rows["resnet18"]["source"] == "torchvision"
