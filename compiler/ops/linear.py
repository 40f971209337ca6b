"""Matrix-multiply ops: linear (nn.Linear), masked_linear (MADE), embedding (nn.Embedding), batched matmul and scale."""
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


MASKED_LINEAR_SNIPPET = '''
class MaskedLinear(nn.Linear):
    """nn.Linear whose weight is multiplied by a MADE connectivity mask (Germain et al. 2015): data unit
    k (of d, in the autoregressive order) has degree k + 1, or d - k reversed; hidden unit j has degree
    j % (d - 1) + 1; a hidden unit sees inputs of degree <= its own, an output of degree k only inputs
    of degree < k."""

    def __init__(self, in_features, out_features, order, data_in=False, data_out=False, reverse=False,
                 bias=True):
        super().__init__(in_features, out_features, bias=bias)
        # a constant: moved by .to() like a buffer, but neither a buffer nor in the state dict
        self.mask = made_mask(in_features, out_features, order, data_in, data_out, reverse)

    def _apply(self, fn, recurse=True):
        self.mask = fn(self.mask)
        return super()._apply(fn, recurse)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


def made_degrees(width, order, data, reverse):
    k = torch.arange(width)
    if data:
        return order - k % order if reverse else k % order + 1
    return k % max(order - 1, 1) + 1


def made_mask(in_features, out_features, order, data_in, data_out, reverse):
    d_in = made_degrees(in_features, order, data_in, reverse)
    d_out = made_degrees(out_features, order, data_out, reverse)
    keep = d_out[:, None] > d_in[None, :] if data_out else d_out[:, None] >= d_in[None, :]
    return keep.float()
'''


def made_degrees(width: int, order: int, data: bool, reverse: bool) -> list[int]:
    """MADE degrees of a layer's units: data units k -> k % order + 1 (order - k % order reversed), so
    a width that is a multiple of `order` repeats the order; hidden units j -> j % (order - 1) + 1."""
    if data:
        return [order - k % order if reverse else k % order + 1 for k in range(width)]
    return [k % max(order - 1, 1) + 1 for k in range(width)]


def made_mask(cin: int, out: int, order: int, data_in: bool, data_out: bool, reverse: bool) -> list:
    """[out, cin] 0/1 mask: a hidden output unit reads inputs of degree <= its own, a data output
    unit (degree k) only those of degree < k, so output k depends on data units before k alone."""
    d_in = made_degrees(cin, order, data_in, reverse)
    d_out = made_degrees(out, order, data_out, reverse)
    return [[1.0 if (o > i if data_out else o >= i) else 0.0 for i in d_in] for o in d_out]


@register
class MaskedLinear(Linear):
    """linear whose weight is masked to an autoregressive order, MADE's masked layer (Germain et al.
    2015, "MADE: Masked Autoencoder for Distribution Estimation"): with `order` d data units, data
    unit k has degree k + 1 (d - k with `reverse`) and hidden unit j degree j % (d - 1) + 1; a hidden
    unit reads inputs of degree <= its own, a data output of degree k only inputs of degree < k. Input
    layer: data_in; output layer: data_out (a width that is a multiple of d repeats the order, for
    several outputs per unit). The mask is a constant, not a parameter: a plain tensor in
    torch (outside the state dict), an ONNX constant (Mul, then the matmul). Parameters, FLOPs: as linear's."""

    name = "masked_linear"
    torch_snippets = {"MaskedLinear": MASKED_LINEAR_SNIPPET}
    example = ({"x": ["N", 4]}, {"out": 6, "order": 4, "data_in": True})

    class Attrs(Attrs):
        out: Size = Field(description="output features")
        order: Size = Field(description="d: the number of data units of the autoregressive order")
        data_in: bool = Field(False, description="the inputs are the d data units (the first layer)")
        data_out: bool = Field(False, description="the outputs are data units (the last layer): strict order")
        reverse: bool = Field(False, description="the order runs d..1 over the data units")
        bias: bool = Field(True, description="learned additive bias")

    def infer(self, a, ins):
        (out,) = super().infer(a, ins)
        cin = ins[0].shape[-1]
        expect(not a.data_in or cin % a.order == 0, f"data_in with {cin} input features and order {a.order}",
               "input features a multiple of order")
        expect(not a.data_out or a.out % a.order == 0, f"data_out with out={a.out} and order {a.order}",
               "out a multiple of order")
        return [out]

    def cost(self, a, ins, outs):
        # linear's matmuls (the mask's Mul is elementwise: no FLOPs); autograd keeps x and the masked
        # weight, a new tensor, for x's gradient
        c = super().cost(a, ins, outs)
        c.saved_extra = Cost.nbytes(TensorType((a.out, ins[0].shape[-1]), ins[0].dtype))
        return c

    def _mask(self, a, cin: int) -> list:
        return made_mask(cin, a.out, a.order, a.data_in, a.data_out, a.reverse)

    def to_torch(self, a, ins, m, node):
        kw = {k: True for k in ("data_in", "data_out", "reverse") if getattr(a, k)}
        if not a.bias:
            kw["bias"] = False
        init = f"MaskedLinear({fmt_args(node.in_types[0].shape[-1], a.out, a.order, **kw)})"
        return TorchCode(expr=f"{m}({ins[0]})", init=init, helpers=("MaskedLinear",))

    def to_onnx(self, a, ins, b, node):
        mask = b.const(self._mask(a, b.in_type(0).shape[-1]), "float32")
        if b.dtype() != 1:  # ONNX FLOAT
            mask = b.op("Cast", [mask], to=b.dtype())
        w = b.op("Mul", [b.param(node, "weight"), mask])
        if b.out_type(0).rank == 2:
            inputs = [ins[0], w] + ([b.param(node, "bias")] if a.bias else [])
            return [b.op("Gemm", inputs, transB=1)]
        y = b.op("MatMul", [ins[0], b.op("Transpose", [w], perm=[1, 0])])
        return [b.op("Add", [y, b.param(node, "bias")]) if a.bias else y]
