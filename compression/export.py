"""Export a `.pqz` for other runtimes: ONNX of the decoded model, or a safetensors state dict.

Both hold dense fp32 weights: the compression is in the `.pqz` file, not in these formats.
Both carry the file's `input` record (how to prepare inputs) as JSON metadata where it has one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from compression.errors import UnsupportedLayerError
from compression.pqz import decompress_pqz, inspect_pqz, load_pqz
from compression.pqz.container import atomic_path
from compression.zoo import get_architecture

FORMATS = ("onnx", "safetensors")


def export_pqz(path: str | os.PathLike[str], out: str | os.PathLike[str], fmt: str) -> Path:
    """Write `path` as `fmt` to `out` atomically; ONNX gets a dynamic batch dimension."""
    if fmt == "safetensors":
        return decompress_pqz(path, out)
    if fmt != "onnx":
        raise UnsupportedLayerError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise UnsupportedLayerError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'pqz[onnx]'"
        ) from None
    model = load_pqz(path)
    info = inspect_pqz(path)
    shape = get_architecture(info.architecture["name"]).input_shape
    example = torch.zeros((2, *shape))
    with atomic_path(out) as temporary:
        torch.onnx.export(
            model,
            (example,),
            str(temporary),
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            input_names=["input"],
            output_names=["logits"],
            verbose=False,
        )
        if info.input is not None:
            # How to prepare the input, for whoever runs the graph: metadata, as in safetensors.
            graph = onnx.load(str(temporary))
            onnx.helper.set_model_props(graph, {"pqz.input": json.dumps(info.input.to_dict())})
            onnx.save(graph, str(temporary))
    return Path(out)
