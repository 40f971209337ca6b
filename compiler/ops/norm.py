"""Normalisation ops: batch, layer, RMS, group and local response norm.

Parameter names follow the torch module each lowers to (nn.BatchNorm*d, nn.LayerNorm, nn.RMSNorm,
nn.GroupNorm), so state dicts load unchanged. The ONNX forms are the inference forms: batch norm
reads its running statistics and dropout is the identity.
"""
from __future__ import annotations

from typing import Optional

from pydantic import Field
from ..init import ONES, ZEROS
from ..ir.dims import TensorType
from ..ir.params import ParamSpec
from .base import Port, Attrs, Cost, Eps, Op, Prob, Size, TorchCode, expect, fmt_args, register

EPS = "added to the variance for numerical stability"
DIMS = "how many trailing axes are normalised together"
from .linear import FLOAT_DTYPES, concrete, onnx_scalar

FLOAT32_EPS = 1.1920928955078125e-07  # torch.finfo(torch.float32).eps: nn.RMSNorm's eps=None


def _floating(x, op: str) -> None:
    expect(x.dtype in FLOAT_DTYPES, f"{op} input has dtype {x.dtype}", "a floating-point tensor")


def _filled(b, value: float, shape: tuple) -> str:
    """A float32 constant of `shape` filled with `value` (scale/bias for non-affine ONNX norms)."""
    n = 1
    for d in shape:
        n *= d
    flat = b.const([float(value)] * n, dtype="float32")
    return flat if len(shape) == 1 else b.op("Reshape", [flat, b.const(list(shape))])


def _per_channel(b, name: str, rank: int) -> str:
    """A [C] tensor reshaped to [C, 1, ...] so it broadcasts over [N, C, *spatial]."""
    return b.op("Unsqueeze", [name, b.const(list(range(1, rank - 1)))]) if rank > 2 else name



def _stats(x: TensorType, shape: tuple) -> TensorType:
    """A tensor of the statistics (means, inverse std) torch's CPU norm kernels keep: float32 but
    for float64 inputs."""
    return TensorType(tuple(shape), "float64" if x.dtype == "float64" else "float32")

@register
class BatchNorm(Op):
    """x[N, C, ...] normalised per channel; batch statistics in training, running ones in eval."""

    name = "batch_norm"
    in_ports = (Port("x", "[N, C, *spatial]"),)
    fusion = "elementwise"  # per-channel affine at inference, foldable into a preceding conv
    train_dependent = True

    class Attrs(Attrs):
        eps: Eps = Field(1e-5, description=EPS)
        momentum: Optional[Prob] = Field(0.1, description="running-statistics update rate; null: cumulative average")
        affine: bool = Field(True, description="learned per-channel scale and shift")

    def infer(self, a, ins):
        (x,) = ins
        _floating(x, "batch_norm")
        expect(2 <= x.rank <= 5, f"batch_norm input has rank {x.rank} ({x})", "rank 2 to 5: [N, C, *spatial]")
        concrete(x.shape[1], "the channel dim (axis 1)")
        return [x]

    def params(self, a, ins):
        c = ins[0].shape[1]
        ps = {"weight": ParamSpec((c,), init=ONES), "bias": ParamSpec((c,), init=ZEROS)} if a.affine else {}
        ps["running_mean"] = ParamSpec((c,), init=ZEROS, buffer=True)
        ps["running_var"] = ParamSpec((c,), init=ONES, buffer=True)
        ps["num_batches_tracked"] = ParamSpec((), dtype="int64", init=ZEROS, buffer=True)
        return ps

    def cost(self, a, ins, outs):
        # training: x and the batch mean and inverse std per channel (running stats are buffers)
        x = ins[0]
        stats = _stats(x, (x.shape[1],))
        return Cost(saved_inputs=(0,), saved_extra=Cost.nbytes(stats, stats))

    def to_torch(self, a, ins, m, node):
        rank = node.outputs[0].rank
        kind = {2: 1, 3: 1, 4: 2, 5: 3}[rank]
        kw = {}
        if a.eps != 1e-5:
            kw["eps"] = a.eps
        if a.momentum != 0.1:
            kw["momentum"] = a.momentum
        if not a.affine:
            kw["affine"] = False
        c = node.in_types[0].shape[1]
        return TorchCode(expr=f"{m}({ins[0]})", init=f"nn.BatchNorm{kind}d({fmt_args(c, **kw)})")

    def to_onnx(self, a, ins, b, node):
        c = b.in_type(0).shape[1]
        if a.affine:
            scale, bias = b.param(node, "weight"), b.param(node, "bias")
        else:
            scale, bias = _filled(b, 1.0, (c,)), _filled(b, 0.0, (c,))
        inputs = [ins[0], scale, bias, b.param(node, "running_mean"), b.param(node, "running_var")]
        return [b.op("BatchNormalization", inputs, epsilon=a.eps)]


