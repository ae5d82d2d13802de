"""Data-driven commands: `pqz train`, `pqz eval`, and `pqz compress` (post-training or pipeline).

The library is imported inside each command so that `pqz --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.output import (
    ForceOption,
    check_output,
    console,
    errors,
    fail,
    layer_table,
    print_against,
    print_input,
    print_json,
    print_pipeline,
    print_warnings,
    require_file,
    totals_table,
)
from cli.progress import StageBars
from cli.spec_options import (
    Augmentation,
    AugmentOption,
    BlockSizeOption,
    CentroidsOption,
    FastOption,
    MaxDropOption,
    MeanOption,
    MethodOption,
    NumClassesOption,
    ScalarOption,
    SparsityOption,
    SpecOptions,
    StdOption,
    ThresholdOption,
    normalization,
    positive,
)

if TYPE_CHECKING:
    import torch

    from compression import CompressionSpec
    from compression.data import Dataset
    from compression.preprocessing import Preprocessing


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
DataDirOption = Annotated[
    Path | None, typer.Option(help="Where built-in data sets live (default: $PQZ_DATA_DIR).")
]
DownloadOption = Annotated[
    bool, typer.Option(help="Allow downloading a built-in data set that is not on disk.")
]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command(name="eval")(evaluate)
    app.command()(compress)


def train(
    arch: Annotated[str, typer.Option("--arch", help="Architecture name (see `pqz zoo`).")],
    data: Annotated[str, typer.Option("--data", help="Data set name, image folder or .npz.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the state dict.")],
    epochs: Annotated[
        float,
        # Zero epochs would save the random initial weights as a "baseline".
        typer.Option(help="Passes over the training split.", callback=positive),
    ] = 10.0,
    lr: Annotated[
        float,
        # At 0 nothing trains: the random initial weights would be saved as a "baseline".
        typer.Option(help="Peak learning rate (cosine schedule).", callback=positive, max=10.0),
    ] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Images per step.", min=1, max=65536)] = 128,
    num_classes: NumClassesOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    device: DeviceOption = "auto",
    seed: Annotated[int, typer.Option(help="Seeds weights, splits and batches.")] = 0,
    augment: AugmentOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    json_output: JsonOption = False,
    force: ForceOption = False,
) -> None:
    """Train a baseline model on a data set and save its state dict (seeded, CPU or CUDA)."""
    given = normalization(mean, std)
    check_output(output, force=force)
    import torch

    from compression import build_model
    from compression.config import TrainConfig
    from compression.data import resolve_augment
    from compression.pqz.container import atomic_path
    from compression.train import evaluate as accuracy
    from compression.train import train as fit

    config = TrainConfig(
        epochs=epochs, lr=lr, batch_size=batch_size, augment=(augment or Augmentation.auto).value
    )
    target = _device(device)
    dataset = _normalized(_dataset(data, data_dir, download, arch, seed), given)
    torch.manual_seed(seed)
    model = build_model(arch, dataset.num_classes if num_classes is None else num_classes)
    started = time.perf_counter()
    with StageBars(enabled=not json_output) as bars:
        fit(
            model,
            dataset,
            config,
            device=target,
            seed=seed,
            progress=lambda f, m: bars("train", f, m),
        )
    duration = time.perf_counter() - started
    with atomic_path(output) as temporary:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, temporary)
    result = {
        "output": str(output),
        "arch": arch,
        "data": data,
        "epochs": epochs,
        "augment": resolve_augment(config.augment, dataset),  # what ran: auto made concrete
        "val_accuracy": accuracy(model, dataset, dataset.val, device=target),
        "accuracy": accuracy(model, dataset, dataset.test, device=target),
        "n": len(dataset.test),
        "duration_s": round(duration, 2),
    }
    if json_output:
        print_json(result)
    else:
        console.print(
            f"wrote {output}: test accuracy {result['accuracy']:.4f} on {result['n']} images, "
            f"validation {result['val_accuracy']:.4f} on {len(dataset.val)}, {duration:.0f} s",
            highlight=False,
        )
    if given is not None:
        # A state dict has no room for it: the model's inputs must be said again each time.
        errors.print(
            f"note: give eval, compress and submit the same --mean {mean} --std {std}",
            highlight=False,
        )


def evaluate(
    file: Annotated[Path, typer.Argument(help="A .pqz file, or a checkpoint with --arch.")],
    data: Annotated[str, typer.Option("--data", help="Data set name, image folder or .npz.")],
    arch: Annotated[str | None, typer.Option(help="Architecture of a checkpoint.")] = None,
    num_classes: NumClassesOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    device: DeviceOption = "auto",
    runtime: Annotated[
        str,
        typer.Option(help="How a .pqz runs: dense (decoded), auto (measured kernels), int8, ..."),
    ] = "dense",
    mean: MeanOption = None,
    std: StdOption = None,
    against: Annotated[
        Path | None,
        typer.Option(
            help="The checkpoint the .pqz was made from: both run on the same test images, and "
            "the drop comes with its paired 95% interval."
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Test accuracy of a compressed .pqz (from the file alone) or of a checkpoint; with
    --against, the paired comparison with the uncompressed checkpoint."""
    given = normalization(mean, std)
    from compression import inspect_pqz, load_checkpoint, load_pqz
    from compression.paired import compare
    from compression.pqz.container import MAGIC
    from compression.runtime import RUNTIMES, runtime_report
    from compression.train import predictions_correct

    if runtime not in RUNTIMES:
        fail(f"--runtime {runtime!r} is not one of {', '.join(RUNTIMES)}", code=2)
    target = _device(device)
    require_file(file)
    if file.stat().st_size == 0:
        fail(f"{file} is empty: neither a .pqz file nor a checkpoint")
    with file.open("rb") as handle:
        is_pqz = handle.read(len(MAGIC)) == MAGIC
    recorded = None
    if is_pqz:
        found = inspect_pqz(file)
        stored, recorded = found.architecture, found.input
        architecture = stored["name"]
        if arch is not None and arch != architecture:
            fail(f"{file} holds a '{architecture}', not --arch '{arch}'", code=2)
        if num_classes is not None and num_classes != stored["num_classes"]:
            fail(
                f"{file} holds a model of {stored['num_classes']} classes, not "
                f"--num-classes {num_classes}",
                code=2,
            )
        if given is not None:
            fail("--mean and --std apply to checkpoints: a .pqz records its own", code=2)
    elif against is not None:
        fail(f"--against compares a .pqz with its checkpoint, and {file} is not a .pqz", code=2)
    elif runtime != "dense":
        fail("--runtime applies to .pqz files; a checkpoint runs as it is", code=2)
    elif arch is None:
        fail("a checkpoint needs --arch (a .pqz file names its own architecture)", code=2)
    else:
        architecture = arch
    dataset = _normalized(_dataset(data, data_dir, download, architecture, 0), given)
    if against is not None:
        require_file(against)
    if is_pqz:
        _check_classes(file, stored["num_classes"], recorded, dataset)
    if recorded is not None:
        # The model expects the statistics it was compressed with, whatever data it meets now.
        dataset = dataclasses.replace(dataset, mean=recorded.mean, std=recorded.std)
    if is_pqz:
        from compression.data import batches

        # The runtime calibrates int8 convolutions on a few training images, never on test.
        calibration = next(batches(dataset, dataset.train, batch_size=64, device=target))[0]
        model = load_pqz(file, device=target, runtime=runtime, example_inputs=calibration)
    else:
        model = load_checkpoint(
            file, architecture, dataset.num_classes if num_classes is None else num_classes
        )
    verdicts = predictions_correct(model, dataset, dataset.test, device=target)
    result: dict[str, Any] = {
        "accuracy": int(verdicts.sum()) / max(len(verdicts), 1),
        "n": len(dataset.test),
        "data": data,
        "arch": architecture,
        "runtime": runtime if is_pqz else None,
    }
    if against is not None:
        reference = load_checkpoint(against, architecture, stored["num_classes"])
        baseline = predictions_correct(reference, dataset, dataset.test, device=target)
        result |= {**compare(baseline, verdicts).to_dict(), "against": str(against)}
    report = runtime_report(model)
    if report is not None:
        result["kernels"] = dict(Counter(report.kernels.values()))
        if report.note:
            result["runtime_note"] = report.note
    if json_output:
        print_json(result)
    else:
        console.print(
            f"test accuracy {result['accuracy']:.4f} on {result['n']} images", highlight=False
        )
        if against is not None:
            print_against(result, against)
        if "kernels" in result:
            kernels = ", ".join(f"{k} {n}" for k, n in sorted(result["kernels"].items()))
            note = f" ({result['runtime_note']})" if "runtime_note" in result else ""
            console.print(f"runtime {runtime}: layers on {kernels}{note}", highlight=False)


