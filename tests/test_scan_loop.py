"""A scan of a fixed number of `steps` (no `over` inputs): the loop greedy decoding is written with.

The body's carried outputs feed the next step, so a token chosen by argmax at step t is the input of
step t+1. Checked here: the generated torch loop computes exactly that (against the same cell driven
by hand), onnxruntime's `Loop` equals it at two batch sizes with integer outputs exact, the ONNX bytes
are stable, the cost counts every step, TensorRT-RTX builds the loop, and a bad `steps` is a located
error.
"""
from __future__ import annotations

import hashlib
import textwrap

import numpy as np
import pytest
import torch

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.compiler.errors import NnspecError, SpecErrors
from nnspec.targets.onnx.export import to_onnx_model
from nnspec.targets.onnx.runner import parity
from nnspec.targets.torch.build import build_module

SPEC = """\
nnspec: 1
name: greedy
params: {vocab: 11, emb: 6, hidden: 7, max_len: 5}
dims: {N: {min: 1, opt: 2, max: 8}, S: {min: 1, opt: 4, max: 16}}
inputs:
  enc: {shape: [N, S, "${hidden}"], doc: encoder outputs}
  start: {shape: [N], dtype: int64, range: [0, "${vocab}"], doc: first token}
blocks:
  step:
    in: [token, h, enc]
    nodes:
      embed: {op: embedding, in: token, num: "${vocab}", dim: "${emb}"}
      attend: {op: additive_attention, in: [h, enc], hidden: 5}
      joined: {op: concat, in: [embed, attend.context], axis: 1}
      cell: {op: gru_cell, in: [joined, h], hidden: "${hidden}"}
      project: {op: linear, in: cell, out: "${vocab}"}
      next: {op: argmax, in: project, axis: -1}
    out: {token: next, h: cell, tokens: next, logits: project}
nodes:
  h0: {op: mean, in: enc, axes: 1}
  decode: {scan: step, steps: "${max_len}", carry: {token: start, h: h0}, const: {enc: enc}}
outputs: {tokens: decode.tokens, logits: decode.logits, last: decode.token}
"""


def load(tmp_path, text: str = SPEC, **kw):
    path = tmp_path / "greedy.yaml"
    path.write_text(textwrap.dedent(text))
    return c.load(str(path), **kw)


def test_torch_loop_feeds_each_chosen_token_to_the_next_step(tmp_path):
    program = load(tmp_path)
    module = build_module(program, seed=0).eval()
    torch.manual_seed(0)
    enc, start = torch.randn(3, 4, 7), torch.tensor([1, 5, 9])
    with torch.no_grad():
        tokens, logits, last = module(enc, start)
        assert tokens.shape == (3, 5) and logits.shape == (3, 5, 11) and tokens.dtype == torch.int64
        # the same cell driven by hand, one step at a time
        token, h = start, enc.mean(1)
        for t in range(5):
            token, h, chosen, step_logits = module.decode(token, h, enc)
            torch.testing.assert_close(step_logits, logits[:, t], rtol=0, atol=0)
            assert torch.equal(chosen, tokens[:, t])
        assert torch.equal(last, tokens[:, -1]) and torch.equal(tokens, logits.argmax(-1))


def test_onnx_loop_equals_torch_at_two_batch_sizes(tmp_path):
    program = load(tmp_path)
    module = build_module(program, seed=0).eval()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    model = to_onnx_model(program, weights)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Loop") == 1 and "Scan" not in ops
    for dims in ({"N": 2, "S": 4}, {"N": 5, "S": 9}):
        diff = parity(program, dims, seed=0, module=module, model=model)
        assert diff["tokens"] == 0 and diff["last"] == 0, diff
        assert diff["logits"] <= 1e-5, diff
    again = to_onnx_model(load(tmp_path), weights)
    assert hashlib.sha256(again.SerializeToString()).digest() == hashlib.sha256(model.SerializeToString()).digest()


def test_cost_counts_every_step(tmp_path):
    five = cost_report(load(tmp_path)).flops
    ten = cost_report(load(tmp_path, overrides={"max_len": 10})).flops
    assert five > 0 and ten == 2 * five  # the mean costs no FLOPs; everything else is in the loop body


def test_gradients_flow_through_the_loop(tmp_path):
    module = build_module(load(tmp_path), seed=0).train()
    enc = torch.randn(2, 4, 7, requires_grad=True)
    _, logits, _ = module(enc, torch.tensor([0, 3]))
    logits.logsumexp(-1).sum().backward()
    assert enc.grad is not None and float(enc.grad.abs().sum()) > 0
    assert all(p.grad is not None for n, p in module.named_parameters() if not n.endswith("embed.weight"))


