"""Terminal output of the `pqz` command: rich tables for people, one JSON object for scripts."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console, RenderableType
from rich.table import Table

if TYPE_CHECKING:
    from compression.preprocessing import Preprocessing

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
    if output.parent.exists() and not output.parent.is_dir():
        fail(f"cannot write {output}: {output.parent} is not a directory", code=2)
    if not output.parent.is_dir():
        fail(f"cannot write {output}: directory {output.parent} does not exist", code=2)
    try:  # a real file, as the output will be: permissions alone miss read-only mounts, /proc
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}."):
            pass
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror} in {output.parent}")
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


def print_input(preprocessing: Preprocessing | None) -> None:
    """How to feed the model, as the file records it (`info.input(images)` does it in Python)."""
    if preprocessing is None:
        console.print(
            "input: not recorded (compressed without data or --mean/--std): feed it as the "
            "original model was fed",
            highlight=False,
        )
        return
    console.print(f"input: {preprocessing.describe()}", highlight=False)
    if preprocessing.classes is not None:
        console.print(f"classes: {', '.join(preprocessing.classes)}", highlight=False)


def print_pipeline(
    metrics: dict[str, Any], spec: dict[str, Any], said: Collection[str] = ()
) -> None:
    """What the pipeline recorded (compress's summary, and inspect's from the manifest); the
    warnings `said` during the run are not repeated."""
    if "final" in metrics:
        drop = 100 * metrics["accuracy_drop"]
        gain = ": a gain" if drop < 0 else ""
        console.print(
            f"test accuracy {metrics['baseline']['test_accuracy']:.4f} -> "
            f"{metrics['final']['test_accuracy']:.4f} on {metrics['final']['test_samples']} images "
            f"(drop {drop:.2f} points{_interval(metrics.get('test'))}{gain}), weight sparsity "
            f"{metrics['weight_sparsity']:.1%}",
            highlight=False,
        )
    print_promise(metrics)
    print_warnings(metrics, said)
    pruned = metrics.get("prune") or {}
    rounds = pruned.get("rounds")
    tolerance = (spec.get("prune") or {}).get("max_accuracy_drop", 0.0)
    if rounds == [] and "fixed_accuracy" in pruned:
        console.print(
            "pruning: no scan round ran; the layers with a fixed rule "
            f"({', '.join(pruned.get('fixed_layers', []))}) alone lost more than "
            f"{100 * tolerance:.2f} points",
            highlight=False,
        )
    elif rounds is not None:
        kept = sum(1 for entry in rounds if entry["kept"])
        reached = f", {pruned['sparsity']:.1%} of the weights" if "sparsity" in pruned else ""
        tries = len((metrics.get("promise") or {}).get("tries", []))
        backed = "; the finish backed off from there (the tolerance line says to where)"
        console.print(
            f"pruning: {kept} of {len(rounds)} rounds kept{reached} (a round is undone when "
            f"validation accuracy falls more than {100 * tolerance:.2f} points below the "
            f"baseline){backed if tries > 1 else ''}",
            highlight=False,
        )
    for layer in (metrics.get("quantize") or {}).get("layers", []):
        if layer["note"]:
            # A note says why a layer is not plain PQ: kept in float, or given scalar k-means.
            verb = "" if layer["encoding"] in ("pq", "kmeans") else "kept "
            console.print(
                f"[dim]{layer['name']}: {verb}{layer['encoding']} ({layer['note']})[/]",
                highlight=False,
            )


def print_promise(metrics: dict[str, Any]) -> None:
    """How the finished model was held to max_accuracy_drop: the confirm split's verdict on the
    interval that decided it, how many candidates it judged, and where the result came from."""
    promise, confirm = metrics.get("promise"), metrics.get("confirm")
    if promise is None or confirm is None:
        return
    tries, looks = promise["tries"], promise["looks"]
    chosen = tries[-1]
    source = f"from {chosen['start']} ({chosen['sparsity']:.1%} of the weights pruned)"
    backed = f"after {len(tries)} tries, {source}" if len(tries) > 1 else source
    verdict = "kept" if promise["tolerance_met"] else "missed"
    if promise["hold_on"] == "estimate":
        rule, confidence = "its estimate", 0.95
        low, high = confirm["drop_ci95"]
    else:  # the interval that decided, widened for the looks
        rule, confidence = "its interval's upper bound", confirm["decision_confidence"]
        low, high = confirm["decision_interval"]
    judged = f"{looks} candidates judged on it" if looks != 1 else "one candidate judged on it"
    console.print(
        f"tolerance {100 * promise['max_accuracy_drop']:.2f} points {verdict} on {rule}: the "
        f"{promise['confirm_split']} split ({confirm['n']} images held out from every search, "
        f"{judged}) lost {100 * confirm['drop']:.2f} points ({100 * confidence:g}% CI "
        f"{100 * low:.2f} to {100 * high:.2f}), {backed}",
        highlight=False,
    )


def print_against(result: dict[str, Any], against: Path) -> None:
    """`pqz eval --against`'s paired comparison, in words."""
    low, high = result["drop_ci95"]
    console.print(
        f"against {against}: {result['baseline_accuracy']:.4f} on the same images, a drop "
        f"of {100 * result['drop']:.2f} points (95% CI {100 * low:.2f} to "
        f"{100 * high:.2f}, {result['method']}): {_images(result['lost'])} lost, "
        f"{_images(result['gained'])} gained",
        highlight=False,
    )


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def _interval(comparison: dict[str, Any] | None) -> str:
    """', 95% CI a to b' in points, for a paired comparison's report (empty without one)."""
    if comparison is None:
        return ""
    low, high = comparison["drop_ci95"]
    return f", 95% CI {100 * low:.2f} to {100 * high:.2f}"


