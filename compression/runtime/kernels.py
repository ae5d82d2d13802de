"""Inference kernels for one decoded Linear or Conv2d layer, and the table of which apply where.

Each kernel is an `nn.Module` built from a dense fp32 layer (the `.pqz` decoded once). It keeps
only its own form of the weight: a sparse or int8 layer holds no fp32 copy, and
`resident_bytes()` says what it holds. `tolerance` is the largest relative L2 error
(||y - y_dense|| / ||y_dense||) of the layer's output the autotune accepts from it:

    kernel              layers          devices     tolerance
    sparse (CSR)        Linear, Conv2d  cpu, cuda   1e-4   (fp32; only the summation order differs)
    int8-dynamic        Linear          cpu         3e-2   (per-channel weights, per-call scales)
    int8-static-fbgemm  Conv2d          cpu         3e-2   (scales calibrated on real inputs)
    int8-static-onednn  Conv2d          cpu         3e-2   (the same on oneDNN's kernels)
    bf16                Linear, Conv2d  cpu, cuda   2e-2
    fp16                Linear, Conv2d  cuda        5e-3
    semi-structured     Linear          cuda        5e-3   (fp16, only where the mask is 2:4)

torch's dynamic int8 convolution is not offered: on non-negative inputs (after a ReLU) its
output was 68% off (relative L2) in torch 2.14.1, so convolutions get int8 only when calibrated.
Static int8 convolutions come from both of torch's x86 backends, each a kernel of its own, because
neither is always the faster: with 2 threads oneDNN's took 8 ms for a 5x5 convolution (64 to 192
channels, 15x15, batch 1) that fbgemm ran in 0.23 ms, once a call at another batch size had come
before, while at batch 64 oneDNN's were up to 25% faster. torch's default `x86` engine picks one
of the two by shape, not by measurement.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():
    # torch.ao.quantization announces its move to torchao; its int8 kernels are what we want.
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd

Layer = nn.Linear | nn.Conv2d


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes held by dense or sparse tensors (a CSR tensor: values, row pointers, columns)."""
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        if tensor.layout == torch.sparse_csr:
            total += tensor_bytes(tensor.values(), tensor.crow_indices(), tensor.col_indices())
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def dense_bytes(layer: nn.Module) -> int:
    """What `layer` holds in its own parameters and buffers (not its children's)."""
    return sum(tensor_bytes(t) for t in [*layer.parameters(False), *layer.buffers(False)])


