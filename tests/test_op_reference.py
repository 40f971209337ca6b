"""The op reference comes from the registry: docs/ops.md is current, every op documents its inputs
and outputs consistently with its arity, and `nnspec schema` carries descriptions and ranges."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnspec.compiler.ops import registry
from nnspec.compiler.ops.reference import markdown
from nnspec.compiler.spec.models import json_schema

DOC = Path(__file__).parent.parent / "docs" / "ops.md"
OPS = sorted(n for n in registry() if n not in ("input", "scan"))


def test_docs_ops_md_is_current():
    assert DOC.read_text() == markdown(), (
        "docs/ops.md is stale: regenerate it with `.venv/bin/python -m nnspec.compiler.ops.reference -o docs/ops.md`")


@pytest.mark.parametrize("name", OPS)
def test_ports_agree_with_arity_and_outputs(name):
    op = registry()[name]
    lo, hi = op.arity
    ports = op.in_ports
    required = [p for p in ports if not p.optional and not p.repeated]
    repeated = [p for p in ports if p.repeated]
    assert ports or hi == 0, f"{name} documents no inputs"
    assert len(required) + len(repeated) >= lo, f"{name}: {len(required)} required inputs documented, arity {op.arity}"
    if hi is None:
        assert repeated, f"{name} takes any number of inputs: mark the last port repeated"
    else:
        assert not repeated and len(ports) == hi, f"{name}: {len(ports)} inputs documented, arity {op.arity}"
    assert op.out_ports and op.summary(), name
    for f in op.Attrs.model_fields.values():
        assert f.description, f"{name}: attribute without a description"


def test_schema_describes_ops_and_constrains_attributes():
    schema = json.loads(json.dumps(json_schema()))
    conv = schema["$defs"]["node_conv2d"]
    assert "Inputs: x: float [N, C, *spatial]" in conv["description"]
    kernel = conv["properties"]["kernel"]
    assert kernel["description"].startswith("window size")
    assert {"type": "integer", "minimum": 1, "maximum": 2**31 - 1} in kernel["anyOf"]
    assert "mask" in schema["$defs"]["node_multi_head_attention"]["description"]
