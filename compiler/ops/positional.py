"""Positional encodings: `positional_encoding` adds a position table to x[N, T, D].

`kind: sinusoidal` is the fixed table of "Attention Is All You Need" (sin at even features, cos at odd
ones, frequencies 10000^(-2i/D)); torch keeps it as a non-persistent buffer (not in the state dict)
and ONNX computes it from the run-time length T, so no sequence length is baked in. `kind: learned`
is a trainable table `weight` [max_len, D], sliced to the first T rows.

`rotary_embedding` rotates feature pairs of x [N, heads, T, head_dim] by position-dependent angles
(RoPE), applied to q and k before attention; its frequencies are computed in forward, so it holds no
state, and a decode step passes the positions of its new tokens.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from ..init import normal
from ..ir.params import ParamSpec
from ..ir.dims import TensorType
from .base import Port, Attrs, Cost, DropP, Op, Size, TorchCode, expect, fmt_args, register, same_dim

SNIPPET = '''
class PositionalEncoding(nn.Module):
    """x + table[:T] over x[N, T, D]: fixed sinusoids (sin at even, cos at odd features) or a learned table."""

    def __init__(self, dim, max_len=5000, learned=False, dropout=0.0):
        super().__init__()
        self.p = dropout
        if learned:
            self.weight = nn.Parameter(torch.empty(max_len, dim))
            nn.init.normal_(self.weight, std=0.02)
        else:
            position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
            inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
            angles = position * inv_freq  # [max_len, D/2]
            table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # [max_len, D]
            self.register_buffer("weight", table, persistent=False)

    def forward(self, x):
        return F.dropout(x + self.weight[: x.shape[1]], self.p, self.training)
'''


class PeAttrs(Attrs):
    kind: Literal["sinusoidal", "learned"] = Field(
        "sinusoidal", description="sinusoidal: the Transformer's fixed sines and cosines (a buffer); learned: a "
        "trained [max_len, d] table initialised N(0, 0.02)")
    max_len: Size = Field(5000, le=1 << 20, description="longest sequence the table covers")
    dropout: DropP = Field(0.0, description="dropout after adding the encoding, in training")


@register
class PositionalEncoding(Op):
    name = "positional_encoding"
    in_ports = (Port("x", "[N, T, d]"),)
    doc = ("x + a position code for positions 0..T-1: sinusoidal (the Transformer's fixed sines and "
           "cosines, a buffer) or learned (a trained [max_len, d] table); then dropout.")
    Attrs = PeAttrs
    fusion = "elementwise"
    train_dependent = True  # dropout
    torch_snippets = {"PositionalEncoding": SNIPPET}

    def infer(self, a, ins):
        (x,) = ins
        expect(x.rank == 3, f"positional_encoding input is {x}", "x of rank 3: [N, T, D]")
        expect(x.dtype.startswith("float"), f"x has dtype {x.dtype}", "a floating-point tensor")
        dim, steps = x.shape[2], x.shape[1]
        expect(isinstance(dim, int), f"feature dim {dim} is symbolic", "a concrete feature size D")
        expect(a.kind == "learned" or dim % 2 == 0, f"sinusoidal encoding of odd width D={dim}",
               "an even D (sin and cos pairs)")
        expect(a.max_len > 0, f"max_len={a.max_len}", "a positive max_len")
        expect(not isinstance(steps, int) or steps <= a.max_len, f"sequence length {steps} exceeds max_len={a.max_len}",
               f"T <= {a.max_len}, or a larger max_len")
        expect(0.0 <= a.dropout < 1.0, f"dropout={a.dropout}", "0 <= dropout < 1")
        return [x]

    def params(self, a, ins):
        return {"weight": ParamSpec((a.max_len, ins[0].shape[2]), init=normal(0.02))} if a.kind == "learned" else {}

    def cost(self, a, ins, outs):
        # x + table keeps nothing; the dropout after it keeps its mask (see dropout)
        return Cost(saved_extra=Cost.nbytes(ins[0]) if a.dropout else 0)

    def to_torch(self, a, ins, m, node):
        kw = {}
        if a.max_len != 5000:
            kw["max_len"] = a.max_len
        if a.kind == "learned":
            kw["learned"] = True
        if a.dropout:
            kw["dropout"] = a.dropout
        return TorchCode(expr=f"{m}({ins[0]})", init=f"PositionalEncoding({fmt_args(node.outputs[0].shape[2], **kw)})",
                         helpers=("PositionalEncoding",))

    def to_onnx(self, a, ins, b, node):
        x = ins[0]
        steps = b.dim(x, 1)
        if a.kind == "learned":
            table = b.op("Slice", [b.param(node, "weight"), b.const([0]), steps, b.const([0])])
            return [b.op("Add", [x, table])]
        dim = b.out_type(0).shape[2]
        inv_freq = [math.exp(i * (-math.log(10000.0) / dim)) for i in range(0, dim, 2)]
        pos = b.op("Range", [b.scalar(0, "int64"), b.op("Squeeze", [steps]), b.scalar(1, "int64")])
        pos = b.op("Unsqueeze", [b.op("Cast", [pos], to=b.dtype(0)), b.const([1])])  # [T, 1]
        angles = b.op("Mul", [pos, b.const(inv_freq, "float32")])  # [T, D/2]
        pairs = [b.op("Unsqueeze", [b.op(f, [angles]), b.const([-1])]) for f in ("Sin", "Cos")]
        table = b.op("Reshape", [b.op("Concat", pairs, axis=-1), b.const([-1, dim])])  # interleave -> [T, D]
        return [b.op("Add", [x, table])]



ROTARY_SNIPPET = '''
def rotary_embedding(x, position=None, base=10000.0, interleaved=False):
    """Rotary position embedding (RoPE) of x [N, heads, T, head_dim] at `position` ([T] or [N, T],
    default 0..T-1): feature pair i turns by the angle position * base^(-2i/head_dim). The pairs are
    (i, i + head_dim/2) (rotate_half, as in HF Llama / Mistral), or (2i, 2i+1) when interleaved."""
    dim = x.shape[-1]
    if position is None:
        position = torch.arange(x.shape[-2], device=x.device)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=x.device).float() / dim))
    angles = position.float().unsqueeze(-1) * inv_freq  # [(N,) T, head_dim/2]
    if position.dim() == 2:
        angles = angles.unsqueeze(1)  # [N, 1, T, head_dim/2]: the same angles in every head
    if interleaved:
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin
'''


class RotaryAttrs(Attrs):
    base: float = Field(10000.0, gt=1.0, le=1e12, description="the frequency base: pair i turns by position * base^(-2i/head_dim)")
    interleaved: bool = Field(False, description="false: pairs (i, i + head_dim/2), HF Llama's rotate_half; "
                              "true: adjacent pairs (2i, 2i+1), RoFormer / GPT-J")


@register
class RotaryEmbedding(Op):
    """Rotary position embedding (RoFormer): each feature pair of x [N, heads, T, head_dim] rotated by
    the angle position * base^(-2i/head_dim). No parameters: the frequencies are computed in forward
    (nothing in the state dict). `position` (int64 [T] or [N, T]) defaults to 0..T-1; a decode step
    passes the cached length's offsets."""

    name = "rotary_embedding"
    in_ports = (Port("x", "[N, heads, T, head_dim]"),
                Port("position", "[T] or [N, T]", dtype="int", optional=True, doc="default: 0..T-1"))
    out_ports = (Port("y", "[N, heads, T, head_dim]"),)
    Attrs = RotaryAttrs
    arity = (1, 2)
    fusion = "elementwise"
    torch_snippets = {"rotary_embedding": ROTARY_SNIPPET}
    example = ({"x": ["N", 2, 5, 8], "position": {"shape": [5], "dtype": "int64", "range": [0, 16]}}, {})

    def infer(self, a, ins):
        x = ins[0]
        expect(x.rank == 4, f"rotary_embedding input is {x}", "x of rank 4: [N, heads, T, head_dim]")
        expect(x.dtype.startswith(("float", "bfloat")), f"x has dtype {x.dtype}", "a floating-point tensor")
        dim = x.shape[3]
        expect(isinstance(dim, int) and dim % 2 == 0, f"head_dim {dim} is not a concrete even size",
               "an even head_dim (features rotate in pairs)")
        if len(ins) > 1:
            pos = ins[1]
            expect(pos.dtype == "int64", f"position has dtype {pos.dtype}", "int64 positions")
            ok = (pos.rank == 1 and same_dim(pos.shape[0], x.shape[2])) or (
                pos.rank == 2 and same_dim(pos.shape[0], x.shape[0]) and same_dim(pos.shape[1], x.shape[2]))
            expect(ok, f"position {pos} does not match x {x}",
                   f"position of shape [{x.shape[2]}] or [{x.shape[0]}, {x.shape[2]}]")
        return [x]

    def _table(self, a, ins):
        """The type of cos (and sin): what autograd keeps of this op, [(N, 1,) T, head_dim (/2)]."""
        x = ins[0]
        width = x.shape[3] // 2 if a.interleaved else x.shape[3]
        lead = (x.shape[0], 1) if len(ins) > 1 and ins[1].rank == 2 else ()
        return TensorType(lead + (x.shape[2], width), x.dtype)

    def cost(self, a, ins, outs):
        # elementwise: 0 FLOPs. x * cos and rotate_half(x) * sin keep cos and sin (x's gradient needs
        # them; neither requires grad); the negation, slices, cat and stack keep nothing.
        table = self._table(a, ins)
        return Cost(saved_extra=Cost.nbytes(table, table))

    def to_torch(self, a, ins, m, node):
        kw = {}
        if a.base != 10000.0:
            kw["base"] = a.base
        if a.interleaved:
            kw["interleaved"] = True
        return TorchCode(expr=f"rotary_embedding({fmt_args(*[_Raw(i) for i in ins], **kw)})",
                         helpers=("rotary_embedding",))

    def to_onnx(self, a, ins, b, node):
        x = ins[0]
        xt = b.in_type(0)
        dim = xt.shape[3]
        half = dim // 2
        inv_freq = [1.0 / (a.base ** (i / dim)) for i in range(0, dim, 2)]
        if len(ins) > 1:
            pos, pos_rank = ins[1], b.in_type(1).rank
        else:
            steps = b.op("Squeeze", [b.dim(x, 2)])
            pos, pos_rank = b.op("Range", [b.scalar(0, "int64"), steps, b.scalar(1, "int64")]), 1
        pos = b.op("Unsqueeze", [b.op("Cast", [pos], to=1), b.const([-1])])  # float32 [(N,) T, 1]
        angles = b.op("Mul", [pos, b.const(inv_freq, "float32")])  # [(N,) T, D/2]
        if pos_rank == 2:
            angles = b.op("Unsqueeze", [angles, b.const([1])])  # [N, 1, T, D/2]
        elem = b.dtype(0)

        def trig(f, t):
            y = b.op(f, [t])
            return y if elem == 1 else b.op("Cast", [y], to=elem)

        if a.interleaved:
            pairs = b.op("Reshape", [x, b.const([0, 0, 0, half, 2])])  # [N, H, T, D/2, 2]
            even, odd = b.op("Split", [pairs, b.const([1, 1])], n_out=2, axis=-1)
            cos = b.op("Unsqueeze", [trig("Cos", angles), b.const([-1])])
            sin = b.op("Unsqueeze", [trig("Sin", angles), b.const([-1])])
            first = b.op("Sub", [b.op("Mul", [even, cos]), b.op("Mul", [odd, sin])])
            second = b.op("Add", [b.op("Mul", [odd, cos]), b.op("Mul", [even, sin])])
            return [b.op("Reshape", [b.op("Concat", [first, second], axis=-1), b.const([0, 0, 0, dim])])]
        angles = b.op("Concat", [angles, angles], axis=-1)
        cos, sin = trig("Cos", angles), trig("Sin", angles)
        first, second = b.op("Split", [x, b.const([half, half])], n_out=2, axis=-1)
        rotated = b.op("Concat", [b.op("Neg", [second]), first], axis=-1)
        return [b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [rotated, sin])])]


class _Raw(str):
    """A variable name printed as itself by fmt_args."""

    def __repr__(self):
        return str(self)
