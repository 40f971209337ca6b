"""The TensorRT targets: `trt` (datacenter TensorRT) and `trt-rtx` (TensorRT-RTX), one set of
functions made per backend.

Compiling lints the IR for TensorRT's op support before anything is written, writes the ONNX model
in its TensorRT form, and builds `model.engine` with exactly the backend the target names: `trt`
never falls back to TensorRT-RTX, whose engines datacenter TensorRT and Triton's `tensorrt_plan`
cannot load. When that backend cannot build here the folder is still written with the ONNX model
and the compile ends with TensorRTUnavailable (exit 3), one line naming the alternative.
Running an engine needs a CUDA GPU.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..base import CompileJob, RunOptions, Runner
from ..files import ArtifactError
from ..onnx.target import write_onnx
from . import backends


class TensorRTRunner(Runner):
    """A TensorRT engine (needs a CUDA GPU); see engine.py."""

    def __init__(self, artifact_dir, manifest: dict | None = None):
        from .engine import TrtRunner

        self._r = TrtRunner(artifact_dir, manifest)
        self.target = (manifest or {}).get("tensorrt", {}).get("backend", "trt")
        self.input_names, self.output_names = self._r.input_names, self._r.output_names

    def run(self, inputs: dict) -> dict:
        self._check(inputs)
        return self._r.run(inputs)


@dataclass(frozen=True)
class Backend:
    """The target functions of one TensorRT backend (`trt` or `trt-rtx`)."""

    name: str

    def can_compile(self) -> str | None:
        return backends.probe().why.get(self.name)

    def can_run(self) -> str | None:
        p = backends.probe()
        if p.gpu is None:
            return "running TensorRT engines needs a CUDA GPU"
        return p.why.get(self.name)

    def check(self, program) -> None:
        from .lint import check_program
        check_program(program, target=self.name)  # raises LoweringError naming each unsupported node

    def lint(self, program):
        from .lint import lint
        return lint(program, target=self.name)

    def compile_artifact(self, program, folder: Path, job: CompileJob):
        """The ONNX model, then the engine; returns TensorRTUnavailable (raised by the caller once the
        folder is in place) when this backend cannot build here."""
        from .build import build_engine

        write_onnx(program, folder, job, for_trt=True)
        try:
            backend = backends.resolve_backend(self.name)
        except backends.TensorRTUnavailable as e:
            return e
        job.manifest["tensorrt"] = build_engine(folder / "model.onnx", folder, program=program, backend=backend,
                                                **_build_options(job.options))
        return None

    def runner(self, program, module, opts: RunOptions) -> TensorRTRunner:
        """An engine built in `opts.work_dir` (a temp folder by default) whose profile covers `opts.dims`."""
        from ..onnx.export import to_onnx_model, write_model
        from .build import build_engine

        backend = backends.resolve_backend(self.name)
        out = Path(opts.work_dir or tempfile.mkdtemp(prefix="nnspec-trt-"))
        weights = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        write_model(to_onnx_model(program, weights, opts.seed or 0, for_trt=True), out / "model.onnx")
        info = build_engine(out / "model.onnx", out, program=program, precision=opts.precision, backend=backend,
                            dims=opts.dims)
        return TensorRTRunner(out, {"tensorrt": info, "target": self.name, "spec_file": program.spec.file,
                                    "files": {info["engine"]: info["engine_sha256"]}})

    def load(self, folder: Path, manifest: dict, opts: RunOptions) -> TensorRTRunner:
        engine = (manifest.get("tensorrt") or {}).get("engine") or "model.engine"
        if engine not in manifest["files"]:
            raise ArtifactError(f"'{folder}' has no {engine}", expected="an artifact compiled with --target trt or trt-rtx",
                                hint="run its ONNX model with --target onnx" if "model.onnx" in manifest["files"] else None)
        return TensorRTRunner(folder, manifest)


def _build_options(options: dict) -> dict:
    keys = ("precision", "workspace_mb", "opt_level")
    return {k: options[k] for k in keys if k in options}


TRT = Backend("trt")
TRT_RTX = Backend("trt-rtx")
