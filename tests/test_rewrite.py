"""The rewrite-rule mechanism (compiler/passes/rewrite.py) and the pass context/result it reports
through: toy rules (collapse relu(relu(x)), drop identity) keep the generated module's outputs, leave
the IR they should, name why a match was declined, and stop at the sweep bound."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nnspec.compiler as c
from nnspec.compiler.errors import PassError
from nnspec.compiler.ir.graph import Node
from nnspec.compiler.passes import PASSES, PassContext, PassResult, register_pass, run_passes
from nnspec.compiler.passes.rewrite import Chain, OpPattern, Rule, apply_rules, register_rewrites
from nnspec.targets.inputs import example_inputs
from nnspec.targets.torch.build import build_module
from nnspec.targets.torch.interpret import evaluate_outputs

torch.set_num_threads(1)

TOY = """\
nnspec: 1
name: toy
dims: {N: {min: 1, opt: 2, max: 8}}
inputs: {x: {shape: [N, 6]}}
blocks:
  act:
    in: [h]
    nodes:
      r1: {op: relu}
      r2: {op: relu}
      same: {op: identity}
    out: same
nodes:
  fc: {op: linear, out: 8}
  a: {op: relu}
  b: {op: relu}
  blk: {block: act}
  skip: {op: identity}
  head: {op: linear, out: 3}
