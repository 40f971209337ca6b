"""One runner interface for every target: the generated torch module, onnxruntime and TensorRT engines.

A runner is called by the spec's input names with numpy arrays or torch tensors and answers with
numpy arrays by the spec's output names:

    runner = load_runner("out/")            # target from the artifact's manifest
    outs = runner.run({"image": x})         # {"logits": np.ndarray}

`load_runner` opens an artifact folder written by `nnspec compile`; `runner_for` makes one from a
Program in memory (bench and verify use it); `generate_inputs` draws inputs for a spec (floats
N(0, 1), integer inputs uniform in their declared `range`).
"""
from __future__ import annotations

import json
from pathlib import Path

from nnspec.compiler.errors import LoweringError
from nnspec.targets.inputs import example_inputs, symbol_values  # noqa: F401  (re-exported)

TARGETS = ("torch", "onnx", "trt", "trt-rtx")


def _numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    import numpy as np
    return np.asarray(x)


# One generator for every runner and check (re-exported under the runtime's historical name).
generate_inputs = example_inputs


class Runner:
    """Base: `run({input name: array}) -> {output name: np.ndarray}`."""

    target = "?"
    input_names: list
    output_names: list

    def run(self, inputs: dict) -> dict:
        raise NotImplementedError

    def _check(self, inputs: dict) -> None:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise LoweringError(f"{self.target} runner: missing input(s) {', '.join(missing)}",
                                expected=f"inputs named {', '.join(self.input_names)}")


class TorchRunner(Runner):
    """The generated nn.Module (eval mode, no grad); `graph` picks the entry method."""

    target = "torch"

    def __init__(self, module, input_names: list, output_names: list, graph: str = "forward"):
        self.module = module.eval()
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.fn = getattr(module, graph)

    def run(self, inputs: dict) -> dict:
        import torch

        self._check(inputs)
        args = [x if isinstance(x, torch.Tensor) else torch.from_numpy(_contig(x)) for x in
                (inputs[n] for n in self.input_names)]
        with torch.inference_mode():
            res = self.fn(*args)
        res = res if isinstance(res, (tuple, list)) else (res,)
        return {name: r.detach().cpu().numpy() for name, r in zip(self.output_names, res)}


def _contig(x):
    import numpy as np
    return np.ascontiguousarray(x)


class OrtRunner(Runner):
    """An onnxruntime CPU session (one intra-op thread unless told otherwise)."""

    target = "onnx"

    def __init__(self, model_or_path, threads: int = 1):
        from nnspec.targets.onnx.runner import ort_session

        self.session = ort_session(model_or_path, threads=threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict) -> dict:
        self._check(inputs)
        feed = {n: _contig(_numpy(inputs[n])) for n in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))


class TensorRTRunner(Runner):
    """A TensorRT engine (needs a CUDA GPU); see targets/tensorrt/engine.py."""

    def __init__(self, artifact_dir, manifest: dict | None = None):
        from nnspec.targets.tensorrt.engine import TrtRunner

        self._r = TrtRunner(artifact_dir, manifest)
        self.target = (manifest or {}).get("tensorrt", {}).get("backend", "trt")
        self.input_names, self.output_names = self._r.input_names, self._r.output_names

    def run(self, inputs: dict) -> dict:
        self._check(inputs)
        return self._r.run(inputs)


def _io_names(manifest: dict, key: str) -> list:
    return [d["name"] if isinstance(d, dict) else d for d in manifest.get(key, [])]


def load_runner(artifact_dir, target: str | None = None, threads: int = 1, seed: int | None = None) -> Runner:
    """A runner for an artifact folder written by `nnspec compile` (target: from its manifest unless given).

    torch: model.py (+ weights.safetensors, else the module's initialisation from the manifest's seed);
    onnx: model.onnx; trt / trt-rtx: model.engine, after checking it was built for this machine.
    """
    d = Path(artifact_dir)
    if not d.is_dir():
        raise LoweringError(f"no artifact folder '{artifact_dir}'", expected="a folder written by `nnspec compile`")
    mp = d / "manifest.json"
    manifest = json.loads(mp.read_text()) if mp.is_file() else {}
    target = target or manifest.get("target") or _guess_target(d)
    if target not in TARGETS:
        raise LoweringError(f"unknown target '{target}'", expected=f"one of: {', '.join(TARGETS)}")
    if target == "torch":
        return _torch_from_folder(d, manifest, seed)
    if target == "onnx":
        if not (d / "model.onnx").is_file():
            raise LoweringError(f"'{d}' has no model.onnx", expected="an artifact compiled with --target onnx, trt or trt-rtx")
        return OrtRunner(d / "model.onnx", threads=threads)
    if not (d / "model.engine").is_file():
        raise LoweringError(f"'{d}' has no model.engine", expected="an artifact compiled with --target trt or trt-rtx")
    return TensorRTRunner(d, manifest)