def _trailing(x, dims: int, op: str) -> tuple:
    expect(1 <= dims <= x.rank, f"{op} over dims={dims} trailing axes of a rank-{x.rank} input ({x})",
           f"1 <= dims <= {x.rank}")
    shape = x.shape[x.rank - dims:]
    for i, d in enumerate(shape):
        concrete(d, f"normalised axis {x.rank - dims + i}")
    return tuple(shape)


def _shape_arg(shape: tuple):
    return shape[0] if len(shape) == 1 else list(shape)


@register
class LayerNorm(Op):
    """Normalise over the last `dims` axes, like nn.LayerNorm(x.shape[-dims:])."""

    name = "layer_norm"
    in_ports = (Port("x", "[..., *normalised]", doc="the last `dims` axes are normalised"),)
    fusion = "reduction"

    class Attrs(Attrs):
        dims: Size = Field(1, le=8, description=DIMS)
        eps: Eps = Field(1e-5, description=EPS)
        affine: bool = Field(True, description="learned elementwise scale (and shift)")
        bias: bool = Field(True, description="learned shift, when affine")

    def infer(self, a, ins):
        _floating(ins[0], "layer_norm")
        _trailing(ins[0], a.dims, "layer_norm")
        return [ins[0]]

    def params(self, a, ins):
        shape = _trailing(ins[0], a.dims, "layer_norm")
        if not a.affine:
            return {}
        ps = {"weight": ParamSpec(shape, init=ONES)}
        if a.bias:
            ps["bias"] = ParamSpec(shape, init=ZEROS)
        return ps

    def cost(self, a, ins, outs):
        x = ins[0]
        stats = _stats(x, x.shape[:x.rank - a.dims])  # a mean and an inverse std per normalised row
        return Cost(saved_inputs=(0,), saved_extra=Cost.nbytes(stats, stats))

    def to_torch(self, a, ins, m, node):
        shape = _trailing(node.outputs[0], a.dims, "layer_norm")
        kw = {}
        if a.eps != 1e-5:
            kw["eps"] = a.eps
        if not a.affine:
            kw["elementwise_affine"] = False
        if not a.bias:
            kw["bias"] = False
        return TorchCode(expr=f"{m}({ins[0]})", init=f"nn.LayerNorm({fmt_args(_shape_arg(shape), **kw)})")

    def to_onnx(self, a, ins, b, node):
        shape = _trailing(b.out_type(0), a.dims, "layer_norm")
        scale = b.param(node, "weight") if a.affine else _filled(b, 1.0, shape)
        inputs = [ins[0], scale] + ([b.param(node, "bias")] if a.affine and a.bias else [])
        return [b.op("LayerNormalization", inputs, axis=-a.dims, epsilon=a.eps)]


