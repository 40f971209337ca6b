"""Pooling ops: windowed max/avg pooling (1-d, 2-d) and adaptive pooling to a fixed output size.

Output sizes follow torch exactly, including ceil_mode's rule that the last window must start
inside the input or its left padding.
"""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from ..ir import dims as D
from .base import Attrs, Op, Pads, Sizes, TorchCode, expect, fmt_args, register

KERNEL = "window size: one value for every spatial axis, or one per axis"
STRIDE = "step between windows (default: the kernel size)"
PADDING = "implicit padding on both sides, at most half the kernel"


def pool_out(size, k: int, s: int, p: int, d: int, ceil: bool):
    """Output length of one pooled axis, as torch computes it."""
    span = d * (k - 1) + 1
    if isinstance(size, int):
        out = D.conv_out(size, k, s, p, d, ceil)
        if ceil and (out - 1) * s >= size + p:
            out -= 1
        return out
    # Symbolic length: the ceil_mode correction can only fire when p + s > span, a rare geometry.
    expect(not ceil or p + s <= span, f"ceil_mode with stride {s} and padding {p} over a symbolic length {size}",
           "a concrete length, or stride + padding <= the window span")
    return D.conv_out(size, k, s, p, d, ceil)


class _WindowPool(Op):
    """Shared geometry of max_pool*/avg_pool*: one window per output element."""

    fusion = "reduction"
    kind = ""

    def nd(self) -> int:
        return int(self.name[-2])

    def _tuple(self, v, what: str) -> tuple:
        t = tuple(v) if isinstance(v, list) else (v,) * self.nd()
        expect(len(t) == self.nd(), f"{what} has {len(t)} values", f"{self.nd()} values (one per spatial axis)")
        return t

    def geometry(self, a):
        k = self._tuple(a.kernel, "kernel")
        s = self._tuple(a.stride, "stride") if a.stride is not None else k
        p = self._tuple(a.padding, "padding")
        d = self._tuple(getattr(a, "dilation", 1), "dilation")
        expect(all(v > 0 for v in k + s + d), f"kernel {list(k)}, stride {list(s)}, dilation {list(d)}",
               "positive kernel, stride and dilation")
        expect(all(0 <= pi <= ki // 2 for pi, ki in zip(p, k)), f"padding {list(p)} with kernel {list(k)}",
               "padding at most half the kernel (torch's limit)")
        return k, s, p, d

    def infer(self, a, ins):
        (x,) = ins
        nd = self.nd()
        expect(x.rank == nd + 2, f"{self.name} input has rank {x.rank} ({x})", f"rank {nd + 2}: [N, C, *{nd} spatial]")
        k, s, p, d = self.geometry(a)
        spatial = []
        for i in range(nd):
            size = pool_out(x.shape[2 + i], k[i], s[i], p[i], d[i], a.ceil_mode)
            expect(not isinstance(size, int) or size > 0, f"output size {size} along spatial axis {i}",
                   "a window no larger than the padded input")
            spatial.append(size)
        return [x.with_shape(x.shape[:2] + tuple(spatial))]

    def _kw(self, a) -> dict:
        one = lambda t: t[0] if len(set(t)) == 1 else t  # noqa: E731 - print (3, 3) as 3, like torchvision
        k, s, p, d = self.geometry(a)
        kw = {}
        if s != k:
            kw["stride"] = one(s)
        if any(p):
            kw["padding"] = one(p)
        if any(v != 1 for v in d):
            kw["dilation"] = one(d)
        if a.ceil_mode:
            kw["ceil_mode"] = True
        return one(k), kw

    def _onnx_geometry(self, a) -> dict:
        k, s, p, d = self.geometry(a)
        return {"kernel_shape": list(k), "strides": list(s), "pads": list(p) * 2, "ceil_mode": int(a.ceil_mode)}


@register
class MaxPool(_WindowPool):
    """Max over windows, like F.max_pool1d / F.max_pool2d."""

    names = ["max_pool1d", "max_pool2d"]

    class Attrs(Attrs):
        kernel: Sizes = Field(description=KERNEL)
        stride: Optional[Sizes] = Field(None, description=STRIDE)
        padding: Pads = Field(0, description=PADDING)
        dilation: Sizes = Field(1, description="spacing between window elements")
        ceil_mode: bool = Field(False, description="round output sizes up rather than down")

    def to_torch(self, a, ins, m, node):
        k, kw = self._kw(a)
        return TorchCode(expr=f"F.{self.name}({ins[0]}, {fmt_args(k, **kw)})")

    def to_onnx(self, a, ins, b, node):
        _, _, _, d = self.geometry(a)
        return [b.op("MaxPool", [ins[0]], dilations=list(d), **self._onnx_geometry(a))]


@register
class AvgPool(_WindowPool):
    """Mean over windows, like F.avg_pool1d / F.avg_pool2d."""

    names = ["avg_pool1d", "avg_pool2d"]

    class Attrs(Attrs):
        kernel: Sizes = Field(description=KERNEL)
        stride: Optional[Sizes] = Field(None, description=STRIDE)
        padding: Pads = Field(0, description=PADDING)
        ceil_mode: bool = Field(False, description="round output sizes up rather than down")
        count_include_pad: bool = Field(True, description="average over padded zeros too")

    def to_torch(self, a, ins, m, node):
        k, kw = self._kw(a)
        if not a.count_include_pad:
            kw["count_include_pad"] = False
        return TorchCode(expr=f"F.{self.name}({ins[0]}, {fmt_args(k, **kw)})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("AveragePool", [ins[0]], count_include_pad=int(a.count_include_pad), **self._onnx_geometry(a))]


@register
class AdaptivePool(Op):
    """Pool [N, C, *spatial] to a fixed output size with torch's adaptive windows
    (window i of an axis of length L covers [floor(i*L/out), ceil((i+1)*L/out)))."""

    names = ["adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d"]
    fusion = "reduction"

    class Attrs(Attrs):
        size: Sizes = Field(description="output size: one value for every spatial axis, or one per axis")

    def nd(self) -> int:
        return int(self.name[-2])

    def sizes(self, a) -> tuple:
        t = tuple(a.size) if isinstance(a.size, list) else (a.size,) * self.nd()
        expect(len(t) == self.nd(), f"size has {len(t)} values", f"{self.nd()} values (one per spatial axis)")
        expect(all(v > 0 for v in t), f"size {list(t)}", "positive output sizes")
        return t

    def infer(self, a, ins):
        (x,) = ins
        nd = self.nd()
        expect(x.rank == nd + 2, f"{self.name} input has rank {x.rank} ({x})", f"rank {nd + 2}: [N, C, *{nd} spatial]")
        return [x.with_shape(x.shape[:2] + self.sizes(a))]

    def to_torch(self, a, ins, m, node):
        t = self.sizes(a)
        size = t[0] if len(set(t)) == 1 else t
        return TorchCode(expr=f"F.{self.name}({ins[0]}, {size!r})")

    def to_onnx(self, a, ins, b, node):
        reduce_op = "ReduceMax" if "max" in self.name else "ReduceMean"
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
