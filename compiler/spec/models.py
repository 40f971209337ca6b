"""pydantic models of the spec's structure, and the JSON Schema editors use (`nnspec schema`).

Structure is validated here; op attributes are validated per node instance by each op's own
`Attrs` model after `${...}` expressions are evaluated (see `compiler/passes/expand.py`). The JSON
Schema's node union is generated from the op registry, so the schema, validation and messages all
come from the op definitions.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic_core import PydanticCustomError

from ..ir.dims import DTYPES
from .names import ArgName, AttrName, Name, PathName

Ref = Union[str, list[str]]
# A reported figure: a number, or a string such as 25.6M, 61,100,840 or 3.8G (compiler/cost.py).
_FIGURE = re.compile(r"\s*[0-9][0-9,_]*(\.[0-9]+)?\s*[KMGTBkmgtb]?\s*\Z")
MAX_TEXT = 100_000  # characters of one free-text field (description, doc, title)


def _figure(v):
    if isinstance(v, bool) or not (isinstance(v, (int, float)) or (isinstance(v, str) and _FIGURE.match(v))):
        raise PydanticCustomError("nnspec_figure", "a reported figure is a number such as 25.6M, 3.8G, 0.27M "
                                  "or 61,100,840")
    return v


Figure = Annotated[Union[int, float, str], AfterValidator(_figure)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
GRAPH_NAMES_TAKEN = ("forward", "model", "weights")  # the main graph; artifact file names


class _Model(BaseModel):
    # strict: YAML's `true` is not the integer 1, and "8" is not 8.
    model_config = ConfigDict(extra="forbid", strict=True)


class Paper(_Model):
    title: Text
    authors: list[Text] = Field(default_factory=list, max_length=1000)
    year: Optional[int] = None
    arxiv: Optional[Text] = None
    url: Optional[Text] = None
    venue: Optional[Text] = None


class DimRange(_Model):
    """Range of a symbolic dim: used for TensorRT profiles, ONNX dim_params and generated inputs."""

    min: int = Field(1, ge=1, le=2**31 - 1)
    opt: Optional[int] = Field(None, ge=1, le=2**31 - 1)
    max: Optional[int] = Field(None, ge=1, le=2**31 - 1)

    @model_validator(mode="after")
    def _ordered(self):
        seq = [v for v in (self.min, self.opt, self.max) if v is not None]
        if seq != sorted(seq):
            raise PydanticCustomError("nnspec_dims", "a dim range needs min <= opt <= max (got min={lo}, opt={opt}, "
                                      "max={hi})", {"lo": self.min, "opt": self.opt, "hi": self.max})
        return self


class InputSpec(_Model):
    shape: list[Union[int, str]]
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    range: Optional[list[Union[int, float, str]]] = None  # [low, high) of generated values (int inputs)
    when: Optional[Union[bool, str]] = None  # false: not an input of this variant (presets with other inputs)
    doc: Optional[Text] = None


class Preset(_Model):
    params: dict[PathName, Any] = {}
    reported: dict[Name, Figure] = {}
    description: Optional[Text] = None
    # the paper's recipe for this variant, merged over the spec's `train:` (nnspec.runtime.train.section)
    train: dict[Name, Any] = {}


ArgType = Literal["int", "float", "bool", "str", "list", "any"]


class ArgSpec(_Model):
    type: ArgType = "any"
    default: Any = None
    doc: Optional[Text] = None


def _not_empty(outputs):
    if not outputs:
        raise PydanticCustomError("nnspec_outputs", "a graph needs at least one output, e.g. outputs: {logits: fc}")
    return outputs


def _graph_name(name: str) -> str:
    if name in GRAPH_NAMES_TAKEN:
        raise PydanticCustomError("nnspec_graph", "graph name '{g}' is taken: forward is the main graph, model and "
                                  "weights are artifact file names", {"g": name})
    return name


Outputs = Annotated[Union[dict[Name, str], list[str]], AfterValidator(_not_empty)]
GraphName = Annotated[AttrName, AfterValidator(_graph_name)]


class BlockSpec(_Model):
    args: dict[Name, Union[ArgType, ArgSpec]] = {}
    in_: Union[ArgName, list[ArgName]] = Field(default_factory=list, alias="in")
    nodes: dict[AttrName, dict[str, Any]]
    out: Union[str, list[str], dict[Name, str]]
    doc: Optional[Text] = None


class GraphSpec(_Model):
    inputs: dict[ArgName, InputSpec]
    nodes: dict[AttrName, dict[str, Any]]
    outputs: Outputs
    when: Optional[Union[bool, str]] = None  # false: this variant has no such entry graph
    doc: Optional[Text] = None


class Reference(_Model):
    """The implementation a spec reproduces, and how its state-dict keys map onto the spec's.

    `module` (and per preset `presets`) is the dotted path of a callable that builds the reference
    without weights (`torchvision.models.resnet50`); nnspec never imports it, tests and benchmarks
    do. `keys` maps a dotted fragment of their keys to ours, matched at whole segments anywhere in
    a key (`downsample.0: downsample.conv` turns `layer1.0.downsample.0.weight` into
    `layer1.0.downsample.conv.weight`); `nnspec import-weights` applies it."""

    module: Optional[PathName] = None
    presets: dict[Name, PathName] = {}
    keys: dict[PathName, PathName] = {}
    doc: Optional[Text] = None


class PipelineSpec(_Model):
    """`pipeline: {stages: [[conv1, layer1], [layer2], ...]}`: the spec's own pipeline stages, each a
    list of block or node-id prefixes, in order (the partition_pipeline pass checks and applies them)."""

    stages: list[Annotated[list[PathName], Field(min_length=1, max_length=10_000)]] = Field(min_length=1,
                                                                                              max_length=10_000)
    doc: Optional[Text] = None


class SpecModel(_Model):
    nnspec: Literal[1]
    name: Name
    description: Optional[Text] = None
    paper: Optional[Paper] = None
    params: dict[Name, Any] = {}
    presets: dict[Name, Preset] = {}
    reported: dict[Name, Figure] = {}
    dims: dict[Name, DimRange] = {}
    include: list[str] = []
    blocks: dict[Name, BlockSpec] = {}
    inputs: dict[ArgName, InputSpec]
    nodes: dict[AttrName, dict[str, Any]]
    outputs: Outputs
    graphs: dict[GraphName, GraphSpec] = {}
    reference: Optional[Reference] = None
    init_defaults: dict[Name, Any] = {}  # op -> initialiser of its weight, or {param: initialiser}
    pipeline: Optional[PipelineSpec] = None  # pipeline stages the spec fixes (compiler/partition.py)
    # How the model trains (task, loss, optimizer, schedule...). Only its structure is a mapping here:
    # the compiler never reads it; nnspec.runtime.train validates it, with locations, when a run needs it.
    train: Optional[dict[Name, Any]] = None
    notes: Optional[Text] = None


class BlockNode(_Model):
    """`{block: name, repeat: k, args: {...}, in: ...}`: inline instances of a block."""

    block: str
    in_: Optional[Ref] = Field(None, alias="in")
    const: dict[str, str] = {}  # block inputs fed the same value by every instance of a repeat
    args: dict[str, Any] = {}
    repeat: Union[int, str] = 1
    when: Optional[Union[bool, str]] = None
    doc: Optional[str] = None


class ScanNode(_Model):
    """`{scan: block, over/carry/const: {block input: value}}`: run a block once per step."""

    scan: str
    over: dict[str, str] = {}
    carry: dict[str, str] = {}
    const: dict[str, str] = {}
    args: dict[str, Any] = {}
    axis: Union[int, str] = 1
    reverse: Union[bool, str] = False
    # A loop instead: no `over` inputs, the block runs `steps` times (greedy decoding to a declared
    # maximum length); ONNX `Loop`, a Python loop in torch.
    steps: Any = None  # an int or ${...}; checked (1 .. MAX_LOOP_STEPS) where it is evaluated
    when: Optional[Union[bool, str]] = None
    doc: Optional[str] = None


# Keys every node may carry besides its op's attributes.
COMMON_NODE_KEYS = {"op", "in", "tie", "share", "init", "when", "doc"}
BLOCK_NODE_KEYS = set(BlockNode.model_fields) - {"in_"} | {"in"}
SCAN_NODE_KEYS = set(ScanNode.model_fields)

_EXPR = {"type": "string", "pattern": r"\$\{"}


def json_schema() -> dict:
    """JSON Schema of a spec with one node variant per registered op (for yaml-language-server)."""
    from ..ops import op_names, registry
    from ..ops.reference import description

    variants = []
    for name in op_names():
        op = registry()[name]
        fields: dict[str, Any] = {
            "op": (Literal[name], ...),
            "in": (Optional[Ref], None),
            "tie": (Optional[dict[str, str]], None),
            "share": (Optional[str], None),
            "init": (Optional[dict[str, Any]], None),
            "when": (Optional[Union[bool, str]], None),
            "doc": (Optional[str], None),
        }
        for fname, f in op.Attrs.model_fields.items():
            # the attribute's own type with its constraints, or a ${...} expression giving one
            typed = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
            fields[fname] = (Union[typed, str], Field(f.default if not f.is_required() else ..., description=f.description))
        variants.append(create_model(f"node_{name}", __config__=ConfigDict(extra="forbid"),
                                     __doc__=description(op), **fields))

    NodeUnion = Union[tuple(variants) + (BlockNode, ScanNode)]  # type: ignore[misc]
    Typed = create_model(
        "nnspec_spec", __base__=SpecModel,
        blocks=(dict[str, create_model("block", __base__=BlockSpec, nodes=(dict[str, NodeUnion], ...))], {}),
        nodes=(dict[str, NodeUnion], ...),
    )
    schema = Typed.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "nnspec spec"
    return schema