def _csr(weight: torch.Tensor) -> torch.Tensor:
    """fp32 CSR with int32 indices: half the index bytes of torch's default int64."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta state"
        csr = weight.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32),
            csr.col_indices().to(torch.int32),
            csr.values(),
            size=csr.shape,
            check_invariants=False,  # built by torch from a dense tensor just above
        )


def _per_channel_int8(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8: pruned zeros stay exactly zero."""
    flat = weight.detach().float().reshape(weight.shape[0], -1)  # (out, fan_in)
    scales = (flat.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    return torch.quantize_per_channel(
        weight.detach().float().cpu(), scales, zero_points, 0, torch.qint8
    )


def _bias(layer: Layer) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.detach().clone()


class SparseLinear(nn.Module):
    """y = x W^T + b with W in CSR: pays off once most weights are pruned."""

    kernel = "sparse"
    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.out_features = layer.out_features
        self.register_buffer("weight", _csr(layer.weight))
        self.register_buffer("bias", _bias(layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (batch, in)
        y = torch.mm(self.weight, flat.t()).t()  # (batch, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def resident_bytes(self) -> int:
        return tensor_bytes(self.weight, self.bias)


class SparseConv2d(nn.Module):
    """A convolution as im2col followed by a CSR matrix product (groups=1, zero padding)."""

    kernel = "sparse"
    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__()
        self.out_channels = layer.out_channels
        self.kernel_size: tuple[int, int] = _pair(layer.kernel_size)
        self.stride: tuple[int, int] = _pair(layer.stride)
        self.padding: tuple[int, int] = _pair(layer.padding)
        self.dilation: tuple[int, int] = _pair(layer.dilation)
        self.register_buffer("weight", _csr(layer.weight.reshape(layer.out_channels, -1)))
        self.register_buffer("bias", _bias(layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        fan_in, positions = cols.shape[1], cols.shape[2]  # cols: (n, c*kh*kw, L)
        cols = cols.transpose(0, 1).reshape(fan_in, n * positions)  # (c*kh*kw, n*L)
        y = torch.mm(self.weight, cols)  # (out, n*L)
        y = y.reshape(self.out_channels, n, positions).transpose(0, 1)  # (n, out, L)
        if self.bias is not None:
            y = y + self.bias[:, None]
        out_h = _out_size(height, 0, self)
        out_w = _out_size(width, 1, self)
        return y.reshape(n, self.out_channels, out_h, out_w)

    def resident_bytes(self) -> int:
        return tensor_bytes(self.weight, self.bias)


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, tuple) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ValueError(f"expected a pair of ints, got {value!r} (string padding is not supported)")


def _out_size(size: int, axis: int, conv: SparseConv2d) -> int:
    span = conv.dilation[axis] * (conv.kernel_size[axis] - 1) + 1
    return (size + 2 * conv.padding[axis] - span) // conv.stride[axis] + 1


class Int8DynamicLinear(nn.Module):
    """fbgemm/x86 int8 weights; activations quantized per call from their own range."""

    kernel = "int8-dynamic"

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.inner = nnqd.Linear(layer.in_features, layer.out_features, dtype=torch.qint8)
        self.inner.set_weight_bias(_per_channel_int8(layer.weight), _bias(layer))
        self._bytes = layer.weight.numel() + 16 * layer.out_features + tensor_bytes(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def resident_bytes(self) -> int:
        return self._bytes  # int8 weights, a double scale and a long zero point per channel


class Int8StaticConv2d(nn.Module):
    """int8 convolution with input and output scales calibrated on real inputs.

    `engine` ("fbgemm" or "onednn") is the backend whose kernels run it: the weights are packed
    for that backend, and a packed weight keeps its backend whatever the global engine is later.
    """

    def __init__(self, layer: nn.Conv2d, sample: LayerSample, engine: str) -> None:
        super().__init__()
        self.kernel = f"int8-static-{engine}"
        self.input_scale, self.input_zero_point = _affine_uint8(sample.inputs)
        self.inner = nnq.Conv2d(**_conv_arguments(layer))
        with quantized_engine(engine):
            self.inner.set_weight_bias(_per_channel_int8(layer.weight), _bias(layer))
        scale, zero_point = _affine_uint8(sample.outputs)
        self.inner.scale = scale
        self.inner.zero_point = zero_point
        self._bytes = layer.weight.numel() + 16 * layer.out_channels + tensor_bytes(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.quantize_per_tensor(x, self.input_scale, self.input_zero_point, torch.quint8)
        return self.inner(q).dequantize()

    def resident_bytes(self) -> int:
        return self._bytes


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """torch's global quantized engine set to `engine` for the block, then restored."""
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"quantized engine {engine!r} is not built into this torch")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _affine_uint8(values: torch.Tensor) -> tuple[float, int]:
    low = min(float(values.min()), 0.0)
    high = max(float(values.max()), 0.0)
    scale = max((high - low) / 255, 1e-8)
    return scale, round(-low / scale)


def _conv_arguments(layer: nn.Conv2d) -> dict[str, object]:
    return {
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_size": layer.kernel_size,
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "groups": layer.groups,
        "bias": layer.bias is not None,
    }


class HalfPrecision(nn.Module):
    """The layer in bf16 or fp16; inputs cast on the way in, outputs cast back to fp32."""

    def __init__(self, layer: Layer, dtype: torch.dtype) -> None:
        super().__init__()
        self.kernel = "bf16" if dtype == torch.bfloat16 else "fp16"
        self.layer = copy.deepcopy(layer).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.to(self.layer.weight.dtype)).to(x.dtype)

    def resident_bytes(self) -> int:
        return dense_bytes(self.layer)


class SemiStructuredLinear(nn.Module):
    """fp16 2:4 semi-structured sparse weights (CUDA sparse tensor cores)."""

    kernel = "semi-structured"
    bias: torch.Tensor | None

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.weight = nn.Parameter(
            to_sparse_semi_structured(layer.weight.detach().half()), requires_grad=False
        )
        bias = _bias(layer)
        self.register_buffer("bias", None if bias is None else bias.half())
        self._bytes = layer.weight.numel() + tensor_bytes(layer.bias) // 2  # half values + metadata

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.half(), self.weight, self.bias).to(x.dtype)

    def resident_bytes(self) -> int:
        return self._bytes


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive input weights has at most 2 non-zeros."""
    if weight.ndim != 2 or weight.shape[1] % 4:
        return False
    groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(dim=2)  # (out, in/4)
    return bool((groups <= 2).all())


@dataclass(frozen=True, slots=True)
class LayerSample:
    """A layer's input and its dense output on the sample batch; `real` = from user data."""

    inputs: torch.Tensor
    outputs: torch.Tensor
    real: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class Kernel:
    """One way to run a layer: where it applies and how to build it."""

    name: str
    family: str  # what runtime="<family>" forces
    tolerance: float
    devices: frozenset[str]
    layer_type: type[nn.Module]
    build: Callable[[nn.Module, LayerSample], nn.Module]
    applies: Callable[[nn.Module, LayerSample], bool] = lambda layer, sample: True


def _plain_conv(layer: nn.Module, sample: LayerSample) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"


def _zero_padded(layer: nn.Module, sample: LayerSample) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros"


def _calibrated(layer: nn.Module, sample: LayerSample) -> bool:
    return _zero_padded(layer, sample) and sample.real


def _two_four(layer: nn.Module, sample: LayerSample) -> bool:
    return isinstance(layer, nn.Linear) and is_two_four(layer.weight)


CPU = frozenset({"cpu"})
CUDA = frozenset({"cuda"})
BOTH = CPU | CUDA

KERNELS: tuple[Kernel, ...] = (
    Kernel(
        name="sparse",
        family="sparse",
        tolerance=1e-4,
        devices=BOTH,
        layer_type=nn.Linear,
        build=lambda layer, sample: SparseLinear(layer),  # type: ignore[arg-type]
    ),
    Kernel(
        name="sparse",
        family="sparse",
        tolerance=1e-4,
        devices=BOTH,
        layer_type=nn.Conv2d,
        build=lambda layer, sample: SparseConv2d(layer),  # type: ignore[arg-type]
        applies=_plain_conv,
    ),
    Kernel(
        name="int8-dynamic",
        family="int8",
        tolerance=3e-2,
        devices=CPU,
        layer_type=nn.Linear,
        build=lambda layer, sample: Int8DynamicLinear(layer),  # type: ignore[arg-type]
    ),
    *(
        Kernel(
            name=f"int8-static-{engine}",
            family="int8",
            tolerance=3e-2,
            devices=CPU,
            layer_type=nn.Conv2d,
            build=functools.partial(Int8StaticConv2d, engine=engine),
            applies=_calibrated,
        )
        for engine in ("fbgemm", "onednn")
    ),
    *(
        Kernel(
            name="bf16",
            family="half",
            tolerance=2e-2,
            devices=BOTH,
            layer_type=layer_type,
            build=lambda layer, sample: HalfPrecision(layer, torch.bfloat16),  # type: ignore[arg-type]
        )
        for layer_type in (nn.Linear, nn.Conv2d)
    ),
    *(
        Kernel(
            name="fp16",
            family="half",
            tolerance=5e-3,
            devices=CUDA,
            layer_type=layer_type,
            build=lambda layer, sample: HalfPrecision(layer, torch.float16),  # type: ignore[arg-type]
        )
        for layer_type in (nn.Linear, nn.Conv2d)
    ),
    Kernel(
        name="semi-structured",
        family="semi-structured",
        tolerance=5e-3,
        devices=CUDA,
        layer_type=nn.Linear,
        build=lambda layer, sample: SemiStructuredLinear(layer),  # type: ignore[arg-type]
        applies=_two_four,
    ),
)

FAMILIES = ("sparse", "int8", "half", "semi-structured")


def candidates(layer: nn.Module, sample: LayerSample, device: torch.device) -> list[Kernel]:
    """The kernels that could run `layer` on `device` (exact type: subclasses may differ)."""
    return [
        kernel
        for kernel in KERNELS
        if type(layer) is kernel.layer_type
        and device.type in kernel.devices
        and kernel.applies(layer, sample)
    ]
