"""Pooling ops: windowed max/avg pooling (1-d, 2-d) and adaptive pooling to a fixed output size.

Output sizes follow torch exactly, including ceil_mode's rule that the last window must start
inside the input or its left padding. The window geometry is compiler/ops/geometry.py's.
"""
from __future__ import annotations

from pydantic import Field

from ..ir.dims import TensorType
from .base import Port, Attrs, Cost, Op, Sizes, TorchCode, expect, fmt_args, register
from .geometry import one, window_attrs
from .linear import FLOAT_DTYPES

# name -> (spatial axes, kind)
WINDOW_POOLS = {"max_pool1d": (1, "max"), "max_pool2d": (2, "max"), "avg_pool1d": (1, "avg"), "avg_pool2d": (2, "avg")}
ADAPTIVE_POOLS = {"adaptive_avg_pool1d": (1, "avg"), "adaptive_avg_pool2d": (2, "avg"), "adaptive_max_pool2d": (2, "max")}


def _pool_attrs(nd: int, kind: str) -> type:
    base = window_attrs(nd, conv=False, dilation=kind == "max")

    class PoolAttrs(base):
        ceil_mode: bool = Field(False, description="round output sizes up rather than down")
        if kind == "avg":
            count_include_pad: bool = Field(True, description="average over padded zeros too")

    PoolAttrs.__name__ = PoolAttrs.__qualname__ = f"{kind.title()}Pool{nd}dAttrs"
    return PoolAttrs


ATTRS = {name: _pool_attrs(nd, kind) for name, (nd, kind) in WINDOW_POOLS.items()}


def pool_out(w, size, axis: int, ceil: bool):
    """Output length of one pooled axis, as torch computes it."""
    out = w.out_size(size, axis, ceil)
    if isinstance(size, int):
        if ceil and (out - 1) * w.stride[axis] >= size + w.pad_begin[axis]:
            out -= 1
        return out
    # Symbolic length: the ceil_mode correction can only fire when p + s > span, a rare geometry.
    span = w.dilation[axis] * (w.kernel[axis] - 1) + 1
    expect(not ceil or w.pad_begin[axis] + w.stride[axis] <= span,
           f"ceil_mode with stride {w.stride[axis]} and padding {w.pad_begin[axis]} over a symbolic length {size}",
           "a concrete length, or stride + padding <= the window span")
    return out


@register
class WindowPool(Op):
    """Max or mean over windows, like F.max_pool1d/2d and F.avg_pool1d/2d."""

    names = list(WINDOW_POOLS)
    in_ports = (Port("x", "[N, C, *spatial]"),)
    out_ports = (Port("y", "[N, C, *spatial']"),)
    summaries = {"max_pool1d": "Max over windows of [N, C, L], like F.max_pool1d.",
                 "max_pool2d": "Max over windows of [N, C, H, W], like F.max_pool2d.",
                 "avg_pool1d": "Mean over windows of [N, C, L], like F.avg_pool1d.",
                 "avg_pool2d": "Mean over windows of [N, C, H, W], like F.avg_pool2d."}
    fusion = "reduction"

    @property
    def Attrs(self):  # noqa: N802 - the op contract's attribute-model name, one per family member
        return ATTRS[self.name]

    def infer(self, a, ins):
        (x,) = ins
        nd = WINDOW_POOLS[self.name][0]
        expect(x.rank == nd + 2, f"{self.name} input has rank {x.rank} ({x})", f"rank {nd + 2}: [N, C, *{nd} spatial]")
        expect(x.dtype in FLOAT_DTYPES, f"{self.name} of a {x.dtype} tensor", "a floating-point tensor (cast it first)")
        spatial = []
        for i in range(nd):
            size = pool_out(a.window, x.shape[2 + i], i, a.ceil_mode)
            expect(not isinstance(size, int) or size > 0, f"output size {size} along spatial axis {i}",
                   "a window no larger than the padded input")
            spatial.append(size)
        return [x.with_shape(x.shape[:2] + tuple(spatial))]

    def cost(self, a, ins, outs):
        # both keep x; max pooling also the int64 argmax of every window
        if WINDOW_POOLS[self.name][1] == "max":
            return Cost(saved_inputs=(0,), saved_extra=Cost.nbytes(TensorType(outs[0].shape, "int64")))
        return Cost(saved_inputs=(0,))

    def to_torch(self, a, ins, m, node):
        w = a.window
        kw = {}
        if w.stride != w.kernel:
            kw["stride"] = one(w.stride)
        if any(w.pad_begin):
            kw["padding"] = one(w.pad_begin)
        if any(v != 1 for v in w.dilation):
            kw["dilation"] = one(w.dilation)
        if a.ceil_mode:
            kw["ceil_mode"] = True
        if not getattr(a, "count_include_pad", True):
            kw["count_include_pad"] = False
        return TorchCode(expr=f"F.{self.name}({ins[0]}, {fmt_args(one(w.kernel), **kw)})")

    def to_onnx(self, a, ins, b, node):
        w = a.window
        geometry = {"kernel_shape": list(w.kernel), "strides": list(w.stride), "pads": list(w.pad_begin + w.pad_end),
                    "ceil_mode": int(a.ceil_mode)}
        if WINDOW_POOLS[self.name][1] == "max":
            return [b.op("MaxPool", [ins[0]], dilations=list(w.dilation), **geometry)]
        return [b.op("AveragePool", [ins[0]], count_include_pad=int(a.count_include_pad), **geometry)]


