"""File commands: `pqz zoo`, `pqz inspect`, `pqz decompress`, `pqz pack`.

The library is imported inside each command so that `pqz --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import (
    ForceOption,
    check_output,
    console,
    fail,
    layer_table,
    print_input,
    print_json,
    print_pipeline,
    require_file,
    scan_tables,
    totals_table,
)
from cli.pipeline import DataDirOption, DownloadOption


def register(app: typer.Typer) -> None:
    app.command()(zoo)
    app.command()(inspect)
    app.command()(decompress)
    app.command()(pack)


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


def inspect(
    file: Annotated[Path, typer.Argument(help="A .pqz file.")],
    scan: Annotated[
        bool,
        typer.Option(
            "--scan", help="Also show the threshold scan's sensitivity curves and rounds."
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a .pqz file's layers, sizes, compression ratio, what its pipeline recorded
    (accuracy, pruning rounds) and whether its checksum holds."""
    from compression import inspect_pqz

    require_file(file)
    found = inspect_pqz(file)
    info = found.to_dict()
    if json_output:
        print_json(info)
    else:
        architecture = info["architecture"]
        title = f"{file} ({architecture['name']}, {architecture['num_classes']} classes)"
        console.print(layer_table(info["layers"], title))
        console.print(totals_table(info))
        print_input(found.input)
        print_pipeline(info["metrics"], info["spec"])
        prune = info["metrics"].get("prune") or {}
        if scan and "rounds" not in prune:
            console.print(
                "no threshold scan: this file was pruned to a fixed sparsity or threshold, or not "
                "at all",
                highlight=False,
            )
        elif scan:
            for table in scan_tables(prune):
                console.print(table, highlight=False)
    if not info["checksum_ok"]:
        raise typer.Exit(1)


def decompress(
    file: Annotated[Path, typer.Argument(help="A .pqz file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The .safetensors file to write.")],
    force: ForceOption = False,
) -> None:
    """Decode a .pqz file into a plain safetensors state dict."""
    from compression import decompress_pqz

    require_file(file)
    check_output(output, force=force, source=file)
    written = decompress_pqz(file, output)
    console.print(f"wrote {written} ({written.stat().st_size:,} bytes)", highlight=False)


def pack(
    data: Annotated[str, typer.Argument(help="An image folder, or any data set --data takes.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The .npz file to write.")],
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    force: ForceOption = False,
) -> None:
    """Pack a data set into one .npz (uint8 images, labels, class names): what `pqz submit
    --data` uploads in place of an image folder."""
    if output.suffix != ".npz":
        fail(f"-o {output} must end in .npz (the data set is read back by its suffix)", code=2)
    check_output(output, force=force)
    from compression.data import pack as write
    from compression.sources import shape_text

    read = write(data, output, data_dir=data_dir, download=download)
    shape = shape_text(tuple(read.train.x.shape[1:]))
    console.print(
        f"wrote {output} ({output.stat().st_size:,} bytes): {len(read.train):,} training and "
        f"{len(read.test):,} test images of {shape}, {read.num_classes} classes",
        highlight=False,
    )
