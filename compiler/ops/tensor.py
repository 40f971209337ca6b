"""Layout and construction ops: flatten, reshape, transpose, swap, slice, concat, split, stack,
parameter (a free learned tensor) and zeros_like.

Shapes may hold symbolic dims; the ONNX forms keep them dynamic (shape vectors use ONNX's 0 =
"copy this input dim" or are assembled from `Shape` slices at run time).
"""
from __future__ import annotations

from collections import Counter
from typing import Annotated, Literal, Optional

from pydantic import Field

from ..ir import dims as D
from ..ir.dims import TensorType
from ..limits import MAX_DIM
from ..init import ONES, ZEROS, normal, trunc_normal, uniform
from ..ir.params import ParamSpec
from .base import Port, Attrs, Cost, Axis, NoAttrs, Op, Size, TorchCode, expect, fmt_args, register, same_dim

Extent = Annotated[int, Field(ge=-1, le=MAX_DIM)]  # a reshape entry: a size, 0 (copy) or -1 (infer)
from .linear import onnx_scalar

INT64_MAX = 2**63 - 1


def _axis(axis: int, rank: int, what: str = "axis") -> int:
    expect(-rank <= axis < rank, f"{what} {axis} is out of range for rank {rank}", f"-{rank} <= {what} < {rank}")
    return axis % rank


def shape_vector(b, x: str, entries: list) -> str:
    """An int64 shape tensor from entries that are ints (0 and -1 in ONNX's Reshape sense) or
    ("dim", axis) for a dim of `x` read at run time."""
    if all(isinstance(e, int) for e in entries):
        return b.const(list(entries))
    parts, run = [], []
    for e in entries:
        if isinstance(e, int):
            run.append(e)
            continue
        if run:
            parts.append(b.const(run))
            run = []
        parts.append(b.op("Slice", [b.shape(x), b.const([e[1]]), b.const([e[1] + 1])]))
    if run:
        parts.append(b.const(run))
    return b.op("Concat", parts, axis=0)


@register
class Flatten(Op):
    """Merge axes start..end (inclusive) into one, like torch.flatten."""

    name = "flatten"
    in_ports = (Port("x", dtype="any"),)
    out_ports = (Port("out", "axes start..end merged into one", dtype="the input's dtype"),)
    fusion = "injective"

    class Attrs(Attrs):
        start: Axis = Field(1, description="first axis merged")
        end: Axis = Field(-1, description="last axis merged (inclusive)")

    def _range(self, a, x) -> tuple:
        expect(x.rank >= 1, f"flatten of a scalar ({x})", "rank >= 1")
        s, e = _axis(a.start, x.rank, "start"), _axis(a.end, x.rank, "end")
        expect(s <= e, f"flatten start={a.start} comes after end={a.end} for rank {x.rank}", "start <= end")
        return s, e

    def infer(self, a, ins):
        (x,) = ins
        s, e = self._range(a, x)
        return [x.with_shape(x.shape[:s] + (D.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])]

    def cost(self, a, ins, outs):
        return Cost(views=((0, 0),))  # a view of x (x is contiguous where it matters: see compiler/cost.py)

    def to_torch(self, a, ins, m, node):
        args = [a.start] + ([a.end] if a.end != -1 else [])
        return TorchCode(expr=f"torch.flatten({ins[0]}, {fmt_args(*args)})")

    def to_onnx(self, a, ins, b, node):
        x = b.in_type(0)
        s, e = self._range(a, x)
        after = [d if isinstance(d, int) else ("dim", i) for i, d in enumerate(x.shape) if i > e]
        return [b.op("Reshape", [ins[0], shape_vector(b, ins[0], [0] * s + [-1] + after)])]


def _split_dims(shape) -> tuple:
    """(product of the int dims, Counter of the symbolic dims) of a shape."""
    n, syms = 1, Counter()
    for d in shape:
        if isinstance(d, int):
            n *= d
        else:
            syms[str(d)] += 1
    return n, syms


