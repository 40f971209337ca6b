"""Tensors made in the graph: constant (a fixed value), arange (position ids, from fixed bounds or
an input's run-time length), tril / triu (causal masks) and one_hot.

A constant or a fixed arange is no weight: torch holds it in a `FixedTensor` (moved by `.to()`
like a buffer, but outside the state dict, so weights files stay the learned values only) and ONNX
as an initializer. `arange` with `length_of` reads the length at run time (ONNX Range over
Shape), so a symbolic length is never baked in.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Union

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from ..ir.dims import TensorType
from ..limits import MAX_DIM
from .base import Port, Attrs, Cost, Axis, Op, Size, TorchCode, expect, fmt_args, norm_axis, register
from .elementwise import DTYPE_RANGE, check_dtype, scalar0
from .logic import TORCH_DTYPE

CONST_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")
ConstDtype = Literal[CONST_DTYPES]  # type: ignore[valid-type]
MAX_CONST_ELEMENTS = 1 << 16  # a constant is spec text: larger tables belong in a weights file
MAX_ARANGE = 1 << 24
Number = Union[int, float]

FIXED_TENSOR = '''
class FixedTensor(nn.Module):
    """A fixed tensor (nnspec ops `constant`, `arange`): moved by .to() like a buffer, but not in the state dict."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def _apply(self, fn, recurse=True):
        self.value = fn(self.value)
        return super()._apply(fn, recurse)

    def forward(self):
        return self.value
