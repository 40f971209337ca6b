"""Stamped block instances are exactly what expanding each instance from scratch gives.

The expander records the first instance of a block for each distinct set of values its body reads
and stamps later ones from the record (compiler/passes/templates.py). For every bundled spec and
preset and the test specs, the graphs built with and without templates must agree node for node:
ids, ops, attributes, inputs, scopes, locations, instantiation chains, ties, inits and the block
instances code generation reads.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from nnspec.compiler.passes import expand as expand_mod
from nnspec.compiler.spec.load import bundled_specs, load_spec

TESTS = Path(__file__).parent
CASES = [(str(p), preset) for p in bundled_specs() for preset in [None] + list(load_spec(p).model.presets)]
CASES += [(str(p), None) for d in ("specs", "specs_rt") for p in sorted((TESTS / d).glob("*.yaml"))]
CASES += [(str(TESTS.parent / "benchmarks" / "specs" / "residual_stack.yaml"), None)]


def _facts(graphs: dict) -> dict:
    def graph(g):
        nodes = [(n.id, n.op, n.attrs, g.inputs_of(n.id), n.scope, str(n.loc), n.out_names, n.ties, n.init,
                  [(f.block, f.instance, str(f.loc)) for f in n.chain], graph(n.body) if n.body is not None else None)
                 for n in g.topo()]
        insts = {k: (i.block, i.in_names, i.in_refs, i.out_names, i.out_refs) for k, i in g.instances.items()}
        return nodes, insts, dict(g.outputs)
    return {name: graph(g) for name, g in graphs.items()}


@pytest.mark.parametrize("spec,preset", CASES, ids=[f"{Path(s).stem}-{p}" for s, p in CASES])
def test_templates_equal_fresh_expansion(spec, preset, monkeypatch):
    loaded = load_spec(spec, preset)
    with_templates = expand_mod.expand(loaded)
    monkeypatch.setattr(expand_mod.Expander, "__init__", _no_templates(expand_mod.Expander.__init__))
    fresh = expand_mod.expand(loaded)
    assert _facts(with_templates) == _facts(fresh)


def _no_templates(init):
    def wrapped(self, spec):
        init(self, spec)
        self.use_templates = False
    return wrapped


def test_repeated_instances_are_stamped():
    loaded = load_spec(str(TESTS.parent / "benchmarks" / "specs" / "residual_stack.yaml"))
    ex = expand_mod.Expander(loaded)
    ex.graph("forward", loaded.model.inputs, loaded.model.nodes, loaded.model.outputs, ())
    made = [t for t in ex.templates.made.values() if t is not None]
    assert len(made) == 1 and len(made[0].nodes) >= 1  # one record serves every instance


def test_names_in_finds_every_name_read():
    from nnspec.compiler.spec.expr import names_in
    assert names_in("${out}") == {"out"}  # a bare name is the whole syntax tree
    assert names_in(["a ${x}", {"k": "${y + cfg.lr}"}, 3]) == {"x", "y", "cfg"}
    assert names_in("${(}") is None  # does not compile: never templated


def test_shapes_read_while_expanding_are_inferred_in_dependency_order():
    """A diamond of untyped nodes (sub -> zeros -> cat and sub -> cat) read by `channels(x)` during
    expansion: every node is typed after its inputs (this raised an IndexError once)."""
    from nnspec.compiler import load
    program = load(str(TESTS / "specs" / "diamond_untyped.yaml"))
    g = program.forward
    assert g.node("p.cat").outputs[0].shape == (2, 8, 4, 8)
    assert g.node("q.r").op == "relu"  # channels(x) == 8 held
