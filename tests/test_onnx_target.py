"""The ONNX target: onnxruntime against the generated torch module (same weights, two shapes), the
checker and strict shape inference, byte-identical artifacts across processes, dim_params, scan as
an ONNX Scan, external data, weight files, ties, extra entry graphs and error reporting."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import nnspec.compiler as c
from nnspec.compiler.errors import LoweringError
from nnspec.compiler.ops import registry
from nnspec.targets.onnx import (OPSET, compile_onnx, example_inputs, ort_session, parity, run_ort,
                                 to_onnx_model, torch_outputs)
from nnspec.targets.onnx.export import torch_weights
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)
TOL = 1e-4

RESNETISH = """
nnspec: 1
name: resnetish
params: {width: 8}
dims: {N: {min: 1, opt: 2, max: 16}}
inputs: {image: {shape: [N, 3, 16, 12], dtype: float32}}
blocks:
  res:
    args: {planes: int, stride: {type: int, default: 1}}
    in: [x]
    nodes:
      c1: {op: conv2d, in: x, out: "${planes}", kernel: 3, padding: 1, stride: "${stride}"}
      r1: {op: relu}
      c2: {op: conv2d, out: "${planes}", kernel: 3, padding: 1, groups: 2}
      sc: {op: conv2d, in: x, out: "${planes}", kernel: 1, stride: "${stride}", when: "${stride != 1}"}
      sum: {op: add, in: ["${'sc' if stride != 1 else 'x'}", c2]}
      out: {op: leaky_relu, slope: 0.1}
    out: out
nodes:
  stem: {op: conv2d, in: image, out: "${width}", kernel: 3, padding: 1}
  act: {op: silu}
  layer1: {block: res, repeat: 2, args: {planes: "${width}", stride: "${2 if i == 0 else 1}"}}
  head: {op: conv2d, out: 4, kernel: 1, bias: false}
  g: {op: gelu_tanh}
outputs: {feat: g, mid: layer1}
"""

RNN = """
nnspec: 1
name: tiny_rnn
params: {hidden: 6}
dims: {N: {min: 1, opt: 2, max: 8}, T: {min: 1, opt: 5, max: 32}}
inputs:
  seq: {shape: [N, T, 4, 1], dtype: float32}
  h0: {shape: [N, 6, 1], dtype: float32}
  bias: {shape: [N, 6, 1], dtype: float32}
blocks:
  cell:     # a tanh RNN cell; kernel-1 conv1d over a length-1 axis is a linear map
    in: [x_t, h, enc]
    nodes:
      wx: {op: conv1d, in: x_t, out: "${hidden}", kernel: 1}
      uh: {op: conv1d, in: h, out: "${hidden}", kernel: 1, bias: false}
      s: {op: add, in: [wx, uh, enc]}
      hn: {op: tanh}
      y: {op: relu, in: hn}
    out: {h: hn, y: y}
nodes:
  rnn: {scan: cell, over: {x_t: seq}, carry: {h: h0}, const: {enc: bias}, axis: 1}
  back: {scan: cell, over: {x_t: seq}, carry: {h: h0}, const: {enc: bias}, axis: 1, reverse: true}
outputs: {h_last: rnn.h, ys: rnn.y, ys_rev: back.y, h_first: back.h}
"""

NESTED = """
nnspec: 1
name: nested
dims: {N: {min: 1, opt: 2, max: 8}, T: {min: 1, opt: 3, max: 16}, U: {min: 1, opt: 4, max: 16}}
inputs:
  grid: {shape: [N, T, U, 3, 1], dtype: float32}
  h0: {shape: [N, 3, 1], dtype: float32}