'''


def _fail(field: str, message: str, **ctx):
    raise PydanticCustomError("nnspec_attr", "{field}" + message, {"field": field, **ctx})


def _leaf_ok(v, dtype: str) -> bool:
    """Whether a number can be an element of a `dtype` tensor exactly as written."""
    if dtype == "bool":
        return isinstance(v, bool)
    if isinstance(v, bool) or (dtype.startswith("int") and not isinstance(v, int)):
        return False
    low, high = DTYPE_RANGE[dtype]
    return low <= v <= high


def value_shape(value, dtype: str, field: str = "value") -> tuple:
    """Shape of a nested-list constant (rectangular, every leaf fitting `dtype`), or an attribute error."""
    shape, level, count = [], [value], 1
    while isinstance(level[0], list):
        n = len(level[0])
        if n == 0 or any(not isinstance(v, list) or len(v) != n for v in level):
            _fail(field, " is not a rectangular nested list of numbers")
        shape.append(n)
        count *= n
        if count > MAX_CONST_ELEMENTS or len(shape) > 8:
            _fail(field, " has more than {n} elements or 8 axes", n=MAX_CONST_ELEMENTS)
        level = [v for sub in level for v in sub]
    for v in level:
        if isinstance(v, list) or not _leaf_ok(v, dtype):
            _fail(field, " holds {v!r}, which is not a {dtype} value", v=v, dtype=dtype)
    return tuple(shape)


@register
class Constant(Op):
    """A fixed tensor written in the spec (a number or nested list), e.g. a scale or a mask, with no inputs."""

    name = "constant"
    out_ports = (Port("out", "the value's nesting", dtype="dtype"),)
    arity = (0, 0)
    fusion = "opaque"
    torch_snippets = {"FixedTensor": FIXED_TENSOR}

    class Attrs(Attrs):
        value: Union[bool, int, float, list] = Field(description="a number (a 0-d tensor) or a rectangular nested "
                                                     "list of numbers, at most 65536")
        dtype: ConstDtype = Field("float32", description="element type; ints and bools must be written as such")

        @model_validator(mode="after")
        def _check(self):
            value_shape(self.value, self.dtype)
            return self

    def infer(self, a, ins):
        return [TensorType(value_shape(a.value, a.dtype), a.dtype)]

    def cost(self, a, ins, outs):
        return Cost(state_output=True)  # a fixed tensor of the module

    def to_torch(self, a, ins, m, node):
        value = _floats(a.value) if a.dtype.startswith(("float", "bfloat")) else a.value
        return TorchCode(expr=f"{m}()", init=f"FixedTensor(torch.tensor({value!r}, dtype={TORCH_DTYPE[a.dtype]}))",
                         helpers=("FixedTensor",))

    def to_onnx(self, a, ins, b, node):
        if not isinstance(a.value, list):  # a 0-d value: see elementwise.scalar0
            return [scalar0(b, a.value, a.dtype)]
        return [b.op("Identity", [_const(b, a.value, a.dtype)])]


def _floats(v):
    return [_floats(x) for x in v] if isinstance(v, list) else float(v)


def _const(b, values, dtype: str) -> str:
    if dtype == "bfloat16":  # the builder stores no bfloat16 constants: convert once in the graph
        return b.op("Cast", [b.const(values, "float32")], to=b.dtype())
    return b.const(values, dtype)


# -- arange ------------------------------------------------------------------------------------
class ArangeAttrs(Attrs):
    start: Number = Field(0, description="first value")
    end: Optional[Number] = Field(None, description="values stop before it (with a positive step; after it with a "
                                  "negative one); null with length_of")
    step: Number = Field(1, description="difference between neighbours, not 0")
    length_of: Optional[Axis] = Field(None, description="take the length from this axis of the one input, at run "
                                      "time (values start, start + step, ...), instead of end")
    dtype: Literal["int64", "int32", "float32"] = Field("int64", description="element type; int types need "
                                                         "whole-number start, end and step")

    @model_validator(mode="after")
    def _check(self):
        if (self.end is None) == (self.length_of is None):
            _fail("end" if self.end is not None else "length_of", ": give exactly one of end and length_of")
        if self.step == 0:
            _fail("step", " is 0")
        for f in ("start", "end", "step"):
            v = getattr(self, f)
            if v is not None and not _leaf_ok(v, self.dtype):
                _fail(f, "={v!r} is not a {dtype} value", v=v, dtype=self.dtype)
        if self.end is not None:
            n = self.length()
            if not 1 <= n <= MAX_ARANGE:
                _fail("end", ": start={s!r}, end={e!r}, step={st!r} give {n} values", s=self.start, e=self.end,
                      st=self.step, n=max(n, 0))
            if not _leaf_ok(self.start + (n - 1) * self.step, self.dtype):
                _fail("end", ": the last value does not fit {dtype}", dtype=self.dtype)
        return self

    def length(self) -> int:
        # torch.arange's size: ceil((end - start) / step), computed in double as python does
        return math.ceil((self.end - self.start) / self.step)

    def values(self) -> list:
        return [self.start + i * self.step for i in range(self.length())]


@register
class Arange(Op):
    """start, start + step, ... before end (torch.arange), or as many values as an input's axis is long
    (`length_of`, read at run time: position ids for a symbolic sequence length)."""

    name = "arange"
    in_ports = (Port("x", dtype="any", optional=True, doc="with length_of: the tensor whose axis gives the length"),)
    out_ports = (Port("out", "[n]", dtype="dtype"),)
    arity = (0, 1)
    fusion = "opaque"
    torch_snippets = {"FixedTensor": FIXED_TENSOR}
    Attrs = ArangeAttrs

    def infer(self, a, ins):
        if a.length_of is None:
            expect(not ins, f"arange with end takes no input, got {len(ins)}", "no input, or length_of")
            return [TensorType((a.length(),), a.dtype)]
        expect(len(ins) == 1, "arange with length_of has no input", "in: the tensor whose axis gives the length")
        x = ins[0]
        return [TensorType((x.shape[norm_axis(a.length_of, x.rank)],), a.dtype)]

    def cost(self, a, ins, outs):
        # a fixed arange is module state; one over an input's length is made per call, without grad
        return Cost(state_output=True) if a.length_of is None else Cost(differentiable=False)

    def to_torch(self, a, ins, m, node):
        dtype = TORCH_DTYPE[a.dtype]
        cast = float if a.dtype == "float32" else int
        if a.length_of is None:
            args = fmt_args(cast(a.start), cast(a.end), *([cast(a.step)] if a.step != 1 else []))
            return TorchCode(expr=f"{m}()", init=f"FixedTensor(torch.arange({args}, dtype={dtype}))",
                             helpers=("FixedTensor",))
        expr = f"torch.arange({ins[0]}.shape[{a.length_of}], dtype={dtype}, device={ins[0]}.device)"
        if a.step != 1:
            expr = f"{expr} * {cast(a.step)!r}"
        if a.start != 0:
            expr = f"{expr} + {cast(a.start)!r}"
        return TorchCode(expr=expr if a.step == 1 and a.start == 0 else f"({expr})")

    def to_onnx(self, a, ins, b, node):
        if a.length_of is None:
            return [b.op("Identity", [b.const(a.values(), a.dtype)])]
        x = ins[0]
        n = b.op("Squeeze", [b.dim(x, norm_axis(a.length_of, b.in_type(0).rank))])
        out = b.op("Range", [scalar0(b, 0, "int64"), n, scalar0(b, 1, "int64")])
        if a.dtype != "int64":
            out = b.op("Cast", [out], to=b.dtype())
        # the same arithmetic as the torch form: arange(n) * step + start, in the output dtype
        if a.step != 1:
            out = b.op("Mul", [out, b.scalar(a.step, a.dtype)])
        if a.start != 0:
            out = b.op("Add", [out, b.scalar(a.start, a.dtype)])
        return [out]


# -- triangles ---------------------------------------------------------------------------------
TRIANGLES = {"tril": (0, "The lower triangle of the last two axes (the rest zeroed), like torch.tril: kept where "
                         "column - row <= diagonal. With a bool input, a causal mask."),
             "triu": (1, "The upper triangle of the last two axes (the rest zeroed), like torch.triu: kept where "
                         "column - row >= diagonal.")}


@register
class Triangle(Op):
    names = list(TRIANGLES)
    in_ports = (Port("x", "[..., n, m]", dtype="any"),)
    out_ports = (Port("out", "x's shape", dtype="x's dtype"),)
    summaries = {name: entry[1] for name, entry in TRIANGLES.items()}
    fusion = "injective"

    class Attrs(Attrs):
        diagonal: int = Field(0, ge=-MAX_DIM, le=MAX_DIM, description="which diagonal bounds the triangle: 0 the "
                              "main one, k > 0 above it, k < 0 below it")

    def infer(self, a, ins):
        (x,) = ins
        expect(x.rank >= 2, f"{self.name} of {x}", "a tensor of rank >= 2 (a matrix, or a batch of them)")
        # onnxruntime's Trilu has no int8/uint8 kernel
        check_dtype(self.name, x, ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool"))
        return [x]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"torch.{self.name}({ins[0]}" + (f", {a.diagonal})" if a.diagonal else ")"))

    def to_onnx(self, a, ins, b, node):
        return [b.op("Trilu", [ins[0], scalar0(b, a.diagonal, "int64")], upper=TRIANGLES[self.name][0])]


# -- one_hot -----------------------------------------------------------------------------------
@register
class OneHot(Op):
    """int64 ids[...] -> [..., num_classes] with a 1 at each id, like F.one_hot (int64 unless dtype says)."""

    name = "one_hot"
    in_ports = (Port("ids", "[...]", dtype="int", doc="int64 class ids in [0, num_classes)"),)
    out_ports = (Port("out", "[..., num_classes]", dtype="dtype"),)
    fusion = "injective"

    class Attrs(Attrs):
        num_classes: Size = Field(le=1 << 20, description="length of the new last axis; ids must lie in "
                                  "[0, num_classes)")
        dtype: Literal["int64", "int32", "float32", "bool"] = Field(
            "int64", description="element type of the result (F.one_hot's is int64)")

    def infer(self, a, ins):
        (ids,) = ins
        expect(ids.dtype == "int64", f"one_hot ids have dtype {ids.dtype}", "int64 class ids (as F.one_hot)")
        return [TensorType(ids.shape + (a.num_classes,), a.dtype)]

    def index_bounds(self, a, ins):
        return {0: a.num_classes}

    def to_torch(self, a, ins, m, node):
        expr = f"F.one_hot({ins[0]}, {a.num_classes})"
        return TorchCode(expr=expr if a.dtype == "int64" else f"{expr}.to({TORCH_DTYPE[a.dtype]})")

    def to_onnx(self, a, ins, b, node):
        # onnxruntime's OneHot makes no bool tensors: bool one-hots are int64 ones, cast
        dtype = "int64" if a.dtype == "bool" else a.dtype
        out = b.op("OneHot", [ins[0], b.const([a.num_classes]), b.const([0, 1], dtype)], axis=-1)
        return [b.op("Cast", [out], to=b.dtype()) if dtype != a.dtype else out]
