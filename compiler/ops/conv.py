"""Convolutions: conv1d and conv2d (stride, padding, dilation, groups), one table-driven definition."""
from __future__ import annotations

from typing import Literal, Union

from pydantic import Field

from ..ir import dims as D
from ..ir.dims import TensorType
from .base import Attrs, Cost, Op, Pads, Size, Sizes, TorchCode, expect, fmt_args, register


class ConvAttrs(Attrs):
    out: Size = Field(description="output channels")
    kernel: Sizes = Field(description="window size: one value for every spatial axis, or one per axis")
    stride: Sizes = Field(1, description="step between windows")
    padding: Union[Pads, Literal["same", "valid"]] = Field(
        0, description="zeros added on both sides of each spatial axis; 'same' keeps the size at stride 1")
    dilation: Sizes = Field(1, description="spacing between kernel elements")
    groups: Size = Field(1, description="blocked connections: input and output channels both divisible by it")
    bias: bool = Field(True, description="learned additive bias")


@register
class Conv(Op):
    """N-d convolution over [N, C, *spatial] (like nn.Conv1d/nn.Conv2d; weight [out, C/groups, *k])."""

    names = ["conv1d", "conv2d"]
    Attrs = ConvAttrs
    fusion = "out_fusable"

    def nd(self) -> int:
        return int(self.name[4])

    def _tuple(self, v) -> tuple:
        return tuple(v) if isinstance(v, list) else (v,) * self.nd()

    def _geometry(self, a):
        k, s, d = self._tuple(a.kernel), self._tuple(a.stride), self._tuple(a.dilation)
        if a.padding == "valid":
            p = (0,) * self.nd()
        elif a.padding == "same":
            p = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
        else:
            p = self._tuple(a.padding)
        for name, t in (("kernel", k), ("stride", s), ("padding", p), ("dilation", d)):
            expect(len(t) == self.nd(), f"{name} has {len(t)} values", f"{self.nd()} values (one per spatial axis)")
        return k, s, p, d

    def infer(self, a, ins):
        (x,) = ins
        nd = self.nd()
        expect(x.rank == nd + 2, f"{self.name} input has rank {x.rank} ({x})", f"rank {nd + 2}: [N, C, *{nd} spatial]")
        cin = x.shape[1]
        expect(isinstance(cin, int), f"channel dim {cin} is symbolic", "a concrete channel count")
        expect(cin % a.groups == 0 and a.out % a.groups == 0,
               f"groups={a.groups} does not divide in={cin} and out={a.out}", "channels divisible by groups")
        k, s, p, d = self._geometry(a)
        spatial = []
        for i in range(nd):
            size = D.conv_out(x.shape[2 + i], k[i], s[i], p[i], d[i])
            expect(not isinstance(size, int) or size > 0, f"output size {size} along spatial axis {i}",
                   "a kernel no larger than the padded input")
            spatial.append(size)
        return [TensorType((x.shape[0], a.out, *spatial), x.dtype)]

    def params(self, a, ins):
        from ..ir.graph import ParamSpec
        k, _, _, _ = self._geometry(a)
        ps = {"weight": ParamSpec((a.out, ins[0].shape[1] // a.groups, *k))}
        if a.bias:
            ps["bias"] = ParamSpec((a.out,))
        return ps

    def cost(self, a, ins, outs):
        k, _, _, _ = self._geometry(a)
        per_out = (ins[0].shape[1] // a.groups) * D.prod(k)
        return Cost(flops=D.mul(2 * per_out, D.prod(outs[0].shape)), act_bytes=0)

    def to_torch(self, a, ins, m, node):
        k, s, p, d = self._geometry(a)
        one = lambda t: t[0] if len(set(t)) == 1 else t  # noqa: E731 - print (3, 3) as 3, like torchvision
        kw = {}
        if any(v != 1 for v in s):
            kw["stride"] = one(s)
        if any(v != 0 for v in p):
            kw["padding"] = one(p)
        if any(v != 1 for v in d):
            kw["dilation"] = one(d)
        if a.groups != 1:
            kw["groups"] = a.groups
        if not a.bias:
            kw["bias"] = False
        cin = node_in_channels(node)
        ctor = f"nn.Conv{self.nd()}d({fmt_args(cin, a.out, one(k), **kw)})"
        return TorchCode(expr=f"{m}({ins[0]})", init=ctor)

    def to_onnx(self, a, ins, b, node):
        k, s, p, d = self._geometry(a)
        inputs = [ins[0], b.param(node, "weight")] + ([b.param(node, "bias")] if a.bias else [])
        return [b.op("Conv", inputs, kernel_shape=list(k), strides=list(s), pads=list(p) * 2,
                     dilations=list(d), group=a.groups)]


def node_in_channels(node) -> int:
    """Input channel count of a conv-like node, from its weight shape (set by shape inference)."""
    w = node.params["weight"].shape
    return w[1] * node.attrs.groups