def test_tensorrt_rtx_builds_the_loop(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is part of the dev install (`.[dev]`)")
    from nnspec.targets.onnx.export import compile_onnx
    from nnspec.targets.tensorrt import build_engine

    program = load(tmp_path)
    files = compile_onnx(program, tmp_path / "out", seed=0, for_trt=True)
    build_engine(files["model"], tmp_path / "out", program=program, precision="fp32", opt_level=0,
                 backend="trt-rtx", progress=False)
    assert (tmp_path / "out" / "model.engine").stat().st_size > 1000


def first_error(tmp_path, text: str) -> NnspecError:
    with pytest.raises(NnspecError) as ei:
        load(tmp_path, text)
    err = ei.value
    return err.errors[0] if isinstance(err, SpecErrors) else err


LOOP_LINE = '  decode: {scan: step, steps: "${max_len}", carry: {token: start, h: h0}, const: {enc: enc}}'


@pytest.mark.parametrize("node, says", [
    (LOOP_LINE.replace('"${max_len}"', "0"), "an integer from 1 to 100,000"),
    (LOOP_LINE.replace('"${max_len}"', "1000001"), "an integer from 1 to 100,000"),
    (LOOP_LINE.replace('"${max_len}"', "2.5"), "an integer from 1 to 100,000"),
    (LOOP_LINE.replace("carry:", "reverse: true, carry:"), "a loop of fixed steps has no direction"),
    (LOOP_LINE.replace("carry: {token: start, h: h0}", "carry: {h: h0}, over: {token: enc}"),
     "not both"),
    (LOOP_LINE.replace('steps: "${max_len}", ', ""), "or a number of 'steps'"),
])
def test_bad_steps_are_located_errors(tmp_path, node, says):
    err = first_error(tmp_path, SPEC.replace(LOOP_LINE, node))
    rendered = err.render()
    assert err.loc is not None and err.loc.line == SPEC.splitlines().index(LOOP_LINE) + 1, rendered
    assert says in rendered and "^" in rendered, rendered


def test_loop_output_stacks_along_the_declared_axis(tmp_path):
    program = load(tmp_path, SPEC.replace("const: {enc: enc}}", "const: {enc: enc}, axis: 0}"))
    g = program.forward
    assert [str(d) for d in g.output_type("logits").shape] == ["5", "N", "11"]
    module = build_module(program, seed=0).eval()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    diff = parity(program, {"N": 3, "S": 2}, seed=0, module=module, model=to_onnx_model(program, weights))
    assert diff["tokens"] == 0 and diff["logits"] <= 1e-5
    assert np.isfinite(list(diff.values())).all()


def test_block_instances_inside_a_scan_body_are_submodules():
    """A step block holding block instances (and a repeat of one) generates them as submodules of
    the step cell, with the IR's parameter names, and ONNX's Scan equals the torch loop."""
    from pathlib import Path

    program = c.load(str(Path(__file__).with_name("specs") / "scan_nested_blocks.yaml"))
    module = build_module(program, seed=0).eval()
    names = {f"{n.id}.{k}" for g in [program.forward.node("run").body] for n in g.nodes() for k in n.params}
    assert set(module.state_dict()) == names == {f"run.{b}.a.{w}" for b in ("m1", "m2", "twice.0", "twice.1")
                                                for w in ("weight", "bias")}
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    diff = parity(program, {"N": 2, "T": 5}, seed=0, module=module, model=to_onnx_model(program, weights))
    assert max(diff.values()) <= 1e-5, diff


def test_an_entry_graph_calls_the_step_module_forward_scans():
    """`graphs: {one_step: {nodes: {run: {block: step}}}}` with the scan's id shares its module: the
    generated file has one step class, `one_step` calls `self.run` and binds its outputs by name (one
    of them unread there, so dead code elimination drops its nodes from that graph)."""
    from pathlib import Path

    from nnspec.targets.torch.codegen import generate_source

    program = c.load(str(Path(__file__).with_name("specs") / "shared_step_graph.yaml"))
    source, _ = generate_source(program)
    assert source.count("\nclass ") == 2  # StepCell and the model
    assert "run_h, run_y, run_best = self.run(x, h)" in source
    module = build_module(program, seed=0).eval()
    x, h = torch.randn(3, 4), torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(module.one_step(x, h), module.run(x, h)[0])
        seq = torch.randn(3, 1, 4)
        assert torch.equal(module(seq, h)[0], module.one_step(seq[:, 0], h))
