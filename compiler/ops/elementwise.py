"""Elementwise ops: unary activations, clamping, and broadcasting binary arithmetic, each family one table.

Every entry says which dtypes it takes, and `infer` refuses the others with a message saying what to
use instead: the ONNX forms (and TensorRT) have no arithmetic on bool, and torch quietly promotes
ints to floats in `sigmoid` or `/`, which would make the declared output dtype wrong. Where the
lowering can make an ONNX kernel fit, it does (relu of ints is Max(x, 0), since onnxruntime has no
int64 Relu; int `/` is cast to float first, as torch's true division returns float32).
"""
from __future__ import annotations

from typing import Optional, Union

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from ..errors import ShapeError
from ..ir.dims import TensorType
from .base import Port, Attrs, Cost, NoAttrs, Op, TorchCode, broadcast, expect, fmt_args, register
from .linear import FLOAT_DTYPES

INT_DTYPES = ("int64", "int32", "int8", "uint8")
NUMERIC = FLOAT_DTYPES + INT_DTYPES
SIGNED = FLOAT_DTYPES + ("int64", "int32", "int8")
# The representable range of each dtype: a clamp bound outside it is an overflow in torch.
DTYPE_RANGE = {"int64": (-2**63, 2**63 - 1), "int32": (-2**31, 2**31 - 1), "int8": (-128, 127), "uint8": (0, 255),
               "float16": (-65504.0, 65504.0), "bfloat16": (-3.38e38, 3.38e38), "float32": (-3.4e38, 3.4e38),
               "float64": (-1.7e308, 1.7e308)}
FLOAT32_MAX = 3.4e38  # attribute numbers are float32 constants in the lowerings
# onnx.TensorProto element types (compiler/ imports neither onnx nor the targets)
ONNX_ELEM = {"float32": 1, "uint8": 2, "int8": 3, "int32": 6, "int64": 7, "bool": 9, "float16": 10, "float64": 11,
             "bfloat16": 16}


def check_dtype(op: str, t: TensorType, allowed: tuple, instead: str = "cast it to float32 first") -> None:
    """ShapeError unless `t`'s dtype is one of `allowed`, saying what to do instead."""
    kinds = ("floating-point" if allowed == FLOAT_DTYPES else "numeric" if set(allowed) >= set(SIGNED)
             else "/".join(allowed))
    expect(t.dtype in allowed, f"{op} of a {t.dtype} tensor ({t})", f"a {kinds} tensor ({instead})")


def scalar0(b, value, dtype: str) -> str:
    """A true 0-d ONNX constant of `dtype`, for inputs the ONNX spec requires to be scalars (Range's
    bounds, Clip's min/max, Trilu's k, CumSum's axis). `b.scalar` currently yields shape [1]
    (np.ascontiguousarray promotes 0-d arrays to 1-d in Builder.const), which onnxruntime's Range
    refuses; squeezing a 1-element constant gives the 0-d value on every target."""
    one = b.const([value], dtype) if dtype != "bfloat16" else \
        b.op("Cast", [b.const([value], "float32")], to=ONNX_ELEM[dtype])  # the builder stores no bfloat16
    return b.op("Squeeze", [one])


def _clip(b, x: str, lo, hi, dtype: str) -> str:
    """ONNX Clip with constant bounds of x's dtype (an omitted bound is the empty input name)."""
    bound = lambda v: "" if v is None else scalar0(b, v, dtype)  # noqa: E731
    return b.op("Clip", [x, bound(lo), bound(hi)])


def _relu(b, x, dtype):
    # onnxruntime has no int64/uint8 Relu, and TensorRT's activations are float-only: max(x, 0) is.
    return b.op("Relu", [x]) if dtype in FLOAT_DTYPES else b.op("Max", [x, scalar0(b, 0, dtype)])


def _hard(op_type: str, **attrs):
    def lower(b, x, dtype):
        if dtype in ("float32", "float16"):
            return b.op(op_type, [x], **attrs)
        # onnxruntime has HardSigmoid/HardSwish kernels for float and half only: write them out.
        gate = _clip(b, b.op("Add", [b.op("Mul", [x, scalar0(b, 1 / 6, dtype)]), scalar0(b, 0.5, dtype)]), 0, 1, dtype)
        return b.op("Mul", [x, gate]) if op_type == "HardSwish" else gate
    return lower


def _plain(op_type: str, **attrs):
    return lambda b, x, dtype: b.op(op_type, [x], **attrs)


