"""The op contract: one op is one class holding everything about it.

An op subclass declares
  * `name`, and `Attrs`: the pydantic model of its YAML attributes (validated per instance),
  * `arity`: (min, max) number of inputs (max None = variadic),
  * `fusion`: its fusion class (elementwise | injective | reduction | out_fusable | opaque),
  * `infer(a, ins) -> [TensorType]`: output types (raise `ShapeError` on a mismatch),
  * `params(a, ins) -> {name: ParamSpec}`: parameters/buffers, named as torch names them,
  * `cost(a, ins, outs) -> Cost`: FLOPs (2 per multiply-add, the FlopCounterMode convention:
    only matmul/conv/attention-class work counts) and activation bytes,
  * `to_torch(a, ins, m, node) -> TorchCode`: the module constructor and forward expression,
  * `to_onnx(a, ins, b, node) -> [output names]`: ONNX nodes, emitted through the target's builder,
  * optionally `to_trt` (a TensorRT-specific ONNX form) and `trt_support(a, ins)` for the lint.
Families of similar ops are one table-driven class. `tests/test_registry.py` checks every op has
every member. Nothing here imports torch or onnx.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ShapeError
from ..ir.dims import TensorType
from ..limits import MAX_DIM

FUSION_CLASSES = ("elementwise", "injective", "reduction", "out_fusable", "opaque")


class Attrs(BaseModel):
    """Base of op attribute models: unknown attributes are errors."""

    # strict: YAML `true` is not 1 and "3" is not 3; finite: inf and nan never reach a lowering.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class NoAttrs(Attrs):
    pass


# Constrained attribute types: the constraint is checked when the node is validated (so `kernel: 0`
# is an error at `nodes.c.kernel`) and shown by `nnspec schema`.
Size = Annotated[int, Field(ge=1, le=MAX_DIM)]  # a count or extent: channels, features, kernel, stride
Pad = Annotated[int, Field(ge=0, le=MAX_DIM)]
Axis = Annotated[int, Field(ge=-64, le=63)]  # an axis of a tensor of rank <= 64, negative from the end
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
DropP = Annotated[float, Field(ge=0.0, lt=1.0)]
Eps = Annotated[float, Field(gt=0.0, le=1.0)]
Sizes = Union[Size, Annotated[list[Size], Field(min_length=1, max_length=8)]]  # one per spatial axis, or one for all
Pads = Union[Pad, Annotated[list[Pad], Field(min_length=1, max_length=8)]]


@dataclass
class Cost:
    flops: int = 0  # 2 x multiply-adds of matmul/conv/attention work
    act_bytes: int = 0  # bytes of the outputs
    saved_bytes: int | None = None  # bytes kept for backward (None = inputs' bytes)


@dataclass
class TorchCode:
    """How a node appears in generated PyTorch code.

    `init` is the right-hand side of `self.<name> = ...` in `__init__` (None for functional ops);
    `expr` is the forward expression over the input variable names (a tuple for multi-output ops);
    `helpers` names snippets of the op's `torch_snippets` the file needs; `stmts` are statements
    emitted before the line that binds `expr` (loops, for scan); `temps` names temporaries those
    use, written `$name`, which the generator renames to fresh variables.
    """

    expr: str
    init: str | None = None
    helpers: tuple = ()
    stmts: list = field(default_factory=list)
    temps: tuple = ()

    def with_temps(self, names: dict) -> "TorchCode":
        """This code with each `$temp` replaced by `names[temp]` (the caller's fresh variables)."""
        import re

        def sub(text: str) -> str:
            return re.sub(r"\$(\w+)", lambda m: names.get(m.group(1), m.group(0)), text)

        return TorchCode(sub(self.expr), self.init, self.helpers, [sub(x) for x in self.stmts], ())


@dataclass(frozen=True)
class Port:
    """One input or output of an op, as `nnspec schema` and docs/ops.md describe it.

    `shape` is written in the papers' symbols (`[N, C, H, W]`, `[..., d]`); `dtype` is float, int
    (int64 ids and indices), bool, or any; `optional` inputs may be left out, a `repeated` input
    takes one or more values."""

    name: str
    shape: str = "any shape"
    dtype: str = "float"
    doc: str = ""
    optional: bool = False
    repeated: bool = False

    def text(self) -> str:
        """`x: float [N, C, H, W]`, `b: any, any shape (one or more) - broadcasts against a`."""
        kind = f"{self.dtype} {self.shape}" if self.shape.startswith("[") else ", ".join(
            t for t in (self.dtype, self.shape) if t)
        extra = " (optional)" if self.optional else " (one or more)" if self.repeated else ""
        return f"{self.name}: {kind}{extra}" + (f" - {self.doc}" if self.doc else "")


@dataclass
class Support:
    """Whether a target runs an op as written, why not, and what to use instead."""

    ok: bool = True
    why: str = ""
    alternatives: list = field(default_factory=list)


class Op:
    name: ClassVar[str]
    Attrs: ClassVar[type[Attrs]] = NoAttrs
    arity: ClassVar[tuple] = (1, 1)
    fusion: ClassVar[str] = "opaque"
    train_dependent: ClassVar[bool] = False  # behaves differently in train and eval
    # False where torch's FlopCounterMode cannot see the op's work on CPU (fused kernels); the cost
    # model still counts the real FLOPs, and agreement tests only require cost >= counter there.
    flop_counter_counts: ClassVar[bool] = True
    # Code a generated torch file needs for this op (helper classes/functions), by name; a
    # `TorchCode.helpers` entry names one. Plain torch, so generated files stay standalone.
    torch_snippets: ClassVar[dict] = {}
    doc: ClassVar[str] = ""
    # What the op reads and returns, for the schema and docs/ops.md (tests/test_registry.py holds
    # them to `arity` and `outputs`). Families set per-name docs through `summaries`.
    in_ports: ClassVar[tuple] = ()
    out_ports: ClassVar[tuple] = (Port("out", "the input's shape", dtype="the input's dtype"),)
    summaries: ClassVar[dict] = {}

    def summary(self) -> str:
        """One paragraph saying what the op computes (its family's per-name entry, else the class doc)."""
        text = self.summaries.get(self.name) or self.doc or type(self).__doc__ or ""
        return " ".join(text.split())

    def outputs(self, a) -> list[str]:
        """Names of the outputs (referenced in specs as `node.name`)."""
        return ["out"]

    def infer(self, a, ins: list[TensorType]) -> list[TensorType]:
        raise NotImplementedError(f"op {self.name} has no shape inference")

    def params(self, a, ins: list[TensorType]) -> dict:
        return {}

    def cost(self, a, ins: list[TensorType], outs: list[TensorType]) -> Cost:
        return Cost()

    def to_torch(self, a, ins: list[str], m: str, node) -> TorchCode:
        raise NotImplementedError(f"op {self.name} has no torch lowering")

    def to_onnx(self, a, ins: list[str], b, node) -> list[str]:
        raise NotImplementedError(f"op {self.name} has no ONNX lowering")

    def index_bounds(self, a, ins: list[TensorType]) -> dict:
        """{input slot: size} for inputs this op uses as indices into something of that size (an
        embedding table, an axis): `check` holds declared input ranges to it."""
        return {}

    def trt_support(self, a, ins: list[TensorType]) -> Support:
        return Support()

    def to_trt(self, a, ins: list[str], b, node) -> list[str]:
        """ONNX form fed to TensorRT; the plain ONNX lowering unless an op overrides it."""
        return self.to_onnx(a, ins, b, node)


_REGISTRY: dict[str, Op] = {}


def register(cls):
    """Class decorator: instantiate and register an op (or every name of a table-driven family)."""
    names = getattr(cls, "names", None) or [cls.name]
    for nm in names:
        inst = cls()
        inst.name = nm
        if nm in _REGISTRY:
            raise RuntimeError(f"op '{nm}' registered twice")
        _REGISTRY[nm] = inst
    return cls


def registry() -> dict[str, Op]:
    return _REGISTRY


# -- small helpers shared by op definitions ---------------------------------------------------
def expect(cond: bool, message: str, expected: str | None = None) -> None:
    if not cond:
        raise ShapeError(message, expected=expected)


def same_dim(a, b) -> bool:
    return a == b or str(a) == str(b)


def broadcast(shapes: list[tuple]) -> tuple:
    """numpy broadcasting over possibly symbolic dims."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        non1 = [d for d in dims if d != 1]
        if not non1:
            out.append(1)
            continue
        first = non1[0]
        for d in non1[1:]:
            if not same_dim(d, first):
                raise ShapeError(f"shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast",
                                 expected=f"equal sizes or 1 at axis {i - rank}")
        out.append(first)
    return tuple(out)


def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for rank {rank}", expected=f"-{rank} <= axis < {rank}")
    return axis % rank


def pair(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def fmt_args(*pos, **kw) -> str:
    """Render constructor arguments deterministically: positional, then keywords not at default."""
    parts = [repr(p) for p in pos]
    parts += [f"{k}={v!r}" for k, v in kw.items()]
    return ", ".join(parts)
