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

from pathlib import Path

from nnspec.compiler.errors import LoweringError
from nnspec.targets.files import ArtifactError, inside, read_verified, verified_path
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
    inputs_spec: list | None = None  # the manifest's inputs, for runners loaded from an artifact folder

    def run(self, inputs: dict) -> dict:
        raise NotImplementedError

    def _check(self, inputs: dict) -> None:
        if self.inputs_spec is not None:  # names, dtypes, ranks and shapes, before any backend sees them
            from .artifacts import check_inputs
            check_inputs(self.inputs_spec, inputs)
            return
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


def _ort_failure(e: Exception) -> bool:
    return type(e).__module__.startswith("onnxruntime")


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
        try:
            return dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        except Exception as e:
            if not _ort_failure(e):
                raise
            raise ArtifactError(f"onnxruntime failed to run the model: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else type(e).__name__


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
    return [d["name"] for d in manifest[key]]


def load_runner(artifact_dir, target: str | None = None, threads: int = 1, seed: int | None = None) -> Runner:
    """A runner for an artifact folder written by `nnspec compile` (target: from its manifest unless given).

    torch: model.py (+ weights.safetensors, else the module's initialisation from the manifest's seed);
    onnx: model.onnx; trt / trt-rtx: model.engine, after checking it was built for this machine.
    The manifest is checked field by field, and only files it lists whose sha256 matches are loaded.
    """
    from .artifacts import load_manifest

    d = Path(artifact_dir)
    manifest = load_manifest(d)
    target = target or manifest["target"]
    if target not in TARGETS:
        raise LoweringError(f"unknown target '{target}'", expected=f"one of: {', '.join(TARGETS)}")
    if target == "torch":
        runner = _torch_from_folder(d, manifest, seed)
    elif target == "onnx":
        runner = _ort_from_folder(d, manifest, threads)
    else:
        engine = (manifest.get("tensorrt") or {}).get("engine") or "model.engine"
        if engine not in manifest["files"]:
            raise ArtifactError(f"'{d}' has no {engine}", expected="an artifact compiled with --target trt or trt-rtx",
                                hint="run its ONNX model with --target onnx" if "model.onnx" in manifest["files"] else None)
        runner = TensorRTRunner(d, manifest)
    _agree(runner, manifest, target)
    runner.inputs_spec = manifest["inputs"]
    return runner


def _agree(runner: Runner, manifest: dict, target: str) -> None:
    """The model's own input/output names must be the manifest's: the manifest is not covered by
    any sha256, so an edited one must not make the runner feed or read the wrong tensors."""
    ins, outs = _io_names(manifest, "inputs"), _io_names(manifest, "outputs")
    if list(runner.input_names) != ins or (target != "torch" and list(runner.output_names) != outs):
        have = f"({', '.join(runner.input_names)}) -> ({', '.join(runner.output_names)})"
        raise ArtifactError(f"the {target} model takes {have}, but manifest.json lists ({', '.join(ins)}) -> "
                            f"({', '.join(outs)})", hint="the manifest was edited; recompile the artifact")


def _ort_from_folder(d: Path, manifest: dict, threads: int) -> Runner:
    fname = (manifest.get("onnx") or {}).get("file") or "model.onnx"
    if fname not in manifest["files"]:
        raise ArtifactError(f"'{d}' has no {fname}", expected="an artifact compiled with --target onnx, trt or trt-rtx")
    blob = read_verified(d, manifest, fname)
    import onnx

    try:
        model = onnx.load_model_from_string(blob)
    except Exception as e:  # protobuf DecodeError and friends: the file is not an ONNX model
        raise ArtifactError(f"{fname} is not a readable ONNX model: {_first_line(e)}") from None
    data = sorted(_external_locations(model))
    for loc in data:  # onnxruntime reads these itself: each must be a listed file whose sha256 matches
        verified_path(d, manifest, loc)
    try:
        # Without external data the checked bytes themselves are loaded (nothing can change in between).
        return OrtRunner(blob if not data else inside(d, fname), threads=threads)
    except Exception as e:
        if not _ort_failure(e):
            raise
        raise ArtifactError(f"onnxruntime cannot load {fname}: {_first_line(e)}",
                            hint="recompile the artifact with `nnspec compile`") from None


def _external_locations(model) -> set:
    """File names every tensor with external data refers to (initializers, attributes, subgraphs)."""
    found = set()

    def tensor(t):
        if t.data_location == 1:  # TensorProto.EXTERNAL
            found.update(e.value for e in t.external_data if e.key == "location")

    def graph(g):
        for t in g.initializer:
            tensor(t)
        for sp in g.sparse_initializer:
            tensor(sp.values)
            tensor(sp.indices)
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    tensor(a.t)
                for t in a.tensors:
                    tensor(t)
                if a.HasField("g"):
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)

    graph(model.graph)
    for f in model.functions:
        for n in f.node:
            for a in n.attribute:
                if a.HasField("t"):
                    tensor(a.t)
    return found


def _torch_from_folder(d: Path, manifest: dict, seed: int | None) -> Runner:
    import hashlib

    import torch

    from nnspec.targets.torch.build import load_source

    t = manifest.get("torch")
    if t is None:
        raise ArtifactError(f"'{d}' holds no torch model (manifest.json has no 'torch' section)",
                            expected="an artifact compiled with --target torch")
    # model.py is Python code and is executed below. It runs only after its bytes matched the sha256
    # manifest.json records for it (the manifest documents what was compiled): a corrupt, partly edited
    # or swapped file is refused. That guards the artifact's integrity, not against its author: an
    # artifact is code from whoever wrote it, so run the ones you trust.
    raw = read_verified(d, manifest, t["file"])
    try:
        src = raw.decode("utf-8")
        mod = load_source(src, f"nnspec_artifact_{hashlib.sha256(raw).hexdigest()[:12]}")
    except (UnicodeDecodeError, SyntaxError) as e:
        raise ArtifactError(f"{t['file']} is not valid Python: {_first_line(e)}") from None
    cls = getattr(mod, t["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ArtifactError(f"{t['file']} defines no nn.Module class '{t['class']}' (manifest.json's torch.class)")
    if seed is None:
        seed = (manifest.get("weights") or {}).get("seed") or 0
    torch.manual_seed(seed)  # same initialisation as build_module(program, seed)
    module = cls()
    if "weights.safetensors" in manifest["files"]:
        _load_checked_weights(module, verified_path(d, manifest, "weights.safetensors"))
    import inspect

    params = list(inspect.signature(module.forward).parameters)
    return TorchRunner(module, params, _io_names(manifest, "outputs"))


def _load_checked_weights(module, path: Path) -> None:
    """Load a weights file into `module` through the compile-time checks (no pickle; every missing,
    unexpected, mis-shaped or mis-typed entry listed), against the module's own state dict."""
    import torch

    from nnspec.targets.weights import check_state, load_weights

    state = module.state_dict()
    expected = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()}
    owners, tied = {}, {}
    for k, v in state.items():  # keys sharing storage with an earlier key are tied to it (optional)
        ptr = v.untyped_storage().data_ptr()
        if ptr in owners and ptr != 0:
            tied[k] = owners[ptr]
        owners.setdefault(ptr, k)
    arrays = load_weights(path)
    check_state(expected, arrays, tied, f"weights in '{path.name}'")
    for k, owner in tied.items():
        arrays.setdefault(k, arrays[owner])
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, strict=True)


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
        return TensorRTRunner(out, {"tensorrt": info, "target": target, "spec_file": program.spec.file,
                                    "files": {info["engine"]: info["engine_sha256"]}})
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