# name -> (torch expression over {x}, ONNX lowering (b, x, dtype) -> name, accepted dtypes, summary)
UNARY = {
    "relu": ("torch.relu({x})", _relu, NUMERIC, "max(x, 0), like torch.relu."),
    "sigmoid": ("torch.sigmoid({x})", _plain("Sigmoid"), FLOAT_DTYPES, "1 / (1 + exp(-x))."),
    "tanh": ("torch.tanh({x})", _plain("Tanh"), FLOAT_DTYPES, "Hyperbolic tangent."),
    "gelu": ("F.gelu({x})", _plain("Gelu"), FLOAT_DTYPES,
             "x * Phi(x), the Gaussian error linear unit (exact erf form), like F.gelu."),
    "gelu_tanh": ("F.gelu({x}, approximate='tanh')", _plain("Gelu", approximate="tanh"), FLOAT_DTYPES,
                  "GELU with the tanh approximation (GPT-2's), like F.gelu(approximate='tanh')."),
    # x * sigmoid(x): ONNX has no SiLU before opset 24, and TensorRT needs this form
    "silu": ("F.silu({x})", lambda b, x, dtype: b.op("Mul", [x, b.op("Sigmoid", [x])]), FLOAT_DTYPES,
             "x * sigmoid(x) (swish), like F.silu."),
    "elu": ("F.elu({x})", _plain("Elu"), FLOAT_DTYPES, "x if x > 0 else exp(x) - 1, like F.elu."),
    "softplus": ("F.softplus({x})", _plain("Softplus"), FLOAT_DTYPES, "log(1 + exp(x)), like F.softplus."),
    "exp": ("torch.exp({x})", _plain("Exp"), FLOAT_DTYPES, "e to the x."),
    "log": ("torch.log({x})", _plain("Log"), FLOAT_DTYPES, "Natural logarithm."),
    "neg": ("torch.neg({x})", _plain("Neg"), SIGNED, "-x."),
    "abs": ("torch.abs({x})", _plain("Abs"), NUMERIC, "|x|."),
    "sqrt": ("torch.sqrt({x})", _plain("Sqrt"), FLOAT_DTYPES, "Square root."),
    "identity": ("{x}", _plain("Identity"), None, "x unchanged (a named tap point)."),
    "relu6": ("F.relu6({x})", lambda b, x, dtype: _clip(b, x, 0, 6, dtype), NUMERIC,
              "min(max(x, 0), 6), like F.relu6 (MobileNetV2's activation; ONNX Clip)."),
    # torch's hardsigmoid is relu6(x + 3) / 6 = clip(x / 6 + 1/2, 0, 1): ONNX HardSigmoid's alpha, beta.
    "hardsigmoid": ("F.hardsigmoid({x})", _hard("HardSigmoid", alpha=1 / 6, beta=0.5), FLOAT_DTYPES,
                    "relu6(x + 3) / 6, like F.hardsigmoid (ONNX HardSigmoid with alpha 1/6, beta 1/2)."),
    "hardswish": ("F.hardswish({x})", _hard("HardSwish"), FLOAT_DTYPES,
                  "x * relu6(x + 3) / 6, like F.hardswish (MobileNetV3's activation; ONNX HardSwish)."),
}


def port_dtype(allowed) -> str:
    """How a Port writes a dtype tuple: float, float or int, any."""
    return "any" if allowed is None else "float" if allowed == FLOAT_DTYPES else "float or int"


@register
class Unary(Op):
    names = list(UNARY)
    summaries = {name: entry[3] for name, entry in UNARY.items()}
    Attrs = NoAttrs
    fusion = "elementwise"

    @property
    def in_ports(self):
        return (Port("x", dtype=port_dtype(UNARY[self.name][2])),)

    def infer(self, a, ins):
        allowed = UNARY[self.name][2]
        if allowed is not None:
            check_dtype(self.name, ins[0], allowed)
        return [ins[0]]

    def cost(self, a, ins, outs):
        # Autograd keeps the result where the derivative is written in it (relu, sigmoid, tanh, exp,
        # sqrt), nothing for neg, and the input for the rest; identity's output is its input.
        if self.name == "identity":
            return Cost(views=((0, 0),))
        if self.name == "neg":
            return Cost()
        if self.name in ("relu", "sigmoid", "tanh", "exp", "sqrt"):
            return Cost(saved_outputs=(0,))
        return Cost(saved_inputs=(0,))

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=UNARY[self.name][0].format(x=ins[0]))

    def to_onnx(self, a, ins, b, node):
        return [UNARY[self.name][1](b, ins[0], b.out_type(0).dtype)]


