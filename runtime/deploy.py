"""`nnspec deploy`: an artifact folder -> a Triton Inference Server model repository.

    REPO/NAME/config.pbtxt     platform, max_batch_size, inputs/outputs, dynamic batching
    REPO/NAME/1/model.onnx     (onnxruntime_onnx)   or   REPO/NAME/1/model.plan (tensorrt_plan)

With max_batch_size > 0 Triton adds the batch dimension itself, so every input and output must lead
with the same symbolic batch dim and it is dropped from `dims`; other symbolic dims become -1.
Triton's TensorRT backend links datacenter TensorRT, which cannot load TensorRT-RTX engines, so a
trt-rtx artifact deploys its ONNX model on onnxruntime (the config says so in a comment).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from nnspec.compiler.errors import LoweringError

from .artifacts import atomic_write

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
                "bool": "TYPE_BOOL"}
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "trt": ("tensorrt_plan", "model.plan")}


def _batch_symbol(ios: list) -> str | None:
    firsts = {str(io["shape"][0]) if io["shape"] and isinstance(io["shape"][0], str) else None for io in ios}
    return firsts.pop() if len(firsts) == 1 and None not in firsts else None


def _tensor_block(kind: str, ios: list, batched: bool) -> str:
    entries = []
    for io in ios:
        dtype = io.get("dtype", "float32")
        if dtype not in TRITON_TYPES:
            raise LoweringError(f"{kind} '{io['name']}' has dtype {dtype}, which Triton cannot carry",
                                expected=", ".join(TRITON_TYPES))
        shape = io["shape"][1:] if batched else io["shape"]
        dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape)
        entries.append(f"  {{\n    name: \"{io['name']}\"\n    data_type: {TRITON_TYPES[dtype]}\n    dims: [ {dims} ]\n  }}")
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def triton_config(name: str, platform: str, inputs: list, outputs: list, max_batch_size: int = 0,
                  dynamic_batching: bool = True, note: str | None = None) -> str:
    """config.pbtxt text (deterministic). `inputs`/`outputs`: [{name, shape, dtype}] with symbolic dims as str."""
    batched = max_batch_size > 0
    if batched and _batch_symbol(inputs + outputs) is None:
        raise LoweringError(f"max_batch_size={max_batch_size} needs every input and output to start with the same "
                            "symbolic batch dim",
                            expected="shapes like [N, ...] throughout, or max_batch_size=0 (the batch dim stays in dims)")
    text = f"# {note}\n" if note else ""
    text += f"name: \"{name}\"\nplatform: \"{platform}\"\nmax_batch_size: {int(max_batch_size)}\n"
    text += _tensor_block("input", inputs, batched) + _tensor_block("output", outputs, batched)
    if dynamic_batching and batched:
        text += "dynamic_batching { }\n"
    return text


def deploy_triton(artifact_dir, repo_dir, model_name: str | None = None, max_batch_size: int | None = None,
                  dynamic_batching: bool = True, platform: str | None = None) -> Path:
    """Write a Triton model repository entry for a compiled artifact; returns the model folder.

    model_name: default the spec name. max_batch_size: default the batch dim's `max` from the spec
    (0 when inputs have no common symbolic batch dim). platform: 'onnx' or 'trt' (default: the
    engine for datacenter-TensorRT artifacts, the ONNX model otherwise).
    """
    src = Path(artifact_dir)
    mp = src / "manifest.json"
    if not mp.is_file():
        raise LoweringError(f"'{src}' has no manifest.json", expected="a folder written by `nnspec compile`")
    man = json.loads(mp.read_text())
    ins, outs = man.get("inputs") or [], man.get("outputs") or []
    if not ins or not outs:
        raise LoweringError(f"{mp} lists no inputs/outputs", expected="a manifest written by `nnspec compile`")
    trt = man.get("tensorrt") or {}
    note = None
    if platform is None:
        platform = "trt" if trt.get("backend") == "trt" and (src / trt.get("engine", "model.engine")).is_file() else "onnx"
        if trt.get("backend") == "trt-rtx":
            note = "TensorRT-RTX engines do not load in Triton's TensorRT backend; serving the ONNX model instead"
    if platform not in PLATFORMS:
        raise LoweringError(f"unknown platform '{platform}'", expected="onnx or trt")
    plat, fname = PLATFORMS[platform]
    model_src = src / (trt.get("engine", "model.engine") if platform == "trt" else "model.onnx")
    if not model_src.is_file():
        raise LoweringError(f"'{src}' has no {model_src.name}",
                            expected=f"an artifact compiled with --target {'trt' if platform == 'trt' else 'onnx'}")
    batch = _batch_symbol(ins + outs)
    if max_batch_size is None:
        rng = (ins[0].get("dims") or {}).get(batch) or {} if batch else {}
        max_batch_size = int(rng.get("max") or 64) if batch else 0
    prof_max = [pr["max"][0] for pr in (trt.get("profiles") or {}).values() if pr.get("max")]
    if platform == "trt" and batch and prof_max and max_batch_size > min(prof_max):
        # Triton would send batches the engine's optimisation profile cannot take.
        note = f"max_batch_size lowered from {max_batch_size} to the engine profile's max batch {min(prof_max)}"
        max_batch_size = min(prof_max)
    name = model_name or man.get("spec") or src.name
    dest = Path(repo_dir) / name
    atomic_write(dest / "config.pbtxt", triton_config(name, plat, ins, outs, max_batch_size, dynamic_batching, note))
    version = dest / "1"
    version.mkdir(parents=True, exist_ok=True)
    atomic_write(version / fname, model_src.read_bytes())
    data = src / "model.onnx.data"
    if platform == "onnx" and data.is_file():
        tmp = version / ".model.onnx.data.tmp"
        shutil.copyfile(data, tmp)
        tmp.replace(version / "model.onnx.data")
    return dest