@register
class AdaptivePool(Op):
    """Pool [N, C, *spatial] to a fixed output size with torch's adaptive windows
    (window i of an axis of length L covers [floor(i*L/out), ceil((i+1)*L/out)))."""

    names = list(ADAPTIVE_POOLS)
    in_ports = (Port("x", "[N, C, *spatial]"),)
    out_ports = (Port("y", "[N, C, *size]"),)
    fusion = "reduction"

    class Attrs(Attrs):
        size: Sizes = Field(description="output size: one value for every spatial axis, or one per axis")

    def sizes(self, a) -> tuple:
        nd = ADAPTIVE_POOLS[self.name][0]
        t = tuple(a.size) if isinstance(a.size, list) else (a.size,) * nd
        expect(len(t) == nd, f"size has {len(t)} values", f"{nd} values (one per spatial axis)")
        return t

    def infer(self, a, ins):
        (x,) = ins
        nd = ADAPTIVE_POOLS[self.name][0]
        expect(x.rank == nd + 2, f"{self.name} input has rank {x.rank} ({x})", f"rank {nd + 2}: [N, C, *{nd} spatial]")
        expect(x.dtype in FLOAT_DTYPES, f"{self.name} of a {x.dtype} tensor", "a floating-point tensor (cast it first)")
        return [x.with_shape(x.shape[:2] + self.sizes(a))]

    def cost(self, a, ins, outs):
        # torch keeps x (and, for max, the int64 argmax of every window); an average down to size 1
        # runs as mean, which keeps nothing
        if ADAPTIVE_POOLS[self.name][1] == "max":
            return Cost(saved_inputs=(0,), saved_extra=Cost.nbytes(TensorType(outs[0].shape, "int64")))
        if all(s == 1 for s in self.sizes(a)):
            return Cost()
        return Cost(saved_inputs=(0,))

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"F.{self.name}({ins[0]}, {one(self.sizes(a))!r})")

    def to_onnx(self, a, ins, b, node):
        reduce_op = "ReduceMax" if ADAPTIVE_POOLS[self.name][1] == "max" else "ReduceMean"
        x = ins[0]
        outs = self.sizes(a)
        ones = [i + 2 for i, o in enumerate(outs) if o == 1]
        if ones:  # global pooling along these axes
            x = b.op(reduce_op, [x, b.const(ones)], keepdims=1)
        for i, o in enumerate(outs):
            if o == 1:
                continue
            # Window bounds are computed from the runtime length, so symbolic lengths stay dynamic;
            # pooling axis by axis is exact because adaptive windows are products of intervals.
            ax = i + 2
            length = b.dim(ins[0], ax)
            pieces = []
            for j in range(o):
                lo = b.op("Div", [b.op("Mul", [length, b.const([j])]), b.const([o])])
                hi = b.op("Div", [b.op("Add", [b.op("Mul", [length, b.const([j + 1])]), b.const([o - 1])]),
                                  b.const([o])])
                win = b.op("Slice", [x, lo, hi, b.const([ax])])
                pieces.append(b.op(reduce_op, [win, b.const([ax])], keepdims=1))
            x = b.op("Concat", pieces, axis=ax)
        return [x]
