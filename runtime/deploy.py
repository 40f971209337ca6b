"""`nnspec deploy`: an artifact folder -> a Triton Inference Server model repository.

    REPO/NAME/config.pbtxt     platform, max_batch_size, inputs/outputs, dynamic batching
    REPO/NAME/1/model.onnx     (onnxruntime_onnx)   or   REPO/NAME/1/model.plan (tensorrt_plan)

With max_batch_size > 0 Triton adds the batch dimension itself, so every input and output must lead
with the same symbolic batch dim and it is dropped from `dims`; other symbolic dims become -1.
Triton's TensorRT backend links datacenter TensorRT, which cannot load TensorRT-RTX engines, so a
trt-rtx artifact deploys its ONNX model on onnxruntime (the config says so in a comment).

The artifact may come from anyone: its manifest is checked field by field, the model name (`--name`
or the manifest's `spec`) and every tensor name must be plain identifiers (they become a folder name
and config text), strings are written through a pbtxt escaper anyway, and the model files are
copied only when their bytes match the manifest's sha256. `REPO/NAME` is built in a temp folder in
REPO and swapped in whole (`targets.files.staged_folder`): an existing non-empty one is replaced only
with `force`, and then no stale version folder survives.
"""
from __future__ import annotations

from pathlib import Path

from nnspec.compiler.errors import LoweringError, quote
from nnspec.compiler.spec.names import problem
from nnspec.targets.files import ArtifactError, copy_verified, staged_folder

from .artifacts import atomic_write, load_manifest

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
                "bool": "TYPE_BOOL"}
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "trt": ("tensorrt_plan", "model.plan")}


def _batch_symbol(ios: list) -> str | None:
    firsts = {str(io["shape"][0]) if io["shape"] and isinstance(io["shape"][0], str) else None for io in ios}
    return firsts.pop() if len(firsts) == 1 and None not in firsts else None


def pbtxt_string(text: str) -> str:
    """`text` as a protobuf text-format string literal: quotes, backslashes, control and non-ASCII
    bytes escaped, so no value can end the string or start a new field."""
    out = []
    for b in str(text).encode("utf-8"):
        c = chr(b)
        if c in "\\\"'":
            out.append("\\" + c)
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _checked_name(name, what: str) -> str:
    why = problem(name)
    if why:
        raise ArtifactError(f"{what} {quote(name)} cannot be used: {why}",
                            expected="a plain identifier (letters, digits, underscores)")
    return name


def _tensor_block(kind: str, ios: list, batched: bool) -> str:
    entries = []
    for io in ios:
        _checked_name(io.get("name"), f"{kind} name")
        dtype = io.get("dtype", "float32")
        if dtype not in TRITON_TYPES:
            raise LoweringError(f"{kind} '{io['name']}' has dtype {dtype}, which Triton cannot carry",
                                expected=", ".join(TRITON_TYPES))
        shape = io["shape"][1:] if batched else io["shape"]
        dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape)
        entries.append(f"  {{\n    name: {pbtxt_string(io['name'])}\n    data_type: {TRITON_TYPES[dtype]}\n    dims: [ {dims} ]\n  }}")
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def triton_config(name: str, platform: str, inputs: list, outputs: list, max_batch_size: int = 0,
                  dynamic_batching: bool = True, note: str | None = None) -> str:
    """config.pbtxt text (deterministic). `inputs`/`outputs`: [{name, shape, dtype}] with symbolic dims as str."""
    batched = max_batch_size > 0
    if batched and _batch_symbol(inputs + outputs) is None:
        raise LoweringError(f"max_batch_size={max_batch_size} needs every input and output to start with the same "
                            "symbolic batch dim",
                            expected="shapes like [N, ...] throughout, or max_batch_size=0 (the batch dim stays in dims)")
    _checked_name(name, "model name")
    # A comment ends at the line's end: control characters in a note could start a new field.
    text = "# " + "".join(c if c.isprintable() else " " for c in note) + "\n" if note else ""
    text += f"name: {pbtxt_string(name)}\nplatform: {pbtxt_string(platform)}\nmax_batch_size: {int(max_batch_size)}\n"
    text += _tensor_block("input", inputs, batched) + _tensor_block("output", outputs, batched)
    if dynamic_batching and batched:
        text += "dynamic_batching { }\n"
    return text


def _external_files(src: Path, man: dict, model_file: str) -> set:
    """The files an artifact's ONNX model reads its external data from (each a plain name listed in
    the manifest: copy_verified checks that)."""
    import onnx

    from nnspec.targets.files import read_verified
    from nnspec.targets.onnx.target import external_locations

    return external_locations(onnx.load_model_from_string(read_verified(src, man, model_file)))


def deploy_triton(artifact_dir, repo_dir, model_name: str | None = None, max_batch_size: int | None = None,
                  dynamic_batching: bool = True, platform: str | None = None, force: bool = False) -> Path:
    """Write a Triton model repository entry for a compiled artifact; returns the model folder.

    model_name: default the spec name. max_batch_size: default the batch dim's `max` from the spec
    (0 when inputs have no common symbolic batch dim). platform: 'onnx' or 'trt' (default: the
    engine for datacenter-TensorRT artifacts, the ONNX model otherwise). force: replace an existing,
    non-empty REPO/NAME as a whole.
    """
    src = Path(artifact_dir)
    man = load_manifest(src)
    ins, outs, files = man["inputs"], man["outputs"], man["files"]
    trt = man.get("tensorrt") or {}
    engine = trt.get("engine") or "model.engine"
    onnx_file = (man.get("onnx") or {}).get("file") or "model.onnx"
    note = None
    if platform is None:
        platform = "trt" if trt.get("backend") == "trt" and engine in files else "onnx"
        if trt.get("backend") == "trt-rtx":
            note = "TensorRT-RTX engines do not load in Triton's TensorRT backend; serving the ONNX model instead"
    if platform not in PLATFORMS:
        raise LoweringError(f"unknown platform '{platform}'", expected="onnx or trt")
    plat, fname = PLATFORMS[platform]
    model_src = engine if platform == "trt" else onnx_file
    if model_src not in files:
        raise LoweringError(f"'{src}' has no {model_src}",
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
    # The name becomes a folder in REPO and the config's name: an identifier, so never `..` or a path.
    name = _checked_name(model_name or man.get("spec") or src.resolve().name, "model name")
    config = triton_config(name, plat, ins, outs, max_batch_size, dynamic_batching, note)
    repo = Path(repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    with staged_folder(repo / name, replace="empty", force=force) as tmp:
        atomic_write(tmp / "config.pbtxt", config)
        (tmp / "1").mkdir()
        copy_verified(src, man, model_src, tmp / "1" / fname)
        if platform == "onnx":  # the weights file its initializers point into, beside it as it names it
            for name_ in sorted(_external_files(src, man, model_src)):
                copy_verified(src, man, name_, tmp / "1" / name_)
    return repo / name
