"""The onnx target: `model.onnx` (+ one file per extra entry graph) and `weights.safetensors`, run
with onnxruntime on the CPU.

`write_onnx` is the part the TensorRT targets share (they compile the same files in the TensorRT
form first). Loading an artifact reads only listed files whose sha256 matches, external data included.
"""
from __future__ import annotations

from pathlib import Path

from ..base import CompileJob, RunOptions, Runner, module_missing
from ..files import ArtifactError, inside, read_verified, verified_path
from . import export
from .builder import OPSET


def can_compile() -> str | None:
    # Lowering builds ONNX protobufs; initial weights come from the IR with numpy (no torch needed).
    return module_missing("onnx", "pip install 'nnspec[onnx]'")


def can_run() -> str | None:
    try:
        import onnxruntime  # noqa: F401  (a broken install fails here, not at its first session)
    except ImportError:
        return "onnxruntime is not installed (pip install 'nnspec[onnx]')"
    return None


def write_onnx(program, folder: Path, job: CompileJob, for_trt: bool) -> None:
    """model.onnx (+ `<graph>.onnx`, weights) into `folder`, and the manifest's `onnx` section."""
    # Through the module attribute, so a test's replacement of export.compile_onnx is what runs.
    meta = bool(job.options.get("meta")) and job.arrays is None
    export.compile_onnx(program, folder, seed=job.seed, for_trt=for_trt, weights=job.arrays, meta=meta)
    job.manifest["onnx"] = {"file": "model.onnx", "opset": OPSET, "for_tensorrt": for_trt,
                            **({"external_data": export.WEIGHTS, "external_data_written": False} if meta else {})}


def compile_artifact(program, folder: Path, job: CompileJob) -> None:
    write_onnx(program, folder, job, for_trt=False)


def _ort_failure(e: Exception) -> bool:
    return type(e).__module__.startswith("onnxruntime")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else type(e).__name__


def _contig(x):
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, order="C")


class OrtRunner(Runner):
    """An onnxruntime CPU session (one intra-op thread unless told otherwise). `model` keeps what it
    was made from (a ModelProto, bytes or a path)."""

    target = "onnx"

    def __init__(self, model_or_path, threads: int = 1):
        from .runner import ort_session

        self.model = model_or_path
        self.session = ort_session(model_or_path, threads=threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict) -> dict:
        self._check(inputs)
        feed = {n: _contig(inputs[n]) for n in self.input_names}
        try:
            return dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        except Exception as e:
            if not _ort_failure(e):
                raise
            raise ArtifactError(f"onnxruntime failed to run the model: {_first_line(e)}") from None


def _weights(module) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def runner(program, module, opts: RunOptions) -> OrtRunner:
    model = opts.model
    if model is None:
        model = export.to_onnx_model(program, _weights(module), opts.seed or 0, graph=opts.graph)
    return OrtRunner(model, threads=opts.threads)


def node_values(program, module, runner: OrtRunner, inputs: dict, opts: RunOptions) -> dict:
    """Every IR value of the model `runner` runs, by onnxruntime (needs the ModelProto it was made from)."""
    from .runner import onnx_value_names, onnx_values

    if not hasattr(runner.model, "graph"):
        return {}
    names = onnx_value_names(program, _weights(module), False, opts.graph)
    return onnx_values(runner.model, names, inputs, opts.threads)


def load(folder: Path, manifest: dict, opts: RunOptions) -> OrtRunner:
    fname = (manifest.get("onnx") or {}).get("file") or "model.onnx"
    if fname not in manifest["files"]:
        raise ArtifactError(f"'{folder}' has no {fname}", expected="an artifact compiled with --target onnx, trt or trt-rtx")
    blob = read_verified(folder, manifest, fname)
    import onnx

    try:
        model = onnx.load_model_from_string(blob)
    except Exception as e:  # protobuf DecodeError and friends: the file is not an ONNX model
        raise ArtifactError(f"{fname} is not a readable ONNX model: {_first_line(e)}") from None
    data = sorted(external_locations(model))
    for loc in data:  # onnxruntime reads these itself: each must be a listed file whose sha256 matches
        verified_path(folder, manifest, loc)
    try:
        # Without external data the checked bytes themselves are loaded (nothing can change in between).
        return OrtRunner(blob if not data else inside(folder, fname), threads=opts.threads)
    except Exception as e:
        if not _ort_failure(e):
            raise
        raise ArtifactError(f"onnxruntime cannot load {fname}: {_first_line(e)}",
                            hint="recompile the artifact with `nnspec compile`") from None


def external_locations(model) -> set:
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
