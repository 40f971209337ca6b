"""The `nnspec` command line.

    nnspec list [--json]                         bundled specs and their presets
    nnspec check SPEC... [--target trt]          validate specs (exit 1 on a bad spec)
    nnspec inspect SPEC [--preset P] [--set k=v] [--json] [--depth D] [--dump-after PASS] [--target T]
    nnspec compile SPEC --target T -o DIR        T: a target of nnspec.targets.registry (torch, onnx, ...)
    nnspec train SPEC [--preset P] [--set train.k=v] [--steps N] [--out RUN_DIR] [--resume RUN_DIR]
    nnspec plan SPEC --stages K [--microbatches M] [--memory B] [--json]   pipeline stages, per stage
    nnspec profile SPEC [--dim N=8] [--device cpu|cuda] -o profile.json   measured per-node times
    nnspec graph SPEC --format dot|svg|png|mermaid|json|text
    nnspec schema                                JSON Schema of specs (for editors)
    nnspec run ARTIFACT_DIR --input name=x.npy
    nnspec bench SPEC --targets torch,onnx --batch 1,8
    nnspec verify SPEC
    nnspec deploy ARTIFACT_DIR --triton REPO_DIR
    nnspec import-weights SPEC --from THEIRS.safetensors -o OURS.safetensors [--map MAP.yaml]
    nnspec sweep SPEC --set d_model=[32,64,128] --set layers=[1,2] -o DIR   (power-law fit of loss vs size)

Exit codes: 0 ok, 1 bad spec (or failed verification), 2 usage, 3 a target's toolchain is missing.
`check`, `inspect`, `graph`, `schema` and `compile --target torch` never import torch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from nnspec.compiler.errors import NnspecError

EXIT_OK, EXIT_SPEC, EXIT_USAGE, EXIT_MISSING = 0, 1, 2, 3


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="path to a spec .yaml or the name of a bundled spec (see `nnspec list`)")
    p.add_argument("--preset", "-p", help="a named preset of the spec")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param (repeatable), e.g. --set num_classes=10 --set layers=[2,2,2,2]")


def _load(args, **kw):
    from nnspec.compiler import load
    from nnspec.compiler.spec.load import parse_overrides
    return load(args.spec, args.preset, parse_overrides(args.overrides), **kw)


def _targets() -> list[str]:
    """Target names, from the target registry (the one place that lists them)."""
    from nnspec.targets.registry import names
    return names()


def _pipeline(target: str | None, fuse: str | None = None) -> dict:
    """`_load` keywords compiling for `target`: its own pass pipeline, and its name for the passes.
    Without a target, `--fuse` runs the core passes and fuse_ops."""
    if target is None:
        if fuse is None:
            return {}
        from nnspec.targets.registry import CORE
        return {"passes": list(CORE) + ["fuse_ops"]}
    from nnspec.targets.registry import get
    return {"passes": list(get(target).pipeline), "target": target}


def _fuse(args) -> dict:
    """PassContext options for fuse_ops from `--fuse` (absent: the target's default mode)."""
    return {"fuse": args.fuse} if getattr(args, "fuse", None) else {}


def _fuse_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--fuse", choices=["none", "safe", "inference"],
                   help=f"operator fusion (fuse_ops) for {what}: none; safe keeps training semantics (attention "
                        "from primitives -> SDPA, scan of a cell -> one LSTM kernel); inference also folds batch "
                        "norms and drops dropout (eval only). Default: inference for onnx/trt/trt-rtx, safe for torch")


def _remat_arg(p: argparse.ArgumentParser) -> None:
    from nnspec.compiler.passes.rematerialize import POLICIES
    from nnspec.runtime.plan import remat_budget
    p.add_argument("--remat-budget", dest="remat", type=remat_budget, metavar="B",
                   help="training memory budget for the tensors kept for backward (torch): a fraction of the figure "
                        "without recomputation (0.33, 33%%) or an amount (200MB); checkpointed segments are recomputed "
                        "in backward to fit it")
    p.add_argument("--remat-policy", choices=POLICIES,
                   help="how to choose the segments: chain (default: the exact dynamic program over the graph's "
                        "articulation points), milp (Checkmate on the DAG with HiGHS; the default where there are "
                        "none), sqrt (Chen et al.'s sqrt(n) segments)")


