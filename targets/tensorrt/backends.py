"""Which TensorRT is available: datacenter TensorRT (`tensorrt`, needs a CUDA GPU to build) or
TensorRT-RTX (`tensorrt_rtx`, builds ahead-of-time engines with no GPU; running them needs one).

`probe()` answers without raising; `select(backend)` returns the module to build with or raises
`TensorRTUnavailable`, whose one-line message says what is missing and how to get it. The CLI maps
that error to exit code 3 after it has written the ONNX and run the lint.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from nnspec.compiler.errors import LoweringError

BACKENDS = ("trt", "trt-rtx")
MODULES = {"trt": "tensorrt", "trt-rtx": "tensorrt_rtx"}
INSTALL_HINT = ("install TensorRT-RTX with `pip install 'nnspec[trt-rtx]'` and use `--target trt-rtx` "
                "(builds engines without a GPU), or install datacenter TensorRT on a machine with a CUDA GPU "
                "and use `--target trt`")
EXIT_UNAVAILABLE = 3


class TensorRTUnavailable(LoweringError):
    """No usable TensorRT for the requested target; the CLI exits with code 3."""

    kind = "unavailable"
    exit_code = EXIT_UNAVAILABLE


@dataclass
class Probe:
    trt: str | None  # datacenter TensorRT version, or None
    trt_rtx: str | None  # TensorRT-RTX version, or None
    gpu: str | None  # CUDA device name, or None
    compute_capability: str | None  # "9.0", or None
    why: dict  # backend -> why it is unusable

    def usable(self, backend: str) -> bool:
        return backend not in self.why


def import_backend(name: str):
    """Import the Python module of a backend, or None. Tests replace this to simulate absence."""
    try:
        return importlib.import_module(MODULES[name])
    except Exception:  # a broken install (missing shared library) counts as absent
        return None


def cuda_device() -> tuple[str | None, str | None]:
    """(name, compute capability) of CUDA device 0, or (None, None) without one."""
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except Exception:
        pass
    return None, None


def probe() -> Probe:
    trt, rtx = import_backend("trt"), import_backend("trt-rtx")
    gpu, cc = cuda_device()
    why = {}
    if trt is None:
        why["trt"] = "the `tensorrt` Python package is not installed"
    elif gpu is None:
        why["trt"] = "datacenter TensorRT builds engines only on a CUDA GPU and none is present"
    if rtx is None:
        why["trt-rtx"] = "the `tensorrt_rtx` Python package is not installed"
    return Probe(getattr(trt, "__version__", None), getattr(rtx, "__version__", None), gpu, cc, why)


def resolve_backend(backend: str | None, p: Probe | None = None) -> str:
    """The backend to build with: the requested one, or (None / 'auto') datacenter TensorRT when it is
    usable, else TensorRT-RTX. Raises TensorRTUnavailable with one actionable line."""
    p = p or probe()
    if backend in (None, "auto"):
        for b in BACKENDS:
            if p.usable(b):
                return b
        raise TensorRTUnavailable(unavailable_message(p))
    if backend not in BACKENDS:
        raise LoweringError(f"unknown TensorRT backend '{backend}'", expected=f"one of: {', '.join(BACKENDS)}")
    if not p.usable(backend):
        if backend == "trt" and p.usable("trt-rtx"):
            # Never a silent fallback: an RTX engine does not load in datacenter TensorRT or Triton's tensorrt_plan.
            raise TensorRTUnavailable(f"--target trt: {p.why['trt']}; TensorRT-RTX is installed: use `--target trt-rtx` "
                                      "for a TensorRT-RTX engine (datacenter TensorRT cannot load those)")
        raise TensorRTUnavailable(unavailable_message(p, backend))
    return backend


def unavailable_message(p: Probe, backend: str | None = None) -> str:
    """One line: what is missing and how to get it."""
    wanted = [backend] if backend else list(BACKENDS)
    missing = "; ".join(f"{b}: {p.why[b]}" for b in wanted if b in p.why)
    return f"no usable TensorRT ({missing}): {INSTALL_HINT}"


def unavailable_exit(backend: str | None = None) -> tuple[int, str] | None:
    """(3, one-line message) when no TensorRT can build for `backend`, else None. For the CLI, after it
    has written the ONNX and printed the lint."""
    try:
        resolve_backend(backend)
    except TensorRTUnavailable as e:
        return EXIT_UNAVAILABLE, e.message
    return None


def module(backend: str):
    return import_backend(backend)
