"""`nnspec compile`: lower a program to a target and write the artifact directory atomically.

    torch    model.py (+ weights.safetensors when --weights is given)
    onnx     model.onnx + weights.safetensors
    trt      model.onnx + weights.safetensors + model.engine (datacenter TensorRT, needs a GPU)
    trt-rtx  the same, built by TensorRT-RTX (ahead of time, no GPU needed)
and `manifest.json` describing the spec, the interface and every file with its sha256. Re-running
with the same inputs rewrites identical files.

The whole folder is built in a fresh temp folder beside `-o` and swapped in at the end, under a lock
(`targets.files.staged_folder`): a reader, a killed compile or a second compile into the same `-o`
never leaves a mix of old and new files. `--weights` is read without pickle and checked against the
spec (every missing, unexpected, mis-shaped or mis-typed entry) before anything is written.
"""
from __future__ import annotations

import os
from pathlib import Path

from nnspec.compiler import __version__
from nnspec.compiler.cost import cost_report


def interface(program, graph: str = "forward") -> dict:
    """Inputs and outputs of an entry graph: names, shapes (symbols kept), dtypes, symbol ranges."""
    g = program.graphs[graph]
    syms = g.symbols

    def io(name, t, extra=None):
        d = {"name": name, "shape": list(t.shape), "dtype": t.dtype}
        dims = {s: syms.get(s, {"min": 1, "opt": None, "max": None}) for s in t.shape if isinstance(s, str)}
        if dims:
            d["dims"] = dims
        d.update(extra or {})
        return d

    ins = [io(n.attrs.name, n.outputs[0], {"range": n.attrs.range} if n.attrs.range else None) for n in g.inputs()]
    outs = [io(name, g.output_type(name)) for name in g.outputs]
    return {"inputs": ins, "outputs": outs}


def base_manifest(program, target: str, seed: int, weights: str | None) -> dict:
    spec = program.spec
    rep = cost_report(program)
    return {
        "nnspec_version": __version__, "spec": spec.name, "spec_file": Path(spec.file).name,
        "preset": spec.preset, "overrides": spec.overrides, "spec_sha256": spec.sha256(), "target": target,
        "params": rep.params, "flops": rep.flops, "flops_dims": rep.dims,
        "weights": {"source": "given" if weights else "seed", "seed": None if weights else seed},
        "graphs": {name: interface(program, name) for name in program.graphs},
        **interface(program),
    }


TARGETS = ("torch", "onnx", "trt", "trt-rtx")


def compile_artifacts(program, target: str, out_dir: str, weights: str | None = None, seed: int = 0,
                      precision: str = "fp32", workspace_mb: int | None = None, opt_level: int = 3) -> list[str]:
    """Write the artifacts of `target` into `out_dir` (replaced as a whole); returns the file names written.

    Without a TensorRT backend (trt, trt-rtx) the folder is still written with the ONNX model, then
    TensorRTUnavailable (exit 3) is raised."""
    from nnspec.compiler.errors import LoweringError
    from nnspec.runtime.artifacts import write_manifest
    from nnspec.targets.files import staged_folder
    from nnspec.targets.weights import check_weights, load_weights

    if target not in TARGETS:
        raise LoweringError(f"unknown target '{target}'", expected=f"one of: {', '.join(TARGETS)}")
    arrays = None
    if weights is not None:  # checked for every target before anything is written
        arrays = load_weights(weights)
        check_weights(program, arrays, f"weights in '{weights}'")
    if target != "torch" and target != "onnx":
        from nnspec.targets.tensorrt.lint import check_program
        check_program(program)  # raises LoweringError naming each unsupported node
    manifest = base_manifest(program, target, seed, weights)
    pending = None
    with staged_folder(out_dir) as tmp:
        if target == "torch":
            _write_torch(program, tmp, arrays, manifest)
        else:
            pending = _write_onnx(program, target, tmp, arrays, seed, manifest,
                                  dict(precision=precision, workspace_mb=workspace_mb, opt_level=opt_level))
        manifest["files"] = _digests(tmp)
        write_manifest(tmp, manifest)
    if pending is not None:
        raise pending  # after the ONNX artifact is in place, as documented for a missing TensorRT
    return sorted(manifest["files"]) + ["manifest.json"]


def _write_torch(program, out: Path, arrays, manifest: dict) -> None:
    from nnspec.runtime.artifacts import atomic_write
    from nnspec.targets.torch.codegen import generate_source
    from nnspec.targets.weights import complete_tied, save_weights

    src, cls = generate_source(program)
    atomic_write(out / "model.py", src.encode())
    manifest["torch"] = {"class": cls, "file": "model.py"}
    if arrays is not None:
        # The checked arrays are written anew (not the given file's bytes), with tied entries filled in
        # so that a strict `load_state_dict` of the file works.
        atomic_write(out / "weights.safetensors", save_weights(complete_tied(program, arrays)))


def _write_onnx(program, target: str, out: Path, arrays, seed: int, manifest: dict, trt_opts: dict):
    """model.onnx (+ weights, extra graphs, engine); returns TensorRTUnavailable when no backend builds here."""
    from nnspec.targets.onnx.builder import OPSET
    from nnspec.targets.onnx.export import compile_onnx

    for_trt = target != "onnx"
    compile_onnx(program, out, seed=seed, for_trt=for_trt, weights=arrays)
    manifest["onnx"] = {"file": "model.onnx", "opset": OPSET, "for_tensorrt": for_trt}
    if not for_trt:
        return None
    from nnspec.targets.tensorrt import build_engine, require_backend
    from nnspec.targets.tensorrt.backends import TensorRTUnavailable
    try:
        backend = require_backend(target)
    except TensorRTUnavailable as e:
        return e
    manifest["tensorrt"] = build_engine(out / "model.onnx", out, program=program, backend=backend, **trt_opts)
    return None


def _digests(folder: Path) -> dict:
    """{name: sha256} of every file in the staged folder: what manifest.json lists is exactly what is there."""
    from nnspec.targets.files import plain_name, sha256_file

    out = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        plain_name(entry.name)
        if not entry.is_file(follow_symlinks=False):
            raise RuntimeError(f"compile left a non-file {entry.name!r} in the artifact")  # a bug in nnspec
        if entry.name != "manifest.json":
            out[entry.name] = sha256_file(entry.path)
    return out
