"""Elementwise ops: unary activations and binary arithmetic, each family one table."""
from __future__ import annotations

from pydantic import Field

from ..ir.dims import TensorType
from .base import Port, Attrs, NoAttrs, Op, TorchCode, broadcast, register

# name -> (torch expression over {x}, ONNX op type, extra ONNX attributes)
UNARY = {
    "relu": ("torch.relu({x})", "Relu", {}),
    "sigmoid": ("torch.sigmoid({x})", "Sigmoid", {}),
    "tanh": ("torch.tanh({x})", "Tanh", {}),
    "gelu": ("F.gelu({x})", "Gelu", {}),
    "gelu_tanh": ("F.gelu({x}, approximate='tanh')", "Gelu", {"approximate": "tanh"}),
    "silu": ("F.silu({x})", None, {}),
    "elu": ("F.elu({x})", "Elu", {}),
    "softplus": ("F.softplus({x})", "Softplus", {}),
    "exp": ("torch.exp({x})", "Exp", {}),
    "log": ("torch.log({x})", "Log", {}),
    "neg": ("torch.neg({x})", "Neg", {}),
    "abs": ("torch.abs({x})", "Abs", {}),
    "sqrt": ("torch.sqrt({x})", "Sqrt", {}),
    "identity": ("{x}", "Identity", {}),
}


@register
class Unary(Op):
    names = list(UNARY)
    in_ports = (Port("x", dtype="float"),)
    summaries = {
        "relu": "max(x, 0), like torch.relu.", "sigmoid": "1 / (1 + exp(-x)).", "tanh": "Hyperbolic tangent.",
        "gelu": "x * Phi(x), the Gaussian error linear unit (exact erf form), like F.gelu.",
        "gelu_tanh": "GELU with the tanh approximation (GPT-2's), like F.gelu(approximate='tanh').",
        "silu": "x * sigmoid(x) (swish), like F.silu.", "elu": "x if x > 0 else exp(x) - 1, like F.elu.",
        "softplus": "log(1 + exp(x)), like F.softplus.", "exp": "e to the x.", "log": "Natural logarithm.",
        "neg": "-x.", "abs": "|x|.", "sqrt": "Square root.", "identity": "x unchanged (a named tap point).",
    }
    Attrs = NoAttrs
    fusion = "elementwise"

    def infer(self, a, ins):
        return [ins[0]]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=UNARY[self.name][0].format(x=ins[0]))

    def to_onnx(self, a, ins, b, node):
        expr, onnx_op, attrs = UNARY[self.name]
        if self.name == "silu":  # x * sigmoid(x): ONNX has no SiLU before opset 24 / TensorRT needs this form
            return [b.op("Mul", [ins[0], b.op("Sigmoid", [ins[0]])])]
        return [b.op(onnx_op, [ins[0]], **attrs)]


@register
class LeakyRelu(Op):
    name = "leaky_relu"
    in_ports = (Port("x", dtype="float"),)
    doc = "x if x > 0 else slope * x, like F.leaky_relu."

    class Attrs(Attrs):
        slope: float = Field(0.01, description="gradient for x < 0")

    fusion = "elementwise"

    def infer(self, a, ins):
        return [ins[0]]

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"F.leaky_relu({ins[0]}, {a.slope!r})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("LeakyRelu", [ins[0]], alpha=a.slope)]


# name -> (python operator or torch function, ONNX op type)
BINARY = {
    "add": ("{0} + {1}", "Add"),
    "sub": ("{0} - {1}", "Sub"),
    "mul": ("{0} * {1}", "Mul"),
    "div": ("{0} / {1}", "Div"),
    "maximum": ("torch.maximum({0}, {1})", "Max"),
    "minimum": ("torch.minimum({0}, {1})", "Min"),
}


@register
class Binary(Op):
    """Broadcasting binary arithmetic; `add` and `mul` also take more than two inputs (summed/multiplied)."""

    names = list(BINARY)
    in_ports = (Port("a", dtype="any"), Port("b", dtype="any", doc="broadcasts against a", repeated=True))
    out_ports = (Port("out", "the broadcast shape", dtype="the inputs' dtype"),)
    summaries = {
        "add": "a + b (+ more inputs, summed), broadcasting like numpy.", "sub": "a - b, broadcasting.",
        "mul": "a * b (* more inputs), broadcasting.", "div": "a / b, broadcasting.",
        "maximum": "Elementwise max(a, b), broadcasting.", "minimum": "Elementwise min(a, b), broadcasting.",
    }
    arity = (2, None)
    fusion = "elementwise"

    def infer(self, a, ins):
        if len(ins) > 2 and self.name not in ("add", "mul"):
            from ..errors import ShapeError
            raise ShapeError(f"{self.name} takes 2 inputs, got {len(ins)}", expected="2 inputs")
        dtypes = {t.dtype for t in ins}
        if len(dtypes) > 1:
            from ..errors import ShapeError
            raise ShapeError(f"inputs have different dtypes {sorted(dtypes)}", expected="one dtype")
        return [TensorType(broadcast([t.shape for t in ins]), ins[0].dtype)]

    def to_torch(self, a, ins, m, node):
        expr = ins[0]
        for other in ins[1:]:
            expr = BINARY[self.name][0].format(expr, other)
        return TorchCode(expr=expr)

    def to_onnx(self, a, ins, b, node):
        out = ins[0]
        for other in ins[1:]:
            out = b.op(BINARY[self.name][1], [out, other])
        return [out]