def compress(
    checkpoint: Annotated[Path, typer.Argument(help="State dict (.pt/.pth, zip) or .safetensors.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .pqz file.")],
    arch: Annotated[
        str | None,
        typer.Option("--arch", help="Architecture name (see `pqz zoo`); else the spec's arch."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Run the whole pipeline on this data set (name, folder, .npz)."),
    ] = None,
    num_classes: NumClassesOption = None,
    sparsity: SparsityOption = None,
    threshold: ThresholdOption = None,
    max_accuracy_drop: MaxDropOption = None,
    method: MethodOption = None,
    block_size: BlockSizeOption = None,
    centroids: CentroidsOption = None,
    scalar_when_smaller: ScalarOption = None,
    augment: AugmentOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    fast: FastOption = False,
    spec: Annotated[Path | None, typer.Option(help="JSON job spec (see README).")] = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    device: DeviceOption = "auto",
    json_output: JsonOption = False,
    force: ForceOption = False,
) -> None:
    """Compress a checkpoint into a .pqz: the whole pipeline with --data, else post-training."""
    options = SpecOptions(
        sparsity=sparsity,
        threshold=threshold,
        max_accuracy_drop=max_accuracy_drop,
        method=method,
        block_size=block_size,
        centroids=centroids,
        scalar_when_smaller=scalar_when_smaller,
        augment=augment,
        mean=mean,
        std=std,
        fast=fast,
    )
    check_output(output, force=force, source=checkpoint)
    from compression import load_checkpoint
    from compression.pipeline import compress_model

    config = _spec(spec, arch, data, num_classes, options)
    if config.arch is None:
        fail('give the architecture: --arch, or "arch" in the --spec file', code=2)
    options.refuse_without_data(config.data)
    arch = config.arch
    target = _device(device if device != "auto" else config.device)
    dataset = _dataset(config.data, data_dir, download, arch, config.seed) if config.data else None
    classes = config.num_classes or (dataset.num_classes if dataset else None)
    model = load_checkpoint(checkpoint, arch, classes)  # without classes, the checkpoint's
    classes = classes or _classes_of(model, arch)
    with StageBars(enabled=not json_output) as bars:
        info = compress_model(
            model,
            config,
            output,
            architecture=arch,
            num_classes=classes,
            dataset=dataset,
            device=target,
            progress=bars,
        )
    if json_output:
        print_json(info.to_dict())
        print_warnings(info.metrics, bars.warned)
        return
    console.print(layer_table(info.layers, f"{output} ({arch}, {classes} classes)"))
    console.print(totals_table(info.to_dict()))
    print_input(info.input)
    print_pipeline(info.metrics, info.spec, bars.warned)


def _spec(
    path: Path | None,
    arch: str | None,
    data: str | None,
    num_classes: int | None,
    options: SpecOptions,
) -> CompressionSpec:
    """The spec file (or defaults), with the command line's options taking precedence."""
    from compression import CompressionSpec, InvalidConfigError

    config = CompressionSpec()
    if path is not None:
        require_file(path)
        try:
            config = CompressionSpec.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise InvalidConfigError(f"spec {path} is not valid JSON: {error}") from None
    document = options.apply(config.to_dict())
    document |= {
        "arch": arch or config.arch,
        "data": data or config.data,
        "num_classes": config.num_classes if num_classes is None else num_classes,
    }
    return CompressionSpec.from_dict(document)


def _dataset(source: str, data_dir: Path | None, download: bool, arch: str, seed: int) -> Dataset:
    from compression.data import load_dataset

    return load_dataset(source, data_dir=data_dir, download=download, seed=seed, arch=arch)


def _check_classes(
    file: Path, num_classes: int, recorded: Preprocessing | None, dataset: Dataset
) -> None:
    """Refuse data with labels the model cannot output; warn where both name their classes
    and the names differ (the model was made for other data)."""
    if dataset.num_classes > num_classes:
        fail(
            f"data set '{dataset.name}' has {dataset.num_classes} classes, but {file} holds a "
            f"model of {num_classes}"
        )
    known = recorded.classes if recorded is not None else None
    named = dataset.classes
    if known is not None and named is not None and known[: len(named)] != named:
        errors.print(
            f"[yellow]warning:[/] {file} was made for the classes {', '.join(known)}; "
            f"data set '{dataset.name}' has {', '.join(named)}",
            highlight=False,
            soft_wrap=True,
        )


def _normalized(dataset: Dataset, given: dict[str, list[float]] | None) -> Dataset:
    from compression.config import Normalize
    from compression.data import normalized

    return normalized(
        dataset, None if given is None else Normalize.from_dict(given, "--mean/--std")
    )


def _classes_of(model: torch.nn.Module, arch: str) -> int:
    """A loaded checkpoint's classes: its output layer's rows."""
    from torch import nn

    from compression import get_architecture
    from compression.checkpoint import output_layer

    output = output_layer(model)
    if output is None:
        return get_architecture(arch).num_classes
    layer = model.get_submodule(output)
    assert isinstance(layer, nn.Linear)  # output_layer names a Linear
    return layer.out_features


def _device(name: str) -> torch.device:
    from compression.train import resolve_device

    return resolve_device(name)
