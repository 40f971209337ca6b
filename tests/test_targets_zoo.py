"""Every bundled spec and preset through the inference targets (the presets in NARROWED at a smaller
width, and at full size under `-m slow`):

  * ONNX: the full checker and strict shape inference pass (inside `to_onnx_model`), the file is
    byte-identical when built in another process, and onnxruntime (CPU, 1 thread) equals the
    generated torch module with the same weights at the declared shape and at a second shape with
    different dynamic dims: fp32 max abs error <= 1e-4, integer outputs exact;
  * TensorRT-RTX parses the ONNX and builds an engine with a min/opt/max profile (no GPU needed;
    running engines needs one and is not part of the suite), or, for the presets in TRT_VERDICTS,
    the build is refused with the lint's verdict naming the nodes.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

import nnspec.compiler as c
from nnspec.compiler.spec.load import bundled_specs, load_spec
from nnspec.targets.onnx.export import to_onnx_model
from nnspec.targets.onnx.runner import parity
from nnspec.targets.torch.build import build_module

CASES = [(p.stem, preset) for p in bundled_specs() for preset in (list(load_spec(p).model.presets) or [None])]
IDS = [f"{s}-{p}" for s, p in CASES]
TOL = 1e-4

# Presets of 40M-135M weights spend a minute each in ONNX serialisation, onnxruntime sessions and the
# TensorRT build on 2 cores while exercising the same graph as at a smaller width: the default suite
# checks them narrowed (every op, shape rule and dim kept; only widths and vocabularies cut), and
# `-m slow` at full size (tests/test_targets_zoo.py::test_full_size_*).
NARROWED = {
    ("rnnsearch", "rnnsearch"): {"src_vocab": 1000, "tgt_vocab": 1000, "embed": 62, "hidden": 100, "align": 100,
                                 "maxout": 50},
    ("ptb_lstm", "large"): {"vocab": 1000, "hidden": 150},
    ("deepspeech2", "bilstm"): {"hidden": 128},
    ("deepspeech2", "gru"): {"hidden": 128},
    ("deepspeech2", "lookahead"): {"hidden": 128},
    ("dilated_vgg16", "paper"): {"hidden": 256},
    ("dilated_vgg16", "torchvision"): {"hidden": 256},
    # the greedy graph runs the whole decoder max_len times: 17 steps cover the opt source length
    ("transformer", "base"): {"vocab": 1000, "d_model": 64, "d_ff": 256, "max_len": 17},
    ("transformer", "big"): {"vocab": 1000, "d_model": 64, "d_ff": 256, "max_len": 17},
    ("gpt2", "small"): {"vocab": 1000, "d_model": 64, "heads": 4},
    ("gpt2", "medium"): {"vocab": 1000, "d_model": 64, "heads": 4},
    ("dpr", "base"): {"vocab": 1000, "d_model": 64, "heads": 4},
    ("rag", "large"): {"vocab": 1000, "d_model": 64, "heads": 4, "gen_vocab": 1000, "gen_d_model": 64,
                       "gen_heads": 4, "gen_d_ff": 256},
    # the 7B layouts also at 2 layers: 32 layers of the same block add nothing but minutes
    ("mistral", "mistral_7b"): {"vocab": 1000, "d_model": 256, "d_ff": 512, "layers": 2},
    ("mtp", "llama7b_n1"): {"vocab": 1000, "dim": 128, "heads": 4, "ffn": 344, "layers": 2},
    ("mtp", "llama7b_n4"): {"vocab": 1000, "dim": 128, "heads": 4, "ffn": 344, "layers": 2},
}
# 7B-class presets: 28 GB of float32 weights, more than these machines hold; their full-size checks
# are the meta-device count and the weightless ONNX export (tests/test_meta.py)
TOO_LARGE = {("mistral", "mistral_7b"), ("mtp", "llama7b_n1"), ("mtp", "llama7b_n4")}
FULL_SIZE = [pytest.param(s, p, marks=pytest.mark.slow, id=f"{s}-{p}") for s, p in CASES
             if (s, p) in NARROWED and (s, p) not in TOO_LARGE]


def load(spec, preset, full: bool = False):
    return c.load(spec, preset, None if full else NARROWED.get((spec, preset)))


def _second_shape(program) -> dict:
    """Symbol values that differ from the declared (`opt`) ones, inside the declared range."""
    vals = {}
    for sym, r in program.forward.symbols.items():
        opt = r.get("opt") or r.get("min") or 1
        hi = r.get("max") or opt + 3
        vals[sym] = opt + 1 if opt + 1 <= hi else max(r.get("min") or 1, opt - 1)
    return vals


# sha256 of each case's model.onnx bytes as built in this process (filled by the parity tests).
_HASHES: dict = {}


def _model(spec, preset, full: bool = False):
    program = load(spec, preset, full)
    module = build_module(program, seed=0).eval()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    model = to_onnx_model(program, weights)
    _HASHES[f"{spec}-{preset}"] = hashlib.sha256(model.SerializeToString()).hexdigest()
    return program, module, model


@pytest.mark.parametrize("spec,preset", CASES, ids=IDS)
def test_onnxruntime_equals_torch_at_two_shapes(spec, preset):
    _parity_at_two_shapes(spec, preset)


@pytest.mark.parametrize("spec,preset", FULL_SIZE)
def test_full_size_onnxruntime_equals_torch_at_two_shapes(spec, preset):
    _parity_at_two_shapes(spec, preset, full=True)


def _parity_at_two_shapes(spec, preset, full: bool = False):
    program, module, model = _model(spec, preset, full)
    symbols = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
    assert "N" in symbols  # the batch stays dynamic
    first = {s: (r.get("opt") or r.get("min") or 1) for s, r in program.forward.symbols.items()}
    second = _second_shape(program)
    assert first != second
    for values in (first, second):
        diff = parity(program, values, seed=0, module=module, model=model)
        for name, err in diff.items():
            assert err <= TOL, f"{spec}/{preset} output {name} at {values}: max abs error {err}"


HASH_SCRIPT = """
import hashlib, json, sys
import nnspec.compiler as c
from nnspec.targets.onnx.export import to_onnx_model
out = {}
narrowed = json.loads(sys.argv[2])
for spec, preset in json.loads(sys.argv[1]):
    model = to_onnx_model(c.load(spec, preset, narrowed.get(f"{spec}-{preset}")), seed=0)
    out[f"{spec}-{preset}"] = hashlib.sha256(model.SerializeToString()).hexdigest()
