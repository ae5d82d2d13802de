"""Terminal output of the `pqz` command: rich tables for people, one JSON object for scripts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

# Piped output is not cut at 80 columns: names and ids must stay whole for grep and copy.
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit: never a traceback for an expected error."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(code)


def require_file(path: Path) -> None:
    """One line, before any work, when the input is missing or a directory."""
    if path.is_dir():
        fail(f"cannot read {path}: Is a directory")
    if not path.is_file():
        fail(f"cannot read {path}: No such file or directory")


def refuse_overwrite(source: Path, output: Path) -> None:
    """Writing the result over its own input would destroy the only copy of the model."""
    if output.exists() and source.exists() and os.path.samefile(source, output):
        fail(f"-o {output} is the input file itself; write the result elsewhere", code=2)


ForceOption = Annotated[
    bool, typer.Option("--force", "-f", help="Replace the output file if it exists.")
]


def check_output(output: Path, *, force: bool, source: Path | None = None) -> None:
    """Before any work (a compression can run for hours): the output can be written, and an
    existing file is replaced only when asked to."""
    if source is not None:
        refuse_overwrite(source, output)
    if output.is_dir():
        fail(f"cannot write {output}: it is a directory", code=2)
    if not output.parent.is_dir():
        fail(f"cannot write {output}: directory {output.parent} does not exist", code=2)
    if not os.access(output.parent, os.W_OK):
        fail(f"cannot write {output}: permission denied on {output.parent}")
    if output.exists() and not force:
        fail(f"{output} exists; pass --force to replace it", code=2)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def layer_table(layers: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("layer", "shape", "encoding", "d", "k", "sparsity", "bytes"):
        table.add_column(column, justify="right" if column not in ("layer", "encoding") else "left")
    for layer in layers:
        encoding = layer["encoding"]
        if encoding == "raw":
            encoding = f"raw {layer['storage_dtype']}"
        if layer.get("mask"):
            encoding += f" + {layer['mask']} mask"
        table.add_row(
            layer["name"],
            "x".join(str(size) for size in layer["shape"]) or "scalar",
            encoding,
            _blank(layer.get("block_size")),
            _blank(layer.get("n_centroids")),
            f"{layer['sparsity']:.1%}",
            f"{layer['size_bytes']:,}",
        )
    return table


def totals_table(info: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "file size", f"{info['file_size_bytes']:,} bytes ({human_bytes(info['file_size_bytes'])})"
    )
    table.add_row(
        "dense fp32 size",
        f"{info['dense_size_bytes']:,} bytes ({human_bytes(info['dense_size_bytes'])})",
    )
    table.add_row("compression ratio", f"{info['compression_ratio']:.1f}x")
    breakdown = ", ".join(
        f"{name} {size:,}" for name, size in info["size_breakdown"].items() if size
    )
    table.add_row("size breakdown", breakdown)
    checksum = "[green]ok[/]" if info["checksum_ok"] else "[bold red]MISMATCH[/] (file is corrupt)"
    table.add_row("sha-256", checksum)
    return table


def _blank(value: object) -> str:
    return "" if value is None else str(value)
