"""`nnspec compile`: lower a program to a target and write the artifact directory atomically.

What each target writes is its registry entry's business (`nnspec.targets.registry`; today torch:
model.py, onnx: model.onnx + weights.safetensors, trt / trt-rtx: the same + model.engine), plus
`manifest.json` describing the spec, the passes run, the interface and every file with its sha256.
Re-running with the same inputs rewrites identical files.

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


def base_manifest(program, target: str, seed: int, weights: str | None, trained: dict | None = None) -> dict:
    spec = program.spec
    rep = cost_report(program)
    return {
        "nnspec_version": __version__, "spec": spec.name, "spec_file": Path(spec.file).name,
        "preset": spec.preset, "overrides": spec.overrides, "spec_sha256": spec.sha256(), "target": target,
        "params": rep.params, "flops": rep.flops, "flops_dims": rep.dims,
        "weights": {"source": "given" if weights else "seed", "seed": None if weights else seed, **(trained or {})},
        "passes": list(program.done),  # the pipeline the artifact was compiled with
        **fusion_manifest(program),
        **_stages(program),
        **remat_manifest(program),
        "graphs": {name: interface(program, name) for name in program.graphs},
        **interface(program),
    }


def _stages(program) -> dict:
    """The manifest's `stages`: the pipeline plan (partition_pipeline's summary) and each stage's
    boundary tensors (split_stages'), when the program was compiled with --stages."""
    g = program.forward
    if not g.stages:
        return {}
    plan = program.results.get("partition_pipeline")
    summary = plan.summary if plan is not None else {}
    per = {row["index"]: row for row in summary.get("stages") or []}
    keep = ("params", "flops", "time_s", "recompute_s", "saved_bytes", "saved_bytes_remat", "memory_bytes",
            "send_bytes", "remat")
    return {"stages": {
        "count": len(g.stages), "microbatches": summary.get("microbatches"), "balance": summary.get("balance"),
        "bubble": summary.get("bubble"), "memory_cap": summary.get("memory_cap"), "source": summary.get("source"),
        "list": [{**s.to_json(), **{k: per.get(s.index, {}).get(k) for k in keep}} for s in g.stages]}}


def remat_manifest(program) -> dict:
    """{"remat": the rematerialize pass's plan (budget, bytes kept before and after, segments)} of a
    program compiled with --remat-budget, else {}."""
    res = program.results.get("rematerialize")
    if res is None or not res.summary.get("planned"):
        return {}
    return {"remat": {k: v for k, v in res.summary.items() if k not in ("planned", "report")}}


def fusion_manifest(program) -> dict:
    """{"fusion": {mode, report}} of a program that went through fuse_ops (the report is the pass's
    summary: per rule what matched, fused and was declined, and why), else {}."""
    res = program.results.get("fuse_ops")
    if res is None:
        return {}
    report = {k: v for k, v in res.summary.items() if k != "mode"}
    return {"fusion": {"mode": res.summary.get("mode"), "report": report}}


def program_for(spec, target: str, fuse: str | None = None, preset: str | None = None,
                overrides: dict | None = None, options: dict | None = None):
    """`spec` (a path, bundled name, LoadedSpec, or a Program, whose spec is reused) compiled with
    `target`'s pass pipeline, fuse_ops in mode `fuse` (None: the target's default): the program
    `nnspec compile --target T --fuse F` lowers, and the one `compile_artifacts` accepts for T."""
    from nnspec.compiler.passes import compile_spec
    from nnspec.targets import registry

    spec = getattr(spec, "spec", spec)  # a Program: start again from its loaded spec
    opts = dict(options or {}, **({"fuse": fuse} if fuse is not None else {}))
    return compile_spec(spec, preset, overrides, passes=list(registry.get(target).pipeline), target=target,
                        options=opts)


META_THRESHOLD = 10 ** 9  # parameters above which `nnspec compile` builds without weights unless given some

META_NOTE = ("no weights file is written: the graph's initializers are external-data references into "
             "weights.safetensors as `nnspec import-weights` (or `nnspec compile --weights`) writes the spec's "
             "state dict; put that file beside the model to run it")


def meta_note(target: str) -> str:
    """What a --meta artifact of `target` holds and what it still needs."""
    if target == "torch":
        return ("no weights file is written: model.py alone; build it under `torch.device('meta')` and load a "
                "state dict (e.g. the file `nnspec import-weights` writes) with load_state_dict(..., assign=True)")
    return META_NOTE


def wants_meta(program, meta: bool | None, weights) -> bool:
    """Whether to compile without weights: --meta, or (not said either way) no --weights and more
    than META_THRESHOLD parameters (drawing a 7B model's initial weights takes tens of GB)."""
    if meta is not None:
        return bool(meta) and weights is None
    return weights is None and cost_report(program).params > META_THRESHOLD


def compile_artifacts(program, target: str, out_dir: str, weights: str | None = None, seed: int = 0,
                      precision: str = "fp32", workspace_mb: int | None = None, opt_level: int = 3,
                      meta: bool = False) -> list[str]:
    """Write the artifacts of `target` into `out_dir` (replaced as a whole); returns the file names written.

    The target's registry entry writes its files; this wraps them: weights checked first, the
    target's own refusals (TensorRT's lint) before anything is written, the folder staged and
    swapped in whole with its manifest. A target whose toolchain is missing here (trt without
    datacenter TensorRT and a GPU, trt-rtx without TensorRT-RTX) still gets its folder written with
    the ONNX model, then TensorRTUnavailable (exit 3) is raised."""
    from nnspec.runtime.artifacts import write_manifest
    from nnspec.targets import registry
    from nnspec.targets.base import CompileJob
    from nnspec.targets.files import staged_folder
    from nnspec.targets.weights import check_weights

    from nnspec.runtime.train.export import read_weights

    from nnspec.compiler.passes.manager import PASSES

    entry = registry.get(target)
    # A pass that acts only on request (partition_pipeline without --stages) may have been skipped.
    missing = [p for p in entry.pipeline if p not in program.done and not (p in PASSES and PASSES[p].on_request)]
    if missing:  # e.g. an inference-only pass: the artifact would not be what the target promises
        from nnspec.compiler.errors import LoweringError
        raise LoweringError(f"the program has not been through pass(es) {', '.join(missing)} of the {target} "
                            "pipeline", hint=f"load it with nnspec.runtime.compile.program_for(spec, {target!r})")
    arrays, trained = None, {}
    if weights is not None:  # checked for every target before anything is written
        arrays, trained = read_weights(weights)  # a file, a checkpoint or a run folder
        check_weights(program, arrays, f"weights in '{weights}'")
    if entry.check is not None:
        entry.check(program)  # e.g. TensorRT's lint: a LoweringError naming each unsupported node
    if meta and weights is not None:
        meta = False  # real weights given: they are written
    if meta and target not in ("torch", "onnx"):
        from nnspec.compiler.errors import LoweringError
        raise LoweringError(f"--meta compiles without weights, and a {target} engine is built from them",
                            hint="compile --target onnx --meta for the graph, or give --weights")
    manifest = base_manifest(program, target, seed, weights, trained)
    if meta:  # the manifest says so: no weights, and where the graph expects them
        manifest["weights"] = {"source": "meta", "seed": None, "file": None, "note": meta_note(target)}
    job = CompileJob(manifest, arrays, seed, dict(precision=precision, workspace_mb=workspace_mb, opt_level=opt_level,
                                                  meta=bool(meta)))
    with staged_folder(out_dir) as tmp:
        pending = entry.compile(program, tmp, job)
        manifest["files"] = _digests(tmp)
        write_manifest(tmp, manifest)
    if pending is not None:
        raise pending  # after the artifact is in place, as documented for a missing TensorRT
    return sorted(manifest["files"]) + ["manifest.json"]


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
