"""Matrix-multiply ops: linear (nn.Linear), embedding (nn.Embedding), batched matmul and scale."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from ..ir import dims as D
from ..ir.dims import TensorType
from pydantic import Field

from ..init import fan_in_uniform, normal

from ..ir.params import ParamSpec
from .base import Port, Attrs, Cost, NoAttrs, Op, Size, TorchCode, broadcast, expect, fmt_args, register, same_dim


FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def concrete(dim, what: str) -> int:
    """`dim` as an int, or a ShapeError naming what needed it."""
    expect(isinstance(dim, int), f"{what} is symbolic ({dim})", f"a concrete size for {what}")
    return dim


@register
class Linear(Op):
    """x[..., in] -> [..., out] with weight [out, in] and bias [out], like nn.Linear."""

    name = "linear"
    in_ports = (Port("x", "[..., in]"),)
    out_ports = (Port("y", "[..., out]"),)
    fusion = "out_fusable"

    class Attrs(Attrs):
        out: Size = Field(description="output features")
        bias: bool = Field(True, description="learned additive bias")

    def infer(self, a, ins):
        (x,) = ins
        expect(a.out > 0, f"out={a.out}", "a positive number of output features")
        expect(x.rank >= 1, f"linear input is a scalar ({x})", "rank >= 1: [..., in_features]")
        expect(x.dtype in FLOAT_DTYPES, f"linear of a {x.dtype} tensor", "a floating-point tensor (cast it first)")
        concrete(x.shape[-1], "the input feature dim (last axis)")
        return [x.with_shape(x.shape[:-1] + (a.out,))]

    def params(self, a, ins):
        init = fan_in_uniform(ins[0].shape[-1])  # nn.Linear's reset_parameters, weight and bias alike
        ps = {"weight": ParamSpec((a.out, ins[0].shape[-1]), init=init)}
        if a.bias:
            ps["bias"] = ParamSpec((a.out,), init=init)
        return ps

    def cost(self, a, ins, outs):
        # nn.Linear runs as addmm/mm over the flattened leading dims, even for 1-d inputs. Backward:
        # x's gradient and the weight's, one matmul each; x is kept for the weight's (the weight,
        # kept for x's, is a parameter).
        flops = D.mul(2 * ins[0].shape[-1], D.prod(outs[0].shape))
        return Cost(flops=flops, bwd_flops=D.mul(2, flops), saved_inputs=(0,))

    def to_torch(self, a, ins, m, node):
        kw = {} if a.bias else {"bias": False}
        return TorchCode(expr=f"{m}({ins[0]})", init=f"nn.Linear({fmt_args(node.in_types[0].shape[-1], a.out, **kw)})")

    def to_onnx(self, a, ins, b, node):
        w = b.param(node, "weight")
        if b.out_type(0).rank == 2:  # linear keeps the rank
            inputs = [ins[0], w] + ([b.param(node, "bias")] if a.bias else [])
            return [b.op("Gemm", inputs, transB=1)]
        y = b.op("MatMul", [ins[0], b.op("Transpose", [w], perm=[1, 0])])
        return [b.op("Add", [y, b.param(node, "bias")]) if a.bias else y]


@register
class Embedding(Op):
    """int ids[...] -> rows of a [num, dim] table, like nn.Embedding."""

    name = "embedding"
    in_ports = (Port("ids", "[...]", dtype="int", doc="row indices in [0, num)"),)
    out_ports = (Port("y", "[..., dim]"),)
    fusion = "injective"

    class Attrs(Attrs):
        num: Size = Field(description="rows of the table (vocabulary size); ids must lie in [0, num)")
        dim: Size = Field(description="width of each row")
        padding_idx: Optional[int] = Field(None, description="a row kept at zero and not trained")

    def infer(self, a, ins):
        (ids,) = ins
        expect(a.num > 0 and a.dim > 0, f"num={a.num}, dim={a.dim}", "a positive table size and row width")
        expect(ids.dtype in ("int64", "int32"), f"embedding ids have dtype {ids.dtype}", "integer ids (int64)")
        if a.padding_idx is not None:
            expect(-a.num <= a.padding_idx < a.num, f"padding_idx={a.padding_idx} is outside the table of {a.num}",
                   f"-{a.num} <= padding_idx < {a.num}")
        return [TensorType(ids.shape + (a.dim,), "float32")]

    def params(self, a, ins):
        pad = None if a.padding_idx is None else a.padding_idx % a.num
        return {"weight": ParamSpec((a.num, a.dim), init=replace(normal(1.0), zero_row=pad))}  # as nn.Embedding

    def cost(self, a, ins, outs):
        return Cost(saved_inputs=(0,))  # the ids, for the table's gradient (a scatter, no FLOPs)

    def index_bounds(self, a, ins):
        return {0: a.num}

    def to_torch(self, a, ins, m, node):
        kw = {} if a.padding_idx is None else {"padding_idx": a.padding_idx}
        return TorchCode(expr=f"{m}({ins[0]})", init=f"nn.Embedding({fmt_args(a.num, a.dim, **kw)})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Gather", [b.param(node, "weight"), ins[0]], axis=0)]


def matmul_shape(x: tuple, y: tuple) -> tuple:
    """Output shape of torch.matmul(x, y): vectors are promoted then squeezed, batch dims broadcast."""
    expect(len(x) >= 1 and len(y) >= 1, f"matmul of shapes {list(x)} and {list(y)}", "operands of rank >= 1")
    xs = (1,) + x if len(x) == 1 else x
    ys = y + (1,) if len(y) == 1 else y
    expect(same_dim(xs[-1], ys[-2]),
           f"matmul inner dims differ: {list(x)} @ {list(y)} ({xs[-1]} vs {ys[-2]})",
           "the last dim of the first operand equal to the second-to-last of the second")
    batch = broadcast([xs[:-2], ys[:-2]]) if (xs[:-2] or ys[:-2]) else ()
    out = batch + ((xs[-2],) if len(x) > 1 else ()) + ((ys[-1],) if len(y) > 1 else ())
    return tuple(out)


def _matmul_kept(x: TensorType, y: TensorType, out: TensorType) -> dict:
    """What torch.matmul keeps for backward: each operand for the other's gradient, except that an
    operand whose batch dims do not already span the result's is expanded and copied first (the copy
    is kept, not the operand), and a matrix or vector times a batch of matrices folds the batch into
    one matrix, a copy unless it is a batch of one."""
    if y.rank <= 2:
        return {"saved_inputs": (0, 1), "saved_for": {0: (1,), 1: (0,)}}
    if x.rank <= 2:  # y's batch is folded into one matrix: a copy, unless it is a batch of one
        one = D.floordiv(1, D.prod(y.shape[:-2]))
        return {"saved_inputs": (0, (1, one)), "saved_extra": D.mul(D.sub(1, one), Cost.nbytes(y))}
    batch = D.prod(out.shape[:-2])
    inputs, extra = [], 0
    for slot, t in ((0, x), (1, y)):
        if t.rank <= 2:
            inputs.append(slot)
            continue
        same = D.floordiv(D.prod(t.shape[:-2]), batch)  # 1 when its batch is the whole batch
        inputs.append((slot, same))
        full = t.with_shape(out.shape[:-2] + t.shape[-2:])
        extra = D.add(extra, D.mul(D.sub(1, same), Cost.nbytes(full)))
    return {"saved_inputs": tuple(inputs), "saved_extra": extra}


@register
class MatMul(Op):
    """Batched, broadcasting matrix product with torch.matmul semantics (ONNX MatMul)."""

    name = "matmul"
    in_ports = (Port("a", "[..., n, k]"), Port("b", "[..., k, m]"))
    out_ports = (Port("y", "[..., n, m]", doc="batch dims broadcast; 1-d operands as in torch.matmul"),)
    arity = (2, 2)
    fusion = "out_fusable"
    Attrs = NoAttrs

    def infer(self, a, ins):
        x, y = ins
        expect(x.dtype == y.dtype, f"matmul operands have dtypes {x.dtype} and {y.dtype}", "one dtype")
        expect(x.dtype != "bool", "matmul of bool tensors", "numeric tensors (cast bool masks to float or int first)")
        return [x.with_shape(matmul_shape(x.shape, y.shape))]

    def cost(self, a, ins, outs):
        x, y = ins
        kept = _matmul_kept(x, y, outs[0])
        if y.rank == 1:
            return Cost(**kept)  # torch runs matrix-vector products as mv/dot, which the flop counter does not count
        flops = D.mul(2, D.mul(x.shape[-1], D.prod(outs[0].shape)))
        if x.rank == 1 and y.rank >= 3:
            # torch.matmul folds vector @ batch-of-one into mv (uncounted) but runs larger batches as
            # bmm: times (1 - 1//batch), which is 0 for batch 1 and 1 otherwise, keeps that exact.
            # With autograd on it always takes the mv path: no backward FLOPs counted.
            batch = D.prod(y.shape[:-2])
            return Cost(flops=D.mul(flops, D.sub(1, D.floordiv(1, batch))), **kept)
        return Cost(flops=flops, bwd_flops=D.mul(2, flops), **kept)  # one matmul per operand's gradient

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"torch.matmul({ins[0]}, {ins[1]})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("MatMul", [ins[0], ins[1]])]


@register
class Scale(Op):
    """x * a constant factor."""

    name = "scale"
    in_ports = (Port("x"),)
    out_ports = (Port("out", "x's shape"),)
    fusion = "elementwise"

    class Attrs(Attrs):
        factor: float = Field(description="the constant multiplier")

    def infer(self, a, ins):
        expect(ins[0].dtype in FLOAT_DTYPES, f"scale input has dtype {ins[0].dtype}", "a floating-point tensor")
        return [ins[0]]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"{ins[0]} * {a.factor!r}")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Mul", [ins[0], onnx_scalar(b, a.factor, b.out_type(0).dtype)])]


def onnx_scalar(b, value, dtype: str) -> str:
    """A 0-d ONNX constant of `dtype` (the builder's constants are int64/float32/bool; others are cast)."""
    if dtype in ("int64", "float32", "bool"):
        return b.scalar(value, dtype)
    return b.op("Cast", [b.scalar(value, "float32")], to=b.dtype())