def _guess_target(d: Path) -> str:
    for f, t in (("model.engine", "trt"), ("model.onnx", "onnx"), ("model.py", "torch")):
        if (d / f).is_file():
            return t
    raise LoweringError(f"'{d}' holds no model file", expected="model.py, model.onnx or model.engine")


def _torch_from_folder(d: Path, manifest: dict, seed: int | None) -> Runner:
    import hashlib

    import torch

    from nnspec.targets.torch.build import load_source

    src_file = d / (manifest.get("torch", {}).get("file") or "model.py")
    if not src_file.is_file():
        raise LoweringError(f"'{d}' has no {src_file.name}", expected="an artifact compiled with --target torch")
    src = src_file.read_text()
    mod = load_source(src, f"nnspec_artifact_{hashlib.sha256(src.encode()).hexdigest()[:12]}")
    cls = manifest.get("torch", {}).get("class") or _last_class(src)
    if seed is None:
        seed = (manifest.get("weights") or {}).get("seed") or 0
    torch.manual_seed(seed)  # same initialisation as build_module(program, seed)
    module = getattr(mod, cls)()
    wfile = d / "weights.safetensors"
    if wfile.is_file():
        from safetensors.torch import load_file
        module.load_state_dict(load_file(str(wfile)), strict=True)
    ins, outs = _io_names(manifest, "inputs"), _io_names(manifest, "outputs")
    if not ins:
        import inspect
        ins = [p for p in inspect.signature(module.forward).parameters]
    return TorchRunner(module, ins, outs or ["output"])


def _last_class(src: str) -> str:
    import re
    names = re.findall(r"^class (\w+)\(nn\.Module\)", src, re.M)
    if not names:
        raise LoweringError("model.py defines no nn.Module class")
    return names[-1]


# -- runners from a Program in memory ----------------------------------------------------------
def program_io(program, graph: str = "forward") -> tuple[list, list]:
    g = program.graphs[graph]
    return [n.attrs.name for n in g.inputs()], list(g.outputs)


def torch_runner(program, module=None, seed: int = 0, graph: str = "forward") -> TorchRunner:
    from nnspec.targets.torch.build import build_module

    module = module if module is not None else build_module(program, seed)
    ins, outs = program_io(program, graph)
    return TorchRunner(module, ins, outs, graph)


def module_weights(module) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def runner_for(program, target: str, module=None, seed: int = 0, threads: int = 1, work_dir=None,
               precision: str = "fp32", dims: dict | None = None) -> Runner:
    """A runner of `target` for `program`, sharing the torch module's weights (built from `seed`).

    trt / trt-rtx build an engine in `work_dir` (a temp folder by default) and need a CUDA GPU to run;
    the engine's profile covers `dims`.
    """
    from nnspec.targets.torch.build import build_module

    module = module if module is not None else build_module(program, seed)
    if target == "torch":
        return torch_runner(program, module)
    if target == "onnx":
        from nnspec.targets.onnx.export import to_onnx_model
        return OrtRunner(to_onnx_model(program, module_weights(module), seed), threads=threads)
    if target in ("trt", "trt-rtx"):
        import tempfile

        from nnspec.targets.onnx.export import to_onnx_model, write_model
        from nnspec.targets.tensorrt import build_engine, require_backend

        backend = require_backend(target)
        out = Path(work_dir or tempfile.mkdtemp(prefix="nnspec-trt-"))
        write_model(to_onnx_model(program, module_weights(module), seed, for_trt=True), out / "model.onnx")
        info = build_engine(out / "model.onnx", out, program=program, precision=precision, backend=backend, dims=dims)
        return TensorRTRunner(out, {"tensorrt": info, "target": target, "spec_file": program.spec.file})
    raise LoweringError(f"unknown target '{target}'", expected=f"one of: {', '.join(TARGETS)}")


def runnable_targets(targets=None) -> dict:
    """{target: None if it can run here, else why not}. TensorRT needs a CUDA GPU to run engines."""
    from nnspec.targets.tensorrt.backends import probe

    p = probe()
    out = {}
    for t in targets or TARGETS:
        if t in ("torch",):
            out[t] = None
        elif t == "onnx":
            try:
                import onnxruntime  # noqa: F401
                out[t] = None
            except ImportError:
                out[t] = "onnxruntime is not installed (pip install 'nnspec[onnx]')"
        elif t in ("trt", "trt-rtx"):
            if p.gpu is None:
                out[t] = "running TensorRT engines needs a CUDA GPU"
            elif not (p.usable("trt") or p.usable("trt-rtx")):
                out[t] = "; ".join(p.why.values())
            else:
                out[t] = None
        else:
            out[t] = f"unknown target (one of {', '.join(TARGETS)})"
    return out
