"""The op contract: one op is one class holding everything about it.

An op subclass declares
  * `name`, and `Attrs`: the pydantic model of its YAML attributes (validated per instance),
  * `arity`: (min, max) number of inputs (max None = variadic),
  * `fusion`: its fusion class (elementwise | injective | reduction | out_fusable | opaque),
  * `infer(a, ins) -> [TensorType]`: output types (raise `ShapeError` on a mismatch),
  * `params(a, ins) -> {name: ParamSpec}`: parameters/buffers, named as torch names them,
  * `cost(a, ins, outs) -> Cost`: forward and backward FLOPs (2 per multiply-add, the
    FlopCounterMode convention: only matmul/conv/attention-class work counts) and what autograd
    keeps for backward (`Cost` documents the conventions),
  * `to_torch(a, ins, m, node) -> TorchCode`: the module constructor and forward expression,
  * `to_onnx(a, ins, b, node) -> [output names]`: ONNX nodes, emitted through the target's builder,
  * optionally `to_trt` (a TensorRT-specific ONNX form) and `trt_support(a, ins)` for the lint.
Families of similar ops are one table-driven class. `tests/test_registry.py` checks every op has
every member. Nothing here imports torch or onnx.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Optional, Union

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
    """What one node costs, per op, in dim expressions (ints, or the canonical strings of
    compiler/ir/dims.py built with `D.mul`, `D.prod`, ...) that compiler/cost.py resolves at concrete
    dims and adds up over a graph.

    FLOPs are FlopCounterMode's convention: 2 per multiply-add of matmul/conv/attention-class work
    only (elementwise work, reductions and softmax count 0).
      * `flops`: the forward, as torch runs it without autograd.
      * `bwd_flops`: the backward torch's autograd runs for it (grad of every float input and every
        parameter), in the same convention: linear and matmul 2x the forward, conv (1 + groups)x (the
        counter charges the weight gradient over all input channels), recurrent cells less the
        hidden-state gradient of a first step that starts from zeros.

    Bytes saved for backward: what autograd keeps from the forward until the backward in the common
    training case -- module in train mode, every float tensor requiring grad (graph inputs included)
    and every parameter requiring grad -- on torch's CPU kernels. Counted per storage, once: a saved
    view costs its whole storage, and a tensor saved twice (by one op or by two) counts once.
    Parameters and buffers are excluded (they are held for the whole run whatever autograd keeps, and
    remat cannot drop them); graph inputs are included (an activation a node keeps, like any other).
    An op says which values it keeps, so compiler/cost.py can count a value two nodes keep once:
      * `saved_inputs`: input slots whose value (its storage) is kept. An entry is a slot, or
        `(slot, when)` with `when` a dim expression that is 1 where torch keeps the input itself and
        0 where it keeps a copy instead (the copy's bytes then go in `saved_extra`);
      * `saved_for`: {slot: input slots} for inputs kept only for some inputs' gradients (mul keeps
        each operand for the other's): kept only when one of those requires grad;
      * `saved_outputs`: output slots kept (relu and softmax keep their result); an entry is a slot
        or `(slot, when)` as for `saved_inputs` (SDPA keeps its output only where the fused kernel runs);
      * `saved_extra`: bytes of tensors the op makes and keeps that are not its outputs (batch
        statistics, pooling indices, dropout masks, the intermediates of composite ops, oneDNN's
        LSTM workspace);
      * `views`: `(output slot, input slot)` pairs whose output shares the input's storage
        (reshape, transpose, slice, identity), so keeping one keeps the other;
      * `state_output`: the outputs are module state (a parameter, a fixed tensor), kept for free;
      * `differentiable`: False where torch's result never requires grad even from inputs that do
        (zeros_like): nothing downstream of it keeps anything for its sake.
    A node none of whose inputs requires grad and that owns no trainable parameter keeps nothing
    (compiler/cost.py propagates requires-grad through the graph); where only some float inputs
    require grad, the figure is the all-inputs one (an upper bound: mul(x, constant_mask) keeps x too).
    """

    flops: object = 0
    act_bytes: object = 0  # unused: compiler/cost.py sums the outputs' bytes from their types
    bwd_flops: object = 0
    saved_inputs: tuple = ()
    saved_for: dict = field(default_factory=dict)
    saved_outputs: tuple = ()
    saved_extra: object = 0
    views: tuple = ()
    state_output: bool = False
    differentiable: bool = True

    @staticmethod
    def nbytes(*types: TensorType):
        """Bytes of tensors of types `types` together, as a dim expression."""
        from ..ir import dims as D
        from ..ir.dims import DTYPE_BYTES
        total = 0
        for t in types:
            total = D.add(total, D.mul(DTYPE_BYTES[t.dtype], D.prod(t.shape)))
        return total

    def input_slots(self) -> list[tuple[int, object]]:
        """`saved_inputs` as (slot, when) pairs (`when` 1 for a plain slot)."""
        return [(s, 1) if isinstance(s, int) else (s[0], s[1]) for s in self.saved_inputs]

    def output_slots(self) -> list[tuple[int, object]]:
        """`saved_outputs` as (slot, when) pairs (`when` 1 for a plain slot)."""
        return [(s, 1) if isinstance(s, int) else (s[0], s[1]) for s in self.saved_outputs]

    def saved_bytes(self, ins: list[TensorType], outs: list[TensorType]):
        """Bytes this node keeps for backward on its own (its inputs distinct graph inputs), as a dim
        expression; compiler/cost.py counts values shared between nodes once instead."""
        from ..ir import dims as D
        total = self.saved_extra
        for slot, when in self.input_slots():
            total = D.add(total, D.mul(when, Cost.nbytes(ins[slot])))
        for slot, when in self.output_slots():
            total = D.add(total, D.mul(when, Cost.nbytes(outs[slot])))
        return total


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
    # A tiny spec for the op's registry and FLOP tests: ({input: shape or InputSpec}, {attr: value}),
    # e.g. ({"x": ["N", 5, 8]}, {"axis": -1}). The node reads the inputs in order.
    example: ClassVar[Optional[tuple]] = None
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