blocks:
  inner:
    in: [x, h, g]
    nodes:
      a: {op: conv1d, in: x, out: 3, kernel: 1}
      s: {op: add, in: [a, h, g]}
      hn: {op: tanh}
    out: {h: hn, y: hn}
  outer:
    in: [row, h]
    nodes:
      sc: {scan: inner, over: {x: row}, carry: {h: h}, const: {g: h}, axis: 1, reverse: true}
      m: {op: conv1d, in: sc.h, out: 3, kernel: 1}
    out: {h: m, ys: sc.y}
nodes:
  top: {scan: outer, over: {row: grid}, carry: {h: h0}, axis: 1}
outputs: {h: top.h, ys: top.ys}
"""

MULTI = """
nnspec: 1
name: multi
dims: {N: {min: 1, opt: 2, max: 8}, S: {min: 4, opt: 12, max: 64}}
inputs:
  image: {shape: [N, 3, S, S], dtype: float32}
  ids: {shape: [N, 5], dtype: int64, range: [-1000, 1000]}
nodes:
  stem: {op: conv2d, in: image, out: 4, kernel: 3, padding: 1}
  r: {op: relu}
  twin: {op: conv2d, in: image, out: 4, kernel: 3, padding: 1, share: stem}
  both: {op: add, in: [r, twin]}
  ids2: {op: mul, in: [ids, ids, ids]}
outputs: {feat: both, ids2: ids2}
graphs:
  probe:
    inputs: {x: {shape: [N, 3, S, S], dtype: float32}}
    nodes:
      stem: {op: conv2d, in: x, out: 4, kernel: 3, padding: 1}
      act: {op: sigmoid}
    outputs: {y: act}
