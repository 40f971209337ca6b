"""The ONNX target's entry points: `to_onnx_model` (in memory) and `compile_onnx` (artifacts on disk).

Weights come from a dict keyed by torch state-dict names, a safetensors file (read without pickle and
checked against the spec by `targets/weights.py`), or (neither given)
the generated torch module built from `seed`, whose weights are then written beside the model so
every artifact can be reproduced. Files are written atomically (temp file + os.replace) and are
byte-identical for the same program and options. Models whose tensors exceed `external_threshold`
bytes (the 2 GB protobuf limit by default) keep their initializers in `<model>.onnx.data`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
                  graph: str = "forward", checked: bool = True):
    """The ONNX model of one entry graph (default `forward`), checked unless `checked=False`.

    Models too large for an in-memory protobuf are checked by `compile_onnx` after writing.
    """
    if graph not in program.graphs:
        raise LoweringError(f"program has no graph '{graph}'", expected=f"one of: {', '.join(program.graphs)}")
    if weights is None:
        weights = torch_weights(program, seed)
    model = lower_entry(program, graph, weights, for_trt)
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
                 external_threshold: int = PROTOBUF_LIMIT, weights: dict | None = None) -> dict:
    """Write `model.onnx` (+ `<graph>.onnx` per extra entry graph) into `out_dir`.

    Returns {role: path} of every file written, all plain strings: "model" (model.onnx), one key per
    extra entry graph (its name, e.g. "decode_step"), "<key>_data" for external data, and "weights"
    when no `weights_path` was given (the torch module's weights from `seed`, written to
    weights.safetensors so the artifact can be reproduced). A weights file is checked against the spec
    first (every missing, unexpected, mis-shaped or mis-typed entry: LoweringError); `weights` passes
    arrays already loaded and checked that way (compile_artifacts) instead of a path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if weights is not None:
        wfile = None
    elif weights_path is not None:
        weights = load_weights(weights_path)
        check_weights(program, weights, f"weights in '{weights_path}'")
        wfile = None
    else:
        weights = torch_weights(program, seed)
        wfile = out / "weights.safetensors"
        _write_safetensors(weights, wfile)
    result = {"weights": str(wfile)} if wfile else {}
    for gname in program.graphs:
        if gname in ("model", "weights"):  # model.onnx / the result keys are taken
            raise LoweringError(f"entry graph name '{gname}' clashes with an ONNX artifact name",
                                expected="a graph name other than 'model' and 'weights'")
        model = to_onnx_model(program, weights, seed, for_trt, gname, checked=False)
        path = out / model_file(gname)
        data = write_checked(model, path, program, gname, external=_tensor_bytes(model) >= external_threshold)
        key = "model" if gname == "forward" else gname
        result[key] = str(path)
        if data:
            result[f"{key}_data"] = data
    return result


def write_checked(model, path, program=None, gname: str = "forward", external: bool = False) -> str | None:
    """Check `model` (full checker, strict shape inference) and write it atomically, serialising it
    once; external-data models are written first and checked by path. Returns the data file, if any."""
    if external:
        data = write_model(model, path, external=True)
        check(None, program, gname, path=str(path))
        return data
    blob = model.SerializeToString(deterministic=True)
    check(model, program, gname, data=blob)
    atomic_write(path, blob)
    return None


def write_model(model, path, external: bool = False) -> str | None:
    """Write `model` to `path` atomically; with `external`, initializers go to `<name>.data` beside it
    (returned). Serialisation is deterministic."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    path = Path(path)
    if not external:
        atomic_write(path, model.SerializeToString(deterministic=True))
        return None
    data_name = path.name + ".data"
    m = onnx.ModelProto()
    m.CopyFrom(model)
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location=data_name, size_threshold=0,
                                   convert_attribute=False)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".nnspec-") as tmp:
        # onnx writes the data file relative to the model's folder, so both go to a temp folder first.
        tmp_model = Path(tmp) / path.name
        onnx.save_model(m, str(tmp_model))
        tmp_model.write_bytes(m.SerializeToString(deterministic=True))  # save_model strips raw data in m
        os.chmod(Path(tmp) / data_name, 0o644)
        os.replace(Path(tmp) / data_name, path.parent / data_name)
        os.replace(tmp_model, path)
    return str(path.parent / data_name)


def _write_safetensors(weights: dict, path: Path) -> None:
    atomic_write(path, save_weights(weights))


def _tensor_bytes(model) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


__all__ = ["to_onnx_model", "to_onnx_models", "compile_onnx", "write_checked", "write_model", "torch_weights", "load_weights",
           "PROTOBUF_LIMIT"]