def _remat(args) -> dict:
    """PassContext options for rematerialize from --remat-budget / --remat-policy."""
    if getattr(args, "remat_policy", None) and not getattr(args, "remat", None):
        raise argparse.ArgumentTypeError("--remat-policy needs --remat-budget, e.g. --remat-budget 0.33")
    if not getattr(args, "remat", None):
        return {}
    from nnspec.runtime.plan import wants_stages
    if wants_stages(args):
        raise argparse.ArgumentTypeError("--remat-budget plans the whole model; with --stages each stage's budget "
                                         "is planned by `nnspec plan --remat-budget`")
    return {"remat_budget": args.remat, **({"remat_policy": args.remat_policy} if args.remat_policy else {})}


def _target_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in _targets()]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown target(s) {', '.join(bad) or '(none)'}; choose from {', '.join(_targets())}")
    return items


def _int_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers, e.g. 1,8") from None
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"'{text}': batch sizes must be positive integers")
    return out


def _dims(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        k, _, v = item.partition("=")
        if not v.isdigit():
            raise argparse.ArgumentTypeError(f"--dim {item}: expected SYMBOL=INT, e.g. N=8")
        out[k] = int(v)
    return out


# -- commands -------------------------------------------------------------------------------------
def cmd_list(args) -> int:
    from nnspec.compiler.spec.load import bundled_specs, load_spec
    rows = []
    for path in bundled_specs():
        s = load_spec(path)
        paper = s.model.paper
        rows.append({"name": s.name, "presets": list(s.model.presets),
                     "paper": f"{paper.title} ({paper.year})" if paper else "", "file": path.name})
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    w = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        print(f"{r['name']:<{w}}  {', '.join(r['presets']) or '-'}")
        if r["paper"]:
            print(f"{'':<{w}}  {r['paper']}")
    return EXIT_OK


def cmd_check(args) -> int:
    """Check each spec: its default params and, unless --preset picks one, every preset too."""
    from nnspec.compiler import load
    from nnspec.compiler.spec.load import load_spec, parse_overrides
    from nnspec.targets.registry import get as get_target
    bad = 0
    for spec in args.spec:
        try:
            overrides = parse_overrides(args.overrides)
            presets = [args.preset] if args.preset else [None] + list(load_spec(spec, None, overrides).model.presets)
        except NnspecError as e:
            print(e.render(), file=sys.stderr)
            bad += 1
            continue
        for preset in presets:
            label = f"{spec} --preset {preset}" if preset else spec
            try:
                program = load(spec, preset, overrides, **_pipeline(args.target))
                msg = f"ok  {label}: {len(list(program.all_nodes()))} nodes"
                lint = get_target(args.target).lint if args.target else None
                if lint is not None:  # the target's op-support lint (TensorRT's), where it has one
                    issues = lint(program)
                    if issues:
                        print(issues.render(), file=sys.stderr)
                        bad += 1
                        continue
                    msg += f", all ops supported by {args.target}"
                print(msg)
            except NnspecError as e:
                print(e.render(), file=sys.stderr)
                bad += 1
    return EXIT_SPEC if bad else EXIT_OK


def cmd_inspect(args) -> int:
    from nnspec.compiler.cost import compare_reported, cost_report, human
    from nnspec.runtime.plan import options_from_args, wants_stages
    remat = _remat(args)
    # stages and rematerialization are the torch pipeline's passes
    target = args.target or ("torch" if wants_stages(args) or remat else None)
    if remat and target != "torch":
        raise argparse.ArgumentTypeError(f"--remat-budget is for the torch target's training pipeline, not --target {target}")
    program = _load(args, dump_after=args.dump_after, dump=print,
                    options={**options_from_args(args), **_fuse(args), **remat}, **_pipeline(target, args.fuse))
    if args.dump_after:
        return EXIT_OK
    plan = program.results.get("rematerialize") if remat else None  # the remat plan, when asked for
    rep = cost_report(program, args.graph, _dims(args.dim))
    fusion = program.results.get("fuse_ops") if args.fuse else None  # the fusion report, when asked for
    cmp = compare_reported(program.spec.reported, {"params": rep.params, "flops": rep.flops})
    if args.json:
        print(json.dumps({
            "spec": program.spec.name, "preset": program.spec.preset, "params": rep.params, "buffers": rep.buffers,
            "flops": rep.flops, "activation_bytes": rep.act_bytes, "dims": rep.dims,
            "bwd_flops": rep.bwd_flops, "param_bytes": rep.param_bytes, "saved_bytes": rep.saved_bytes,
            "nodes": [vars(r) for r in rep.rows], "reported": cmp,
            **({"fusion": fusion.summary} if fusion is not None else {}),
            **({"remat": {k: v for k, v in plan.summary.items() if k != "report"}} if plan is not None else {})},
            indent=1))
        return EXIT_OK
    rows = rep.rows
    if args.depth is not None:
        rows = _collapse(rows, args.depth)
    w = min(max([len("  " * r.depth + r.id) for r in rows] + [4]), 48)
    sw = min(max([len(r.shape) for r in rows] + [12]), 40)
    line = "-" * (w + sw + 40)
    print(line)
    print(f"{'node':<{w}}  {'op':<20} {'output':<{sw}} {'params':>12} {'FLOPs':>10}")
    print(line)
    for r in rows:
        print(f"{('  ' * r.depth + r.id)[:w]:<{w}}  {r.op[:20]:<20} {r.shape[:sw]:<{sw}} "
              f"{r.params:>12,} {human(r.flops) if r.flops else '-':>10}")
    print(line)
    dims = ", ".join(f"{k}={v}" for k, v in rep.dims.items())
    print(f"params: {rep.params:,}   buffers: {rep.buffers:,}   FLOPs: {rep.flops:,} ({human(rep.flops)})"
          f"   activations: {human(rep.act_bytes)}B   at {dims or 'the declared shapes'}")
    print(f"training: backward FLOPs: {rep.bwd_flops:,} ({human(rep.bwd_flops)})   saved for backward: "
          f"{human(rep.saved_bytes)}B   parameters: {human(rep.param_bytes)}B")
    for c in cmp:
        verdict = "matches" if c["match"] else f"differs by {c['rel_err']:.1%}"
        print(f"reported {c['figure']}: {c['reported']}  computed: {human(c['computed'])}  -> {verdict} (to the stated precision)")
    if fusion is not None:
        from nnspec.compiler.passes.fuse_ops import report_table
        print(report_table(fusion.summary))
    if plan is not None:
        print("\n".join(plan.summary.get("report", [])))
    return EXIT_OK


def _collapse(rows, depth: int):
    """Aggregate rows below `depth` into their ancestor at that depth (like torchinfo's depth)."""
    from nnspec.compiler.cost import NodeCost
    out, groups = [], {}
    for r in rows:
        parts = r.id.split(".")
        keep = []
        for p in parts[:-1]:
            keep.append(p)
        level = sum(1 for p in parts[:-1] if not p.isdigit())
        if level <= depth - 1 or len(parts) == 1:
            out.append(r)
            continue
        # the ancestor id at `depth` block levels (list indices stay attached)
        anc, lv = [], 0
        for p in parts:
            anc.append(p)
            if not p.isdigit():
                lv += 1
            if lv == depth and (len(anc) == len(parts) or not parts[len(anc)].isdigit()):
                break
        key = ".".join(anc)
        if key not in groups:
            groups[key] = NodeCost(key, "block", r.shape, 0, 0, 0, depth - 1)
            out.append(groups[key])
        g = groups[key]
        g.params += r.params
        g.flops += r.flops
        g.shape = r.shape
    return out


def cmd_compile(args) -> int:
    from nnspec.runtime.compile import compile_artifacts
    from nnspec.runtime.plan import options_from_args, wants_stages
    if wants_stages(args) and args.target != "torch":
        raise argparse.ArgumentTypeError(f"--stages, --microbatches and --memory are for --target torch (one class "
                                         f"per pipeline stage in model.py), not --target {args.target}")
    remat = _remat(args)
    if remat and args.target != "torch":
        raise argparse.ArgumentTypeError(f"--remat-budget is for --target torch (checkpointed segments in model.py), "
                                         f"not --target {args.target}")
    prof, measured = _profile_arg(args, remat)
    program = _load(args, options={**options_from_args(args), **_fuse(args), **remat, **measured},
                    **_pipeline(args.target))
    if prof is not None:  # its ids must be the program's (partition_pipeline checks them too for stages)
        from nnspec.compiler.cost import check_profile
        check_profile(program, prof)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if args.reference_keys:  # their file, renamed as `nnspec import-weights` would, then compiled
            from nnspec.runtime.import_weights import import_weights
            if not weights:
                raise argparse.ArgumentTypeError("--reference-keys renames the --weights file: give one")
            weights = os.path.join(tmp, "weights.safetensors")
            import_weights(program, args.weights, weights)
        meta = _meta(program, args, weights)
        files = compile_artifacts(program, args.target, args.output, weights=weights, seed=args.seed,
                                  precision=args.precision, workspace_mb=args.workspace_mb, opt_level=args.opt_level,
                                  meta=meta)
    if meta:
        from nnspec.runtime.compile import meta_note
        print(f"note: --meta: {meta_note(args.target)}", file=sys.stderr)
    for name in files:
        print(os.path.join(args.output, name))
    return EXIT_OK


def _meta_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--meta", action=argparse.BooleanOptionalAction, default=None,
                   help=f"{what} without allocating parameters (default: on above 1e9 parameters when no --weights "
                        "are given, with a note; --no-meta forces real initial weights)")