"""


def load(tmp_path: Path, text: str, name: str = "spec"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return c.load(str(path))


def assert_close(diffs: dict, n_outputs: int) -> None:
    assert len(diffs) == n_outputs
    for name, d in diffs.items():
        if isinstance(d, int):
            assert d == 0, f"{name}: {d} integer elements differ"
        else:
            assert d <= TOL, f"{name}: max abs error {d}"


def dim_params(vi) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


# -- numerics ---------------------------------------------------------------------------------------
def test_conv_net_matches_torch_at_two_shapes(tmp_path):
    p = load(tmp_path, RESNETISH)
    module = build_module(p, seed=3)
    weights = {k: v.numpy() for k, v in module.state_dict().items()}
    model = to_onnx_model(p, weights)
    sess = ort_session(model)
    for vals in ({"N": 2}, {"N": 5}):
        inputs = example_inputs(p, vals, seed=1)
        got, want = run_ort(sess, inputs), torch_outputs(module, p, inputs)
        assert set(got) == {"feat", "mid"}
        for k in want:
            assert got[k].shape == want[k].shape
            assert np.abs(got[k] - want[k]).max() <= TOL, k
        assert got["feat"].shape == (vals["N"], 4, 8, 6)
        assert np.abs(want["feat"]).max() > 1e-3  # a non-trivial output, so the comparison means something


def test_int64_inputs_stay_int64_and_are_exact(tmp_path):
    p = load(tmp_path, MULTI)
    model = to_onnx_model(p)
    ids = next(i for i in model.graph.input if i.name == "ids")
    assert ids.type.tensor_type.elem_type == onnx.TensorProto.INT64
    for vals in ({"N": 2, "S": 12}, {"N": 5, "S": 7}):
        diffs = parity(p, vals, seed=2)
        assert diffs["ids2"] == 0 and isinstance(diffs["ids2"], int)
        assert_close(diffs, 2)
    out = run_ort(ort_session(model), example_inputs(p, {"N": 1, "S": 5}))
    assert out["ids2"].dtype == np.int64


# -- model structure --------------------------------------------------------------------------------
def test_checker_strict_inference_and_dim_params(tmp_path):
    p = load(tmp_path, RESNETISH)
    model = to_onnx_model(p)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    assert [o.opset_import[0].version for o in (model, inferred)] == [OPSET, OPSET]
    assert OPSET >= 18
    assert model.producer_name == "nnspec" and model.producer_version == c.__version__
    assert dim_params(model.graph.input[0]) == ["N", 3, 16, 12]
    feat = next(o for o in model.graph.output if o.name == "feat")
    assert dim_params(feat) == ["N", 4, 8, 6]
    multi = to_onnx_model(load(tmp_path, MULTI, "multi"))
    assert dim_params(multi.graph.input[0]) == ["N", 3, "S", "S"]
    assert dim_params(multi.graph.input[1]) == ["N", 5]
    y = multi.graph.output[0]
    assert dim_params(y)[:2] == ["N", 4]
    assert all(isinstance(d, str) for d in dim_params(y)[2:])  # symbolic, never the example value
    # parameters are initializers named by state-dict key; names unique; one per parameter
    names = [t.name for t in model.graph.initializer]
    assert "stem.weight" in names and "layer1.0.c1.weight" in names and "head.bias" not in names
    assert len(names) == len(set(names))
    assert {n for n in names if not n.startswith("const")} == set(build_module(p).state_dict())
    # no shape baked: no Reshape/Constant of the example size appears for a pure conv net
    assert not any(n.op_type in ("Reshape", "Constant") for n in model.graph.node)


def test_ties_share_one_initializer_and_extra_entry_graph(tmp_path):
    p = load(tmp_path, MULTI)
    model = to_onnx_model(p)
    assert sorted(t.name for t in model.graph.initializer) == ["stem.bias", "stem.weight"]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and all(n.input[1] == "stem.weight" for n in convs)
    probe = to_onnx_model(p, graph="probe")
    assert [i.name for i in probe.graph.input] == ["x"] and [o.name for o in probe.graph.output] == ["y"]
    assert_close(parity(p, {"N": 3, "S": 9}, graph="probe"), 1)
    out = compile_onnx(p, tmp_path / "art")
    assert sorted(out) == ["model", "probe", "weights"]
    assert Path(out["probe"]).name == "probe.onnx" and Path(out["model"]).name == "model.onnx"
    assert all(isinstance(v, str) and Path(v).is_file() for v in out.values())


def test_for_trt_uses_to_trt(tmp_path, monkeypatch):
    p = load(tmp_path, MULTI)
    relu = registry()["relu"]
    calls = []

    def to_trt(a, ins, b, node):
        calls.append((node.id, b.for_trt))
        return [b.op("Max", [ins[0], b.scalar(0.0, "float32")])]

    monkeypatch.setattr(relu, "to_trt", to_trt)  # instance attribute: only relu changes
    model = to_onnx_model(p, for_trt=True)
    assert calls == [("r", True)]
    assert "Max" in [n.op_type for n in model.graph.node] and "Relu" not in [n.op_type for n in model.graph.node]
    assert_close(parity(p, {"N": 2, "S": 6}, for_trt=True), 2)
    plain = to_onnx_model(p)
    assert "Relu" in [n.op_type for n in plain.graph.node] and len(calls) == 2  # parity built one more


# -- scan ---------------------------------------------------------------------------------------------
def test_scan_lowers_to_onnx_scan_and_matches_torch(tmp_path):
    p = load(tmp_path, RNN)
    model = to_onnx_model(p)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Scan") == 2 and "Conv" not in ops  # not unrolled: the cell lives in the body
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    body = next(a.g for a in scan.attribute if a.name == "body")
    assert [n.op_type for n in body.node].count("Conv") == 2
    assert [i.name for i in body.input][:1] == ["rnn.h"] and len(body.input) == 2  # enc: outer scope
    rev = next(n for n in model.graph.node if n.op_type == "Scan" and n.name.startswith("back/"))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in rev.attribute}
    assert attrs["scan_input_directions"] == [1] and attrs["scan_output_directions"] == [1]
    assert attrs["scan_input_axes"] == [1] and attrs["scan_output_axes"] == [1]
    module = build_module(p, seed=0)
    sess = ort_session(model)
    for vals in ({"N": 2, "T": 5}, {"N": 3, "T": 9}):
        inputs = example_inputs(p, vals, seed=4)
        got, want = run_ort(sess, inputs), torch_outputs(module, p, inputs)
        for k in want:
            assert got[k].shape == want[k].shape, k
            assert np.abs(got[k] - want[k]).max() <= TOL, k
        assert got["ys"].shape == (vals["N"], vals["T"], 6, 1)
        # the reverse scan really runs backwards: its outputs differ from the forward scan's
        assert np.abs(got["ys"] - got["ys_rev"]).max() > 1e-3
        # final carried state = last step (first step when reversed); y = relu(h)
        assert np.array_equal(np.maximum(got["h_last"], 0), got["ys"][:, -1])
        assert np.array_equal(np.maximum(got["h_first"], 0), got["ys_rev"][:, 0])


def test_nested_scan_reads_outer_scopes(tmp_path):
    p = load(tmp_path, NESTED)
    model = to_onnx_model(p)
    outer = next(a.g for a in model.graph.node[0].attribute if a.name == "body")
    inner = next(n for n in outer.node if n.op_type == "Scan")
    inner_body = next(a.g for a in inner.attribute if a.name == "body")
    assert "top.h" in [i.name for i in outer.input] and len(inner_body.input) == 2  # h, x; g is not passed
    assert any("top.h" in n.input for n in inner_body.node)  # the const g read from the outer body's scope
    for vals in ({"N": 2, "T": 3, "U": 4}, {"N": 1, "T": 5, "U": 2}):
        diffs = parity(p, vals, seed=5)
        assert_close(diffs, 2)


# -- artifacts ------------------------------------------------------------------------------------
_CHILD = """
import json, sys
import nnspec.compiler as c
from nnspec.targets.onnx import compile_onnx
print(json.dumps(compile_onnx(c.load(sys.argv[1]), sys.argv[2], seed=7)))
"""


def test_artifacts_byte_identical_across_processes(tmp_path):
    spec = tmp_path / "rnn.yaml"
    spec.write_text(textwrap.dedent(RNN))
    outs = []
    for i in range(2):
        env = dict(os.environ, PYTHONHASHSEED=str(i + 11), OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, "-c", _CHILD, str(spec), str(tmp_path / f"out{i}")],
                           capture_output=True, text=True, env=env, timeout=180)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    a, b = (Path(o["model"]).read_bytes() for o in outs)
    assert a == b and len(a) > 500
    assert Path(outs[0]["weights"]).read_bytes() == Path(outs[1]["weights"]).read_bytes()
    assert str(tmp_path).encode() not in a  # no absolute paths
    assert not any(p.name.startswith(".") for p in (tmp_path / "out0").iterdir())  # no temp files left
    # the written weights reproduce the artifact
    again = compile_onnx(c.load(str(spec)), tmp_path / "again", weights_path=outs[0]["weights"])
    assert Path(again["model"]).read_bytes() == a
    assert Path(again["weights"]).read_bytes() == Path(outs[0]["weights"]).read_bytes()  # the one copy of the weights


def test_weights_file_is_used(tmp_path):
    p = load(tmp_path, RESNETISH)
    first = compile_onnx(p, tmp_path / "a", seed=1)
    other = build_module(p, seed=2)
    from safetensors.torch import save_file
    wpath = tmp_path / "w2.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(wpath))
    second = compile_onnx(p, tmp_path / "b", weights_path=wpath)
    inputs = example_inputs(p, {"N": 1})
    got = run_ort(ort_session(second["model"]), inputs)
    want = torch_outputs(other, p, inputs)
    assert np.abs(got["feat"] - want["feat"]).max() <= TOL
    first_out = run_ort(ort_session(first["model"]), inputs)
    assert np.abs(first_out["feat"] - want["feat"]).max() > 1e-3  # seed 1 differs from seed 2


def test_weights_are_stored_once_as_external_data(tmp_path):
    """The artifact's model points into weights.safetensors for every weight: stored, hashed and
    written once, and the model file stays small."""
    p = load(tmp_path, RESNETISH)
    out = compile_onnx(p, tmp_path / "a")
    proto = onnx.load(out["model"], load_external_data=False)
    weights = torch_weights(p, 0)
    external = {t.name: {e.key: e.value for e in t.external_data} for t in proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL}
    assert set(external) == set(weights)  # every weight, and nothing else
    assert {e["location"] for e in external.values()} == {"weights.safetensors"}
    assert sum(len(t.raw_data) for t in proto.graph.initializer) < 1024  # only small constants stay embedded
    blob = Path(out["weights"]).read_bytes()
    for name, e in external.items():  # the offsets are the tensors' bytes in the safetensors file
        off, n = int(e["offset"]), int(e["length"])
        assert blob[off:off + n] == np.asarray(weights[name], order="C").tobytes(), name
    inputs = example_inputs(p, {"N": 3})
    a = run_ort(ort_session(out["model"]), inputs)
    b = run_ort(ort_session(to_onnx_model(p, weights)), inputs)  # weights embedded, in memory
    assert all(np.array_equal(a[k], b[k]) for k in a)
    again = compile_onnx(p, tmp_path / "b")
    assert Path(again["model"]).read_bytes() == Path(out["model"]).read_bytes()


# -- errors ---------------------------------------------------------------------------------------------
def test_wrong_lowering_is_blamed_on_its_node(tmp_path, monkeypatch):
    p = load(tmp_path, RESNETISH)
    relu = registry()["relu"]
    # a lowering whose result has the wrong shape (swaps the spatial axes of a non-square tensor... and
    # changes the channel count): strict inference against the IR's declared types must catch it
    monkeypatch.setattr(relu, "to_onnx", lambda a, ins, b, node: [b.op("Concat", [ins[0], ins[0]], axis=1)])
    with pytest.raises(LoweringError) as e:
        to_onnx_model(p)
    assert "layer1.0.r1" in e.value.message
    assert e.value.loc is not None and e.value.loc.line > 0


def test_missing_lowering_is_a_lowering_error(tmp_path, monkeypatch):
    p = load(tmp_path, RESNETISH)
    act = registry()["silu"]

    def missing(a, ins, b, node):
        raise NotImplementedError("op silu has no ONNX lowering")

    monkeypatch.setattr(act, "to_onnx", missing)
    with pytest.raises(LoweringError) as e:
        to_onnx_model(p)
    assert "act" in e.value.message and "silu" in e.value.message
    monkeypatch.setattr(act, "to_onnx", lambda a, ins, b, node: [ins[0], ins[0]])
    with pytest.raises(LoweringError, match="2 ONNX values"):
        to_onnx_model(p)


def test_missing_weight_is_a_lowering_error(tmp_path):
    p = load(tmp_path, MULTI)
    w = torch_weights(p)
    del w["stem.bias"]
    with pytest.raises(LoweringError, match="stem.bias"):
        to_onnx_model(p, w)
    w = torch_weights(p)
    w["stem.weight"] = w["stem.weight"][:2]
    with pytest.raises(LoweringError, match=r"shape \[4, 3, 3, 3\]"):
        to_onnx_model(p, w)


def test_bad_weights_file_is_a_lowering_error(tmp_path):
    p = load(tmp_path, MULTI)
    with pytest.raises(LoweringError, match="does not exist"):
        compile_onnx(p, tmp_path / "o", weights_path=tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(LoweringError, match="cannot read"):
        compile_onnx(p, tmp_path / "o", weights_path=bad)
    # torch tensors are accepted as weights too
    module = build_module(p, seed=9)
    assert_close(parity(p, {"N": 1, "S": 5}, module=module,
                        model=to_onnx_model(p, dict(module.state_dict()))), 2)
