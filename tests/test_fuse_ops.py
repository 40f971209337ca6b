"""The fuse_ops pass (compiler/passes/fuse_ops.py, rules in fusion_rules.py) and its lowerings.

- goldens: the IR after fuse_ops and the generated module, per rule's spec (tests/specs_fuse/) and
  mode, under tests/golden/fuse_ops/. Rewrite them after an intended change:

      NNSPEC_UPDATE_GOLDEN=1 python -m pytest tests/test_fuse_ops.py -q

- parity: `safe` keeps train-mode outputs and gradients of every parameter; `inference` keeps eval
  outputs, for the fused torch module (loading the unfused training state dict) and the fused ONNX
  model under onnxruntime, over these specs, the bundled zoo and hypothesis-built random graphs.
  Batch norms get random statistics and affine first, so a fold that is wrong shows.
- declines name their reason; the report is in manifest.json and `nnspec inspect --fuse`; the
  eval-only module says so; weights.safetensors is the same whatever the mode; output is byte-stable.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnspec.compiler.passes import compile_spec
from nnspec.compiler.passes.fuse_ops import report_table
from nnspec.runtime.cli import main
from nnspec.runtime.compile import compile_artifacts, program_for
from nnspec.targets.inputs import example_inputs
from nnspec.targets.onnx.export import to_onnx_model
from nnspec.targets.onnx.runner import ort_session, run_ort
from nnspec.targets.registry import CORE
from nnspec.targets.torch.build import build_module
from nnspec.targets.torch.codegen import generate_source

from conftest import compile_nodes, write_spec
from test_codegen import GOLDEN, golden
from test_random_graphs import cnn
from test_zoo_goldens import ir_text

torch.set_num_threads(1)
SPECS = Path(__file__).parent / "specs_fuse"
HERE = "tests/test_fuse_ops.py"
CASES = [("fold_bn", "inference"), ("attention", "safe"), ("attention", "inference"), ("recurrent", "safe"),
         ("simplify", "safe"), ("simplify", "inference")]


def fused(spec, mode: str, overrides: dict | None = None):
    """The spec through the core passes and fuse_ops in `mode` (no target)."""
    return compile_spec(str(spec), overrides=overrides, passes=list(CORE) + ["fuse_ops"], options={"fuse": mode})


def reference(spec, overrides: dict | None = None, seed: int = 0):
    """(the unfused program, its module with random batch-norm statistics and affine)."""
    p = compile_spec(str(spec), overrides=overrides)
    return p, randomised(build_module(p, seed))


def randomised(module):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.running_mean.shape[0]
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g))
    return module


def loaded(program, module):
    """`program`'s generated module holding `module`'s (training) state dict."""
    m = build_module(program, seed=None)
    m.load_state_dict(module.state_dict(), strict=True)
    return m


def tensors(program, values=None, seed=1):
    g = program.forward
    arrays = example_inputs(program, values, seed)
    return arrays, [torch.from_numpy(arrays[n.attrs.name]) for n in g.inputs()]


def outputs(module, args) -> list:
    out = module(*args)
    return [o.detach() for o in (out if isinstance(out, tuple) else (out,))]


def max_err(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


# -- goldens --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, mode", CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_golden_ir_and_module(spec, mode):
    p = fused(SPECS / f"{spec}.yaml", mode)
    golden(GOLDEN / "fuse_ops" / f"{spec}.{mode}.ir.txt", ir_text(p), HERE)
    golden(GOLDEN / "fuse_ops" / f"{spec}.{mode}.py", generate_source(p)[0], HERE)


def test_every_golden_belongs_to_a_case():
    wanted = {f"{s}.{m}{ext}" for s, m in CASES for ext in (".ir.txt", ".py")}
    wanted |= {f"zoo/{s}.inference.ir.txt" for s in ("alexnet", "char_rnn", "resnet", "transformer")}
    present = {f.relative_to(GOLDEN / "fuse_ops").as_posix() for f in (GOLDEN / "fuse_ops").rglob("*") if f.is_file()}
    assert present <= wanted, f"stale goldens: {sorted(present - wanted)}; delete them"


def test_each_rule_fires_and_declines_with_a_reason():
    fired, declined = {}, {}
    for spec, mode in CASES:
        s = fused(SPECS / f"{spec}.yaml", mode).results["fuse_ops"].summary
        for f in s["fired"]:
            fired.setdefault(f["rule"], set()).add(f["at"])
        for d in s["declined"]:
            declined[(d["rule"], d["at"])] = d["reason"]
    assert fired == {"fold_batch_norm": {"b1", "b2", "b4", "b5"}, "attention_from_primitives": {"ctx", "ctx2"},
                     "scan_to_sequence": {"lstm", "gru"}, "drop_dropout": {"drop", "dropped"},
                     "drop_identity": {"same", "one", "kept"}, "fold_constants": {"band", "mask", "wave"},
                     "constant_positional_table": {"pe"}}
    assert declined == {
        ("fold_batch_norm", "b3"): "'c3' is also read by 'sum' (it needs the unnormalised value)",
        ("attention_from_primitives", "ctx3"): "softmax 'p3' normalises axis -2, not the keys (the last axis)",
        ("scan_to_sequence", "busy"): "the body of 'busy' is not one recurrent cell (it has rnn_cell 'cell', tanh "
                                      "'act'); only lstm_cell, gru_cell or rnn_cell alone runs as one sequence kernel",
        ("constant_positional_table", "learned"): "'learned' is a learned table already"}


def test_modes_pick_rules():
    s = fused(SPECS / "fold_bn.yaml", "safe").results["fuse_ops"].summary
    assert not s["fired"] and "fold_batch_norm" in s["not_run"]
    none = fused(SPECS / "attention.yaml", "none")
    assert not none.results["fuse_ops"].summary["fired"] and " = attention(" not in ir_text(none)
    assert set(none.results["fuse_ops"].summary["not_run"]) == {
        "fold_batch_norm", "attention_from_primitives", "scan_to_sequence", "drop_dropout", "drop_identity",
        "fold_constants", "constant_positional_table"}
    # the targets' defaults: torch safe, onnx inference
    assert program_for(SPECS / "fold_bn.yaml", "torch").results["fuse_ops"].summary["mode"] == "safe"
    assert program_for(SPECS / "fold_bn.yaml", "onnx").results["fuse_ops"].summary["mode"] == "inference"


def test_pass_docstring_numbers_every_rule():
    from nnspec.compiler.passes import fuse_ops
    from nnspec.compiler.passes.fusion_rules import rules

    doc = fuse_ops.__doc__
    for r in rules():
        assert f"  {r.number}. {r.name} (" in doc, r.name


# -- parity on the rule specs -----------------------------------------------------------------------
SAFE = [("attention", {"p": 0.0}), ("recurrent", None), ("simplify", None)]


@pytest.mark.parametrize("spec, overrides", SAFE, ids=[s for s, _ in SAFE])
def test_safe_keeps_train_outputs_and_gradients(spec, overrides):
    path = SPECS / f"{spec}.yaml"
    p, ref = reference(path, overrides)
    f = fused(path, "safe", overrides)
    assert f.results["fuse_ops"].summary["fired"]
    mod = loaded(f, ref)
    _, args = tensors(p)
    ref.train(), mod.train()
    grads = []
    for m in (ref, mod):
        torch.manual_seed(3)
        m.zero_grad()
        outs = m(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.manual_seed(4)  # (randn, not randn_like: that one draws in the memory order of each output)
        sum(((o * torch.randn(o.shape)).sum() for o in outs)).backward()
        grads.append(({k: v.grad.clone() for k, v in m.named_parameters()}, [o.detach() for o in outs]))
    (g0, o0), (g1, o1) = grads
    assert max_err(o0, o1) < 1e-5
    assert g0.keys() == g1.keys() and max(float((g0[k] - g1[k]).abs().max()) for k in g0) < 1e-4


@pytest.mark.parametrize("spec", ["fold_bn", "attention", "recurrent", "simplify"])
def test_inference_keeps_eval_outputs_torch_and_onnx(spec):
    path = SPECS / f"{spec}.yaml"
    p, ref = reference(path)
    ref.eval()
    f = program_for(path, "onnx")  # --fuse inference, the onnx default
    assert f.results["fuse_ops"].summary["mode"] == "inference"
    weights = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    session = ort_session(to_onnx_model(f, weights))
    mod = loaded(fused(path, "inference"), ref).eval()
    for vals in ({"N": 2}, {"N": 3, "T": 5}):
        arrays, args = tensors(p, vals)
        with torch.no_grad():
            want, got = outputs(ref, args), outputs(mod, args)
        assert max_err(want, got) < 1e-4
        ort = run_ort(session, arrays)
        assert max_err(want, [torch.from_numpy(ort[k]) for k in p.forward.outputs]) < 1e-4


def test_attention_runs_sdpa_and_onnx_folds_the_mask():
    src = generate_source(fused(SPECS / "attention.yaml", "safe"))[0]
    assert src.count("F.scaled_dot_product_attention(") == 2
    assert "dropout_p=0.1 if self.training else 0.0, is_causal=True" in src  # the causal mask: SDPA's own
    assert "attn_mask=band" in src and "self.band = FixedTensor(" in src  # another mask: computed once
    model = to_onnx_model(program_for(SPECS / "attention.yaml", "onnx"),
                          {k: v.detach().numpy() for k, v in reference(SPECS / "attention.yaml")[1].state_dict().items()})
    ops = [n.op_type for n in model.graph.node]
    assert "Trilu" not in ops and "Dropout" not in ops  # the band mask is an initializer, dropout gone
    assert any(i.name == "band.folded" for i in model.graph.initializer)


def test_scan_runs_the_sequence_kernel_and_onnx_lstm():
    src = generate_source(fused(SPECS / "recurrent.yaml", "safe"))[0]
    assert "lstm_h, lstm_c, lstm_y = run_cell_over_time(self.lstm.cell, x, h0, c0)" in src
    assert "gru_h, gru_y = run_cell_over_time(self.gru.cell, xt, h0, batch_first=False, reverse=True)" in src
    p, ref = reference(SPECS / "recurrent.yaml")
    model = to_onnx_model(program_for(SPECS / "recurrent.yaml", "onnx"),
                          {k: v.detach().numpy() for k, v in ref.state_dict().items()})
    ops = {n.op_type for n in model.graph.node}
    assert {"LSTM", "GRU", "Scan"} <= ops or {"LSTM", "GRU", "Loop"} <= ops  # busy stays a loop


# -- the zoo and random graphs ----------------------------------------------------------------------
ZOO = [("alexnet", None), ("char_rnn", None), ("resnet", "resnet20"), ("resnet", "resnet18"), ("transformer", None)]


@pytest.mark.parametrize("spec, preset", ZOO, ids=[f"{s}-{p or 'default'}" for s, p in ZOO])
def test_zoo_inference_parity(spec, preset):
    p = compile_spec(spec, preset)
    ref = randomised(build_module(p, 0)).eval()
    f = program_for(p, "onnx")
    weights = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    arrays, args = tensors(p, {"N": 2})
    with torch.no_grad():
        want = outputs(ref, args)
        got = outputs(loaded(program_for(p, "torch", "inference"), ref).eval(), args)
    scale = max(1.0, max(float(w.abs().max()) for w in want))
    assert max_err(want, got) < 1e-4 * scale
    ort = run_ort(ort_session(to_onnx_model(f, weights)), arrays)
    assert max_err(want, [torch.from_numpy(ort[k]) for k in p.forward.outputs]) < 1e-4 * scale
    # safe mode changes nothing in the zoo: its torch module is the one it had
    assert generate_source(program_for(p, "torch"))[0] == generate_source(p)[0]


@pytest.mark.parametrize("spec", ["alexnet", "char_rnn", "resnet", "transformer"])
def test_zoo_golden_after_fusion(spec):
    """The zoo's IR after fuse_ops in inference mode (what onnx/trt lower), beside the zoo's goldens
    before it (tests/golden/zoo/<spec>/default.ir.txt)."""
    p = program_for(spec, "onnx")
    golden(GOLDEN / "fuse_ops" / "zoo" / f"{spec}.inference.ir.txt", ir_text(p), HERE)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cnn())
def test_random_cnn_fusion_parity(tmp_path, graph):
    channels, nodes, outputs_, _ = graph
    p = compile_nodes(tmp_path, {"x": ["N", channels, "S", "S"]}, nodes, outputs_,
                      dims={"N": {"min": 1, "opt": 2, "max": 8}, "S": {"min": 8, "opt": 8, "max": 32}})
    ref = randomised(build_module(p, seed=0))
    arrays, args = tensors(p, {"N": 2, "S": 9})
    # inference: eval outputs of the eval-only module and of the fused ONNX model
    inf = program_for(p, "onnx")
    ref.eval()
    with torch.no_grad():
        want = outputs(ref, args)
        got = outputs(loaded(program_for(p, "torch", "inference"), ref).eval(), args)
    scale = max(1.0, float(want[0].abs().max()))
    assert max_err(want, got) < 1e-4 * scale
    weights = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    ort = run_ort(ort_session(to_onnx_model(inf, weights)), arrays)
    assert max_err(want, [torch.from_numpy(ort["y"])]) < 1e-4 * scale
    # safe: train-mode outputs and gradients
    mod = loaded(program_for(p, "torch"), ref)
    ref.train(), mod.train()
    res = []
    for m in (ref, mod):
        x = args[0].clone().requires_grad_(True)
        out = m(x)
        out.sum().backward()
        res.append((out.detach(), x.grad))
    assert max_err([res[0][0], res[0][1]], [res[1][0], res[1][1]]) < 1e-5


@st.composite
def attention_chain(draw):
    """(inputs, nodes, fuses): softmax(q k^T [* s] [+ mask]) [dropout] v written out, with k^T taken
    from a swap, a transpose or given as it is, the scale as `scale`, `mul` or `div` by a constant,
    the mask an input or a constant subgraph, and sometimes softmax over the wrong axis."""
    heads = draw(st.sampled_from([[], [2]]))
    t, s, d = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.sampled_from([2, 4]))
    inputs = {"q": ["N", *heads, t, d], "v": ["N", *heads, s, 3]}
    nodes = {}
    how = draw(st.sampled_from(["swap", "transpose", "given"]))
    rank = 3 + len(heads)
    if how == "given":
        inputs["kt"] = ["N", *heads, d, s]
    else:
        inputs["k"] = ["N", *heads, s, d]
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        nodes["kt"] = {"op": "swap", "in": "k", "a": -1, "b": -2} if how == "swap" else \
            {"op": "transpose", "in": "k", "perm": perm}
    nodes["scores"] = {"op": "matmul", "in": ["q", "kt"]}
    last = "scores"
    scale = draw(st.sampled_from(["none", "scale", "mul", "div"]))
    if scale == "scale":
        nodes["scaled"] = {"op": "scale", "in": last, "factor": 0.7}
        last = "scaled"
    elif scale in ("mul", "div"):
        nodes["c"] = {"op": "constant", "value": 1.5}
        nodes["scaled"] = {"op": scale, "in": [last, "c"]}
        last = "scaled"
    mask = draw(st.sampled_from(["none", "input", "constant"]))
    if mask == "input":
        inputs["mask"] = [t, s]
    elif mask == "constant":
        nodes["ones"] = {"op": "constant", "value": [[1.0] * s] * t}
        nodes["upper"] = {"op": "triu", "in": "ones", "diagonal": 1}
        nodes["mask"] = {"op": "scale", "in": "upper", "factor": -1e9}
    if mask != "none":
        nodes["masked"] = {"op": "add", "in": [last, "mask"]}
        last = "masked"
    axis = draw(st.sampled_from([-1, -1, -1, -2]))
    nodes["probs"] = {"op": "softmax", "in": last, "axis": axis}
    last = "probs"
    if draw(st.booleans()):
        nodes["drop"] = {"op": "dropout", "in": last, "p": draw(st.sampled_from([0.0, 0.3]))}
        last = "drop"
    nodes["y"] = {"op": "matmul", "in": [last, "v"]}
    return inputs, nodes, axis == -1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attention_chain())
def test_random_attention_chains(tmp_path, chain):
    """Rule 2 fires on every chain it should, and safe keeps outputs and input gradients (eval mode:
    dropout draws differ between nn.Dropout and SDPA); inference keeps outputs on torch and ONNX."""
    inputs, nodes, fuses = chain
    path = Path(tmp_path) / "spec.yaml"
    write_spec(path, inputs, nodes, {"out": "y"}, dims={"N": {"min": 1, "opt": 2, "max": 4}})
    p, ref = reference(path)
    safe = fused(path, "safe")
    fired = [f["rule"] for f in safe.results["fuse_ops"].summary["fired"]]
    assert ("attention_from_primitives" in fired) == fuses
    arrays, args = tensors(p, {"N": 2})
    mod = loaded(safe, ref).eval()
    ref.eval()
    res = []
    for m in (ref, mod):
        xs = [a.clone().requires_grad_(True) for a in args]
        out = m(*xs)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        res.append([out.detach()] + [x.grad for x in xs])
    assert max_err(res[0], res[1]) < 1e-4
    inf = program_for(path, "onnx")
    ort = run_ort(ort_session(to_onnx_model(inf, {})), arrays)
    assert max_err(res[0][:1], [torch.from_numpy(ort["out"])]) < 1e-4


# -- artifacts, report, CLI -------------------------------------------------------------------------
def test_eval_only_module_report_and_unchanged_weights(tmp_path, capsys):
    spec = str(SPECS / "fold_bn.yaml")
    for mode in ("none", "safe", "inference"):
        assert main(["compile", spec, "--target", "torch", "--fuse", mode, "-o", str(tmp_path / mode)]) == 0
    assert main(["compile", spec, "--target", "onnx", "-o", str(tmp_path / "onnx")]) == 0
    capsys.readouterr()
    weights = {d: (tmp_path / d / "weights.safetensors").read_bytes() for d in ("none", "safe", "inference", "onnx")}
    assert len(set(weights.values())) == 1  # the unfused training weights, whatever the mode
    src = (tmp_path / "inference" / "model.py").read_text()
    assert "Eval-only (nnspec --fuse inference): it computes the eval-mode function only (4 batch norms folded" in src
    assert src.count("nn.BatchNorm") == 1 and "self.b3 = nn.BatchNorm2d(6)" in src  # the one declined
    assert "nn.BatchNorm2d" in (tmp_path / "safe" / "model.py").read_text()
    man = json.loads((tmp_path / "inference" / "manifest.json").read_text())
    assert man["torch"]["eval_only"] is True and man["fusion"]["mode"] == "inference"
    rows = {r["rule"]: (r["matched"], r["fused"], r["declined"]) for r in man["fusion"]["report"]["rules"]}
    assert rows["fold_batch_norm"] == (5, 4, 1)
    assert man["fusion"]["report"]["declined"][0]["reason"].startswith("'c3' is also read by 'sum'")
    assert json.loads((tmp_path / "safe" / "manifest.json").read_text())["torch"]["eval_only"] is False
    assert json.loads((tmp_path / "onnx" / "manifest.json").read_text())["fusion"]["mode"] == "inference"
    # the eval-only artifact runs, from its folder, what the unfused module computes in eval mode
    from nnspec.runtime.runners import load_runner
    x = example_inputs(compile_spec(spec), {"N": 2}, seed=1)
    a, b, o = (load_runner(tmp_path / d).run(x) for d in ("inference", "none", "onnx"))
    assert all(float(np.max(np.abs(a[k] - b[k]))) < 1e-4 and float(np.max(np.abs(o[k] - b[k]))) < 1e-4 for k in a)


def test_trained_checkpoint_exports_with_the_same_command(tmp_path):
    from nnspec.targets.weights import save_weights

    spec = str(SPECS / "fold_bn.yaml")
    p, ref = reference(spec)
    ckpt = tmp_path / "trained.safetensors"
    ckpt.write_bytes(save_weights({k: v.detach().numpy() for k, v in ref.state_dict().items()}))
    for t in ("onnx", "torch"):
        assert main(["compile", spec, "--target", t, "--fuse", "inference", "--weights", str(ckpt),
                     "-o", str(tmp_path / t)]) == 0
        assert (tmp_path / t / "weights.safetensors").read_bytes() == ckpt.read_bytes()
    from nnspec.runtime.runners import load_runner
    x = example_inputs(p, {"N": 2}, seed=1)
    with torch.no_grad():
        want = outputs(ref.eval(), [torch.from_numpy(x[n.attrs.name]) for n in p.forward.inputs()])
    for t in ("onnx", "torch"):
        got = load_runner(tmp_path / t).run(x)
        assert max_err(want, [torch.from_numpy(got[k]) for k in p.forward.outputs]) < 1e-4


def test_inspect_prints_the_report_and_dump_after(capsys):
    spec = str(SPECS / "fold_bn.yaml")
    assert main(["inspect", spec, "--fuse", "inference"]) == 0
    out = capsys.readouterr().out
    assert report_table(fused(spec, "inference").results["fuse_ops"].summary) in out
    assert " 1  fold_batch_norm                   5      4        1" in out
    assert "fold_batch_norm at 'b3': 'c3' is also read by 'sum'" in out
    assert main(["inspect", spec, "--fuse", "inference", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)["fusion"]
    assert rep["mode"] == "inference" and len(rep["fired"]) == 4
    assert main(["inspect", spec, "--target", "onnx", "--dump-after", "fuse_ops"]) == 0
    out = capsys.readouterr().out
    assert "@fused=fold_bn(b1)" in out and "@fused=folded_into(c1)" in out
    with pytest.raises(SystemExit) as e:
        main(["inspect", spec, "--fuse", "sometimes"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_verify_compares_fused_targets_with_unfused_eager(capsys):
    """The eval-only torch module is checked too (its own row) when fusion changed it."""
    for argv in ([], ["--targets", "torch,onnx"]):
        assert main(["verify", str(SPECS / "fold_bn.yaml"), "--fuse", "inference", *argv]) == 0
        rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
        assert ["torch", "logits"] in rows and ["onnx", "logits"] in rows
    assert main(["verify", str(SPECS / "fold_bn.yaml"), "--fuse", "safe", "--targets", "torch,onnx"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert ["torch", "logits"] not in rows and ["onnx", "logits"] in rows  # safe: torch's module unchanged


def test_deterministic_output(tmp_path, capsys):
    spec = str(SPECS / "attention.yaml")
    for d in ("a", "b"):
        for t in ("torch", "onnx"):
            assert main(["compile", spec, "--target", t, "--fuse", "inference", "-o", str(tmp_path / d / t)]) == 0
    for t, f in (("torch", "model.py"), ("onnx", "model.onnx"), ("onnx", "manifest.json")):
        assert (tmp_path / "a" / t / f).read_bytes() == (tmp_path / "b" / t / f).read_bytes()