@register
class Reshape(Op):
    """Reshape with ONNX's conventions: 0 copies the input dim at that position, -1 is inferred."""

    name = "reshape"
    in_ports = (Port("x", dtype="any"),)
    out_ports = (Port("out", "[*shape]", dtype="the input's dtype"),)
    fusion = "injective"

    class Attrs(Attrs):
        shape: list[Extent] = Field(max_length=64, description="the new shape: 0 copies the input dim at that "
                                    "position, one -1 is inferred")

    def infer(self, a, ins):
        (x,) = ins
        want = f"{a.shape} for input {x}"
        expect(a.shape.count(-1) <= 1, f"reshape to {a.shape} has more than one -1", "at most one -1")
        expect(all(v >= -1 for v in a.shape), f"reshape to {a.shape} has a negative size", "sizes >= 0, or -1")
        out = []
        for i, v in enumerate(a.shape):
            if v == 0:
                expect(i < x.rank, f"reshape entry 0 at position {i} copies a dim the rank-{x.rank} input lacks",
                       f"0 only at positions < {x.rank}")
                out.append(x.shape[i])
            else:
                out.append(v)
        n_in, s_in = _split_dims(x.shape)
        known = [d for d in out if d != -1]
        n_k, s_k = _split_dims(known)
        if -1 in out:
            left = s_in - s_k
            expect(not (s_k - s_in), f"cannot infer -1 in reshape {want}: symbolic dims "
                   f"{sorted((s_k - s_in).elements())} are not input dims", "-1 where the remaining size is known")
            expect(n_k > 0 and n_in % n_k == 0, f"reshape {want}: {n_in} elements do not divide into {n_k}",
                   "sizes whose product divides the input's element count")
            inferred = n_in // n_k
            for sym in sorted(left.elements()):
                inferred = D.mul(inferred, sym)
            out[out.index(-1)] = inferred
        else:
            expect(n_in == n_k and s_in == s_k, f"reshape {want} changes the number of elements",
                   f"sizes whose product is {D.prod(x.shape)}")
        return [x.with_shape(out)]

    def cost(self, a, ins, outs):
        return Cost(views=((0, 0),))  # a view of x where x's layout allows, as torch's reshape

    def to_torch(self, a, ins, m, node):
        args = [f"{ins[0]}.shape[{i}]" if v == 0 else str(v) for i, v in enumerate(a.shape)]
        return TorchCode(expr=f"{ins[0]}.reshape({', '.join(args)})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Reshape", [ins[0], b.const(list(a.shape))])]


def _perm(perm: list, rank: int) -> list:
    expect(len(perm) == rank, f"perm {perm} has {len(perm)} entries for a rank-{rank} input",
           f"a permutation of 0..{rank - 1}")
    p = [_axis(v, rank, "perm entry") for v in perm]
    expect(sorted(p) == list(range(rank)), f"perm {perm} is not a permutation", f"each of 0..{rank - 1} once")
    return p


@register
class Transpose(Op):
    """Permute axes, like torch.permute (output axis i is input axis perm[i])."""

    name = "transpose"
    in_ports = (Port("x", dtype="any"),)
    out_ports = (Port("out", "the input's axes permuted", dtype="the input's dtype"),)
    fusion = "injective"

    class Attrs(Attrs):
        perm: list[Axis] = Field(max_length=64, description="output axis i is input axis perm[i]")

    def infer(self, a, ins):
        (x,) = ins
        return [x.with_shape(tuple(x.shape[i] for i in _perm(a.perm, x.rank)))]

    def cost(self, a, ins, outs):
        return Cost(views=((0, 0),))  # a permuted view of x

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"{ins[0]}.permute({fmt_args(*a.perm)})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Transpose", [ins[0]], perm=_perm(a.perm, b.in_type(0).rank))]


