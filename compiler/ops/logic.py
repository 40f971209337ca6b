"""Dtypes and masks: cast, the comparisons (equal, less, ... -> bool), the logical ops over bool masks
(logical_and / or / xor / not) and where (select by a bool condition).

These are how bool and int masks are combined: arithmetic on bool is refused (compiler/ops/elementwise.py),
so a causal or padding mask is built with comparisons and logical ops, and applied with where.
onnxruntime has no ordering comparisons of bool and no Where over bool values, so those lowerings
cast bool to int32 (comparisons) or write Where as logic (c and a) or (not c and b).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..errors import ShapeError
from ..ir.dims import TensorType
from .base import Port, Attrs, Cost, NoAttrs, Op, TorchCode, broadcast, expect, register
from .elementwise import ONNX_ELEM, check_dtype

CAST_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")
TORCH_DTYPE = {d: f"torch.{d}" for d in CAST_DTYPES}


def one_dtype(op: str, ins: list) -> str:
    dtypes = [t.dtype for t in ins]
    if len(set(dtypes)) > 1:
        raise ShapeError(f"{op} inputs have different dtypes {dtypes}", expected="one dtype (cast one of them)")
    return dtypes[0]


@register
class Cast(Op):
    """x converted to `dtype`, like x.to(dtype) (floats to ints truncate toward zero; nonzero is true)."""

    name = "cast"
    in_ports = (Port("x", dtype="any"),)
    out_ports = (Port("out", "x's shape", dtype="dtype"),)
    fusion = "elementwise"

    class Attrs(Attrs):
        dtype: Literal[CAST_DTYPES] = Field(description="the dtype converted to")  # type: ignore[valid-type]

    def infer(self, a, ins):
        return [TensorType(ins[0].shape, a.dtype)]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"{ins[0]}.to({TORCH_DTYPE[a.dtype]})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Cast", [ins[0]], to=b.dtype())]


# name -> (torch function, ONNX op type, summary)
COMPARE = {
    "equal": ("torch.eq", "Equal", "a == b elementwise (bool), broadcasting, like torch.eq."),
    "less": ("torch.lt", "Less", "a < b elementwise (bool), broadcasting, like torch.lt."),
    "less_equal": ("torch.le", "LessOrEqual", "a <= b elementwise (bool), broadcasting, like torch.le."),
    "greater": ("torch.gt", "Greater", "a > b elementwise (bool), broadcasting, like torch.gt."),
    "greater_equal": ("torch.ge", "GreaterOrEqual", "a >= b elementwise (bool), broadcasting, like torch.ge."),
}


@register
class Compare(Op):
    names = list(COMPARE)
    in_ports = (Port("a", dtype="any"), Port("b", dtype="a's dtype", doc="broadcasts against a"))
    out_ports = (Port("out", "the broadcast shape", dtype="bool"),)
    summaries = {name: entry[2] for name, entry in COMPARE.items()}
    arity = (2, 2)
    fusion = "elementwise"
    Attrs = NoAttrs

    def infer(self, a, ins):
        one_dtype(self.name, ins)
        return [TensorType(broadcast([t.shape for t in ins]), "bool")]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"{COMPARE[self.name][0]}({ins[0]}, {ins[1]})")

    def to_onnx(self, a, ins, b, node):
        ins = list(ins)
        if b.in_type(0).dtype == "bool":
            # onnxruntime orders no bool tensors (and TensorRT compares no bools): compare 0/1 ints
            ins = [b.op("Cast", [x], to=ONNX_ELEM["int32"]) for x in ins]
        return [b.op(COMPARE[self.name][1], ins)]


# name -> (torch function, ONNX op type, summary)
LOGICAL = {
    "logical_and": ("torch.logical_and", "And", "a and b elementwise over bool masks, broadcasting."),
    "logical_or": ("torch.logical_or", "Or", "a or b elementwise over bool masks, broadcasting."),
    "logical_xor": ("torch.logical_xor", "Xor", "a xor b (exactly one true) over bool masks, broadcasting."),
}


@register
class Logical(Op):
    names = list(LOGICAL)
    in_ports = (Port("a", dtype="bool"), Port("b", dtype="bool", doc="broadcasts against a"))
    out_ports = (Port("out", "the broadcast shape", dtype="bool"),)
    summaries = {name: entry[2] for name, entry in LOGICAL.items()}
    arity = (2, 2)
    fusion = "elementwise"
    Attrs = NoAttrs

    def infer(self, a, ins):
        for t in ins:
            check_dtype(self.name, t, ("bool",), "make a mask with a comparison, or cast to bool")
        return [TensorType(broadcast([t.shape for t in ins]), "bool")]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"{LOGICAL[self.name][0]}({ins[0]}, {ins[1]})")

    def to_onnx(self, a, ins, b, node):
        return [b.op(LOGICAL[self.name][1], list(ins))]


@register
class LogicalNot(Op):
    """not x elementwise over a bool mask, like torch.logical_not."""

    name = "logical_not"
    in_ports = (Port("x", dtype="bool"),)
    out_ports = (Port("out", "x's shape", dtype="bool"),)
    fusion = "elementwise"
    Attrs = NoAttrs

    def infer(self, a, ins):
        check_dtype(self.name, ins[0], ("bool",), "make a mask with a comparison, or cast to bool")
        return [ins[0]]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"torch.logical_not({ins[0]})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Not", [ins[0]])]


@register
class Where(Op):
    """a where cond is true, else b; all three broadcast, like torch.where(cond, a, b)."""

    name = "where"
    in_ports = (Port("cond", dtype="bool"), Port("a", dtype="any", doc="taken where cond is true"),
                Port("b", dtype="a's dtype", doc="taken where cond is false"))
    out_ports = (Port("out", "the broadcast shape", dtype="a's dtype"),)
    arity = (3, 3)
    fusion = "elementwise"
    Attrs = NoAttrs

    def infer(self, a, ins):
        cond, x, y = ins
        expect(cond.dtype == "bool", f"where condition has dtype {cond.dtype} ({cond})",
               "a bool condition (make one with a comparison, or cast to bool)")
        dtype = one_dtype(self.name, [x, y])
        return [TensorType(broadcast([t.shape for t in ins]), dtype)]

    def cost(self, a, ins, outs):
        return Cost(saved_inputs=(0,), saved_for={0: (1, 2)})  # the condition routes either gradient

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"torch.where({ins[0]}, {ins[1]}, {ins[2]})")

    def to_onnx(self, a, ins, b, node):
        cond, x, y = ins
        if b.out_type(0).dtype == "bool":
            # onnxruntime's Where has no bool kernel: (cond and a) or (not cond and b), broadcasting alike
            return [b.op("Or", [b.op("And", [cond, x]), b.op("And", [b.op("Not", [cond]), y])])]
        return [b.op("Where", [cond, x, y])]
