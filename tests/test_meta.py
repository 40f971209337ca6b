"""Large models without their weights (`--meta`): the torch module on the meta device, the ONNX
graph whose initializers are external-data references into a weights file not written, the
layout of those references equal to the file nnspec writes for real weights (so putting that file
beside the graph makes it run, equal to the inline model), and `nnspec compile` turning --meta on
by itself above the parameter threshold."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import nnspec.compiler as c
from nnspec.runtime.cli import main as nnspec
from nnspec.targets.onnx.export import (WEIGHTS, compile_onnx, meta_weights, safetensors_offsets, save_weights,
                                        to_onnx_model, torch_weights, weights_layout)
from nnspec.targets.torch.build import build_module, is_meta

torch.set_num_threads(1)


@pytest.mark.parametrize("spec, preset", [("resnet", None), ("mistral", "tiny")])
def test_layout_equals_the_file_save_weights_writes(spec, preset):
    """resnet has int64 buffers (num_batches_tracked), which safetensors orders apart from float32."""
    program = c.load(spec, preset)
    real = torch_weights(program)
    assert weights_layout(meta_weights(program)) == safetensors_offsets(save_weights(real))


def test_meta_weights_take_no_memory():
    arrays = meta_weights(c.load("mistral", "mistral_7b"))
    assert sum(a.nbytes for a in arrays.values()) == 4 * 7_241_732_096
    assert all(a.strides == (0,) * a.ndim for a in arrays.values())


def test_meta_module_has_no_storage():
    module = build_module(c.load("mistral", "tiny"), device="meta")
    assert is_meta(module)
    assert not is_meta(build_module(c.load("mistral", "tiny"), seed=0))


def test_meta_onnx_of_7b_is_complete_without_its_weights(tmp_path):
    files = compile_onnx(c.load("mistral", "mistral_7b"), tmp_path, meta=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert set(files) == {"model"}
    model = onnx.load(files["model"], load_external_data=False)
    ext = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(ext) == 2 + 32 * 9 + 1  # embedding, head, 9 per layer, final norm
    assert {e.value for t in ext for e in t.external_data if e.key == "location"} == {WEIGHTS}
    assert sum(int(np.prod(t.dims)) for t in ext) == 7_241_732_096
    assert (tmp_path / "model.onnx").stat().st_size < 2 << 20


def test_meta_onnx_runs_once_the_weights_file_is_beside_it(tmp_path):
    """ORT on the graph written without weights plus the weights file written afterwards equals ORT
    on the model with the same weights inline, and the torch module."""
    from nnspec.targets.onnx.runner import ort_session

    program = c.load("mistral", "tiny")
    path = compile_onnx(program, tmp_path, meta=True)["model"]
    arrays = torch_weights(program, seed=3)
    (tmp_path / WEIGHTS).write_bytes(save_weights(arrays))
    inline = to_onnx_model(program, arrays)
    assert not any(t.external_data for t in inline.graph.initializer)
    ids = np.random.default_rng(0).integers(0, 32, size=(2, 9)).astype(np.int64)
    got = ort_session(path).run(None, {"ids": ids})[0]
    want = ort_session(inline).run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(got, want)
    module = build_module(program, seed=3).eval()
    with torch.no_grad():
        np.testing.assert_allclose(got, module(torch.from_numpy(ids)).numpy(), atol=1e-4)


def test_compile_meta_automatic_above_the_threshold(tmp_path, capsys):
    out = tmp_path / "m"
    assert nnspec(["compile", "mistral", "-p", "mistral_7b", "-t", "onnx", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "over 1e+09 parameters: compiling with --meta" in err and "weights.safetensors" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"]["source"] == "meta" and manifest["weights"]["file"] is None
    assert manifest["onnx"]["external_data_written"] is False
    assert sorted(manifest["files"]) == ["model.onnx"]
    assert manifest["params"] == 7_241_732_096


def test_compile_meta_torch_writes_model_py_alone(tmp_path):
    out = tmp_path / "t"
    assert nnspec(["compile", "mistral", "-p", "tiny", "-t", "torch", "-o", str(out), "--meta"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.py"]
    out2 = tmp_path / "t2"
    assert nnspec(["compile", "mistral", "-p", "tiny", "-t", "torch", "-o", str(out2)]) == 0
    assert (out2 / "weights.safetensors").is_file()  # small: real initial weights, no note


def test_meta_refused_for_engines(tmp_path, capsys):
    code = nnspec(["compile", "mistral", "-p", "tiny", "-t", "trt-rtx", "-o", str(tmp_path / "e"), "--meta"])
    assert code != 0
    assert "a trt-rtx engine is built from them" in capsys.readouterr().err