@register
class LeakyRelu(Op):
    name = "leaky_relu"
    in_ports = (Port("x", dtype="float"),)
    doc = "x if x > 0 else slope * x, like F.leaky_relu."

    class Attrs(Attrs):
        slope: float = Field(0.01, ge=-FLOAT32_MAX, le=FLOAT32_MAX, description="gradient for x < 0")

    fusion = "elementwise"

    def infer(self, a, ins):
        check_dtype(self.name, ins[0], FLOAT_DTYPES)
        return [ins[0]]

    def cost(self, a, ins, outs):
        return Cost(saved_inputs=(0,))  # the sign of x picks the slope

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"F.leaky_relu({ins[0]}, {a.slope!r})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("LeakyRelu", [ins[0]], alpha=a.slope)]


# -- clamping ----------------------------------------------------------------------------------
Bound = Union[int, float]  # an int bound keeps int tensors int (a float one would promote)


def _ordered(lo_field: str, hi_field: str):
    def check(self):
        lo, hi = getattr(self, lo_field), getattr(self, hi_field)
        for name, v in ((lo_field, lo), (hi_field, hi)):  # int bounds are held to the tensor's dtype by infer
            if isinstance(v, float) and not -FLOAT32_MAX <= v <= FLOAT32_MAX:
                raise PydanticCustomError("nnspec_attr", "{field}={v} is outside float32's range",
                                          {"field": name, "v": v})
        if lo is not None and hi is not None and lo > hi:
            raise PydanticCustomError("nnspec_attr", "{field}={hi} is below {lo_field}={lo}",
                                      {"field": hi_field, "hi": hi, "lo_field": lo_field, "lo": lo})
        return self
    return model_validator(mode="after")(check)


class ClampAttrs(Attrs):
    min: Optional[Bound] = Field(None, description="lower bound (null: none); a whole number keeps int tensors int")
    max: Optional[Bound] = Field(None, description="upper bound (null: none), at least min")
    _ordered = _ordered("min", "max")

    @model_validator(mode="after")
    def _one_bound(self):
        if self.min is None and self.max is None:  # torch.clamp needs one of them
            raise PydanticCustomError("nnspec_attr", "{field}: clamp needs min or max (or both)", {"field": "min"})
        return self


class HardtanhAttrs(Attrs):
    min_val: Bound = Field(-1.0, description="lower end of the linear region")
    max_val: Bound = Field(1.0, description="upper end of the linear region, at least min_val")
    _ordered = _ordered("min_val", "max_val")


# name -> (attribute model, (lower, upper) attribute names, torch function, summary)
CLAMPS = {
    "clamp": (ClampAttrs, ("min", "max"), "torch.clamp",
              "x limited to [min, max] (either bound optional), like torch.clamp (ONNX Clip)."),
    "hardtanh": (HardtanhAttrs, ("min_val", "max_val"), "F.hardtanh",
                 "x limited to [min_val, max_val] (default [-1, 1]), like F.hardtanh (ONNX Clip)."),
}


@register
class Clamp(Op):
    names = list(CLAMPS)
    in_ports = (Port("x", dtype="float or int"),)
    summaries = {name: entry[3] for name, entry in CLAMPS.items()}
    fusion = "elementwise"

    @property
    def Attrs(self):  # noqa: N802 - the op contract's attribute-model name, one per family member
        return CLAMPS[self.name][0]

    def bounds(self, a) -> tuple:
        lo, hi = CLAMPS[self.name][1]
        return getattr(a, lo), getattr(a, hi)

    def infer(self, a, ins):
        (x,) = ins
        check_dtype(self.name, x, NUMERIC, "for bool masks use logical_and / logical_or")
        lo_name, hi_name = CLAMPS[self.name][1]
        for name, v in zip((lo_name, hi_name), self.bounds(a)):
            if v is None:
                continue
            if x.dtype in INT_DTYPES:
                expect(isinstance(v, int), f"{self.name} of a {x.dtype} tensor with {name}={v!r}",
                       "whole-number bounds for an int tensor (torch would return floats)")
            low, high = DTYPE_RANGE[x.dtype]
            expect(low <= v <= high, f"{name}={v!r} does not fit {x.dtype}", f"a bound in [{low:g}, {high:g}]")
        return [x]

    def cost(self, a, ins, outs):
        return Cost(saved_inputs=(0,))  # x says where the gradient passes

    def to_torch(self, a, ins, m, node):
        lo, hi = self.bounds(a)
        if node.outputs[0].dtype in FLOAT_DTYPES:
            lo, hi = (None if v is None else float(v) for v in (lo, hi))
        lo_name, hi_name = CLAMPS[self.name][1]
        kw = {k: v for k, v in ((lo_name, lo), (hi_name, hi)) if v is not None}
        return TorchCode(expr=f"{CLAMPS[self.name][2]}({ins[0]}, {fmt_args(**kw)})")

    def to_onnx(self, a, ins, b, node):
        return [_clip(b, ins[0], *self.bounds(a), b.out_type(0).dtype)]