outputs: {y: head}
"""


class CollapseRelu(Rule):
    """relu(relu(x)) -> relu(x), inside one block instance only."""

    name = "collapse_relu"
    pattern = Chain("relu", "relu")

    def check(self, m, g):
        inner, outer = m.nodes
        if inner.scope != outer.scope:
            return f"'{inner.id}' and '{outer.id}' are in different block instances"
        return None

    def rewrite(self, m, g):
        inner, outer = m.nodes
        g.replace_all_uses((outer.id, 0), (inner.id, 0))
        g.remove(outer.id)


class DropIdentity(Rule):
    name = "drop_identity"
    pattern = Chain(OpPattern("identity", arity=1))

    def rewrite(self, m, g):
        (node,) = m.nodes
        g.replace_all_uses((node.id, 0), g.inputs_of(node.id)[0])
        g.remove(node.id)


class Renew(Rule):
    """Replaces every relu by a fresh copy: it never stops firing (for the sweep bound)."""

    name = "renew"
    pattern = Chain("relu")

    def rewrite(self, m, g):
        (old,) = m.nodes
        base, _, k = old.id.partition("~")
        new = Node(f"{base}~{int(k or 0) + 1}", old.op, old.attrs, list(old.outputs), list(old.in_types),
                   list(old.out_names), loc=old.loc, chain=list(old.chain), scope=old.scope)
        g.rewrite([old.id], [new], {new.id: g.inputs_of(old.id)}, {(old.id, 0): (new.id, 0)})


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(TOY)
    return c.load(str(path))


@pytest.fixture
def rewrite_pass():
    """Register a rewrite pass for one test, and forget it afterwards."""
    made = []

    def make(name, rules, **kw):
        register_rewrites(name, rules, **kw)
        made.append(name)
        return name

    yield make
    for name in made:
        PASSES.pop(name, None)


def _forward(module, program, inputs):
    with torch.inference_mode():
        return module(*[torch.from_numpy(inputs[n.attrs.name]) for n in program.forward.inputs()]).numpy()


def test_toy_rules_keep_the_outputs_and_leave_the_ir_they_should(toy, rewrite_pass):
    before = build_module(toy, seed=0)
    xs = [example_inputs(toy, {"N": n}, seed=s) for n, s in ((1, 0), (5, 1), (8, 2))]
    want = [_forward(before, toy, x) for x in xs]

    run_passes(toy, [rewrite_pass("toy_rewrite", [CollapseRelu(), DropIdentity()])])

    ir = toy.dump()
    assert "identity(" not in ir and "%b = " not in ir and "%blk.r2 = " not in ir
    assert "  %blk.r1 = relu(%a) : f32[N,8]" in ir  # declined: a and blk.r1 are in different blocks
    assert "  %head = linear(%blk.r1) {out=3} : f32[N,3]" in ir
    res = toy.results["toy_rewrite"]
    assert isinstance(res, PassResult) and (res.added, res.removed) == (0, 4)
    assert [(f["rule"], f["at"]) for f in res.summary["fired"]] == [
        ("collapse_relu", "b"), ("collapse_relu", "blk.r2"), ("drop_identity", "blk.same"), ("drop_identity", "skip")]
    assert res.summary["converged"] and res.summary["iterations"] == {"forward": 2}

    after = build_module(toy, seed=0)  # the module generated from the rewritten IR
    after.load_state_dict(before.state_dict())
    for x, w in zip(xs, want):
        np.testing.assert_allclose(_forward(after, toy, x), w, rtol=0, atol=1e-6)
        # The interpreter runs the rewritten IR with the weights of the module made before the pass.
        np.testing.assert_allclose(evaluate_outputs(toy, before, x)["y"], w, rtol=0, atol=1e-6)


def test_a_declining_rule_says_why(toy):
    ctx = PassContext()
    rep = apply_rules(toy.forward, [CollapseRelu()], ctx=ctx)
    assert rep.why_not("blk.r1") == ["collapse_relu: 'a' and 'blk.r1' are in different block instances"]
    assert [(d.rule, d.at) for d in rep.declined] == [("collapse_relu", "blk.r1")]
    assert rep.why_not("a") == [] and rep.converged and not ctx.diagnostics
    assert [f.at for f in rep.fired] == ["b", "blk.r2"]


def test_the_sweep_bound_stops_a_rule_that_never_settles(toy):
    before = build_module(toy, seed=0)
    x = example_inputs(toy, {"N": 3}, seed=0)
    want = _forward(before, toy, x)
    ctx = PassContext()
    rep = apply_rules(toy.forward, [Renew()], max_iterations=3, ctx=ctx)
    assert rep.iterations == 3 and not rep.converged
    assert len(rep.fired) == 3 * 4 and (rep.added, rep.removed) == (12, 12)  # four relus, each sweep
    assert "%blk.r2~3 = relu(%blk.r1~3)" in toy.dump()
    (warn,) = ctx.diagnostics
    assert warn.severity == "warning" and "still firing after 3 sweeps (renew x4)" in warn.message
    np.testing.assert_allclose(evaluate_outputs(toy, before, x)["y"], want, rtol=0, atol=1e-6)


def test_a_chain_collapses_in_one_sweep_and_is_confirmed_by_the_next(tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text("nnspec: 1\nname: chain\ninputs: {x: {shape: [2, 4]}}\n"
                    "nodes: {a: {op: relu}, b: {op: relu}, c: {op: relu}, d: {op: relu}}\noutputs: {y: d}\n")
    p = c.load(str(path))
    rep = apply_rules(p.forward, [CollapseRelu()])
    assert [f.at for f in rep.fired] == ["b", "c", "d"] and rep.iterations == 2 and rep.converged
    assert p.forward.outputs == {"y": ("a", 0)}


def test_rule_bugs_and_bad_rulesets_are_pass_errors(toy):
    class Raises(CollapseRelu):
        name = "raises"

        def check(self, m, g):
            raise KeyError("oops")

    with pytest.raises(PassError, match="rule 'raises' failed in its pattern or check at 'b'"):
        apply_rules(toy.forward, [Raises()])
    with pytest.raises(PassError, match="two rewrite rules are named 'drop_identity'"):
        apply_rules(toy.forward, [DropIdentity(), DropIdentity()])
    with pytest.raises(PassError, match="max_iterations"):
        apply_rules(toy.forward, [DropIdentity()], max_iterations=0)


def test_passes_get_a_context_and_must_return_a_result(tmp_path):
    seen = {}

    @register_pass("probe_ctx", requires=("infer_shapes",), changes=())
    def probe(program, ctx):
        seen.update(target=ctx.target, options=ctx.options, current=ctx.current)
        ctx.note("looked", program.forward.node("fc"))
        return PassResult(summary={"ok": True})

    @register_pass("returns_dict", changes=())
    def returns_dict(program, ctx):
        return {"old": "style"}

    path = tmp_path / "toy.yaml"
    path.write_text(TOY)
    try:
        p = c.load(str(path), passes=["expand", "infer_shapes", "probe_ctx"], target="onnx",
                   options={"precision": "fp16"})
        assert seen == {"target": "onnx", "options": {"precision": "fp16"}, "current": "probe_ctx"}
        (d,) = p.context.diagnostics
        assert (d.pass_name, d.node, d.severity) == ("probe_ctx", "fc", "note") and "probe_ctx at 'fc'" in d.render()
        assert p.results["probe_ctx"].summary == {"ok": True} and not p.results["probe_ctx"].changed
        assert p.results["expand"].added == 9 and p.results["expand"].summary["nodes"] == 9
        with pytest.raises(PassError, match="pass 'returns_dict' returned a dict"):
            c.load(str(path), passes=["returns_dict"])
    finally:
        PASSES.pop("probe_ctx", None)
        PASSES.pop("returns_dict", None)


def test_core_passes_report_what_they_changed(tmp_path):
    path = tmp_path / "dead.yaml"
    path.write_text("nnspec: 1\nname: dead\ninputs: {x: {shape: [2, 4]}}\n"
                    "nodes: {a: {op: linear, out: 4}, unused: {op: relu, in: x}, b: {op: linear, out: 4, in: a, "
                    "tie: {weight: a.weight}}}\noutputs: {y: b}\n")
    p = c.load(str(path))
    assert p.results["eliminate_dead_code"].removed == 1 and p.results["eliminate_dead_code"].summary == {"removed": ["unused"]}
    assert p.results["resolve_ties"].rewritten == 1 and p.results["resolve_ties"].summary == {"ties": 1}
    assert p.results["infer_shapes"].summary["params"] == 4 * 4 + 4 + 4  # the tied weight counted once


def test_match_helpers_name_what_reads_into_and_out_of_a_match(tmp_path):
    path = tmp_path / "esc.yaml"
    path.write_text("nnspec: 1\nname: esc\ninputs: {x: {shape: [2, 4]}}\n"
                    "nodes: {a: {op: relu}, b: {op: relu}, c: {op: add, in: [a, b]}}\noutputs: {y: c, z: a}\n")
    g = c.load(str(path)).forward
    m = Chain("relu", "relu").match(g, g.node("b"))
    assert m.ids == ["a", "b"] and m.root.id == "b" and m.inputs(g) == [("x", 0)]
    assert m.escaping(g) == ["c", "output z"]
    assert Chain("relu", "relu").match(g, g.node("a")) is None  # a reads the graph input, not a relu
    assert Chain(OpPattern("add", arity=1)).match(g, g.node("c")) is None  # arity 2
    assert Chain(OpPattern(("add", "mul"), arity=2)).match(g, g.node("c")).ids == ["c"]
