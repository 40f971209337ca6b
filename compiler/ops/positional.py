"""Positional encodings: `positional_encoding` adds a position table to x[N, T, D].

`kind: sinusoidal` is the fixed table of "Attention Is All You Need" (sin at even features, cos at odd
ones, frequencies 10000^(-2i/D)); torch keeps it as a non-persistent buffer (not in the state dict)
and ONNX computes it from the run-time length T, so no sequence length is baked in. `kind: learned`
is a trainable table `weight` [max_len, D], sliced to the first T rows.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from ..init import normal
from ..ir.params import ParamSpec
from .base import Port, Attrs, Cost, DropP, Op, Size, TorchCode, expect, fmt_args, register

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

