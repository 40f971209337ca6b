"""Convolutions: conv1d and conv2d (stride, padding incl. torch's `same`, dilation, groups), one
table-driven definition over the shared window geometry (compiler/ops/geometry.py); masked_conv2d, PixelCNN's
raster-order masked kernel over conv2d."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..ir import dims as D
from ..ir.dims import TensorType
from ..ir.params import ParamSpec
from .base import Port, Cost, Op, Size, TorchCode, expect, fmt_args, register
from ..init import fan_in_uniform
from .geometry import one, window_attrs
from .linear import FLOAT_DTYPES

ND = {"conv1d": 1, "conv2d": 2}


def conv_attrs(nd: int, transposed: bool = False) -> type:
    """The attribute model of an `nd`-d convolution (transposed: with output_padding)."""
    class ConvAttrs(window_attrs(nd, conv=True, transposed=transposed)):
        groups: Size = Field(1, description="blocked connections: input and output channels both divisible by it")
        bias: bool = Field(True, description="learned additive bias")

    ConvAttrs.__name__ = ConvAttrs.__qualname__ = f"Conv{'Transpose' if transposed else ''}{nd}dAttrs"
    return ConvAttrs


ATTRS = {name: conv_attrs(nd) for name, nd in ND.items()}


@register
class Conv(Op):
    """N-d convolution over [N, C, *spatial] (like nn.Conv1d/nn.Conv2d; weight [out, C/groups, *k])."""

    names = list(ND)
    in_ports = (Port("x", "[N, C, *spatial]"),)
    out_ports = (Port("y", "[N, out, *spatial']"),)
    fusion = "out_fusable"

    @property
    def Attrs(self):  # noqa: N802 - the op contract's attribute-model name, one per dimensionality
        return ATTRS[self.name]

    def infer(self, a, ins):
        (x,) = ins
        nd, w = ND[self.name], a.window
        expect(x.rank == nd + 2, f"{self.name} input has rank {x.rank} ({x})", f"rank {nd + 2}: [N, C, *{nd} spatial]")
        expect(x.dtype in FLOAT_DTYPES, f"{self.name} of a {x.dtype} tensor", "a floating-point tensor (cast it first)")
        cin = x.shape[1]
        expect(isinstance(cin, int), f"channel dim {cin} is symbolic", "a concrete channel count")
        expect(cin % a.groups == 0 and a.out % a.groups == 0,
               f"groups={a.groups} does not divide in={cin} and out={a.out}", "channels divisible by groups")
        spatial = []
        for i in range(nd):
            size = w.out_size(x.shape[2 + i], i)
            expect(not isinstance(size, int) or size > 0, f"output size {size} along spatial axis {i}",
                   "a kernel no larger than the padded input")
            spatial.append(size)
        return [TensorType((x.shape[0], a.out, *spatial), x.dtype)]

    def params(self, a, ins):
        fan_in = ins[0].shape[1] // a.groups * D.prod(a.window.kernel)
        init = fan_in_uniform(fan_in)  # nn.Conv*d's reset_parameters, weight and bias alike
        ps = {"weight": ParamSpec((a.out, ins[0].shape[1] // a.groups, *a.window.kernel), init=init)}
        if a.bias:
            ps["bias"] = ParamSpec((a.out,), init=init)
        return ps

    def cost(self, a, ins, outs):
        x, w = ins[0], a.window
        per_out = (x.shape[1] // a.groups) * D.prod(w.kernel)
        flops = D.mul(2 * per_out, D.prod(outs[0].shape))
        # Backward: the input's gradient is the forward's work again, and FlopCounterMode charges the
        # weight's over all input channels: groups times the forward. x is kept for the weight's.
        c = Cost(flops=flops, bwd_flops=D.mul(1 + a.groups, flops), saved_inputs=(0,))
        if w.same and not w.symmetric:  # an even `same` kernel: torch pads a copy of x, and keeps that
            grown = [D.add(s, abs(e - b)) for s, b, e in zip(x.shape[2:], w.pad_begin, w.pad_end)]
            c.saved_inputs, c.saved_extra = (), Cost.nbytes(x.with_shape(x.shape[:2] + tuple(grown)))
        return c

    def to_torch(self, a, ins, m, node):
        w = a.window
        kw = {}
        if any(v != 1 for v in w.stride):
            kw["stride"] = one(w.stride)
        if any(w.pad_begin) or any(w.pad_end):
            kw["padding"] = w.torch_padding()
        if any(v != 1 for v in w.dilation):
            kw["dilation"] = one(w.dilation)
        if a.groups != 1:
            kw["groups"] = a.groups
        if not a.bias:
            kw["bias"] = False
        cin = node.in_types[0].shape[1]
        ctor = f"nn.Conv{ND[self.name]}d({fmt_args(cin, a.out, one(w.kernel), **kw)})"
        return TorchCode(expr=f"{m}({ins[0]})", init=ctor)

    def to_onnx(self, a, ins, b, node):
        w = a.window
        inputs = [ins[0], b.param(node, "weight")] + ([b.param(node, "bias")] if a.bias else [])
        return [b.op("Conv", inputs, kernel_shape=list(w.kernel), strides=list(w.stride),
                     pads=list(w.pad_begin + w.pad_end), dilations=list(w.dilation), group=a.groups)]


MASKED_CONV_SNIPPET = '''
class MaskedConv2d(nn.Conv2d):
    """nn.Conv2d whose kernel is multiplied by PixelCNN's raster-order mask (van den Oord et al. 2016):
    rows below the centre and pixels right of it are zero; type A zeroes the centre too."""

    def __init__(self, *args, mask_type="B", **kwargs):
        super().__init__(*args, **kwargs)
        kh, kw = self.kernel_size
        mask = torch.ones(kh, kw)
        mask[kh // 2, kw // 2 + (mask_type == "B"):] = 0
        mask[kh // 2 + 1:] = 0
        self.mask = mask  # a constant: moved by .to() like a buffer, but neither a buffer nor in the state dict

    def _apply(self, fn, recurse=True):
        self.mask = fn(self.mask)
        return super()._apply(fn, recurse)

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.mask, self.bias)
'''


def pixelcnn_mask(kernel: tuple, mask_type: str) -> list:
    """The [kh, kw] 0/1 mask of a PixelCNN kernel: 1 at the rows above the centre and left of it in
    its row, and at the centre itself for type B."""
    kh, kw = kernel
    ch, cw = kh // 2, kw // 2
    return [[1.0 if (r < ch or (r == ch and (c < cw or (c == cw and mask_type == "B")))) else 0.0
             for c in range(kw)] for r in range(kh)]


class MaskedConv2dAttrs(ATTRS["conv2d"]):
    mask: Literal["A", "B"] = Field(description="A: the output at a pixel sees only the pixels before it in "
                                    "raster order (a first layer, on the data); B: those and the pixel itself")


@register
class MaskedConv2d(Conv):
    """conv2d whose kernel is masked to raster order, PixelCNN's masked convolution (van den Oord et al.
    2016, "Pixel Recurrent Neural Networks"): weight [out, C/groups, kh, kw] times a constant mask that
    keeps the kernel rows above the centre, and in the centre row the pixels left of it (type A) or
    those and the centre (type B). The mask is spatial only (no colour-channel groups) and is not a
    parameter: a constant tensor outside the state dict in torch, an ONNX constant (Mul, then Conv). Odd kernels with
    `same` or symmetric padding keep the centre over the output pixel."""

    name = "masked_conv2d"
    names = None
    Attrs = MaskedConv2dAttrs
    torch_snippets = {"MaskedConv2d": MASKED_CONV_SNIPPET}
    example = ({"x": ["N", 2, 5, 5]}, {"out": 3, "kernel": 3, "padding": 1, "mask": "A"})

    def infer(self, a, ins):
        w = a.window
        expect(all(k % 2 == 1 for k in w.kernel), f"masked_conv2d kernel {list(w.kernel)}",
               "an odd kernel (the mask is centred on it)")
        expect(all(s == 1 for s in w.stride), f"masked_conv2d stride {list(w.stride)}",
               "stride 1 (each output pixel is centred on its input pixel)")
        expect(list(w.pad_begin) == list(w.pad_end) and
               all(p == d * (k // 2) for p, d, k in zip(w.pad_begin, w.dilation, w.kernel)),
               f"masked_conv2d padding {list(w.pad_begin)}", "`same` padding (dilation * (kernel // 2))")
        return CONV2D.infer(a, ins)

    def cost(self, a, ins, outs):
        # conv2d's work (the mask's Mul is elementwise: no FLOPs), and autograd keeps the masked
        # kernel, a new tensor, for x's gradient besides x
        c = super().cost(a, ins, outs)
        weight = self.params(a, ins)["weight"]
        c.saved_extra = D.add(c.saved_extra, Cost.nbytes(TensorType(weight.shape, ins[0].dtype)))
        return c

    def to_torch(self, a, ins, m, node):
        code = CONV2D.to_torch(a, ins, m, node)
        init = code.init.replace("nn.Conv2d(", "MaskedConv2d(", 1)[:-1] + f", mask_type={a.mask!r})"
        return TorchCode(expr=code.expr, init=init, helpers=("MaskedConv2d",))

    def to_onnx(self, a, ins, b, node):
        w = a.window
        mask = b.const([[pixelcnn_mask(w.kernel, a.mask)]], "float32")  # [1, 1, kh, kw], broadcast
        if b.dtype() != 1:  # ONNX FLOAT
            mask = b.op("Cast", [mask], to=b.dtype())
        weight = b.op("Mul", [b.param(node, "weight"), mask])
        inputs = [ins[0], weight] + ([b.param(node, "bias")] if a.bias else [])
        return [b.op("Conv", inputs, kernel_shape=list(w.kernel), strides=list(w.stride),
                     pads=list(w.pad_begin + w.pad_end), dilations=list(w.dilation), group=a.groups)]


CONV2D = Conv()
CONV2D.name = "conv2d"
