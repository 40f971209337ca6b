"""The inference runtime: artifact files, generated inputs, runners (torch vs onnxruntime), bench,
verify (and its first-diverging-node search) and the Triton repository layout."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import nnspec.compiler as c

SPECS = Path(__file__).parent / "specs_rt"
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def conv():
    return c.load(str(SPECS / "mini_conv.yaml"))


def test_atomic_write_manifest_and_digests(tmp_path):
    from nnspec.runtime.artifacts import atomic_write, file_digests, read_manifest, sha256_file, write_manifest

    atomic_write(tmp_path / "a.bin", b"abc")
    atomic_write(tmp_path / "a.bin", b"abcd")  # replaces, leaves no temp file
    assert (tmp_path / "a.bin").read_bytes() == b"abcd" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    assert sha256_file(tmp_path / "a.bin") == hashlib.sha256(b"abcd").hexdigest()
    write_manifest(tmp_path, {"b": 1, "a": {"z": 2, "y": [1, 2]}})
    first = (tmp_path / "manifest.json").read_bytes()
    write_manifest(tmp_path, {"a": {"y": [1, 2], "z": 2}, "b": 1})
    assert (tmp_path / "manifest.json").read_bytes() == first
    assert first.decode().index('"a"') < first.decode().index('"b"')
    assert read_manifest(tmp_path)["a"]["z"] == 2
    assert list(file_digests(tmp_path)) == ["a.bin"]


def test_safetensors_with_shared_storage(tmp_path):
    from nnspec.runtime.artifacts import read_safetensors, write_safetensors

    w = torch.randn(4, 3)
    write_safetensors(tmp_path / "w.safetensors", {"embed.weight": w, "head.weight": w, "b": torch.zeros(2)})
    back = read_safetensors(tmp_path / "w.safetensors")
    assert sorted(back) == ["b", "embed.weight", "head.weight"] and torch.equal(back["head.weight"], w)


def test_generate_inputs_follow_the_spec():
    from nnspec.runtime.runners import generate_inputs

    p = c.load(str(SPECS / "scatter_sum.yaml"))
    x = generate_inputs(p, {"N": 5, "E": 300}, seed=3)
    assert x["nodes"].shape == (5, 4) and x["msg"].dtype == np.float32
    assert x["edge_dst"].dtype == np.int64 and x["edge_dst"].min() == 0 and x["edge_dst"].max() == 4  # range [0, N) at N=5
    assert abs(float(x["msg"].std()) - 1.0) < 0.1
    y = generate_inputs(p, {"N": 5, "E": 300}, seed=3)
    assert all(np.array_equal(x[k], y[k]) for k in x)
    assert generate_inputs(p)["nodes"].shape == (4, 4)  # N's opt


def test_runner_parity_torch_vs_onnxruntime(conv, tmp_path):
    from nnspec.runtime.compile import compile_artifacts, program_for
    from nnspec.runtime.runners import generate_inputs, load_runner, runner_for

    x = generate_inputs(conv, {"N": 3}, seed=0)
    t = runner_for(conv, "torch", seed=0).run(x)
    o = runner_for(conv, "onnx", seed=0).run({"image": torch.from_numpy(x["image"])})  # torch tensors accepted
    assert t["feat"].shape == (3, 8, 8, 8) and np.max(np.abs(t["feat"] - o["feat"])) < 1e-4
    # From artifact folders: the ONNX artifact and the torch source rebuilt from the manifest's seed.
    # Artifacts are compiled from the program each target's pipeline makes (onnx: batch norms folded).
    compile_artifacts(program_for(conv, "onnx"), "onnx", str(tmp_path / "onnx"), seed=0)
    compile_artifacts(program_for(conv, "torch"), "torch", str(tmp_path / "torch"), seed=0)
    a = load_runner(tmp_path / "onnx").run(x)
    b = load_runner(tmp_path / "torch").run(x)
    assert np.max(np.abs(a["feat"] - t["feat"])) < 1e-4 and np.array_equal(b["feat"], t["feat"])
    with pytest.raises(c.NnspecError, match="missing input"):
        load_runner(tmp_path / "onnx").run({})


def test_bench_rows(conv):
    from nnspec.runtime.bench import bench, render_json, render_table

    rows = bench(conv, targets=["torch", "onnx", "trt"], batches=[1, 4], warmup=1, repeat=5, progress=False)
    timed = [r for r in rows if not r.get("skipped")]
    assert [(r["target"], r["batch"]) for r in timed] == [("torch", 1), ("onnx", 1), ("torch", 4), ("onnx", 4)]
    for r in timed:
        assert 0 < r["median_ms"] <= r["p90_ms"] and r["throughput"] > 0 and r["gflops"] > 0
    torch_rows = [r for r in timed if r["target"] == "torch"]
    assert all(r["vs_torch"] == 1.0 for r in torch_rows)
    # FLOPs follow the batch: the cost model's count at N=4 is 4x that at N=1.
    assert torch_rows[1]["flops"] == 4 * torch_rows[0]["flops"]
    assert {r["target"] for r in rows if r.get("skipped")} == {"trt"}  # no GPU here
    table = render_table(rows)
    assert "vs torch" in table and "1.00x" in table
    assert json.loads(render_json(rows)) == json.loads(json.dumps(rows))


def test_verify_passes_then_names_the_corrupted_node(conv):
    import onnx

    from nnspec.runtime.runners import module_weights
    from nnspec.runtime.verify import verify
    from nnspec.targets.onnx.export import to_onnx_model
    from nnspec.targets.torch.build import build_module

    ok = verify(conv, targets=["onnx"], seed=0)
    assert ok.ok and ok.exit_code == 0 and ok.rows[0].max_abs < 1e-4 and not ok.divergences
    module = build_module(conv, 0)
    model = to_onnx_model(conv, module_weights(module))
    for init in model.graph.initializer:
        if init.name == "layer1.1.c1.weight":  # second block's conv: everything before it still agrees
            w = onnx.numpy_helper.to_array(init).copy()
            w[0, 0, 1, 1] += 0.5
            init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    bad = verify(conv, targets=["onnx"], module=module, onnx_model=model)
    assert not bad.ok and bad.exit_code == 1
    (d,) = bad.divergences
    assert d.node == "layer1.1.c1" and d.op == "conv2d" and d.last_agreeing == "layer1.0.sum"
    assert "first diverging node 'layer1.1.c1'" in bad.render()


def test_verify_scan_intermediates_match():
    from nnspec.runtime.runners import generate_inputs, module_weights
    from nnspec.runtime.verify import onnx_value_names, onnx_values, torch_values
    from nnspec.targets.onnx.export import to_onnx_model
    from nnspec.targets.torch.build import build_module

    p = c.load(str(SPECS / "scan_rnn.yaml"))
    m = build_module(p, 0)
    x = generate_inputs(p, seed=0)
    ref = torch_values(p, m, x)
    got = onnx_values(to_onnx_model(p, module_weights(m)), onnx_value_names(p, module_weights(m)), x)
    assert set(got) >= {("loop", 0), ("loop", 1)}
    assert all(np.max(np.abs(got[k] - ref[k])) < 1e-5 for k in got)


TRITON_GOLDEN = '''name: "mini_conv"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "image"
    data_type: TYPE_FP32
    dims: [ 3, 16, 16 ]
  }
]
output [
  {
    name: "feat"
    data_type: TYPE_FP32
    dims: [ 8, 8, 8 ]
  }
]
dynamic_batching { }
'''


def test_triton_repository(conv, tmp_path):
    from nnspec.runtime.compile import compile_artifacts, program_for
    from nnspec.runtime.deploy import deploy_triton, triton_config

    compile_artifacts(program_for(conv, "onnx"), "onnx", str(tmp_path / "art"), seed=0)
    dest = deploy_triton(tmp_path / "art", tmp_path / "repo")
    assert dest == tmp_path / "repo" / "mini_conv"
    assert (dest / "config.pbtxt").read_text() == TRITON_GOLDEN
    assert (dest / "1" / "model.onnx").read_bytes() == (tmp_path / "art" / "model.onnx").read_bytes()
    text = triton_config("ids", "tensorrt_plan", [{"name": "ids", "shape": ["N", "T"], "dtype": "int64"}],
                         [{"name": "logits", "shape": ["N", "T", 10], "dtype": "float32"}], max_batch_size=0,
                         dynamic_batching=True)
    assert "dims: [ -1, -1 ]" in text and "TYPE_INT64" in text and "dynamic_batching" not in text
    with pytest.raises(c.NnspecError, match="same symbolic batch dim"):
        triton_config("x", "onnxruntime_onnx", [{"name": "a", "shape": [3, "N"], "dtype": "float32"}],
                      [{"name": "b", "shape": ["N"], "dtype": "float32"}], max_batch_size=8)
