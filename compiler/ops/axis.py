"""Ops along one axis: argmax (int64 indices of the maxima) and cumsum (running sums).

torch's cumsum returns int64 for every integer or bool input (its accumulation never overflows a
small int type), so the ONNX form casts those inputs to int64 first; onnxruntime's CumSum takes
int32/int64/float only anyway.
"""
from __future__ import annotations

from pydantic import Field

from ..ir.dims import TensorType
from .base import Port, Attrs, Axis, Op, TorchCode, expect, norm_axis, register
from .elementwise import INT_DTYPES, NUMERIC, check_dtype, scalar0


@register
class ArgMax(Op):
    """Index of the largest value along `axis` (the first one on ties), like torch.argmax; int64."""

    name = "argmax"
    in_ports = (Port("x", dtype="float or int"),)
    out_ports = (Port("out", "x's shape without axis (size 1 with keepdim)", dtype="int64"),)
    fusion = "reduction"

    class Attrs(Attrs):
        axis: Axis = Field(-1, description="the axis searched")
        keepdim: bool = Field(False, description="keep the axis with size 1")

    def infer(self, a, ins):
        (x,) = ins
        check_dtype(self.name, x, NUMERIC, "torch has no argmax of bool: cast to int32 first")
        expect(x.rank >= 1, f"argmax of a scalar ({x})", "rank >= 1")
        ax = norm_axis(a.axis, x.rank)
        shape = x.shape[:ax] + ((1,) if a.keepdim else ()) + x.shape[ax + 1:]
        return [TensorType(shape, "int64")]

    def to_torch(self, a, ins, m, node):
        keep = ", keepdim=True" if a.keepdim else ""
        return TorchCode(expr=f"torch.argmax({ins[0]}, {a.axis}{keep})")

    def to_onnx(self, a, ins, b, node):
        ax = norm_axis(a.axis, b.in_type(0).rank)
        return [b.op("ArgMax", [ins[0]], axis=ax, keepdims=int(a.keepdim), select_last_index=0)]


@register
class CumSum(Op):
    """Running sum along `axis`: out[..., i] = x[..., 0] + ... + x[..., i], like torch.cumsum (ints and bools
    give int64)."""

    name = "cumsum"
    in_ports = (Port("x", dtype="float, int or bool"),)
    out_ports = (Port("out", "x's shape", dtype="x's dtype (int64 for int and bool inputs)"),)
    fusion = "reduction"

    class Attrs(Attrs):
        axis: Axis = Field(description="the axis summed along")

    def infer(self, a, ins):
        (x,) = ins
        check_dtype(self.name, x, NUMERIC + ("bool",))
        expect(x.rank >= 1, f"cumsum of a scalar ({x})", "rank >= 1")
        norm_axis(a.axis, x.rank)
        return [x if x.dtype not in INT_DTYPES + ("bool",) else TensorType(x.shape, "int64")]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"torch.cumsum({ins[0]}, {a.axis})")

    def to_onnx(self, a, ins, b, node):
        x = ins[0]
        if b.in_type(0).dtype != b.out_type(0).dtype:
            x = b.op("Cast", [x], to=b.dtype())
        return [b.op("CumSum", [x, scalar0(b, norm_axis(a.axis, b.in_type(0).rank), "int64")])]
