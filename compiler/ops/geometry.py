"""Window geometry of convolutions and pooling, normalised once per attribute set.

`kernel`, `stride`, `padding` and `dilation` are written as one value for every spatial axis or a
list with one per axis; `window_attrs(nd, ...)` makes the attribute model of an `nd`-dimensional
op family member, whose validation checks the list lengths (located at the attribute) and
resolves the geometry once into `a.window`, a `Window` that shape inference, parameters, cost and
every lowering read. `padding: same` follows torch: stride 1 only, total padding d*(k-1) split
with the extra element at the end (so even kernels pad asymmetrically); `valid` is no padding.
Transposed convolutions (`transposed=True`) take numeric padding only and add `output_padding`,
resolved into `Window.output_padding`; `Window.transposed_out_size` is their output length.

    conv2d {kernel: 4, padding: same} -> Window(kernel=(4, 4), pad_begin=(1, 1), pad_end=(2, 2), ...)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional, Union

from pydantic import Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

from ..ir import dims as D
from .base import Attrs, Pads, Sizes

KERNEL = "window size: one value for every spatial axis, or one per axis"


@dataclass(frozen=True)
class Window:
    kernel: tuple
    stride: tuple
    pad_begin: tuple
    pad_end: tuple
    dilation: tuple
    same: bool = False  # written as `padding: same`
    output_padding: tuple = ()  # transposed convolutions only: extra size added at the end of each axis

    @property
    def symmetric(self) -> bool:
        return self.pad_begin == self.pad_end

    def out_size(self, size, axis: int, ceil: bool = False):
        """Output length along spatial `axis` for an input of length `size` (int or symbolic)."""
        k, s, d = self.kernel[axis], self.stride[axis], self.dilation[axis]
        pad = self.pad_begin[axis] + self.pad_end[axis]
        span = d * (k - 1) + 1
        if isinstance(size, int):
            num = size + pad - span
            return (-(-num // s) if ceil else num // s) + 1
        num = D.sub(D.add(size, pad), span)
        return D.add(D.floordiv(D.add(num, s - 1) if ceil else num, s), 1)

    def transposed_out_size(self, size, axis: int):
        """Output length along `axis` of the transposed convolution of this window over `size`:
        (size - 1) * stride - padding + dilation * (kernel - 1) + output_padding + 1, as nn.ConvTranspose."""
        k, s, d = self.kernel[axis], self.stride[axis], self.dilation[axis]
        extra = d * (k - 1) + 1 + (self.output_padding[axis] if self.output_padding else 0)
        extra -= self.pad_begin[axis] + self.pad_end[axis]
        if isinstance(size, int):
            return (size - 1) * s + extra
        return D.add(D.mul(D.sub(size, 1), s), extra)

    def torch_padding(self):
        """`padding=` for torch: one int when every axis agrees, a tuple per axis, or 'same'."""
        if self.same and not self.symmetric:
            return "same"
        return one(self.pad_begin)


def one(t: tuple):
    """(3, 3) -> 3, like torchvision prints its layers; (3, 1) stays a tuple."""
    return t[0] if len(set(t)) == 1 else t


def _axes(value, nd: int, field: str) -> tuple:
    if isinstance(value, list):
        if len(value) != nd:
            raise PydanticCustomError("nnspec_attr", "{field} has {n} values for {nd} spatial axes",
                                      {"field": field, "n": len(value), "nd": nd})
        return tuple(value)
    return (value,) * nd


def resolve(nd: int, kernel, stride, padding, dilation=1) -> Window:
    k, s, d = _axes(kernel, nd, "kernel"), _axes(stride, nd, "stride"), _axes(dilation, nd, "dilation")
    if padding == "same":
        if any(v != 1 for v in s):
            raise PydanticCustomError("nnspec_attr", "{field}: same works only at stride 1 (as in torch), "
                                      "here stride is {s}", {"field": "padding", "s": list(s)})
        total = tuple(di * (ki - 1) for ki, di in zip(k, d))
        return Window(k, s, tuple(t // 2 for t in total), tuple(t - t // 2 for t in total), d, same=True)
    p = (0,) * nd if padding == "valid" else _axes(padding, nd, "padding")
    return Window(k, s, p, p, d)


class WindowAttrs(Attrs):
    """Base of the window attribute models `window_attrs` makes: `a.window` is the resolved geometry."""

    _window: Window = PrivateAttr()

    @property
    def window(self) -> Window:
        return self._window


def window_attrs(nd: int, *, conv: bool, dilation: bool = True, transposed: bool = False) -> type:
    """The window part of the attribute model of an `nd`-d convolution (conv=True: `out` first,
    padding may be same/valid) or pooling op (stride defaults to the kernel, padding at most half
    the kernel as torch requires); op modules subclass it with their other attributes.
    `transposed` (with conv): a transposed convolution, whose padding is numbers only (torch has no
    `same` for it) and which adds `output_padding`, smaller than the stride or the dilation."""
    fields: dict = {"__annotations__": {}}

    def add(name, ann, default):
        fields["__annotations__"][name] = ann
        fields[name] = default

    if conv:
        from .base import Size
        add("out", Size, Field(description="output channels"))
    add("kernel", Sizes, Field(description=KERNEL))
    if transposed:
        add("stride", Sizes, Field(1, description="step between input positions in the output"))
        add("padding", Pads, Field(0, description="removed from both ends of each spatial axis of the output, as "
                                   "nn.ConvTranspose's padding (the output shrinks by 2 * padding)"))
        add("output_padding", Pads, Field(0, description="extra size added at the end of each spatial axis (to "
                                          "pick among the input sizes a strided convolution maps to one size); "
                                          "smaller than the stride or the dilation"))
    elif conv:
        add("stride", Sizes, Field(1, description="step between windows"))
        add("padding", Union[Pads, Literal["same", "valid"]],
            Field(0, description="zeros added on both sides of each spatial axis; same: the output keeps the "
                  "input's size (stride 1 only, extra padding at the end for even kernels); valid: none"))
    else:
        add("stride", Optional[Sizes], Field(None, description="step between windows (default: the kernel size)"))
        add("padding", Pads, Field(0, description="implicit padding on both sides, at most half the kernel"))
    if dilation:
        add("dilation", Sizes, Field(1, description="spacing between window elements"))

    def finish(self):
        stride = self.stride if self.stride is not None else self.kernel
        w = resolve(nd, self.kernel, stride, self.padding, getattr(self, "dilation", 1))
        if not conv and any(p > k // 2 for p, k in zip(w.pad_begin, w.kernel)):
            raise PydanticCustomError("nnspec_attr", "{field} {p} is more than half the kernel {k} (torch's limit)",
                                      {"field": "padding", "p": list(w.pad_begin), "k": list(w.kernel)})
        if transposed:
            op = _axes(self.output_padding, nd, "output_padding")
            if any(o >= max(s, d) for o, s, d in zip(op, w.stride, w.dilation)):
                raise PydanticCustomError("nnspec_attr", "{field} {op} is not smaller than the stride {s} or the "
                                          "dilation {d} (torch's limit)", {"field": "output_padding", "op": list(op),
                                                                           "s": list(w.stride), "d": list(w.dilation)})
            w = replace(w, output_padding=op)
        self._window = w
        return self

    fields["_resolve"] = model_validator(mode="after")(finish)
    return type(f"Window{nd}dAttrs", (WindowAttrs,), fields)

