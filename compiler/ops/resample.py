"""Resampling ops that change spatial size: interpolate / upsample (F.interpolate), pixel_shuffle
(ONNX DepthToSpace) and the transposed convolutions conv_transpose1d/2d (ONNX ConvTranspose, over
the shared window geometry of compiler/ops/geometry.py).

The ONNX forms reproduce torch's index arithmetic, checked numerically against torch:
  * nearest by a whole-number scale_factor is Resize (`asymmetric`, `floor`): source index
    floor(dst / s), which is what torch's float32 floor(dst * (1/s)) gives for s <= 32;
  * nearest to a `size` is a Gather per axis with torch's own indices, min(floor(dst * (in / out)),
    in - 1) in float32, computed from the run-time input length: Resize divides by out / in
    instead, which picks a different pixel for some sizes (14 -> 2, 20 -> 12, ...);
  * bilinear is Resize `half_pixel` (torch's half-pixel centres, clamped at 0) or `align_corners`.
scale_factor is a whole number: torch copies the input unchanged whenever floor(in * s) == in
(e.g. s = 1.25 for in <= 3), a rule no Resize can express; other ratios are written as `size`.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from ..init import fan_in_uniform
from ..ir import dims as D
from ..ir.params import ParamSpec
from .base import Port, Attrs, Cost, Op, Size, Sizes, Support, TorchCode, expect, fmt_args, register
from .conv import conv_attrs
from .elementwise import ONNX_ELEM, check_dtype
from .geometry import one
from .linear import FLOAT_DTYPES

Scale = Annotated[float, Field(ge=1.0, le=32.0)]
Scales = Union[Scale, Annotated[list[Scale], Field(min_length=1, max_length=3)]]
RESIZE = {"nearest": {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
          "bilinear": {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}}


def _per_axis(v, nd: int, what: str) -> tuple:
    if isinstance(v, list):
        expect(len(v) == nd, f"{what} has {len(v)} values for {nd} spatial axes", f"one value, or {nd}")
        return tuple(v)
    return (v,) * nd


class InterpolateAttrs(Attrs):
    size: Optional[Sizes] = Field(None, description="output size of every spatial axis (one value, or one per axis)")
    scale_factor: Optional[Scales] = Field(
        None, description="whole-number multiplier of each spatial size (one value, or one per axis); other "
        "ratios: give size")
    mode: Literal["nearest", "bilinear"] = Field("nearest", description="nearest: copy the nearest input pixel "
                                                 "(torch's floor rule); bilinear: interpolate (4-d inputs only)")
    align_corners: bool = Field(False, description="bilinear only: the corner pixels of input and output align "
                                "(and the scale is (in - 1) / (out - 1))")

    @model_validator(mode="after")
    def _check(self):
        if (self.size is None) == (self.scale_factor is None):
            raise PydanticCustomError("nnspec_attr", "{field}: give exactly one of size and scale_factor",
                                      {"field": "size" if self.size is not None else "scale_factor"})
        scales = self.scale_factor if isinstance(self.scale_factor, list) else [self.scale_factor or 1.0]
        if any(not s.is_integer() for s in scales):
            raise PydanticCustomError("nnspec_attr", "{field} {v} is not a whole number (write other ratios as size)",
                                      {"field": "scale_factor", "v": self.scale_factor})
        if self.align_corners and self.mode == "nearest":  # torch refuses it
            raise PydanticCustomError("nnspec_attr", "{field} works only with mode: bilinear",
                                      {"field": "align_corners"})
        return self


@register
class Interpolate(Op):
    """Resize the spatial axes of [N, C, *spatial] to `size` or by `scale_factor`, like F.interpolate."""

    names = ["interpolate", "upsample"]
    in_ports = (Port("x", "[N, C, *spatial]", doc="1 to 3 spatial axes for nearest, 2 for bilinear"),)
    out_ports = (Port("y", "[N, C, *spatial']"),)
    summaries = {
        "interpolate": "Resize [N, C, *spatial] to `size` or by a whole-number `scale_factor` (nearest or "
                       "bilinear), like F.interpolate.",
        "upsample": "Resize [N, C, *spatial] to `size` or by a whole-number `scale_factor`, like nn.Upsample (the "
                    "same op as interpolate, under the name of torch's module).",
    }
    Attrs = InterpolateAttrs
    fusion = "injective"

    def _nd(self, a, x) -> int:
        nd = x.rank - 2
        if a.mode == "bilinear":
            expect(nd == 2, f"bilinear interpolation of {x}", "a 4-d input [N, C, H, W]")
        expect(1 <= nd <= 3, f"{self.name} of {x}", "an input [N, C, *spatial] with 1 to 3 spatial axes")
        return nd

    def infer(self, a, ins):
        (x,) = ins
        check_dtype(self.name, x, FLOAT_DTYPES)
        nd = self._nd(a, x)
        if a.size is not None:
            spatial = _per_axis(a.size, nd, "size")
        else:
            scales = _per_axis(a.scale_factor, nd, "scale_factor")
            spatial = tuple(D.mul(d, int(s)) for d, s in zip(x.shape[2:], scales))
        return [x.with_shape(x.shape[:2] + spatial)]

    def to_torch(self, a, ins, m, node):
        kw = {}
        if a.size is not None:
            kw["size"] = one(tuple(a.size)) if isinstance(a.size, list) else a.size
        else:
            s = a.scale_factor
            kw["scale_factor"] = tuple(float(v) for v in s) if isinstance(s, list) else float(s)
        kw["mode"] = a.mode
        if a.mode == "bilinear":
            kw["align_corners"] = a.align_corners
        return TorchCode(expr=f"F.interpolate({ins[0]}, {fmt_args(**kw)})")

    def to_onnx(self, a, ins, b, node):
        x = ins[0]
        nd = b.in_type(0).rank - 2
        attrs = dict(RESIZE[a.mode])
        if a.align_corners:
            attrs["coordinate_transformation_mode"] = "align_corners"
        if a.size is None:
            scales = [1.0, 1.0] + [float(s) for s in _per_axis(a.scale_factor, nd, "scale_factor")]
            return [b.op("Resize", [x, "", b.const(scales, "float32")], **attrs)]
        sizes = _per_axis(a.size, nd, "size")
        if a.mode == "nearest":
            for axis, out in enumerate(sizes, start=2):
                x = b.op("Gather", [x, _nearest_index(b, x, axis, out)], axis=axis)
            return [x]
        # Resize's sizes cover every axis: N and C as they come at run time, then the fixed sizes
        full = b.op("Concat", [b.op("Shape", [x], start=0, end=2), b.const(list(sizes))], axis=0)
        return [b.op("Resize", [x, "", "", full], **attrs)]


def _nearest_index(b, x: str, axis: int, out: int) -> str:
    """torch's nearest source indices for `out` outputs along `axis` of x (int64 [out]):
    min(floor(dst * (float(in) / out)), in - 1) in float32, in read at run time."""
    f32, i64 = ONNX_ELEM["float32"], ONNX_ELEM["int64"]
    size = b.dim(x, axis)
    scale = b.op("Div", [b.op("Cast", [size], to=f32), b.const([out], "float32")])
    index = b.op("Cast", [b.op("Floor", [b.op("Mul", [b.const(list(range(out)), "float32"), scale])])], to=i64)
    return b.op("Min", [index, b.op("Sub", [size, b.const([1])])])


@register
class PixelShuffle(Op):
    """[N, C*r*r, H, W] -> [N, C, H*r, W*r], like F.pixel_shuffle (ONNX DepthToSpace, mode CRD)."""

    name = "pixel_shuffle"
    in_ports = (Port("x", "[N, C*r*r, H, W]"),)
    out_ports = (Port("y", "[N, C, H*r, W*r]"),)
    fusion = "injective"

    class Attrs(Attrs):
        upscale_factor: Size = Field(le=64, description="r: each group of r*r channels becomes an r x r block")

    def infer(self, a, ins):
        (x,) = ins
        r = a.upscale_factor
        expect(x.rank == 4, f"pixel_shuffle of {x}", "a 4-d input [N, C*r*r, H, W]")
        check_dtype(self.name, x, FLOAT_DTYPES)  # onnxruntime's DepthToSpace has float kernels only
        c = x.shape[1]
        expect(isinstance(c, int) and c % (r * r) == 0, f"{c} channels do not divide by upscale_factor^2 = {r * r}",
               f"a channel count divisible by {r * r}")
        return [x.with_shape((x.shape[0], c // (r * r), D.mul(x.shape[2], r), D.mul(x.shape[3], r)))]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"F.pixel_shuffle({ins[0]}, {a.upscale_factor})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("DepthToSpace", [ins[0]], blocksize=a.upscale_factor, mode="CRD")]


# -- transposed convolutions -------------------------------------------------------------------
ND = {"conv_transpose1d": 1, "conv_transpose2d": 2}


ATTRS = {name: conv_attrs(nd, transposed=True) for name, nd in ND.items()}


@register
class ConvTranspose(Op):
    """N-d transposed convolution over [N, C, *spatial], like nn.ConvTranspose1d/2d (weight [C, out/groups, *k])."""

    names = list(ND)
    in_ports = (Port("x", "[N, C, *spatial]"),)
    out_ports = (Port("y", "[N, out, *spatial']", doc="(L - 1) * stride - 2 * padding + dilation * (kernel - 1) "
                      "+ output_padding + 1 along each axis"),)
    fusion = "out_fusable"

    @property
    def Attrs(self):  # noqa: N802 - the op contract's attribute-model name, one per dimensionality
        return ATTRS[self.name]

    def infer(self, a, ins):
        (x,) = ins
        nd, w = ND[self.name], a.window
        expect(x.rank == nd + 2, f"{self.name} input has rank {x.rank} ({x})", f"rank {nd + 2}: [N, C, *{nd} spatial]")
        check_dtype(self.name, x, FLOAT_DTYPES)
        cin = x.shape[1]
        expect(isinstance(cin, int), f"channel dim {cin} is symbolic", "a concrete channel count")
        expect(cin % a.groups == 0 and a.out % a.groups == 0,
               f"groups={a.groups} does not divide in={cin} and out={a.out}", "channels divisible by groups")
        spatial = []
        for i in range(nd):
            size = w.transposed_out_size(x.shape[2 + i], i)
            expect(not isinstance(size, int) or size > 0, f"output size {size} along spatial axis {i}",
                   "padding smaller than the transposed convolution's output")
            spatial.append(size)
        return [x.with_shape((x.shape[0], a.out, *spatial))]

    def trt_support(self, a, ins):
        w = a.window
        if any(s > 1 for s in w.stride) and any(d > 1 for d in w.dilation):
            return Support(False, "TensorRT(-RTX) builds no transposed convolution that is both strided and dilated "
                           "(its builder stops with 'Strided & Dilated Deconv are currently not supported')",
                           ["dilation 1 (a larger kernel spans as far)", "stride 1 after an upsample",
                            "run this graph on onnxruntime (--target onnx)"])
        return Support()

    def params(self, a, ins):
        # nn.ConvTranspose*d's reset_parameters: torch takes the fan from weight dim 1 (out/groups) * kernel
        init = fan_in_uniform(a.out // a.groups * math.prod(a.window.kernel))
        ps = {"weight": ParamSpec((ins[0].shape[1], a.out // a.groups, *a.window.kernel), init=init)}
        if a.bias:
            ps["bias"] = ParamSpec((a.out,), init=init)
        return ps

    def cost(self, a, ins, outs):
        # Every input element meets a [out/groups, *k] slice of the weight (FlopCounterMode's count
        # for a transposed convolution: input spatial size, not output). Backward as a convolution's:
        # the input's gradient is the forward again, the weight's groups times it; x is kept.
        x = ins[0]
        per_in = (a.out // a.groups) * D.prod(a.window.kernel)
        flops = D.mul(2 * per_in, D.prod(x.shape))
        return Cost(flops=flops, bwd_flops=D.mul(1 + a.groups, flops), saved_inputs=(0,))

    def to_torch(self, a, ins, m, node):
        w = a.window
        kw = {}
        if any(v != 1 for v in w.stride):
            kw["stride"] = one(w.stride)
        if any(w.pad_begin):
            kw["padding"] = one(w.pad_begin)
        if any(w.output_padding):
            kw["output_padding"] = one(w.output_padding)
        if a.groups != 1:
            kw["groups"] = a.groups
        if not a.bias:
            kw["bias"] = False
        if any(v != 1 for v in w.dilation):
            kw["dilation"] = one(w.dilation)
        cin = node.in_types[0].shape[1]
        ctor = f"nn.ConvTranspose{ND[self.name]}d({fmt_args(cin, a.out, one(w.kernel), **kw)})"
        return TorchCode(expr=f"{m}({ins[0]})", init=ctor)

    def to_onnx(self, a, ins, b, node):
        w = a.window
        inputs = [ins[0], b.param(node, "weight")] + ([b.param(node, "bias")] if a.bias else [])
        return [b.op("ConvTranspose", inputs, kernel_shape=list(w.kernel), strides=list(w.stride),
                     pads=list(w.pad_begin + w.pad_end), dilations=list(w.dilation), group=a.groups,
                     output_padding=list(w.output_padding) if any(w.output_padding) else None)]