@register
class Swap(Op):
    """Exchange two axes, like torch.transpose(x, a, b)."""

    name = "swap"
    in_ports = (Port("x", dtype="any"),)
    out_ports = (Port("out", "axes a and b exchanged", dtype="the input's dtype"),)
    fusion = "injective"

    class Attrs(Attrs):
        a: Axis = Field(description="one axis")
        b: Axis = Field(description="the other axis")

    def perm(self, a, rank: int) -> list:
        i, j = _axis(a.a, rank, "a"), _axis(a.b, rank, "b")
        p = list(range(rank))
        p[i], p[j] = p[j], p[i]
        return p

    def infer(self, a, ins):
        (x,) = ins
        return [x.with_shape(tuple(x.shape[i] for i in self.perm(a, x.rank)))]

    def cost(self, a, ins, outs):
        return Cost(views=((0, 0),))  # a transposed view of x

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"{ins[0]}.transpose({a.a}, {a.b})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Transpose", [ins[0]], perm=self.perm(a, b.in_type(0).rank))]


def slice_len(size, start: int, end: Optional[int], step: int):
    """Length of x[start:end:step] along an axis of `size` (python slice rules; a symbolic size is
    assumed long enough for the given bounds)."""
    if isinstance(size, int):
        return len(range(*slice(start, end, step).indices(size)))
    if end is not None and (start >= 0) == (end >= 0):
        span = end - start  # both from the front, or both from the back: independent of the size
    elif end is None and start < 0:
        span = -start
    elif end is None:
        span = D.sub(size, start)
    elif end < 0:
        span = D.sub(D.sub(size, -end), start)
    else:
        span = D.sub(end, D.add(size, start))
    if isinstance(span, int):
        return max(0, -(-span // step))
    return D.floordiv(D.add(span, step - 1), step)


@register
class Slice(Op):
    """x[..., start:end:step, ...] along one axis (python slice rules, positive step)."""

    name = "slice"
    in_ports = (Port("x", dtype="any"),)
    out_ports = (Port("out", "axis cut to start:end:step", dtype="the input's dtype"),)
    fusion = "injective"

    class Attrs(Attrs):
        axis: Axis = Field(description="the axis sliced")
        start: int = Field(0, ge=-MAX_DIM, le=MAX_DIM, description="first index (negative: from the end)")
        end: Optional[int] = Field(None, ge=-MAX_DIM, le=MAX_DIM, description="index after the last; null: to the end")
        step: Size = Field(1, description="stride between kept elements")

    def infer(self, a, ins):
        (x,) = ins
        ax = _axis(a.axis, x.rank)
        expect(a.step >= 1, f"slice step {a.step}", "a positive step (torch slices forward only)")
        n = slice_len(x.shape[ax], a.start, a.end, a.step)
        expect(not isinstance(n, int) or n > 0, f"slice {a.start}:{a.end}:{a.step} of axis {a.axis} "
               f"(size {x.shape[ax]}) is empty", "bounds selecting at least one element")
        return [x.with_shape(x.shape[:ax] + (n,) + x.shape[ax + 1:])]

    def cost(self, a, ins, outs):
        return Cost(views=((0, 0),))  # a view of x

    def to_torch(self, a, ins, m, node):
        ax = a.axis % node.outputs[0].rank
        sl = ("" if a.start == 0 else str(a.start)) + ":" + ("" if a.end is None else str(a.end))
        sl += "" if a.step == 1 else f":{a.step}"
        return TorchCode(expr=f"{ins[0]}[{':, ' * ax}{sl}]")

    def to_onnx(self, a, ins, b, node):
        end = INT64_MAX if a.end is None else a.end
        ax = a.axis % b.in_type(0).rank
        return [b.op("Slice", [ins[0], b.const([a.start]), b.const([end]), b.const([ax]), b.const([a.step])])]


def _same_but(ts: list, axis: int, op: str) -> None:
    expect(len({t.dtype for t in ts}) == 1, f"{op} inputs have dtypes {[t.dtype for t in ts]}", "one dtype")
    r = ts[0].rank
    expect(all(t.rank == r for t in ts), f"{op} inputs have ranks {[t.rank for t in ts]}", "one rank")
    for i in range(r):
        if i != axis:
            expect(all(same_dim(t.shape[i], ts[0].shape[i]) for t in ts),
                   f"{op} inputs differ at axis {i}: {', '.join(str(t) for t in ts)}",
                   f"equal sizes at every axis but {axis}")


@register
class Concat(Op):
    """Join tensors along an existing axis, like torch.cat."""

    name = "concat"
    in_ports = (Port("x", dtype="any", repeated=True, doc="equal shapes but along axis"),)
    out_ports = (Port("out", "sizes along axis summed", dtype="the inputs' dtype"),)
    arity = (1, None)
    fusion = "injective"

    class Attrs(Attrs):
        axis: Axis = Field(description="the axis joined along")

    def infer(self, a, ins):
        ax = _axis(a.axis, ins[0].rank)
        _same_but(ins, ax, "concat")
        size = 0
        for t in ins:
            size = D.add(size, t.shape[ax])
        return [ins[0].with_shape(ins[0].shape[:ax] + (size,) + ins[0].shape[ax + 1:])]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"torch.cat([{', '.join(ins)}], {a.axis})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Concat", list(ins), axis=a.axis % b.in_type(0).rank)]


