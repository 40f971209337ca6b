"""The ONNX target's entry points: `to_onnx_model` (in memory) and `compile_onnx` (artifacts on disk).

Weights come from a dict keyed by torch state-dict names, a safetensors file (read without pickle and
checked against the spec by `targets/weights.py`), or (neither given) the IR's initial weights for
`seed` (`targets/initialise.py`, numpy). An artifact holds them once, in `weights.safetensors`: the
ONNX model's weight initializers are external data pointing into that file (safetensors lays tensors
out raw, little-endian and row-major, as ONNX's external data wants them), so the weights are written,
hashed and stored once, and the model file is a few hundred KB whatever the model's size (so no
model reaches protobuf's 2 GB limit). Files are written atomically and are byte-identical for the
same program and options.
"""
from __future__ import annotations

from pathlib import Path

import json

from nnspec.compiler.errors import LoweringError

from ..files import atomic_write
from ..weights import check_weights, load_weights, save_weights  # noqa: F401  (load_weights: part of this API)
from .lower import check, lower_entry

PROTOBUF_LIMIT = 2 * 1024 ** 3


def torch_weights(program, seed: int = 0) -> dict:
    """The weights every target starts from for `seed`: drawn from the IR with numpy (no torch)."""
    from nnspec.targets.initialise import initial_weights

    return initial_weights(program, seed)


def to_onnx_model(program, weights: dict | None = None, seed: int = 0, for_trt: bool = False,
                  graph: str = "forward", checked: bool = True, stored: dict | None = None):
    """The ONNX model of one entry graph (default `forward`), checked unless `checked=False`.

    Models too large for an in-memory protobuf are checked by `compile_onnx` after writing.
    """
    if graph not in program.graphs:
        raise LoweringError(f"program has no graph '{graph}'", expected=f"one of: {', '.join(program.graphs)}")
    if weights is None:
        weights = torch_weights(program, seed)
    model = lower_entry(program, graph, weights, for_trt, stored)
    if checked and _tensor_bytes(model) < PROTOBUF_LIMIT:
        check(model, program, graph)
    return model


def to_onnx_models(program, weights: dict | None = None, seed: int = 0, for_trt: bool = False) -> dict:
    """{entry graph name: ModelProto} for every entry graph, all sharing the same weights."""
    if weights is None:
        weights = torch_weights(program, seed)
    return {g: to_onnx_model(program, weights, seed, for_trt, g) for g in program.graphs}


def model_file(gname: str) -> str:
    return "model.onnx" if gname == "forward" else f"{gname}.onnx"


def compile_onnx(program, out_dir, weights_path=None, seed: int = 0, for_trt: bool = False,
                 weights: dict | None = None, meta: bool = False) -> dict:
    """Write `model.onnx` (+ `<graph>.onnx` per extra entry graph) into `out_dir`.

    Returns {role: path} of every file written, all plain strings: "model" (model.onnx), one key per
    extra entry graph (its name, e.g. "decode_step") and "weights" (weights.safetensors: the given
    weights, or the IR's initial weights for `seed`; the models' weight initializers point into it).
    A weights file is checked against the spec first (every missing, unexpected, mis-shaped or
    mis-typed entry: LoweringError); `weights` passes arrays already loaded and checked that way
    (compile_artifacts) instead of a path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if meta and weights is None and weights_path is None:
        return compile_meta(program, out, for_trt)
    if weights is None and weights_path is not None:
        weights = load_weights(weights_path)
        check_weights(program, weights, f"weights in '{weights_path}'")
    elif weights is None:
        weights = torch_weights(program, seed)
    wfile = out / WEIGHTS
    blob = save_weights(weights)
    atomic_write(wfile, blob)
    stored = {k: (WEIGHTS, off, n) for k, (off, n) in safetensors_offsets(blob).items()}
    result = {"weights": str(wfile)}
    for gname in program.graphs:
        if gname in ("model", "weights"):  # model.onnx / the result keys are taken
            raise LoweringError(f"entry graph name '{gname}' clashes with an ONNX artifact name",
                                expected="a graph name other than 'model' and 'weights'")
        model = to_onnx_model(program, weights, seed, for_trt, gname, checked=False, stored=stored)
        path = out / model_file(gname)
        write_checked(model, path, program, gname)
        result["model" if gname == "forward" else gname] = str(path)
    return result


def meta_weights(program) -> dict:
    """{state-dict key: array} of the program's parameters and buffers, each a read-only zero-stride
    view of one zero (np.broadcast_to): the right shapes, dtypes and nbytes, no memory. The ONNX
    builder only reads their shapes to write external-data references; nothing reads their values."""
    import numpy as np

    from nnspec.targets.weights import expected_state, tied_state

    tied = tied_state(program)
    return {k: np.broadcast_to(np.zeros((), dtype=_np_dtype(dtype)), shape)
            for k, (shape, dtype) in expected_state(program).items() if k not in tied}


def _np_dtype(dtype: str):
    import numpy as np

    return np.dtype("bool" if dtype == "bool" else dtype)


def weights_layout(arrays: dict) -> dict:
    """{key: (absolute offset, length)} of every tensor in the file `save_weights(arrays)` would write,
    computed from shapes and dtypes alone (nothing is serialised but a one-element stand-in per tensor).

    safetensors orders tensors by dtype, then name, and pads its JSON header to 8 bytes; the order is
    read back from the library itself on one-element stand-ins, so only the header text (compact JSON,
    as the library writes it) is rebuilt here. tests/test_meta.py holds it to the library's real file."""
    import numpy as np

    tiny = {k: np.zeros((1,), dtype=v.dtype) for k, v in arrays.items()}
    order = sorted(safetensors_offsets(save_weights(tiny)).items(), key=lambda kv: kv[1][0])
    entries, offset = [], 0
    for key, _ in order:
        arr = arrays[key]
        n = int(arr.nbytes)
        entries.append((key, {"dtype": _ST_DTYPES[np.dtype(arr.dtype).str.lstrip("<>|=")],
                              "shape": [int(d) for d in arr.shape], "data_offsets": [offset, offset + n]}))
        offset += n
    header = json.dumps({"__metadata__": {"format": "nnspec"}, **dict(entries)}, separators=(",", ":"))
    size = len(header.encode())
    size += (8 - size % 8) % 8
    return {k: (8 + size + e["data_offsets"][0], e["data_offsets"][1] - e["data_offsets"][0]) for k, e in entries}


