"""pydantic models of the spec's structure, and the JSON Schema editors use (`nnspec schema`).

Structure is validated here; op attributes are validated per node instance by each op's own
`Attrs` model after `${...}` expressions are evaluated (see `compiler/passes/expand.py`). The JSON
Schema's node union is generated from the op registry, so the schema, validation and messages all
come from the op definitions.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..ir.dims import DTYPES

Ident = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
Ref = Union[str, list[str]]
NUMBER_WITH_SUFFIX = r"^\s*[0-9.]+\s*[KMGTkmgt]?\s*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Paper(_Model):
    title: str
    authors: list[str] = []
    year: Optional[int] = None
    arxiv: Optional[str] = None
    url: Optional[str] = None
    venue: Optional[str] = None


class DimRange(_Model):
    """Range of a symbolic dim: used for TensorRT profiles, ONNX dim_params and generated inputs."""

    min: int = Field(1, ge=0)
    opt: Optional[int] = Field(None, ge=0)
    max: Optional[int] = Field(None, ge=0)


class InputSpec(_Model):
    shape: list[Union[int, str]]
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    range: Optional[list[Union[int, float, str]]] = None  # [low, high) of generated values (int inputs)
    doc: Optional[str] = None


class Preset(_Model):
    params: dict[str, Any] = {}
    reported: dict[str, Any] = {}
    description: Optional[str] = None


ArgType = Literal["int", "float", "bool", "str", "list", "any"]


class ArgSpec(_Model):
    type: ArgType = "any"
    default: Any = None
    doc: Optional[str] = None


class BlockSpec(_Model):
    args: dict[str, Union[ArgType, ArgSpec]] = {}
    in_: Union[str, list[str]] = Field(default_factory=list, alias="in")
    nodes: dict[str, dict[str, Any]]
    out: Union[str, list[str], dict[str, str]]
    doc: Optional[str] = None


class GraphSpec(_Model):
    inputs: dict[str, InputSpec]
    nodes: dict[str, dict[str, Any]]
    outputs: Union[dict[str, str], list[str]]
    doc: Optional[str] = None


class SpecModel(_Model):
    nnspec: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    description: Optional[str] = None
    paper: Optional[Paper] = None
    params: dict[str, Any] = {}
    presets: dict[str, Preset] = {}
    reported: dict[str, Any] = {}
    dims: dict[str, DimRange] = {}
    include: list[str] = []
    blocks: dict[str, BlockSpec] = {}
    inputs: dict[str, InputSpec]
    nodes: dict[str, dict[str, Any]]
    outputs: Union[dict[str, str], list[str]]
    graphs: dict[str, GraphSpec] = {}
    notes: Optional[str] = None


class BlockNode(_Model):
    """`{block: name, repeat: k, args: {...}, in: ...}`: inline instances of a block."""

    block: str
    in_: Optional[Ref] = Field(None, alias="in")
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
            fields[fname] = (Union[f.annotation, str], f.default if not f.is_required() else ...)
        variants.append(create_model(f"node_{name}", __config__=ConfigDict(extra="forbid"),
                                     __doc__=(op.doc or type(op).__doc__ or "").strip() or None, **fields))

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
