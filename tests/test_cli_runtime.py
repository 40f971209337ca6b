"""`nnspec compile/run/verify/bench/deploy` end to end through the CLI, on resnet50 and on the
recurrent char_rnn: the numbers that come back are checked against the generated torch module."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nnspec.compiler as c
from nnspec.runtime.cli import main
from nnspec.targets.inputs import example_inputs
from nnspec.targets.torch.build import build_module

CASES = [("resnet", "resnet50"), ("char_rnn", None)]


def _p(preset):
    return ["--preset", preset] if preset else []


@pytest.mark.parametrize("spec,preset", CASES)
def test_compile_run_deploy(spec, preset, tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["compile", spec, *_p(preset), "--target", "onnx", "-o", str(art)]) == 0
    manifest = json.loads((art / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "weights.safetensors"}
    program = c.load(spec, preset)
    inputs = example_inputs(program, {"N": 2}, seed=1)
    args = []
    for name, arr in inputs.items():
        np.save(tmp_path / f"{name}.npy", arr)
        args += ["--input", f"{name}={tmp_path / (name + '.npy')}"]
    capsys.readouterr()
    assert main(["run", str(art), *args, "-o", str(tmp_path / "out.npz")]) == 0
    got = np.load(tmp_path / "out.npz")
    module = build_module(program, seed=0).eval()  # the artifact's weights come from seed 0
    with torch.no_grad():
        want = module(*[torch.from_numpy(inputs[n.attrs.name]) for n in program.forward.inputs()])
    want = want if isinstance(want, tuple) else (want,)
    for name, w in zip(program.forward.outputs, want):
        assert np.max(np.abs(got[name] - w.numpy())) <= 1e-4, name
    assert main(["deploy", str(art), "--triton", str(tmp_path / "repo")]) == 0
    cfg = (tmp_path / "repo" / program.spec.name / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in cfg and "dynamic_batching" in cfg
    assert (tmp_path / "repo" / program.spec.name / "1" / "model.onnx").is_file()


@pytest.mark.parametrize("spec,preset", CASES)
def test_verify_and_bench(spec, preset, capsys):
    assert main(["verify", spec, *_p(preset), "--targets", "torch,onnx"]) == 0
    table = capsys.readouterr().out
    assert "onnx" in table
    assert main(["bench", spec, *_p(preset), "--targets", "torch,onnx", "--batch", "1", "--repeat", "3",
                 "--warmup", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_target = {r["target"]: r for r in rows}
    assert by_target["torch"]["vs_torch"] == pytest.approx(1.0)
    assert by_target["onnx"]["median_ms"] > 0 and by_target["onnx"]["p90_ms"] >= by_target["onnx"]["median_ms"]
    assert by_target["onnx"]["gflops"] > 0


def test_a_reader_that_stops_early_gets_no_error():
    """`nnspec schema | head -1`: the closed pipe ends the command quietly, exit 0 (the schema's
    280 kB are more than a pipe buffers, so the write after the close does fail)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "nnspec.runtime.cli", "schema"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline()
    p.stdout.close()  # the reader leaves with most of the text still to come
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and err == "", err