def _meta(program, args, weights=None) -> bool:
    """--meta as given, else automatic above the threshold (printed as a note when it turns on)."""
    from nnspec.runtime.compile import META_THRESHOLD, wants_meta
    meta = wants_meta(program, getattr(args, "meta", None), weights)
    if meta and getattr(args, "meta", None) is None:
        print(f"note: {program.spec.name} has over {META_THRESHOLD:.0e} parameters: compiling with --meta "
              "(no weights drawn; --no-meta to draw them, --weights to give them)", file=sys.stderr)
    return meta


def cmd_profile(args) -> int:
    from nnspec.runtime.profile import profile, profile_pipeline, render_disagreements, write_profile
    program = _load(args, passes=profile_pipeline(), target="torch", options=_fuse(args))
    doc = profile(program, _dims(args.dim), device=args.device, repeat=args.repeat, warmup=args.warmup,
                  threads=args.threads, seed=args.seed, progress=True)
    write_profile(doc, args.output)
    print(render_disagreements(doc))
    print(args.output)
    return EXIT_OK


def _profile_arg(args, remat: dict) -> tuple:
    """(the --profile file read and checked on its own, or None; PassContext options holding its times in
    the one form the passes read, compiler/cost.profile_option). Its node ids are checked against the
    program once that is loaded."""
    path = getattr(args, "profile", None)
    if not path:
        return None, {}
    from nnspec.runtime.plan import wants_stages
    if not (remat or wants_stages(args)):
        raise argparse.ArgumentTypeError("--profile is read by the planning passes: give it with --stages or "
                                         "--remat-budget (see `nnspec plan --profile`)")
    from nnspec.compiler.cost import profile_option, read_profile
    prof = read_profile(path)
    return prof, {"profile": profile_option(prof.times)}


