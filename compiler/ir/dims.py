"""Tensor types with symbolic dimensions.

A dim is an `int` or a string: a symbol declared by the spec (`N`, `T`) or an arithmetic expression
over symbols built by shape inference (`(T-1)//2+1`). Arithmetic folds constants; two symbolic dims
are equal when their normalised strings are equal. `resolve` evaluates a dim for concrete symbol
values (cost model, generated inputs).
"""
from __future__ import annotations

import ast
import operator
from dataclasses import dataclass

Dim = "int | str"

_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool", "uint8", "int8")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "bool": 1,
               "uint8": 1, "int8": 1}
SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "int64": "i64",
         "int32": "i32", "bool": "b8", "uint8": "u8", "int8": "i8"}


def _wrap(d) -> str:
    s = str(d)
    return s if s.isidentifier() or s.lstrip("-").isdigit() else f"({s})"


def _bin(a, b, op: str, fn):
    if isinstance(a, int) and isinstance(b, int):
        return fn(a, b)
    if op in ("+", "-") and b == 0:
        return a
    if op == "+" and a == 0:
        return b
    if op in ("*", "//") and b == 1:
        return a
    if op == "*" and a == 1:
        return b
    if op == "*" and (a == 0 or b == 0):
        return 0
    return f"{_wrap(a)}{op}{_wrap(b)}"


def add(a, b):
    return _bin(a, b, "+", operator.add)


def sub(a, b):
    return _bin(a, b, "-", operator.sub)


def mul(a, b):
    return _bin(a, b, "*", operator.mul)


def floordiv(a, b):
    return _bin(a, b, "//", operator.floordiv)


def conv_out(size, kernel: int, stride: int, padding: int, dilation: int = 1, ceil: bool = False):
    """Output length of a convolution / pooling window over `size`."""
    span = dilation * (kernel - 1) + 1
    if isinstance(size, int):
        num = size + 2 * padding - span
        return (-(-num // stride) if ceil else num // stride) + 1
    num = sub(add(size, 2 * padding), span)
    if ceil:
        num = add(num, stride - 1)
    return add(floordiv(num, stride), 1)


def prod(dims):
    out = 1
    for d in dims:
        out = mul(out, d)
    return out


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def resolve(dim, values: dict) -> int:
    """Concrete value of `dim` given symbol values (a tiny arithmetic evaluator, no `eval`)."""
    if isinstance(dim, int):
        return dim

    def ev(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name):
            if n.id not in values:
                raise KeyError(n.id)
            return int(values[n.id])
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        raise ValueError(f"unsupported dim expression {dim!r}")

    return ev(ast.parse(str(dim), mode="eval").body)


def symbols(dim) -> set[str]:
    if isinstance(dim, int):
        return set()
    return {n.id for n in ast.walk(ast.parse(str(dim), mode="eval")) if isinstance(n, ast.Name)}


@dataclass(frozen=True)
class TensorType:
    shape: tuple
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def numel(self, values: dict | None = None) -> int:
        n = 1
        for d in self.shape:
            n *= resolve(d, values or {})
        return n

    def nbytes(self, values: dict | None = None) -> int:
        return self.numel(values) * DTYPE_BYTES[self.dtype]

    def __str__(self) -> str:
        return f"{SHORT.get(self.dtype, self.dtype)}[{','.join(str(d) for d in self.shape)}]"

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}


DTYPES = _DTYPES