print(json.dumps(out))
"""


def test_onnx_bytes_identical_across_processes():
    for spec, preset in CASES:  # when run alone, build here what the parity tests would have
        if f"{spec}-{preset}" not in _HASHES:
            _model(spec, preset)
    narrowed = {f"{s}-{p}": o for (s, p), o in NARROWED.items()}
    r = subprocess.run([sys.executable, "-c", HASH_SCRIPT, json.dumps(CASES), json.dumps(narrowed)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == _HASHES
    assert len(set(_HASHES.values())) == len(CASES)  # and the presets really differ


# (spec, preset) -> what the lint says where TensorRT-RTX cannot build that preset (specs/README.md's
# TensorRT column quotes it); every other preset must build.
TRT_VERDICTS: dict = {}


@pytest.mark.parametrize("spec,preset", CASES, ids=IDS)
def test_tensorrt_rtx_builds_an_engine(spec, preset, tmp_path):
    _build_engine(spec, preset, tmp_path)


@pytest.mark.parametrize("spec,preset", FULL_SIZE)
def test_full_size_tensorrt_rtx_builds_an_engine(spec, preset, tmp_path):
    _build_engine(spec, preset, tmp_path, full=True)


def _build_engine(spec, preset, tmp_path, full: bool = False):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is part of the dev install (`.[dev]`)")
    from nnspec.targets.onnx.export import compile_onnx
    from nnspec.targets.tensorrt import build_engine

    program = load(spec, preset, full)
    files = compile_onnx(program, tmp_path, seed=0, for_trt=True)
    if (spec, preset) in TRT_VERDICTS:
        from nnspec.targets.tensorrt.build import TensorRTBuildError

        with pytest.raises(TensorRTBuildError) as refused:
            build_engine(files["model"], tmp_path, program=program, precision="fp32", opt_level=0, backend="trt-rtx")
        assert refused.value.report is not None and refused.value.report.nodes(), str(refused.value)
        assert TRT_VERDICTS[spec, preset] in str(refused.value)
        return
    info = build_engine(files["model"], tmp_path, program=program, precision="fp32", opt_level=0, backend="trt-rtx")
    engine = tmp_path / "model.engine"
    assert engine.stat().st_size > 1000
    assert info["sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest() if "sha256" in info else True
    prof = json.dumps(info["profiles"])
    assert "min" in prof and "opt" in prof and "max" in prof
