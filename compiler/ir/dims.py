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


class _Lin:
    """A dim in canonical form: integer constant + sum of coefficient * atom.

    Atoms are symbols (`T`), floor divisions by a constant of a canonical form (`(T+1)//2`) or
    products of non-constant dims. Since dims are integers, `(k*q*x + r) // k == q*x + r // k`,
    which moves whole multiples out of a division; so equal conv/pool arithmetic written in
    different orders renders to the same string.
    """

    __slots__ = ("terms", "const")

    def __init__(self, terms=None, const: int = 0):
        self.terms = {k: v for k, v in (terms or {}).items() if v}
        self.const = const

    @staticmethod
    def of(d) -> "_Lin":
        if isinstance(d, _Lin):
            return d
        if isinstance(d, int):
            return _Lin({}, d)
        try:
            return _parse(ast.parse(str(d), mode="eval").body)
        except SyntaxError:
            raise ValueError(f"unsupported dim expression {d!r}") from None

    def scaled(self, k: int) -> "_Lin":
        return _Lin({a: c * k for a, c in self.terms.items()}, self.const * k)

    def plus(self, o: "_Lin", sign: int = 1) -> "_Lin":
        t = dict(self.terms)
        for a, c in o.terms.items():
            t[a] = t.get(a, 0) + sign * c
        return _Lin(t, self.const + sign * o.const)

    def times(self, o: "_Lin") -> "_Lin":
        if not o.terms:
            return self.scaled(o.const)
        if not self.terms:
            return o.scaled(self.const)
        a, b = sorted((_wrap_atom(self.render()), _wrap_atom(o.render())))
        return _Lin({f"{a}*{_factor(b)}": 1})

    def floordiv(self, o: "_Lin") -> "_Lin":
        if o.terms:
            return _Lin({f"{_wrap_atom(self.render())}//{_wrap_atom(o.render())}": 1})
        k = o.const
        if not self.terms:
            return _Lin({}, self.const // k)
        if k == 1:
            return self
        out, inner = {}, {}
        for a, c in self.terms.items():
            q, r = divmod(c, k)
            if q:
                out[a] = q
            if r:
                inner[a] = r
        q0, r0 = divmod(self.const, k)
        rest = _Lin(inner, r0)
        if rest.terms:
            out[f"({rest.render()})//{k}"] = 1
        return _Lin(out, q0)  # rest without terms is 0 <= r0 < k, so r0 // k == 0

    def render(self):
        if not self.terms:
            return self.const
        parts = []
        for a in sorted(self.terms):
            c = self.terms[a]
            if c in (1, -1):
                # unary minus binds tighter than //: "-(T+1)//2" would mean (-(T+1))//2
                body = a if c == 1 or a.isidentifier() else f"({a})"
            else:
                body = f"{abs(c)}*{_factor(_wrap_atom(a))}"
            parts.append(("-" if c < 0 else "+") + body)
        if self.const:
            parts.append(("-" if self.const < 0 else "+") + str(abs(self.const)))
        text = "".join(parts)
        return text[1:] if text.startswith("+") else text


def _wrap_atom(d) -> str:
    s = str(d)
    return s if s.isidentifier() or s.lstrip("-").isdigit() or _balanced_atom(s) else f"({s})"


def _factor(s: str) -> str:
    """`s` as a right-hand factor of `*`: `*` and `//` associate to the left, so `4*(T+1)//2` would
    mean `(4*(T+1))//2`; an atom holding a top-level division is parenthesised there."""
    depth = 0
    for i, ch in enumerate(s):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and s.startswith("//", i):
            return f"({s})"
    return s


def _balanced_atom(s: str) -> bool:
    """True for a single parenthesised division atom such as `(T+1)//2` (no top-level + or -)."""
    depth = 0
    for ch in s:
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch in "+-":
            return False
    return s.startswith("(")


def _parse(n) -> _Lin:
    if isinstance(n, ast.Constant) and isinstance(n.value, int):
        return _Lin({}, n.value)
    if isinstance(n, ast.Name):
        return _Lin({n.id: 1})
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
        return _parse(n.operand).scaled(-1)
    if isinstance(n, ast.BinOp):
        a, b = _parse(n.left), _parse(n.right)
        if isinstance(n.op, ast.Add):
            return a.plus(b)
        if isinstance(n.op, ast.Sub):
            return a.plus(b, -1)
        if isinstance(n.op, ast.Mult):
            return a.times(b)
        if isinstance(n.op, ast.FloorDiv):
            return a.floordiv(b)
    raise ValueError(f"unsupported dim expression {ast.unparse(n)!r}")


def _bin(a, b, op: str, fn):
    if isinstance(a, int) and isinstance(b, int):
        return fn(a, b)
    la, lb = _Lin.of(a), _Lin.of(b)
    out = {"+": lambda: la.plus(lb), "-": lambda: la.plus(lb, -1), "*": lambda: la.times(lb),
           "//": lambda: la.floordiv(lb)}[op]()
    return out.render()


def add(a, b):
    return _bin(a, b, "+", operator.add)


def sub(a, b):
    return _bin(a, b, "-", operator.sub)


def mul(a, b):
    return _bin(a, b, "*", operator.mul)


def floordiv(a, b):
    return _bin(a, b, "//", operator.floordiv)


def canonical(d):
    """The canonical form of a dim (an int when it folds to a constant)."""
    return d if isinstance(d, int) else _Lin.of(d).render()


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
