"""nnspec's compiler: spec loading and validation, the graph IR, the op registry, the passes and the
cost model. It imports neither the targets nor the runtime, nor torch/onnx, so checking a spec is fast."""
from __future__ import annotations

from .errors import NnspecError, SpecError  # noqa: F401

__version__ = "0.1.0"


def load(spec, preset: str | None = None, overrides: dict | None = None, **kw):
    """Load a spec (a path or a bundled name) and run the default passes; returns a `Program`."""
    from .passes import compile_spec
    return compile_spec(spec, preset, overrides, **kw)
