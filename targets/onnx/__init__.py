"""The ONNX target: direct lowering of the IR, op by op, through `builder.Builder`.

Entry points: `to_onnx_model` / `compile_onnx` (export.py), `ort_session` / `run_ort` / `parity`
(runner.py). `builder.py` is what op lowerings emit through, `walk.py` the graph walk (the two share
`common.py` and do not import each other), `lower.py` the entry models on top; `target.py` is the
onnx entry of the target registry. Importing this package loads neither onnx nor onnxruntime.
"""
from __future__ import annotations

import importlib

from .builder import OPSET  # noqa: F401

_LAZY = {"to_onnx_model": "export", "to_onnx_models": "export", "compile_onnx": "export",
         "write_model": "export", "torch_weights": "export", "load_weights": "export",
         "ort_session": "runner", "run_ort": "runner", "example_inputs": "runner",
         "torch_outputs": "runner", "parity": "runner"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
