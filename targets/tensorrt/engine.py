"""Loading and running TensorRT engines, refusing ones built elsewhere with the exact rebuild command.

An engine only runs on the TensorRT version that built it and (datacenter TensorRT) on GPUs of the
compute capability it was built for. `check_compatible` compares the artifact's manifest with this
machine before TensorRT sees the bytes, so a mismatch reads
    engine built by TensorRT-RTX 1.7.1 for none (AOT); this machine has TensorRT-RTX 1.8.0 ...
    rebuild with: nnspec compile resnet --target trt-rtx --precision fp16 -o out/
instead of a deserialisation error. Running needs a CUDA GPU and torch with CUDA (device buffers).
"""
from __future__ import annotations

import shlex
from pathlib import Path

from nnspec.compiler.errors import LoweringError

from . import backends

NAMES = {"trt": "TensorRT", "trt-rtx": "TensorRT-RTX"}


class EngineMismatch(LoweringError):
    """The engine cannot run here (other TensorRT, other GPU, no GPU); the message has the fix."""

    kind = "engine mismatch"


def rebuild_command(manifest: dict, artifact_dir) -> str:
    """The `nnspec compile` command that rebuilds this artifact on the current machine."""
    if manifest.get("command"):
        return manifest["command"]
    trt = manifest.get("tensorrt", {})
    spec = manifest.get("spec_file") or manifest.get("spec") or "SPEC.yaml"
    parts = ["nnspec", "compile", spec, "--target", trt.get("backend") or manifest.get("target") or "trt-rtx"]
    if manifest.get("preset"):
        parts += ["--preset", manifest["preset"]]
    for k, v in sorted((manifest.get("overrides") or {}).items()):
        parts += ["--set", f"{k}={v}"]
    if trt.get("precision") and trt["precision"] != "fp32":
        parts += ["--precision", trt["precision"]]
    if (manifest.get("weights") or {}).get("source") == "given":
        parts += ["--weights", "weights.safetensors"]
    parts += ["-o", str(artifact_dir)]
    return " ".join(shlex.quote(str(p)) for p in parts)


def check_compatible(manifest: dict, artifact_dir, p=None) -> str:
    """The backend to load with; raises EngineMismatch naming what differs and how to rebuild."""
    trt = manifest.get("tensorrt") or {}
    backend = trt.get("backend", "trt-rtx")
    built = f"{NAMES.get(backend, backend)} {trt.get('version', '?')} for {trt.get('gpu') or '?'}" + \
        (f" (compute capability {trt['compute_capability']})" if trt.get("compute_capability") else "")
    fix = f"rebuild with: {rebuild_command(manifest, artifact_dir)}"
    p = p or backends.probe()
    have = p.trt if backend == "trt" else p.trt_rtx
    if have is None:
        raise EngineMismatch(f"engine built by {built}, but {NAMES.get(backend, backend)} is not installed here", hint=fix)
    if trt.get("version") and have != trt["version"]:
        raise EngineMismatch(f"engine built by {built}; this machine has {NAMES.get(backend, backend)} {have} "
                             "and engines do not carry across versions", hint=fix)
    if p.gpu is None:
        raise EngineMismatch(f"engine built by {built}; running a TensorRT engine needs a CUDA GPU and none is "
                             "present here", hint="run the ONNX artifact with `--target onnx` instead, or " + fix)
    if backend == "trt" and trt.get("compute_capability") and trt["compute_capability"] != p.compute_capability:
        raise EngineMismatch(f"engine built by {built}; this GPU is {p.gpu} (compute capability "
                             f"{p.compute_capability})", hint=fix)
    return backend


def load_engine(artifact_dir, manifest: dict | None = None):
    """(TensorRT module, ICudaEngine) of `artifact_dir/model.engine`, after the compatibility check.

    The engine file is the one manifest.json names: a plain file name it lists, whose bytes match the
    sha256 it records (TensorRT deserialises whatever it is given)."""
    from ..files import ArtifactError, plain_name, read_manifest_json, read_verified

    artifact_dir = Path(artifact_dir)
    if manifest is None:
        manifest = read_manifest_json(artifact_dir)
    info = manifest.get("tensorrt")
    if not isinstance(info, dict):
        raise ArtifactError(f"'{artifact_dir}' holds no TensorRT engine (manifest.json has no 'tensorrt' section)",
                            expected="an artifact compiled with --target trt or trt-rtx")
    engine_name = plain_name(info.get("engine") or "model.engine", "tensorrt.engine")
    backend = check_compatible(manifest, artifact_dir)
    data = read_verified(artifact_dir, manifest, engine_name)
    trt = backends.module(backend)
    from .build import _Log
    log = _Log(trt)
    runtime = trt.Runtime(log)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        why = log.messages[-1] if log.messages else "TensorRT could not deserialize it"
        raise EngineMismatch(f"{engine_name} does not load here: {why}",
                             hint=f"rebuild with: {rebuild_command(manifest, artifact_dir)}")
    return trt, engine


class TrtRunner:
    """Runs an engine on CUDA device buffers (torch CUDA tensors); `run({name: array}) -> {name: ndarray}`."""

    target = "trt"

    def __init__(self, artifact_dir, manifest: dict | None = None):
        import torch

        self.trt, self.engine = load_engine(artifact_dir, manifest)
        self.context = self.engine.create_execution_context()
        self.torch = torch
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def run(self, inputs: dict) -> dict:
        torch = self.torch
        stream = torch.cuda.current_stream()
        keep = []
        for name in self.input_names:
            x = inputs[name]
            t = (x if isinstance(x, torch.Tensor) else torch.from_numpy(x)).contiguous().cuda()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = _torch_dtype(self.trt, torch, self.engine.get_tensor_dtype(name))
            outs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise LoweringError("TensorRT failed to execute the engine")
        stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outs.items()}


def _torch_dtype(trt, torch, dt):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool, trt.bfloat16: torch.bfloat16, trt.int8: torch.int8,
             trt.uint8: torch.uint8}
    return table[dt]