def cmd_plan(args) -> int:
    from nnspec.runtime.plan import cmd_plan as plan
    return plan(args)


def cmd_graph(args) -> int:
    from nnspec.compiler.ir.dump import render
    if args.format == "png" and not args.output and sys.stdout.isatty():
        raise argparse.ArgumentTypeError("--format png writes binary data: pass -o FILE")
    out = render(_load(args).graphs, args.format)  # svg and png through Graphviz `dot`
    if out.note:
        print(f"nnspec graph: {out.note}", file=sys.stderr)
    if args.output:
        from nnspec.runtime.artifacts import atomic_write
        atomic_write(args.output, out.data)
    elif out.binary:
        sys.stdout.flush()
        sys.stdout.buffer.write(out.data)
    else:
        sys.stdout.write(out.data.decode())
    return EXIT_OK


def cmd_schema(args) -> int:
    from nnspec.runtime.train.section import spec_schema  # the spec's schema with train: typed
    print(json.dumps(spec_schema(), indent=1, sort_keys=True))
    return EXIT_OK


def cmd_train(args) -> int:
    from nnspec.runtime.train.command import cmd_train as run
    return run(args)


def cmd_run(args) -> int:
    import numpy as np
    from nnspec.runtime.runners import load_runner
    feeds = {}
    for item in args.input:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"nnspec run: --input {item}: expected NAME=FILE.npy")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as e:  # not an .npy file (OSError is reported by main)
            raise SystemExit(f"nnspec run: --input {name}={path}: not a readable .npy array ({e})")
    runner = load_runner(args.artifact, target=args.target)
    outs = runner.run(feeds)
    if args.output:
        from nnspec.runtime.artifacts import atomic_write
        import io
        buf = io.BytesIO()
        np.savez(buf, **outs)
        atomic_write(args.output, buf.getvalue())
    for k, v in outs.items():
        print(f"{k}: {v.dtype}{list(v.shape)}  mean={float(np.mean(v)):.6g}  std={float(np.std(v)):.6g}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from nnspec.runtime.bench import bench, render_table
    program = _load(args)
    rows = bench(program, targets=args.targets, batches=args.batch,
                 threads=args.threads, repeat=args.repeat, warmup=args.warmup, progress=not args.json,
                 fuse=args.fuse)
    print(json.dumps(rows, indent=1) if args.json else render_table(rows))
    return EXIT_OK


def cmd_verify(args) -> int:
    from nnspec.runtime.verify import verify
    program = _load(args)
    report = verify(program, targets=args.targets, tolerance=args.tol, seed=args.seed, fuse=args.fuse)
    print(report.render())
    return EXIT_OK if report.ok else EXIT_SPEC


def cmd_deploy(args) -> int:
    from nnspec.runtime.deploy import deploy_triton
    path = deploy_triton(args.artifact, args.triton, model_name=args.name, max_batch_size=args.max_batch_size,
                         force=args.force)
    print(path)
    return EXIT_OK


def cmd_import_weights(args) -> int:
    from nnspec.runtime.import_weights import import_weights, read_map
    program = _load(args)
    mapping = None if args.map is None else {} if args.map == "none" else read_map(args.map)
    renamed = import_weights(program, args.source, args.output, mapping)
    changed = sum(1 for ours, theirs in renamed.items() if ours != theirs)
    print(f"{args.output}: {len(renamed)} tensors ({changed} renamed) match {program.spec.name}"
          + (f" --preset {program.spec.preset}" if program.spec.preset else ""))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from nnspec.compiler import __version__
    ap = argparse.ArgumentParser(prog="nnspec", description="Neural-network architectures as YAML specs, compiled to "
                                 "PyTorch, ONNX and TensorRT.", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Exit codes: 0 ok, 1 bad spec or failed check, 2 usage, 3 missing toolchain.")
    ap.add_argument("--version", action="version", version=f"nnspec {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("list", help="list the bundled specs and their presets")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("check", help="validate specs; exit 1 with file:line:col messages on a bad one")
    p.add_argument("spec", nargs="+", help="spec paths or bundled names")
    p.add_argument("--preset", "-p")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--target", choices=_targets(),
                   help="compile with the target's pass pipeline and lint against its op support (trt, trt-rtx)")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("inspect", help="per-node table of output shapes, params and FLOPs (like torchinfo)")
    _spec_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (params, flops, nodes, reported)")
    p.add_argument("--depth", type=int, help="collapse block instances deeper than this many levels")
    p.add_argument("--dim", action="append", default=[], metavar="SYM=INT", help="value of a symbolic dim (default N=1)")
    p.add_argument("--graph", default="forward", help="entry graph to report (default: forward)")
    p.add_argument("--dump-after", metavar="PASS", help="print the IR after this pass (expand, infer_shapes, ...)")
    p.add_argument("--target", choices=_targets(), help="run this target's pass pipeline (default: the core passes)")
    _fuse_arg(p, "the pipeline run (and print the fusion report: rule, matched, fused, declined with reasons)")
    from nnspec.runtime.plan import add_plan_args, add_stage_args
    add_stage_args(p)
    _remat_arg(p)
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("compile", help="compile a spec to a target artifact directory")
    _spec_args(p)
    p.add_argument("--target", "-t", required=True, choices=_targets(),
                   help="trt: datacenter TensorRT only (exit 3 without it; TensorRT-RTX is --target trt-rtx)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="artifact directory (created, or replaced as a whole if nnspec wrote it)")
    p.add_argument("--weights", metavar="W.safetensors|RUN_DIR",
                   help="trained weights, checked against the spec, to embed or ship: a safetensors file, a "
                        "checkpoint folder, or a run folder of `nnspec train` (its newest checkpoint)")
    p.add_argument("--reference-keys", action="store_true",
                   help="--weights is a safetensors file keyed as the spec's reference implementation saves it "
                        "(torchvision, transformers): rename it by the spec's reference.keys first, as `nnspec "
                        "import-weights` does, so their weights become the artifact in one command")
    p.add_argument("--seed", type=int, default=0, help="seed of initial weights when --weights is not given (default 0)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="TensorRT precision")
    p.add_argument("--workspace-mb", type=int, help="TensorRT workspace limit in MiB (default: TensorRT's own)")
    p.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimisation level (0-5)")
    _fuse_arg(p, "the artifact (torch + inference: an eval-only module)")
    add_stage_args(p)
    _remat_arg(p)
    p.add_argument("--profile", metavar="PROFILE.json", help="measured per-node times (`nnspec profile -o`) for "
                   "--stages and --remat-budget to plan with instead of FLOPs")
    _meta_arg(p, "write the model (torch: model.py; onnx: the graph, initializers as external-data references)")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("train", help="train the generated module on the spec's task (train: section); "
                       "checkpoints, --resume, DDP (--nproc) and GPipe (--pipeline-stages)",
                       description="Train a spec's generated PyTorch module on the task its train: section names. "
                       "--set train.KEY=VALUE changes the recipe (e.g. --set train.optimizer.lr=0.5), --set KEY=VALUE "
                       "a param, as for compile.")
    _spec_args(p)
    from nnspec.runtime.train.command import add_train_args
    add_train_args(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("plan", help="cut a model into pipeline stages: per stage nodes, params, FLOPs, time, memory, "
                       "bytes sent; balance and GPipe bubble")
    _spec_args(p)
    add_stage_args(p, required=True)
    add_plan_args(p)
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("profile", help="time every node's forward and backward on this machine (for --profile "
                       "on plan and compile); list the nodes FLOPs mispredict by more than 3x")
    _spec_args(p)
    p.add_argument("-o", "--output", required=True, metavar="PROFILE.json", help="the profile (written atomically)")
    p.add_argument("--dim", action="append", default=[], metavar="SYM=INT",
                   help="a symbolic dim's value, e.g. N=8 (default N=1, others their opt)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default cpu)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per node; the median is kept (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per node first (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: steady numbers)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and inputs (default 0)")
    _fuse_arg(p, "the program profiled (give `plan`/`compile` the same, so the node ids agree)")
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser("graph", help="draw the IR (svg and png through Graphviz `dot`)")
    _spec_args(p)
    p.add_argument("--format", "-f", choices=["dot", "svg", "png", "mermaid", "json", "text"], default="text",
                   help="svg/png: drawn by Graphviz, blocks as clusters (svg falls back to a simple layout "
                        "without Graphviz); dot/mermaid/json/text: text dumps (default text)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to a file (atomically) instead of stdout")
    p.set_defaults(fn=cmd_graph)

    p = sub.add_parser("schema", help="print the JSON Schema of specs (for yaml-language-server)")
    p.set_defaults(fn=cmd_schema)

    p = sub.add_parser("run", help="run a compiled artifact on .npy inputs")
    p.add_argument("artifact", metavar="ARTIFACT_DIR")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--target", choices=_targets(), help="runner (default: from the manifest)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="save outputs")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("bench", help="latency/throughput of targets side by side")
    _spec_args(p)
    p.add_argument("--targets", type=_target_list, default=["torch", "onnx"],
                   help=f"comma-separated: {','.join(_targets())} (default torch,onnx)")
    p.add_argument("--batch", type=_int_list, default=[1, 8], help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for every target (default 1)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per target and batch")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true")
    _fuse_arg(p, "each target (torch eager's weights are the unfused ones)")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("verify", help="run every available target on generated inputs and compare")
    _spec_args(p)
    p.add_argument("--targets", type=_target_list,
                   help=f"comma-separated subset of {','.join(_targets())} (default: all available)")
    p.add_argument("--tol", type=float, default=1e-4, help="max abs error allowed (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    _fuse_arg(p, "each target, compared with unfused torch eager")
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("deploy", help="export an artifact directory as a Triton model repository")
    p.add_argument("artifact", metavar="ARTIFACT_DIR")
    p.add_argument("--triton", required=True, metavar="REPO_DIR")
    p.add_argument("--name", help="model name in the repository (default: the spec name)")
    p.add_argument("--max-batch-size", type=int, help="default: the batch dim's max from the spec (capped by an engine's profile)")
    p.add_argument("--force", action="store_true", help="replace an existing, non-empty REPO_DIR/NAME as a whole")
    p.set_defaults(fn=cmd_deploy)

    p = sub.add_parser("import-weights", help="rename a reference implementation's weights for a spec and check them",
                       description="Read THEIRS.safetensors (e.g. a torchvision or transformers state dict saved with "
                       "safetensors), rename its keys with the spec's `reference.keys` map (or --map), check every key, "
                       "shape and dtype against the spec, and write OURS.safetensors for `nnspec compile --weights`.")
    _spec_args(p)
    p.add_argument("--from", dest="source", required=True, metavar="THEIRS.safetensors")
    p.add_argument("-o", "--output", required=True, metavar="OURS.safetensors")
    p.add_argument("--map", metavar="MAP.yaml", help="a YAML map {their.key.fragment: our.key.fragment} instead of the "
                   "spec's reference.keys; 'none' keeps the keys as they are")
    p.set_defaults(fn=cmd_import_weights)

    from nnspec.runtime.sweep import add_parser as add_sweep_parser
    add_sweep_parser(sub, train_main=main)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)  # exits 2 on usage errors
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` relaunches it under torchrun
    try:
        return args.fn(args)
    except NnspecError as e:
        print(e.render(), file=sys.stderr)
        # Some errors carry their own code, e.g. a missing TensorRT toolchain exits 3.
        return getattr(e, "exit_code", EXIT_SPEC)
    except argparse.ArgumentTypeError as e:
        print(f"nnspec: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `nnspec inspect mistral | head`: the reader has what it wanted
        # stdout's last flush at exit would fail again: point it at /dev/null first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as e:  # a file the user named is missing or unwritable: their fix, not a bug
        where = f": {e.filename}" if e.filename else ""
        print(f"nnspec: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_SPEC
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug in nnspec, not the user's fault: short message, traceback on request
        if os.environ.get("NNSPEC_DEBUG"):
            raise
        print(f"nnspec: internal error: {type(e).__name__}: {e}\n"
              "  this is a bug in nnspec; rerun with NNSPEC_DEBUG=1 for the traceback", file=sys.stderr)
        return 70


def entry() -> None:
    """The `nnspec` command. One command is a short-lived process that builds large, long-lived
    object graphs (a 100k-node spec is millions of objects): the cyclic garbage collector would
    walk them all, once or more, for nothing it could free before the process exits."""
    import gc
    gc.disable()
    sys.exit(main())


if __name__ == "__main__":
    entry()
