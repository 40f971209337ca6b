"""Reductions (mean, sum, max over axes) and the softmax family (softmax, log_softmax over one axis)."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from ..ir.dims import TensorType
from .base import Port, Attrs, Cost, Axis, Op, TorchCode, expect, register
from .linear import FLOAT_DTYPES

# name -> (torch method, ONNX op)
REDUCTIONS = {"mean": ("mean", "ReduceMean"), "sum": ("sum", "ReduceSum"), "max": ("amax", "ReduceMax")}


def _axes(axes, rank: int) -> list:
    items = axes if isinstance(axes, list) else [axes]
    expect(len(items) >= 1, "an empty list of axes", "one or more axes")
    for ax in items:
        expect(-rank <= ax < rank, f"axis {ax} is out of range for rank {rank}", f"-{rank} <= axis < {rank}")
    norm = [ax % rank for ax in items]
    expect(len(set(norm)) == len(norm), f"axes {items} name an axis twice", "distinct axes")
    return norm


@register
class Reduce(Op):
    """Reduce over `axes` (an int or a list), keeping them as size 1 when `keepdim`."""

    names = list(REDUCTIONS)
    in_ports = (Port("x", dtype="any"),)
    out_ports = (Port("out", "x's shape without axes (size 1 with keepdim)", dtype="x's dtype"),)
    summaries = {"mean": "Mean over `axes`, like x.mean(axes).", "sum": "Sum over `axes`, like x.sum(axes).",
                 "max": "Max over `axes` (values only), like x.amax(axes)."}
    fusion = "reduction"

    class Attrs(Attrs):
        axes: Union[Axis, Annotated[list[Axis], Field(min_length=1, max_length=64)]] = Field(
            description="axis or axes reduced")
        keepdim: bool = Field(False, description="keep reduced axes with size 1")

    def infer(self, a, ins):
        (x,) = ins
        if self.name == "mean":
            expect(x.dtype in FLOAT_DTYPES, f"mean of a {x.dtype} tensor", "a floating-point tensor")
        expect(x.dtype != "bool", f"{self.name} of a bool tensor", "a numeric tensor")
        axes = set(_axes(a.axes, x.rank))
        shape = [1 if i in axes else d for i, d in enumerate(x.shape) if a.keepdim or i not in axes]
        # torch sums every integer dtype into int64
        dtype = "int64" if self.name == "sum" and x.dtype.startswith(("int", "uint")) else x.dtype
        return [TensorType(tuple(shape), dtype)]

    def cost(self, a, ins, outs):
        # amax's gradient goes to the elements equal to the result: it keeps both; sum and mean none
        return Cost(saved_inputs=(0,), saved_outputs=(0,)) if self.name == "max" else Cost()

    def to_torch(self, a, ins, m, node):
        axes = a.axes if isinstance(a.axes, int) else tuple(a.axes)
        keep = ", keepdim=True" if a.keepdim else ""
        return TorchCode(expr=f"{ins[0]}.{REDUCTIONS[self.name][0]}({axes!r}{keep})")

    def to_onnx(self, a, ins, b, node):
        axes = _axes(a.axes, b.in_type(0).rank)
        x = ins[0]
        if b.out_type(0).dtype != b.in_type(0).dtype:  # an int32 sum, computed in int64 as torch does
            x = b.op("Cast", [x], to=b.dtype())
        return [b.op(REDUCTIONS[self.name][1], [x, b.const(axes)], keepdims=int(a.keepdim))]


# name -> (torch expression over {x} and {axis}, ONNX op)
SOFTMAX = {"softmax": ("torch.softmax({x}, {axis})", "Softmax"),
           "log_softmax": ("F.log_softmax({x}, {axis})", "LogSoftmax")}


@register
class Softmax(Op):
    """Softmax / log-softmax along one axis."""

    names = list(SOFTMAX)
    in_ports = (Port("x"),)
    summaries = {"softmax": "exp(x) / sum(exp(x)) along `axis`, like F.softmax.",
                 "log_softmax": "log(softmax(x)) along `axis`, computed stably, like F.log_softmax."}
    fusion = "reduction"

    class Attrs(Attrs):
        axis: Axis = Field(-1, description="the axis normalised over")

    def infer(self, a, ins):
        (x,) = ins
        expect(x.dtype in FLOAT_DTYPES, f"{self.name} of a {x.dtype} tensor", "a floating-point tensor")
        _axes(a.axis, x.rank)
        return [x]

    def cost(self, a, ins, outs):
        return Cost(saved_outputs=(0,))  # both gradients are written in the result

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=SOFTMAX[self.name][0].format(x=ins[0], axis=a.axis))

    def to_onnx(self, a, ins, b, node):
        return [b.op(SOFTMAX[self.name][1], [ins[0]], axis=a.axis)]