def print_warnings(metrics: dict[str, Any], said: Collection[str] = ()) -> None:
    """A pipeline's warnings, on stderr as every command's warnings are; those `said` already
    (as they arose, during the run) are not repeated."""
    for warning in metrics.get("warnings", []):
        if warning in said:
            continue
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


def scan_tables(prune: dict[str, Any], layers_per_table: int = 8) -> list[RenderableType]:
    """The threshold scan as the manifest keeps it: the first round's sensitivity curves
    (validation accuracy with one layer pruned to each level; a curve reads down a column,
    at most `layers_per_table` columns to a table so that it fits a terminal), then every
    round's outcome."""
    rounds = prune.get("rounds") or []
    curves = rounds[0].get("curves", []) if rounds else []
    levels = sorted({level for curve in curves for level in curve["sparsity"]})
    reference = rounds[0].get("scan_reference") if rounds else None
    unpruned = "" if reference is None else f"; {reference:.3f} with none pruned"
    final = prune.get("layers") or {}
    tables: list[RenderableType] = [
        "threshold scan, first round: validation accuracy with one layer pruned to each "
        f"sparsity, the others as they were (the scan's images{unpruned})"
    ]
    for start in range(0, len(curves), layers_per_table):
        group = curves[start : start + layers_per_table]
        table = Table()
        table.add_column("sparsity", justify="right")
        for curve in group:
            table.add_column(curve["name"], justify="right")
        accuracy = [dict(zip(c["sparsity"], c["accuracy"], strict=True)) for c in group]
        for level in levels:
            cells = [f"{by_level[level]:.3f}" if level in by_level else "" for by_level in accuracy]
            table.add_row(_percent(level), *cells)
        table.add_section()
        table.add_row("[bold]pruned to[/]", *(_percent(final.get(c["name"])) for c in group))
        tables.append(table)
    history = Table(title="pruning rounds", title_justify="left")
    for column in ("round", "budget", "target sparsity", "val accuracy", "kept"):
        history.add_column(column, justify="left" if column == "target sparsity" else "right")
    for entry in rounds:
        targets = ", ".join(
            f"{name} {level:.1%}" for name, level in entry["target_sparsity"].items()
        )
        history.add_row(
            str(entry["round"]),
            f"{100 * entry['budget']:.2f} pts",
            targets,
            f"{entry['val_accuracy']:.4f}",
            "yes" if entry["kept"] else "[dim]undone[/]",
        )
    return [*tables, history]


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _blank(value: object) -> str:
    return "" if value is None else str(value)