@register
class Split(Op):
    """Cut one axis into pieces of the given sizes (outputs out0, out1, ...), like torch.split."""

    name = "split"
    in_ports = (Port("x", dtype="any"),)
    out_ports = (Port("out0, out1, ...", dtype="any", doc="one per entry of sizes"),)
    fusion = "injective"

    class Attrs(Attrs):
        axis: Axis = Field(description="the axis split")
        sizes: list[Size] = Field(min_length=1, max_length=4096, description="size of each piece, in order")

    def outputs(self, a):
        return [f"out{i}" for i in range(len(a.sizes))]

    def infer(self, a, ins):
        (x,) = ins
        ax = _axis(a.axis, x.rank)
        expect(len(a.sizes) >= 1 and all(s > 0 for s in a.sizes), f"split sizes {a.sizes}", "positive sizes")
        expect(isinstance(x.shape[ax], int), f"split of axis {a.axis}, whose size {x.shape[ax]} is symbolic",
               "a split along an axis of concrete size (fixed sizes would pin the symbolic one)")
        expect(sum(a.sizes) == x.shape[ax], f"split sizes {a.sizes} sum to {sum(a.sizes)}, "
               f"not the size {x.shape[ax]} of axis {a.axis}", f"sizes summing to {x.shape[ax]}")
        return [x.with_shape(x.shape[:ax] + (s,) + x.shape[ax + 1:]) for s in a.sizes]

    def cost(self, a, ins, outs):
        return Cost(views=tuple((i, 0) for i in range(len(outs))))  # views of x

    def to_torch(self, a, ins, m, node):
        expr = f"torch.split({ins[0]}, {list(a.sizes)!r}, {a.axis})"
        return TorchCode(expr=expr + ("[0]" if len(a.sizes) == 1 else ""))

    def to_onnx(self, a, ins, b, node):
        outs = b.op("Split", [ins[0], b.const(list(a.sizes))], n_out=len(a.sizes), axis=a.axis % b.in_type(0).rank)
        return outs if isinstance(outs, list) else [outs]


