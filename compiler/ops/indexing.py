"""Indexing ops: `gather` (torch.gather), `index_select` (rows by a 1-D index) and `scatter_add`
(target.index_add: sums rows of src into the rows of target named by index, as message passing
aggregates edge messages into nodes). Indices are int64. None of them does FLOPs in the counter's
convention.

TensorRT-RTX rejects ScatterElements with an add reduction, so scatter_add's TensorRT form is a
one-hot matmul: target + onehot(index)[V, E] @ src[E, F].
"""
from __future__ import annotations

from pydantic import Field

from ..ir.dims import TensorType
from .base import Port, Attrs, Cost, Axis, Op, Support, TorchCode, expect, norm_axis, register, same_dim


class AxisAttrs(Attrs):
    axis: Axis = Field(description="the axis indexed")


def _index(t: TensorType, one_d: bool) -> None:
    expect(t.dtype == "int64", f"index has dtype {t.dtype}", "an int64 index tensor")
    if one_d:
        expect(t.rank == 1, f"index is {t}", "a 1-D index: [E]")


def _front(axis: int, rank: int) -> list[int]:
    """Permutation moving `axis` to the front (its own inverse is computed by the caller)."""
    return [axis] + [i for i in range(rank) if i != axis]


@register
class Gather(Op):
    """out[i][j] = x[index[i][j]][j] along `axis` (torch.gather; ONNX GatherElements)."""

    name = "gather"
    in_ports = (Port("x", "[...]", dtype="any"), Port("index", "[...]", dtype="int", doc="same rank as x"))
    out_ports = (Port("out", "index's shape", dtype="x's dtype"),)
    Attrs = AxisAttrs
    arity = (2, 2)
    fusion = "injective"

    def infer(self, a, ins):
        x, index = ins
        _index(index, one_d=False)
        expect(index.rank == x.rank, f"index {index} and x {x} differ in rank", "index of the same rank as x")
        ax = norm_axis(a.axis, x.rank)
        for i, (dx, di) in enumerate(zip(x.shape, index.shape)):
            if i != ax and isinstance(dx, int) and isinstance(di, int):
                expect(di <= dx, f"index size {di} exceeds x's size {dx} along axis {i}",
                       "index no larger than x except along the gather axis")
        return [TensorType(index.shape, x.dtype)]

    def index_bounds(self, a, ins):
        return {1: ins[0].shape[norm_axis(a.axis, ins[0].rank)]}

    def cost(self, a, ins, outs):
        return Cost(saved_inputs=(0, 1))  # x (for its shape) and the indices, for x's gradient

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"torch.gather({ins[0]}, {a.axis}, {ins[1]})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("GatherElements", [ins[0], ins[1]], axis=a.axis)]


@register
class IndexSelect(Op):
    """The slices of x at positions `index` (1-D) along `axis` (torch.index_select; ONNX Gather)."""

    name = "index_select"
    in_ports = (Port("x", "[...]", dtype="any"), Port("index", "[E]", dtype="int"))
    out_ports = (Port("out", "x's shape with E at axis", dtype="x's dtype"),)
    Attrs = AxisAttrs
    arity = (2, 2)
    fusion = "injective"

    def infer(self, a, ins):
        x, index = ins
        _index(index, one_d=True)
        ax = norm_axis(a.axis, x.rank)
        return [x.with_shape(x.shape[:ax] + (index.shape[0],) + x.shape[ax + 1:])]

    def index_bounds(self, a, ins):
        return {1: ins[0].shape[norm_axis(a.axis, ins[0].rank)]}

    def cost(self, a, ins, outs):
        return Cost(saved_inputs=(1,))  # the indices, for x's gradient

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"torch.index_select({ins[0]}, {a.axis}, {ins[1]})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Gather", [ins[0], ins[1]], axis=a.axis)]


class ScatterAttrs(Attrs):
    axis: Axis = Field(0, description="the axis scattered along")


@register
class ScatterAdd(Op):
    """target.index_add(axis, index, src): src slice e is added into target slice index[e] (duplicates sum)."""

    name = "scatter_add"
    in_ports = (Port("target", "[..., V, ...]"), Port("index", "[E]", dtype="int", doc="positions along axis"),
                Port("src", "[..., E, ...]", doc="target's shape with E at axis"))
    out_ports = (Port("out", "target's shape"),)
    Attrs = ScatterAttrs
    arity = (3, 3)
    fusion = "opaque"

    def infer(self, a, ins):
        target, index, src = ins
        _index(index, one_d=True)
        ax = norm_axis(a.axis, target.rank)
        want = target.shape[:ax] + (index.shape[0],) + target.shape[ax + 1:]
        ok = src.rank == target.rank and all(same_dim(s, w) for s, w in zip(src.shape, want))
        expect(ok, f"src is {src} for target {target} and index {index}",
               f"src of shape [{', '.join(str(d) for d in want)}] (target's shape with the index length at axis {ax})")
        expect(src.dtype == target.dtype, f"src has dtype {src.dtype}, target {target.dtype}", "one dtype")
        return [target]

    def index_bounds(self, a, ins):
        return {1: ins[0].shape[norm_axis(a.axis, ins[0].rank)]}

    def cost(self, a, ins, outs):
        # index_add keeps the indices and the source for the source's gradient (t's is the identity)
        return Cost(saved_inputs=(1, 2), saved_for={1: (2,), 2: (2,)})

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"{ins[0]}.index_add({a.axis}, {ins[1]}, {ins[2]})")

    def _index_like_src(self, b, index: str, src: str, rank: int, ax: int) -> str:
        """The 1-D index broadcast to src's shape, as ScatterElements wants it."""
        others = [i for i in range(rank) if i != ax]
        idx = b.op("Unsqueeze", [index, b.const(others)]) if others else index
        return b.op("Expand", [idx, b.shape(src)])

    def to_onnx(self, a, ins, b, node):
        target, index, src = ins
        rank = b.in_type(0).rank
        ax = norm_axis(a.axis, rank)
        idx = self._index_like_src(b, index, src, rank, ax)
        return [b.op("ScatterElements", [target, idx, src], axis=ax, reduction="add")]

    def trt_support(self, a, ins):
        return Support(ok=True, why="TensorRT-RTX rejects ScatterElements/ScatterND with reduction=add; the "
                                    "TensorRT form is a one-hot matmul (a [V, E] mask: V*E*F multiply-adds)",
                       alternatives=["keep the graph small in V*E, or aggregate with a segment sum outside the engine"])

    def to_trt(self, a, ins, b, node):
        target, index, src = ins
        rank = b.in_type(0).rank
        ax = norm_axis(a.axis, rank)
        perm = _front(ax, rank)
        inverse = [perm.index(i) for i in range(rank)]
        if ax:
            target, src = (b.op("Transpose", [v], perm=perm) for v in (target, src))
        zero, one = b.scalar(0, "int64"), b.scalar(1, "int64")
        rows = b.op("Range", [zero, b.op("Squeeze", [b.dim(target, 0)]), one])  # [V]
        hits = b.op("Equal", [b.op("Unsqueeze", [rows, b.const([1])]), b.op("Unsqueeze", [index, b.const([0])])])
        onehot = b.op("Cast", [hits], to=b.dtype(0))  # [V, E]: onehot[v, e] = (index[e] == v)
        flat = b.op("Reshape", [src, b.const([0, -1])])  # [E, F]
        summed = b.op("Reshape", [b.op("MatMul", [onehot, flat]), b.shape(target)])
        out = b.op("Add", [target, summed])
        return [b.op("Transpose", [out], perm=inverse) if ax else out]
