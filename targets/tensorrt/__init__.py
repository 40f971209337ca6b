"""The TensorRT target: ONNX to engines through datacenter TensorRT or TensorRT-RTX.

    backends.py   which TensorRT is usable; TensorRTUnavailable (exit 3) with a one-line fix
    lint.py       op x target support on the IR and on the ONNX model, by IR node
    precision.py  fp16/bf16 ONNX for strongly typed networks
    build.py      build_engine: profiles from the spec's dims, timing cache, manifest fields
    engine.py     loading an engine, refusing one built for another GPU/TensorRT with the rebuild command
    target.py     the `trt` and `trt-rtx` entries of the target registry (compile, runner, probes)

Importing this package loads neither onnx nor any TensorRT.
"""
from __future__ import annotations

import importlib

_LAZY = {"build_engine": "build", "TensorRTBuildError": "build", "symbol_ranges": "build", "input_profiles": "build",
         "TensorRTUnavailable": "backends", "probe": "backends", "resolve_backend": "backends",
         "unavailable_exit": "backends", "lint_program": "lint", "lint_onnx": "lint",
         "check_program": "lint", "load_engine": "engine", "EngineMismatch": "engine", "TrtRunner": "engine"}


def require_backend(target: str | None = None) -> str:
    """The backend that builds for `--target trt|trt-rtx`: exactly the one named. `trt` never falls
    back to TensorRT-RTX (datacenter TensorRT and Triton's `tensorrt_plan` cannot load its engines);
    without datacenter TensorRT and a GPU it raises TensorRTUnavailable (exit 3), one line naming
    `--target trt-rtx`. None picks whichever can build here, datacenter TensorRT first."""
    from .backends import resolve_backend

    return resolve_backend(target)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