@register
class Stack(Op):
    """Join equally shaped tensors along a new axis, like torch.stack."""

    name = "stack"
    in_ports = (Port("x", dtype="any", repeated=True, doc="equal shapes"),)
    out_ports = (Port("out", "a new axis of length len(inputs) at axis", dtype="the inputs' dtype"),)
    arity = (1, None)
    fusion = "injective"

    class Attrs(Attrs):
        axis: Axis = Field(description="position of the new axis")

    def infer(self, a, ins):
        _same_but(ins, -1, "stack")
        ax = _axis(a.axis, ins[0].rank + 1)
        return [ins[0].with_shape(ins[0].shape[:ax] + (len(ins),) + ins[0].shape[ax:])]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"torch.stack([{', '.join(ins)}], {a.axis})")

    def to_onnx(self, a, ins, b, node):
        ax = b.const([a.axis % b.out_type(0).rank])
        return [b.op("Concat", [b.op("Unsqueeze", [x, ax]) for x in ins], axis=a.axis % b.out_type(0).rank)]


LEARNED_TENSOR = '''
class LearnedTensor(nn.Module):
    """A free learned tensor (nnspec op `parameter`): calling the module returns it."""

    def __init__(self, *shape, init="normal", std=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape))
        if init == "normal":
            nn.init.normal_(self.weight, std=std)
        elif init == "trunc_normal":
            nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)
        elif init == "uniform":
            nn.init.uniform_(self.weight, -std, std)
        elif init == "ones":
            nn.init.ones_(self.weight)
        else:
            nn.init.zeros_(self.weight)

    def forward(self):
        return self.weight
'''


@register
class Parameter(Op):
    """A learned tensor with no inputs (class tokens, position tables, learned queries)."""

    name = "parameter"
    out_ports = (Port("weight", "[*shape]"),)
    arity = (0, 0)
    fusion = "opaque"
    torch_snippets = {"LearnedTensor": LEARNED_TENSOR}

    class Attrs(Attrs):
        shape: list[Size] = Field(max_length=8, description="shape of the learned tensor")
        # `fill`, not `init`: `init:` is the per-node key that overrides any op's initialisers.
        fill: Literal["normal", "trunc_normal", "uniform", "zeros", "ones"] = Field(
            "normal", description="initial values")
        std: float = Field(1.0, ge=0.0, description="spread of normal, trunc_normal and uniform fills")

    def infer(self, a, ins):
        expect(len(a.shape) >= 1 and all(d > 0 for d in a.shape), f"parameter shape {a.shape}",
               "a non-empty list of positive sizes")
        return [TensorType(tuple(a.shape), "float32")]

    def params(self, a, ins):
        fills = {"normal": lambda: normal(a.std), "trunc_normal": lambda: trunc_normal(a.std),
                 "uniform": lambda: uniform(a.std), "zeros": lambda: ZEROS, "ones": lambda: ONES}
        return {"weight": ParamSpec(tuple(a.shape), init=fills[a.fill]())}  # what LearnedTensor draws

    def cost(self, a, ins, outs):
        return Cost(state_output=True)  # the parameter itself

    def to_torch(self, a, ins, m, node):
        kw = {}
        if a.fill != "normal":
            kw["init"] = a.fill
        if a.std != 1.0:
            kw["std"] = a.std
        return TorchCode(expr=f"{m}()", init=f"LearnedTensor({fmt_args(*a.shape, **kw)})", helpers=("LearnedTensor",))

    def to_onnx(self, a, ins, b, node):
        return [b.op("Identity", [b.param(node, "weight")])]


@register
class ZerosLike(Op):
    """Zeros of the input's shape and dtype (initial recurrent state, masks)."""

    name = "zeros_like"
    in_ports = (Port("x", dtype="any"),)
    fusion = "injective"
    Attrs = NoAttrs

    def infer(self, a, ins):
        return [ins[0]]

    def cost(self, a, ins, outs):
        return Cost(differentiable=False)  # torch.zeros_like never requires grad

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"torch.zeros_like({ins[0]})")

    def to_onnx(self, a, ins, b, node):
        dtype = b.out_type(0).dtype
        zero = onnx_scalar(b, False if dtype == "bool" else 0, dtype)
        return [b.op("Expand", [zero, b.shape(ins[0])])]
