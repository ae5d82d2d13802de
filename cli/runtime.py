"""Running compressed models: `pqz bench-infer` (dense against the runtime) and `pqz export`."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import (
    ForceOption,
    check_output,
    console,
    errors,
    fail,
    human_bytes,
    print_json,
    require_file,
)
from cli.pipeline import DataDirOption, DownloadOption, JsonOption

CALIBRATION_ROWS = 64  # training images the runtime calibrates and checks its kernels on
MAX_BATCH = 4096


class ExportFormat(StrEnum):
    onnx = "onnx"
    safetensors = "safetensors"


def register(app: typer.Typer) -> None:
    app.command("bench-infer")(bench_infer)
    app.command()(export)


def bench_infer(
    file: Annotated[Path, typer.Argument(help="A .pqz file.")],
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,64",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    data: Annotated[
        str | None,
        typer.Option(help="Data set: calibrate on its training images, compare top-1 on test."),
    ] = None,
    samples: Annotated[int, typer.Option(help="Test images for the top-1 agreement.")] = 2000,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for torch (default: torch's own choice).")
    ] = None,
    memory: Annotated[
        bool, typer.Option(help="Measure each model's peak memory (a child process each).")
    ] = True,
    json_output: JsonOption = False,
) -> None:
    """Latency, throughput and peak memory of the dense model against the compressed runtime."""
    import torch

    from compression import inspect_pqz
    from compression.runtime.benchmark import benchmark_inference
    from compression.train import resolve_device

    require_file(file)
    try:
        sizes = tuple(int(part) for part in batch.split(","))
    except ValueError:
        fail(f"--batch {batch!r} is not a comma-separated list of integers", code=2)
    if not sizes or min(sizes) < 1:
        fail(f"--batch {batch!r}: batch sizes must be >= 1", code=2)
    if max(sizes) > MAX_BATCH:
        fail(f"--batch {max(sizes)} is above {MAX_BATCH}, the most this benchmark runs", code=2)
    sizes = tuple(dict.fromkeys(sizes))  # each size once, in the order given
    if samples < 0:
        fail(f"--samples {samples} must be >= 0", code=2)
    if threads is not None:
        if threads < 1:
            fail(f"--threads {threads} must be >= 1", code=2)
        torch.set_num_threads(threads)
    target = resolve_device(device)
    example_inputs = eval_inputs = None
    if data is not None:
        from cli.pipeline import _dataset
        from compression.data import batches

        architecture = inspect_pqz(file).architecture["name"]
        dataset = _dataset(data, data_dir, download, architecture, 0)
        example_inputs = next(
            batches(dataset, dataset.train, batch_size=CALIBRATION_ROWS, device=torch.device("cpu"))
        )[0]
        if samples:
            test = next(
                batches(dataset, dataset.test, batch_size=samples, device=torch.device("cpu"))
            )[0]
            eval_inputs = test
    results = benchmark_inference(
        file,
        batches=sizes,
        device=target,
        example_inputs=example_inputs,
        eval_inputs=eval_inputs,
        measure_memory=memory,
    )
    rows = [result.to_dict() for result in results]
    if json_output:
        print_json({"file": str(file), "threads": torch.get_num_threads(), "results": rows})
        return
    _print_table(file, rows, torch.get_num_threads())


def _print_table(file: Path, rows: list[dict[str, Any]], threads: int) -> None:
    """One column per batch size, one row per measure: fits an 80-column terminal."""
    from rich.table import Table

    device = rows[0]["device"]
    where = f"{device}, {threads} thread{'s' * (threads > 1)}" if device == "cpu" else device
    console.print(
        f"{file} ({where}): dense fp32 against the compressed runtime",
        highlight=False,
        soft_wrap=True,  # a long path is not folded into the table's width
    )
    table = Table()
    table.add_column("")
    for row in rows:
        table.add_column(f"batch {row['batch']}", justify="right")
    measures: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("dense ms/batch", lambda row: f"{row['dense_ms']:.3f}"),
        ("compressed ms/batch", lambda row: f"{row['compressed_ms']:.3f}"),
        ("speed-up", lambda row: f"{row['speedup']:.2f}x"),
        ("dense images/s", lambda row: f"{row['dense_throughput']:,.0f}"),
        ("compressed images/s", lambda row: f"{row['compressed_throughput']:,.0f}"),
        ("dense peak memory", lambda row: _bytes(row["dense_peak_bytes"])),
        ("compressed peak memory", lambda row: _bytes(row["compressed_peak_bytes"])),
        ("model held, dense", lambda row: _bytes(row["dense_resident_bytes"])),
        ("model held, compressed", lambda row: _bytes(row["compressed_resident_bytes"])),
        ("top-1 agreement", _agreement),
    ]
    for name, cell in measures:
        table.add_row(name, *(cell(row) for row in rows))
    console.print(table)
    for row in rows:
        kernels = ", ".join(f"{kernel} {count}" for kernel, count in sorted(row["kernels"].items()))
        console.print(f"batch {row['batch']}: layers on {kernels}", highlight=False)
        if row["note"]:
            console.print(f"batch {row['batch']}: {row['note']}", highlight=False)


def _agreement(row: dict[str, Any]) -> str:
    agreement = row["agreement"]
    return "-" if agreement is None else f"{agreement:.2%} of {row['agreement_n']}"


def _bytes(value: int | None) -> str:
    return "-" if value is None else human_bytes(value)


def export(
    file: Annotated[Path, typer.Argument(help="A .pqz file.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="onnx or safetensors.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The file to write.")],
    force: ForceOption = False,
) -> None:
    """Write the decoded model as ONNX (dynamic batch) or as a safetensors state dict."""
    from compression.export import export_pqz

    require_file(file)
    check_output(output, force=force, source=file)
    packed = file.stat().st_size
    written = export_pqz(file, output, fmt.value)
    size = written.stat().st_size
    console.print(f"wrote {written} ({size:,} bytes)", highlight=False)
    errors.print(
        f"warning: the {fmt.value} file holds the decoded dense weights: {human_bytes(size)} "
        f"against {human_bytes(packed)} for the .pqz ({size / packed:.1f}x larger)",
        highlight=False,
        soft_wrap=True,
    )
