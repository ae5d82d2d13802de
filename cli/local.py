"""Local commands: `pqz zoo`, `pqz compress`, `pqz inspect`, `pqz decompress`.

The library is imported inside each command so that `pqz --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import console, fail, layer_table, print_json, totals_table


class Method(StrEnum):
    pq = "pq"
    kmeans = "kmeans"


def register(app: typer.Typer) -> None:
    app.command()(zoo)
    app.command()(compress)
    app.command()(inspect)
    app.command()(decompress)


def zoo(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List every architecture pqz can build, with parameter counts."""
    from compression.zoo import count_parameters, list_architectures

    rows: list[dict[str, Any]] = [
        {
            "name": arch.name,
            "source": arch.source,
            "input_shape": list(arch.input_shape),
            "num_classes": arch.num_classes,
            "parameters": count_parameters(arch),
            "description": arch.description,
        }
        for arch in list_architectures()
    ]
    if json_output:
        print_json({"architectures": rows})
        return
    from rich.table import Table

    table = Table(title="pqz architectures (--arch NAME, --num-classes N)", title_justify="left")
    for column in ("name", "source", "input", "parameters", "description"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for row in rows:
        count = row["parameters"]
        table.add_row(
            row["name"],
            row["source"],
            "x".join(map(str, row["input_shape"])),
            "?" if count is None else f"{count:,}",
            row["description"],
        )
    console.print(table)


def compress(
    checkpoint: Annotated[
        Path, typer.Argument(help="State dict (.pt/.pth, zip format) or .safetensors.")
    ],
    arch: Annotated[str, typer.Option("--arch", help="Architecture name (see `pqz zoo`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .pqz file.")],
    num_classes: Annotated[
        int | None, typer.Option(help="Classes of the model's last layer.")
    ] = None,
    sparsity: Annotated[
        float | None, typer.Option(help="Prune this fraction of each layer's weights (0..1).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Prune every weight with |w| below this.")
    ] = None,
    method: Annotated[Method | None, typer.Option(help="pq (product) or kmeans (scalar).")] = None,
    block_size: Annotated[
        int | None, typer.Option(help="Sub-vector size d (default: per layer).")
    ] = None,
    centroids: Annotated[int | None, typer.Option(help="Centroids per layer, 2..256.")] = None,
    spec: Annotated[
        Path | None, typer.Option(help="JSON spec with 'prune' and 'quantize' sections.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Prune and quantize a trained checkpoint into a .pqz file (post-training: no data needed)."""
    if sparsity is not None and threshold is not None:
        fail("give --sparsity or --threshold, not both", code=2)
    import torch

    from compression import CompressionSpec, load_checkpoint, prune_, quantize_, save_pqz
    from compression.config import PruneConfig

    config = _read_spec(spec)
    if sparsity is not None or threshold is not None:
        base = config.prune or PruneConfig()
        prune = dataclasses.replace(base, sparsity=sparsity, threshold=threshold)
        config = dataclasses.replace(config, prune=prune)
    overrides = {
        "method": method and method.value,
        "block_size": block_size,
        "n_centroids": centroids,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if overrides:
        config = dataclasses.replace(
            config, quantize=dataclasses.replace(config.quantize, **overrides)
        )
    assert isinstance(config, CompressionSpec)

    target = _device(device, torch)
    started = time.perf_counter()
    model = load_checkpoint(checkpoint, arch, num_classes).to(target)
    durations = {"load": time.perf_counter() - started}
    pruned: list[Any] = []
    if config.prune is not None:
        started = time.perf_counter()
        pruned = prune_(model, config.prune)
        durations["prune"] = time.perf_counter() - started
    started = time.perf_counter()
    quantized = quantize_(model, config.quantize)
    durations["quantize"] = time.perf_counter() - started
    metrics = {
        "mode": "post-training",
        "device": str(target),
        "duration_s": durations,
        "pruned_layers": [
            {"name": r.name, "sparsity": r.sparsity, "threshold": r.threshold} for r in pruned
        ],
        "quantized_layers": [dataclasses.asdict(r) for r in quantized],
    }
    started = time.perf_counter()
    info = save_pqz(
        model,
        output,
        architecture=arch,
        num_classes=_classes(num_classes, arch),
        spec=config.to_dict(),
        metrics=metrics,
    )
    durations["package"] = time.perf_counter() - started
    if json_output:
        print_json(info.to_dict())
        return
    console.print(layer_table(info.layers, f"{output} ({arch})"))
    console.print(totals_table(info.to_dict()))
    notes = [f"{r.name}: kept {r.encoding} ({r.note})" for r in quantized if r.note]
    for note in notes:
        console.print(f"[dim]{note}[/]", highlight=False)


def inspect(
    file: Annotated[Path, typer.Argument(help="A .pqz file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a .pqz file's layers, sizes, compression ratio and whether its checksum holds."""
    from compression import inspect_pqz

    info = inspect_pqz(file).to_dict()
    if json_output:
        print_json(info)
    else:
        architecture = info["architecture"]
        title = f"{file} ({architecture['name']}, {architecture['num_classes']} classes)"
        console.print(layer_table(info["layers"], title))
        console.print(totals_table(info))
    if not info["checksum_ok"]:
        raise typer.Exit(1)


def decompress(
    file: Annotated[Path, typer.Argument(help="A .pqz file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The .safetensors file to write.")],
) -> None:
    """Decode a .pqz file into a plain safetensors state dict."""
    from compression import decompress_pqz

    written = decompress_pqz(file, output)
    console.print(f"wrote {written} ({written.stat().st_size:,} bytes)", highlight=False)


def _read_spec(path: Path | None) -> Any:
    from compression import CompressionSpec, InvalidConfigError

    if path is None:
        return CompressionSpec()
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidConfigError(f"spec {path} is not valid JSON: {error}") from None
    return CompressionSpec.from_dict(data)


def _device(name: str, torch: Any) -> Any:
    from compression import InvalidConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidConfigError(f"device {name!r} is not cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidConfigError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def _classes(num_classes: int | None, arch: str) -> int:
    from compression import get_architecture

    return num_classes if num_classes is not None else get_architecture(arch).num_classes
