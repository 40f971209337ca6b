"""The target registry (targets/registry.py): the one list of targets that the CLI, compile, the
runners, verify and bench read; a new target is one entry (shown with a stand-in target), each
target has its own pass pipeline, and the probes say what can compile and run here and why not."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import nnspec.compiler as c
from nnspec.compiler.errors import LoweringError
from nnspec.compiler.passes import PASSES, PassResult, register_pass
from nnspec.runtime.cli import build_parser, main
from nnspec.targets import registry
from nnspec.targets.base import Target
from nnspec.targets.tensorrt import backends
from nnspec.targets.torch import target as torch_target

SPEC = str(Path(__file__).parent / "specs_rt" / "mini_conv.yaml")


def _choices(argv_prefix: list, dest: str = "target") -> list:
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    p = sub.choices[argv_prefix[0]]
    return list(next(a for a in p._actions if a.dest == dest).choices)


def test_the_registry_is_the_list_everything_reads():
    assert registry.names() == ["torch", "onnx", "trt", "trt-rtx"]
    for cmd in ("compile", "check", "run"):
        assert _choices([cmd]) == registry.names()
    with pytest.raises(LoweringError, match="unknown target 'tpu'"):
        registry.get("tpu")
    with pytest.raises(SystemExit) as e:  # --targets is parsed against the registry: a usage error
        main(["bench", SPEC, "--targets", "torch,tpu"])
    assert e.value.code == 2


def test_each_target_has_its_pipeline_and_compile_uses_it(tmp_path):
    assert registry.get("torch").pipeline == registry.TRAINING
    assert all(registry.get(t).pipeline == registry.INFERENCE for t in ("onnx", "trt", "trt-rtx"))
    assert registry.CORE == ("expand", "infer_shapes", "resolve_ties", "eliminate_dead_code")
    assert main(["compile", SPEC, "--target", "torch", "-o", str(tmp_path / "t")]) == 0
    man = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert man["passes"] == list(registry.TRAINING)


def test_an_inference_only_pass_reaches_inference_targets_only(tmp_path, monkeypatch, capsys):
    seen = []

    @register_pass("note_target", requires=("infer_shapes",), changes=())
    def note_target(program, ctx):
        seen.append(ctx.target)
        return PassResult(summary={"target": ctx.target})

    try:
        monkeypatch.setitem(registry.TARGETS, "onnx", replace(registry.get("onnx"),
                                                              pipeline=registry.INFERENCE + ("note_target",)))
        assert main(["compile", SPEC, "--target", "onnx", "-o", str(tmp_path / "o")]) == 0
        assert main(["compile", SPEC, "--target", "torch", "-o", str(tmp_path / "t")]) == 0
        assert seen == ["onnx"]
        capsys.readouterr()
        assert main(["inspect", SPEC, "--target", "onnx", "--dump-after", "note_target"]) == 0
        assert "%stem = conv2d(%image)" in capsys.readouterr().out and seen == ["onnx", "onnx"]
        assert json.loads((tmp_path / "o" / "manifest.json").read_text())["passes"][-1] == "note_target"
        # A program compiled without the target's pipeline is refused, not silently lowered.
        from nnspec.runtime.compile import compile_artifacts
        with pytest.raises(LoweringError, match="not been through pass.* note_target of the onnx pipeline"):
            compile_artifacts(c.load(SPEC), "onnx", str(tmp_path / "o2"))
    finally:
        PASSES.pop("note_target", None)


def test_a_new_target_is_one_registry_entry(tmp_path, monkeypatch, capsys):
    """A stand-in target (a torch clone under another name) compiles, runs, verifies and benches
    through the CLI with nothing but its entry."""
    made = []

    def compile_artifact(program, folder, job):
        made.append(program.context.target)
        torch_target.compile_artifact(program, folder, job)
        (folder / "echo.txt").write_text(program.spec.name)

    echo = Target("echo", "a torch clone, for this test", registry.TRAINING, lambda: None, lambda: None,
                  compile_artifact, torch_target.runner, torch_target.load)
    monkeypatch.setitem(registry.TARGETS, "echo", echo)
    assert "echo" in _choices(["compile"])
    art = tmp_path / "art"
    assert main(["compile", SPEC, "--target", "echo", "-o", str(art)]) == 0
    assert made == ["echo"] and (art / "echo.txt").read_text() == "mini_conv"
    assert json.loads((art / "manifest.json").read_text())["target"] == "echo"

    import numpy as np
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), np.float32))
    assert main(["run", str(art), "--input", f"image={tmp_path / 'x.npy'}"]) == 0
    capsys.readouterr()
    assert main(["verify", SPEC, "--targets", "echo"]) == 0
    assert "echo     feat" in capsys.readouterr().out
    assert main(["bench", SPEC, "--targets", "torch,echo", "--batch", "1", "--repeat", "2", "--warmup", "1",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["target"] for r in rows} == {"torch", "echo"} and not any(r.get("skipped") for r in rows)


def test_probes_say_what_can_compile_and_run_here(monkeypatch):
    monkeypatch.setattr(backends, "import_backend", lambda name: None)
    av = registry.availability()
    assert av["torch"] == {"compile": None, "run": None}
    assert av["onnx"]["compile"] is None and av["onnx"]["run"] is None
    assert "`tensorrt` Python package is not installed" in av["trt"]["compile"]
    assert "`tensorrt_rtx` Python package is not installed" in av["trt-rtx"]["compile"]
    monkeypatch.setattr(backends, "cuda_device", lambda: (None, None))
    assert registry.get("trt-rtx").can_run() == "running TensorRT engines needs a CUDA GPU"
    monkeypatch.setattr(backends, "import_backend", lambda name: type("M", (), {"__version__": "1"}))
    monkeypatch.setattr(backends, "cuda_device", lambda: ("H100", "9.0"))
    assert registry.availability(["trt", "trt-rtx"]) == {"trt": {"compile": None, "run": None},
                                                          "trt-rtx": {"compile": None, "run": None}}
