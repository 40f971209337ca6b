"""`nnspec compile`: lower a program to a target and write the artifact directory atomically.

    torch    model.py (+ weights.safetensors when --weights is given)
    onnx     model.onnx + weights.safetensors
    trt      model.onnx + weights.safetensors + model.engine (datacenter TensorRT, needs a GPU)
    trt-rtx  the same, built by TensorRT-RTX (ahead of time, no GPU needed)
and `manifest.json` describing the spec, the interface and every file with its sha256. Re-running
with the same inputs rewrites identical files.
"""
from __future__ import annotations

import os
import shutil
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


def compile_artifacts(program, target: str, out_dir: str, weights: str | None = None, seed: int = 0,
                      precision: str = "fp32", workspace_mb: int | None = None, opt_level: int = 3) -> list[str]:
    """Write the artifacts of `target` into `out_dir`; returns the file names written."""
    from nnspec.runtime.artifacts import atomic_write, sha256_file, write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = base_manifest(program, target, seed, weights)
    files: list[str] = []
    if target == "torch":
        from nnspec.targets.torch.codegen import generate_source
        src, cls = generate_source(program)
        atomic_write(out / "model.py", src.encode())
        files.append("model.py")
        manifest["torch"] = {"class": cls, "file": "model.py"}
        if weights:
            tmp = out / ".weights.safetensors.tmp"
            shutil.copyfile(weights, tmp)
            os.replace(tmp, out / "weights.safetensors")
            files.append("weights.safetensors")
    elif target in ("onnx", "trt", "trt-rtx"):
        from nnspec.targets.onnx.export import compile_onnx
        for_trt = target != "onnx"
        if for_trt:
            from nnspec.targets.tensorrt import require_backend
            from nnspec.targets.tensorrt.lint import check_program
            check_program(program)  # raises LoweringError naming each unsupported node
        written = compile_onnx(program, out, weights_path=weights, seed=seed, for_trt=for_trt)
        files += sorted(Path(p).name for p in written.values())
        from nnspec.targets.onnx.builder import OPSET
        manifest["onnx"] = {"file": "model.onnx", "opset": OPSET, "for_tensorrt": for_trt}
        if for_trt:
            backend = require_backend(target)  # raises TensorRTUnavailable (exit 3) after the ONNX is written
            from nnspec.targets.tensorrt import build_engine
            info = build_engine(out / "model.onnx", out, program=program, precision=precision,
                                workspace_mb=workspace_mb, opt_level=opt_level, backend=backend)
            manifest["tensorrt"] = info
            files.append("model.engine")
    else:
        raise ValueError(f"unknown target {target}")
    manifest["files"] = {name: sha256_file(out / name) for name in sorted(set(files))}
    write_manifest(out, manifest)
    return sorted(set(files)) + ["manifest.json"]