# -- binary arithmetic -------------------------------------------------------------------------
# name -> (python operator or torch function, ONNX op type, what to use for bool inputs)
BINARY = {
    "add": ("{0} + {1}", "Add", "use logical_or for bool masks, or cast them first"),
    "sub": ("{0} - {1}", "Sub", "use logical_and with logical_not for bool masks, or cast them first"),
    "mul": ("{0} * {1}", "Mul", "use logical_and for bool masks, or cast them first"),
    "div": ("{0} / {1}", "Div", "cast bool masks to float32 first"),
    "maximum": ("torch.maximum({0}, {1})", "Max", "use logical_or for bool masks"),
    "minimum": ("torch.minimum({0}, {1})", "Min", "use logical_and for bool masks"),
}


@register
class Binary(Op):
    """Broadcasting binary arithmetic; `add` and `mul` also take more than two inputs (summed/multiplied)."""

    names = list(BINARY)
    in_ports = (Port("a", dtype="float or int"), Port("b", dtype="a's dtype", doc="broadcasts against a",
                                                      repeated=True))
    out_ports = (Port("out", "the broadcast shape", dtype="the inputs' dtype (div of ints: float32)"),)
    summaries = {
        "add": "a + b (+ more inputs, summed), broadcasting like numpy.", "sub": "a - b, broadcasting.",
        "mul": "a * b (* more inputs), broadcasting.",
        "div": "a / b, broadcasting; true division, so int inputs give float32 (as in torch).",
        "maximum": "Elementwise max(a, b), broadcasting.", "minimum": "Elementwise min(a, b), broadcasting.",
    }
    arity = (2, None)
    fusion = "elementwise"

    def infer(self, a, ins):
        if len(ins) > 2 and self.name not in ("add", "mul"):
            raise ShapeError(f"{self.name} takes 2 inputs, got {len(ins)}", expected="2 inputs")
        dtypes = {t.dtype for t in ins}
        if len(dtypes) > 1:
            raise ShapeError(f"inputs have different dtypes {sorted(dtypes)}", expected="one dtype (cast one of them)")
        check_dtype(self.name, ins[0], NUMERIC, BINARY[self.name][2])
        dtype = "float32" if self.name == "div" and ins[0].dtype in INT_DTYPES else ins[0].dtype
        return [TensorType(broadcast([t.shape for t in ins]), dtype)]

    def cost(self, a, ins, outs):
        if self.name in ("add", "sub"):
            return Cost()  # the gradient passes unchanged (reduced to each input's shape)
        if len(ins) > 2:  # ((a * b) * c) ...: every product keeps both factors, partial products too
            dtype = outs[0].dtype
            partial = [TensorType(broadcast([t.shape for t in ins[:k]]), dtype) for k in range(2, len(ins))]
            return Cost(saved_inputs=tuple(range(len(ins))), saved_extra=Cost.nbytes(*partial))
        # mul keeps each operand for the other's gradient; div keeps b for both and a for b's;
        # maximum and minimum compare both for either gradient
        needed = {"mul": {0: (1,), 1: (0,)}, "div": {0: (1,)}}.get(self.name, {})
        return Cost(saved_inputs=(0, 1), saved_for=needed)

    def to_torch(self, a, ins, m, node):
        expr = ins[0]
        for other in ins[1:]:
            expr = BINARY[self.name][0].format(expr, other)
        return TorchCode(expr=expr)

    def to_onnx(self, a, ins, b, node):
        ins = list(ins)
        if b.in_type(0).dtype != b.out_type(0).dtype:  # int / int: true division in float32, as torch
            ins = [b.op("Cast", [x], to=b.dtype()) for x in ins]
        out = ins[0]
        for other in ins[1:]:
            out = b.op(BINARY[self.name][1], [out, other])
        return [out]