_ST_DTYPES = {"f4": "F32", "f8": "F64", "f2": "F16", "i8": "I64", "i4": "I32", "i2": "I16", "i1": "I8",
              "u1": "U8", "b1": "BOOL", "u2": "U16", "u4": "U32", "u8": "U64"}


def compile_meta(program, out: Path, for_trt: bool = False) -> dict:
    """The model files of a program without weights (`--meta`): every weight initializer is an
    external-data reference into `weights.safetensors` laid out as `save_weights` (and so
    `nnspec import-weights`) writes the spec's state dict, but that file is not written: the graph
    is complete and passes the checker, and runs once the weights file is put beside it."""

    arrays = meta_weights(program)
    stored = {k: (WEIGHTS, off, n) for k, (off, n) in weights_layout(arrays).items()}
    end = max((off + n for _, off, n in stored.values()), default=0)
    result = {}
    for gname in program.graphs:
        if gname in ("model", "weights"):
            raise LoweringError(f"entry graph name '{gname}' clashes with an ONNX artifact name",
                                expected="a graph name other than 'model' and 'weights'")
        model = to_onnx_model(program, arrays, 0, for_trt, gname, checked=False, stored=stored)
        path = out / model_file(gname)
        blob = model.SerializeToString(deterministic=True)
        _check_meta(model, blob, program, gname, end)
        atomic_write(path, blob)
        result["model" if gname == "forward" else gname] = str(path)
    return result


def _check_meta(model, blob: bytes, program, gname: str, size: int) -> None:
    """The full checker on the graph file as written, beside a sparse stand-in for the weights file
    of the size the references need (the checker wants a regular file there; a sparse one takes no
    disk and is never read); strict shape inference on the in-memory model (no payload)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nnspec-meta-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(blob)
        with open(os.path.join(tmp, WEIGHTS), "wb") as f:
            f.truncate(size)
        check(model, program, gname, path=path, infer_in_memory=True)


def write_checked(model, path, program=None, gname: str = "forward") -> None:
    """Check `model` (full checker, strict shape inference) and write it atomically, serialising it
    once. A model with external data is written first: the checker finds the data relative to the
    model file (a failure leaves the file in the staging folder, which is then discarded)."""
    blob = model.SerializeToString(deterministic=True)
    if any(init.external_data for init in model.graph.initializer):
        atomic_write(path, blob)
        check(model, program, gname, path=str(path), infer_in_memory=True)
        return
    check(model, program, gname, data=blob)
    atomic_write(path, blob)


def write_model(model, path) -> None:
    """Write `model` to `path` atomically (deterministic serialisation)."""
    atomic_write(path, model.SerializeToString(deterministic=True))


WEIGHTS = "weights.safetensors"


def safetensors_offsets(blob: bytes) -> dict:
    """{key: (absolute offset, length)} of every tensor's bytes in a safetensors file's bytes."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    return {k: (8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
            for k, v in header.items() if k != "__metadata__"}


def _tensor_bytes(model) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


__all__ = ["meta_weights", "weights_layout", "compile_meta", "to_onnx_model", "to_onnx_models", "compile_onnx", "write_checked", "write_model", "torch_weights", "load_weights",
           "PROTOBUF_LIMIT"]
