"""The TensorRT target: engine builds with TensorRT-RTX (AOT, no GPU), the support lint, the exit-3 path
when no TensorRT is usable, and engines refused on machines they were not built for."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import nnspec.compiler as c
from nnspec.targets.tensorrt import backends

SPECS = Path(__file__).parent / "specs_rt"
rtx = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip install 'nnspec[trt-rtx]')")


def _program(name):
    return c.load(str(SPECS / f"{name}.yaml"))


def _onnx(program, tmp_path, for_trt=True):
    from nnspec.targets.onnx.export import compile_onnx
    return compile_onnx(program, tmp_path, for_trt=for_trt)["model"]


def test_conv_engine_profile_and_manifest(tmp_path):
    from nnspec.runtime.artifacts import sha256_file
    from nnspec.targets.tensorrt import build_engine

    p = _program("mini_conv")
    info = build_engine(_onnx(p, tmp_path), tmp_path, program=p, backend="trt-rtx")
    engine = tmp_path / "model.engine"
    assert engine.stat().st_size > 10_000
    assert info["engine_sha256"] == sha256_file(engine)
    assert info["backend"] == "trt-rtx" and info["version"] == rtx.__version__
    assert info["gpu"] == "none (AOT, TensorRT-RTX)" and info["compute_capability"] is None
    assert info["precision"] == "fp32" and info["spec_sha256"] == p.spec.sha256()
    # dims: {N: {min: 1, opt: 2, max: 16}} -> one profile over the batch dim only
    assert info["profiles"] == {"image": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [16, 3, 16, 16]}}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file
    json.dumps(info)  # manifest fields are JSON


@pytest.mark.parametrize("spec", ["lstm_head", "scan_rnn"])
def test_recurrent_engines_build(tmp_path, spec):
    from nnspec.targets.tensorrt import build_engine

    p = _program(spec)
    info = build_engine(_onnx(p, tmp_path), tmp_path, program=p, backend="trt-rtx")
    assert info["profiles"]["x"] == {"min": [1, 1, 4], "opt": [2, 5, 4], "max": [8, 16, 4]}
    assert (tmp_path / "model.engine").stat().st_size > 0


def test_fp16_lowering_keeps_float32_io_and_values(tmp_path):
    import onnx

    from nnspec.runtime.runners import OrtRunner, generate_inputs
    from nnspec.targets.tensorrt import build_engine
    from nnspec.targets.tensorrt.precision import lower_precision

    p = _program("mini_conv")
    path = _onnx(p, tmp_path)
    model = onnx.load(path)
    low = lower_precision(model, "fp16")
    assert {i.data_type for i in low.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert [o.type.tensor_type.elem_type for o in low.graph.output] == [onnx.TensorProto.FLOAT]
    x = generate_inputs(p, {"N": 2}, seed=1)
    want = OrtRunner(model).run(x)["feat"]
    got = OrtRunner(low).run(x)["feat"]
    assert got.dtype == np.float32 and np.max(np.abs(got - want)) < 2e-2 * (1 + np.max(np.abs(want)))
    info = build_engine(path, tmp_path, program=p, precision="bf16", backend="trt-rtx")
    assert info["precision"] == "bf16"


def test_scatter_add_plain_form_is_flagged_trt_form_builds(tmp_path):
    from nnspec.targets.onnx.export import to_onnx_model
    from nnspec.targets.tensorrt import TensorRTBuildError, build_engine
    from nnspec.targets.tensorrt.lint import lint

    p = _program("scatter_sum")
    plain = lint(p, to_onnx_model(p, for_trt=False), form="onnx")
    assert plain.nodes("error") == ["agg"] and "reduction='add'" in plain.errors[0].why
    assert "scatter_sum.yaml:" in str(plain.errors[0].loc)
    assert lint(p, to_onnx_model(p, for_trt=True)).ok
    # The plain ONNX handed to the builder is refused before TensorRT sees it, naming the node.
    with pytest.raises(TensorRTBuildError) as e:
        build_engine(_onnx(p, tmp_path / "plain", for_trt=False), tmp_path / "plain", program=p, backend="trt-rtx")
    assert e.value.report.nodes("error") == ["agg"]
    # Without the lint, TensorRT-RTX itself rejects it; the failure still names the node.
    with pytest.raises(TensorRTBuildError) as e:
        build_engine(tmp_path / "plain" / "model.onnx", tmp_path / "plain", program=p, backend="trt-rtx",
                     run_lint=False)
    assert "agg" in e.value.report.nodes("error") and "parser" in {f.source for f in e.value.report.findings}
    build_engine(_onnx(p, tmp_path / "trt"), tmp_path / "trt", program=p, backend="trt-rtx")


def test_lint_generic_checks():
    import onnx
    from onnx import TensorProto, helper

    from nnspec.compiler.ops.base import Support
    from nnspec.targets.tensorrt.lint import check_program, lint_onnx, lint_program

    f64 = lint_program(_program("f64_add"))
    assert f64.nodes("error") == ["x", "twice"] and "float64" in f64.errors[0].why
    with pytest.raises(c.NnspecError, match="twice"):
        check_program(_program("f64_add"))
    # An op's own verdict is reported at its node.
    from nnspec.compiler.ops import registry
    relu = type(registry()["relu"])
    p = _program("mini_conv")
    orig = relu.trt_support
    relu.trt_support = lambda self, a, ins: Support(False, "pretend-unsupported", ["use gelu"])
    try:
        rep = lint_program(p)
    finally:
        relu.trt_support = orig
    assert rep.nodes("error") == ["layer1.0.r1", "layer1.1.r1"] and rep.errors[0].alternatives == ["use gelu"]
    assert lint_program(p).ok
    # ONNX patterns: a dynamic tensor reshaped to a constant shape; a loop whose carry grows.
    shape = onnx.numpy_helper.from_array(np.array([2, 6], dtype=np.int64), "s")
    g = helper.make_graph([helper.make_node("Reshape", ["y", "s"], ["z"], name="flat/Reshape")], "g",
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 6])], [shape])
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c2"]),
                              helper.make_node("Concat", ["acc", "v"], ["acc2"], axis=0)], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("acc", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("acc2", TensorProto.FLOAT, None)])
    g.node.append(helper.make_node("Loop", ["", "", "z"], ["w"], name="grow/Loop", body=body))
    found = {(f.node, f.op) for f in lint_onnx(helper.make_model(g))}
    assert found == {("flat/Reshape", "Reshape"), ("grow/Loop", "Loop")}


def test_no_tensorrt_gives_exit_3_after_writing_onnx(tmp_path, monkeypatch):
    from nnspec.runtime.compile import compile_artifacts
    from nnspec.targets.tensorrt import TensorRTUnavailable, require_backend

    monkeypatch.setattr(backends, "import_backend", lambda name: None)
    code, msg = backends.unavailable_exit("trt")
    assert code == 3 and "\n" not in msg
    assert "pip install 'nnspec[trt-rtx]'" in msg and "--target trt-rtx" in msg and "GPU" in msg
    with pytest.raises(TensorRTUnavailable) as e:
        require_backend("trt-rtx")
    assert e.value.exit_code == 3
    from nnspec.runtime.compile import program_for
    p = program_for(str(SPECS / "mini_conv.yaml"), "trt")  # the trt pipeline's program (batch norms folded)
    with pytest.raises(TensorRTUnavailable):
        compile_artifacts(p, "trt", str(tmp_path))
    assert (tmp_path / "model.onnx").is_file() and not (tmp_path / "model.engine").exists()


def test_datacenter_trt_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(backends, "import_backend", lambda name: rtx if name == "trt-rtx" else type("M", (), {"__version__": "10"}))
    monkeypatch.setattr(backends, "cuda_device", lambda: (None, None))
    p = backends.probe()
    assert not p.usable("trt") and p.usable("trt-rtx")
    with pytest.raises(backends.TensorRTUnavailable, match="--target trt-rtx"):
        backends.resolve_backend("trt", p)
    assert backends.resolve_backend(None, p) == "trt-rtx"


def test_engine_from_elsewhere_names_the_rebuild_command(tmp_path, monkeypatch):
    from nnspec.targets.tensorrt.engine import EngineMismatch, check_compatible

    man = {"spec_file": "mini_conv.yaml", "target": "trt-rtx", "preset": None, "overrides": {"width": 16},
           "tensorrt": {"backend": "trt-rtx", "version": "0.9.0", "gpu": "none (AOT, TensorRT-RTX)", "precision": "fp16"}}
    with pytest.raises(EngineMismatch) as e:
        check_compatible(man, tmp_path)
    text = e.value.render()
    assert "0.9.0" in text and rtx.__version__ in text
    assert f"rebuild with: nnspec compile mini_conv.yaml --target trt-rtx --set width=16 --precision fp16 -o {tmp_path}" in text
    man["tensorrt"]["version"] = rtx.__version__
    monkeypatch.setattr(backends, "cuda_device", lambda: (None, None))
    with pytest.raises(EngineMismatch, match="needs a CUDA GPU"):
        check_compatible(man, tmp_path)


def test_cli_target_trt_without_tensorrt_exits_3_with_one_line(tmp_path, monkeypatch, capsys):
    from nnspec.runtime.cli import main

    monkeypatch.setattr(backends, "import_backend", lambda name: None)
    code = main(["compile", str(SPECS / "mini_conv.yaml"), "--target", "trt", "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 3
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "nnspec[trt-rtx]" in err
    assert (tmp_path / "model.onnx").is_file()


@pytest.mark.parametrize("datacenter", ["absent", "no GPU"])
def test_cli_target_trt_never_falls_back_to_tensorrt_rtx(tmp_path, monkeypatch, capsys, datacenter):
    """TensorRT-RTX is installed and builds here, but `--target trt` asks for datacenter TensorRT: its
    engines are what datacenter TensorRT and Triton's tensorrt_plan load, an RTX engine is not. The
    ONNX model is written and linted, no engine is, and one line names `--target trt-rtx`."""
    from nnspec.runtime.cli import main

    fake = type("M", (), {"__version__": "10.0"})
    monkeypatch.setattr(backends, "import_backend",
                        lambda name: rtx if name == "trt-rtx" else (None if datacenter == "absent" else fake))
    monkeypatch.setattr(backends, "cuda_device", lambda: (None, None))
    out = tmp_path / "trt"
    code = main(["compile", str(SPECS / "mini_conv.yaml"), "--target", "trt", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 3 and len(err.splitlines()) == 1 and "`--target trt-rtx`" in err and "Traceback" not in err
    assert (out / "model.onnx").is_file() and not (out / "model.engine").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["target"] == "trt" and "tensorrt" not in man and man["onnx"]["for_tensorrt"]
    # --target trt-rtx keeps building TensorRT-RTX engines.
    assert main(["compile", str(SPECS / "mini_conv.yaml"), "--target", "trt-rtx", "-o", str(tmp_path / "rtx")]) == 0
    man = json.loads((tmp_path / "rtx" / "manifest.json").read_text())
    assert man["tensorrt"]["backend"] == "trt-rtx" and (tmp_path / "rtx" / "model.engine").is_file()


def test_runner_for_trt_does_not_build_with_tensorrt_rtx(monkeypatch):
    from nnspec.runtime.runners import runner_for
    from nnspec.targets.tensorrt import require_backend

    monkeypatch.setattr(backends, "import_backend", lambda name: rtx if name == "trt-rtx" else None)
    with pytest.raises(backends.TensorRTUnavailable, match="--target trt-rtx"):
        require_backend("trt")
    assert require_backend("trt-rtx") == "trt-rtx" and require_backend(None) == "trt-rtx"
    with pytest.raises(backends.TensorRTUnavailable, match="--target trt:"):
        runner_for(_program("mini_conv"), "trt")