@register
class RMSNorm(Op):
    """x / sqrt(mean(x^2 over the last `dims` axes) + eps) * weight, like nn.RMSNorm."""

    name = "rms_norm"
    in_ports = (Port("x", "[..., *normalised]", doc="the last `dims` axes are normalised"),)
    fusion = "reduction"

    class Attrs(Attrs):
        dims: Size = Field(1, le=8, description=DIMS)
        eps: Optional[Eps] = Field(None, description="added to the mean square; null: float32 machine epsilon")
        affine: bool = Field(True, description="learned elementwise scale")

    def infer(self, a, ins):
        _floating(ins[0], "rms_norm")
        _trailing(ins[0], a.dims, "rms_norm")
        return [ins[0]]

    def params(self, a, ins):
        shape = _trailing(ins[0], a.dims, "rms_norm")
        return {"weight": ParamSpec(shape, init=ONES)} if a.affine else {}

    def cost(self, a, ins, outs):
        # torch composes it on CPU: x (for x^2 and x * rstd), rstd per row, and x * rstd for the
        # weight's gradient when affine
        x = ins[0]
        rstd = x.with_shape(x.shape[:x.rank - a.dims])
        return Cost(saved_inputs=(0,), saved_extra=Cost.nbytes(rstd, *([x] if a.affine else [])))

    def to_torch(self, a, ins, m, node):
        shape = _trailing(node.outputs[0], a.dims, "rms_norm")
        kw = {}
        if a.eps is not None:
            kw["eps"] = a.eps
        if not a.affine:
            kw["elementwise_affine"] = False
        return TorchCode(expr=f"{m}({ins[0]})", init=f"nn.RMSNorm({fmt_args(_shape_arg(shape), **kw)})")

    def to_onnx(self, a, ins, b, node):
        # RMSNormalization arrives only in opset 23; this decomposition runs everywhere (TensorRT too).
        t = b.out_type(0)
        eps = FLOAT32_EPS if a.eps is None else a.eps
        axes = b.const(list(range(t.rank - a.dims, t.rank)))
        ms = b.op("ReduceMean", [b.op("Mul", [ins[0], ins[0]]), axes], keepdims=1)
        inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, onnx_scalar(b, eps, t.dtype)])])])
        y = b.op("Mul", [ins[0], inv])
        return [b.op("Mul", [y, b.param(node, "weight")]) if a.affine else y]


@register
class GroupNorm(Op):
    """x[N, C, ...] normalised over groups of C/groups channels, like nn.GroupNorm."""

    name = "group_norm"
    in_ports = (Port("x", "[N, C, *spatial]"),)
    fusion = "reduction"

    class Attrs(Attrs):
        groups: Size = Field(description="number of channel groups; divides the channel count")
        eps: Eps = Field(1e-5, description=EPS)
        affine: bool = Field(True, description="learned per-channel scale and shift")

    def infer(self, a, ins):
        (x,) = ins
        _floating(x, "group_norm")
        expect(x.rank >= 2, f"group_norm input has rank {x.rank} ({x})", "rank >= 2: [N, C, *spatial]")
        c = concrete(x.shape[1], "the channel dim (axis 1)")
        expect(a.groups > 0 and c % a.groups == 0, f"groups={a.groups} does not divide {c} channels",
               "a number of groups dividing the channel count")
        return [x]

    def params(self, a, ins):
        c = ins[0].shape[1]
        return {"weight": ParamSpec((c,), init=ONES), "bias": ParamSpec((c,), init=ZEROS)} if a.affine else {}

    def cost(self, a, ins, outs):
        x = ins[0]
        stats = _stats(x, (x.shape[0], a.groups))  # a mean and an inverse std per sample and group
        return Cost(saved_inputs=(0,), saved_extra=Cost.nbytes(stats, stats))

    def to_torch(self, a, ins, m, node):
        kw = {}
        if a.eps != 1e-5:
            kw["eps"] = a.eps
        if not a.affine:
            kw["affine"] = False
        c = node.outputs[0].shape[1]
        return TorchCode(expr=f"{m}({ins[0]})", init=f"nn.GroupNorm({fmt_args(a.groups, c, **kw)})")

    def to_onnx(self, a, ins, b, node):
        # ONNX GroupNormalization's scale was per group until opset 21; this form is per channel.
        t = b.out_type(0)
        x = ins[0]
        g = b.op("Reshape", [x, b.const([0, a.groups, -1])])
        axes = b.const([2])
        mean = b.op("ReduceMean", [g, axes], keepdims=1)
        centred = b.op("Sub", [g, mean])
        var = b.op("ReduceMean", [b.op("Mul", [centred, centred]), axes], keepdims=1)
        std = b.op("Sqrt", [b.op("Add", [var, onnx_scalar(b, a.eps, t.dtype)])])
        y = b.op("Reshape", [b.op("Div", [centred, std]), b.shape(x)])
        if a.affine:
            y = b.op("Mul", [y, _per_channel(b, b.param(node, "weight"), t.rank)])
            y = b.op("Add", [y, _per_channel(b, b.param(node, "bias"), t.rank)])
        return [y]


@register
class LocalResponseNorm(Op):
    """Normalise by a window of `size` neighbouring channels, like nn.LocalResponseNorm."""

    name = "local_response_norm"
    in_ports = (Port("x", "[N, C, *spatial]"),)
    fusion = "opaque"

    class Attrs(Attrs):
        size: Size = Field(description="neighbouring channels in the window")
        alpha: float = Field(1e-4, ge=0.0, description="multiplicative factor")
        beta: float = Field(0.75, ge=0.0, description="exponent")
        k: float = Field(1.0, gt=0.0, description="additive factor")

    def infer(self, a, ins):
        (x,) = ins
        _floating(x, "local_response_norm")
        expect(x.rank >= 3, f"local_response_norm input has rank {x.rank} ({x})", "rank >= 3: [N, C, *spatial]")
        expect(a.size >= 1, f"size={a.size}", "a window of at least one channel")
        return [x]

    def cost(self, a, ins, outs):
        # F.local_response_norm composes it: x (squared, and divided), the channel-padded squares
        # [N, 1, C + size - 1, ...] the window average reads, k + alpha * avg and its power beta
        x = ins[0]
        padded = x.with_shape((x.shape[0], 1, x.shape[1] + a.size - 1) + tuple(x.shape[2:]))
        return Cost(saved_inputs=(0,), saved_extra=Cost.nbytes(padded, x, x))

    def to_torch(self, a, ins, m, node):
        kw = {k: getattr(a, k) for k, d in (("alpha", 1e-4), ("beta", 0.75), ("k", 1.0)) if getattr(a, k) != d}
        return TorchCode(expr=f"{m}({ins[0]})", init=f"nn.LocalResponseNorm({fmt_args(a.size, **kw)})")

    def to_onnx(self, a, ins, b, node):
        t = b.out_type(0)
        if a.size % 2 == 1 and t.rank == 4:
            return [b.op("LRN", [ins[0]], size=a.size, alpha=a.alpha, beta=a.beta, bias=a.k)]
        # ONNX LRN centres even windows one channel later than torch does, and ONNX Runtime wants
        # 4-d inputs; so spell out torch's form: zero-pad the squared channels, average, scale, power.
        x = ins[0]
        sq = b.op("Unsqueeze", [b.op("Mul", [x, x]), b.const([1])])
        rank5 = t.rank + 1
        begins = [0, 0, a.size // 2] + [0] * (rank5 - 3)
        ends = [0, 0, (a.size - 1) // 2] + [0] * (rank5 - 3)
        padded = b.op("Pad", [sq, b.const(begins + ends)])
        avg = b.op("AveragePool", [padded], kernel_shape=[a.size] + [1] * (rank5 - 3))
        div = b.op("Squeeze", [avg, b.const([1])])
        div = b.op("Add", [b.op("Mul", [div, onnx_scalar(b, a.alpha, t.dtype)]), onnx_scalar(b, a.k, t.dtype)])
        return [b.op("Div", [x, b.op("Pow", [div, onnx_scalar(b, a.beta, t.dtype)])])]
