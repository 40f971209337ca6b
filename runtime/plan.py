"""`nnspec plan`: the pipeline-parallel plan of a spec, as a table or JSON.

    nnspec plan SPEC [--preset P] --stages K [--microbatches M] [--memory B] [--remat-budget F]
                [--profile P] [--dim N=8] [--json] [--dump-after partition_pipeline]

The program goes through the torch target's pipeline (training: dropout and batch statistics as
trained), whose partition_pipeline pass makes the plan (compiler/passes/partition_pipeline.py says
how) and split_stages records each stage's boundary. The report is that pass's summary: per stage
its nodes (first .. last), parameters, FLOPs, predicted time, activation and saved bytes (with and
without remat) and boundary bytes sent; totals; the balance (max / mean stage time) beside its
lower bound max(largest node, total / K); the GPipe bubble (K - 1) / (M + K - 1). `--json` carries
the same fields (`stages`, `balance`, `bubble`, ...; per stage `kept_bytes_per_microbatch`, what
its backward keeps with its remat). `--memory` and `--remat-budget` (the rematerialize pass's forms:
0.33, 33%, or bytes per stage such as 200MB; checked when the arguments are parsed) plan each
stage's recompute with the cut (compiler/partition.py); `compile --stages K --memory B` writes stage
classes that run it (torch.utils.checkpoint, targets/torch/stages.py).

The stage flags also serve `nnspec compile --target torch --stages K` (which writes the stage
classes into model.py) and `nnspec inspect --stages K --dump-after partition_pipeline`.
"""
from __future__ import annotations

import argparse
import json
from nnspec.compiler.cost import human

def parse_bytes(text: str) -> int:
    """`--memory`: a byte size in compiler/cost.parse_bytes' forms (16GiB, 24G, 2.5e10, 800MB) -> bytes."""
    from nnspec.compiler.cost import BYTE_SIZE_FORMS, parse_bytes as size
    from nnspec.compiler.errors import clean
    try:
        n = int(size(text)[0])
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{clean(text, 40)}' is not {BYTE_SIZE_FORMS}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"--memory {clean(text, 40)}: a memory cap is a positive number of bytes")
    return n


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return v


def remat_budget(text: str) -> str:
    """--remat-budget checked at parse time in the rematerialize pass's forms (exit 2 with its message);
    the text is passed on as given (to rematerialize, or partition_pipeline per stage)."""
    from nnspec.compiler.errors import PassError
    from nnspec.compiler.passes.rematerialize import parse_budget
    try:
        parse_budget(text)
    except PassError as e:
        raise argparse.ArgumentTypeError(f"{e.message}; expected {e.expected}") from None
    return text


def _rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of FLOP/s, e.g. 312e12") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"--device-flops {text}: a positive number of FLOP/s, e.g. 312e12")
    return v


def add_stage_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """--stages, --microbatches, --memory (compile, inspect and plan)."""
    p.add_argument("--stages", type=positive_int, required=required, metavar="K",
                   help="cut the model into K pipeline stages" + ("" if required else " (torch: one class per stage "
                                                                    "in model.py)"))
    p.add_argument("--microbatches", type=positive_int, metavar="M",
                   help="microbatches per step in flight (GPipe); default 4 x K")
    p.add_argument("--memory", type=parse_bytes, metavar="BYTES",
                   help="memory per stage (e.g. 16GiB): params x4 for gradients and Adam, plus M microbatches' "
                        "activations; the cut and each stage's recompute are chosen to fit")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """What `nnspec plan` takes besides the spec and the stage flags."""
    p.add_argument("--remat-budget", type=remat_budget, metavar="F",
                   help="let each stage keep at most this much of its activations (0.33, 33%%, or bytes per stage: "
                        "200MB), recomputing the rest")
    p.add_argument("--profile", metavar="PROFILE.json", help="measured per-node times (`nnspec profile -o`) "
                   "instead of FLOPs")
    p.add_argument("--dim", action="append", default=[], metavar="SYM=INT",
                   help="a symbolic dim's value, e.g. the microbatch size N=8 (default N=1, others their opt)")
    p.add_argument("--device-flops", type=_rate, metavar="FLOP/S",
                   help="device rate turning FLOPs into predicted seconds (default 100e12)")
    p.add_argument("--param-copies", type=positive_int, metavar="C",
                   help="bytes held per parameter byte: weights, gradients, optimizer state (default 4: Adam)")
    p.add_argument("--json", action="store_true", help="machine-readable output (stages, balance, bubble, ...)")
    p.add_argument("--dump-after", metavar="PASS", help="print the IR after this pass instead "
                   "(partition_pipeline, split_stages, ...)")


def options_from_args(args) -> dict:
    """PassContext options for partition_pipeline from parsed flags (absent flags left out)."""
    out = {}
    for flag, key in (("stages", "stages"), ("microbatches", "microbatches"), ("memory", "memory"),
                      ("remat_budget", "stage_remat_budget"), ("device_flops", "flops_per_s"),
                      ("param_copies", "param_copies")):
        v = getattr(args, flag, None)
        if v is not None:
            out[key] = v
    dims = getattr(args, "dim", None)
    if dims:
        out["dims"] = {}
        for item in dims:
            sym, _, v = item.partition("=")
            if not sym.isidentifier() or not v.isdigit() or int(v) < 1:
                raise argparse.ArgumentTypeError(f"--dim {item}: expected SYMBOL=INT, e.g. N=8")
            out["dims"][sym] = int(v)
    return out


def wants_stages(args) -> bool:
    return any(getattr(args, f, None) is not None for f in ("stages", "microbatches", "memory"))


def load_plan(args, dump=None):
    """The program through the torch pipeline with the plan's options; a profile is read against the
    program before the partition runs (it names the program's nodes)."""
    from nnspec.compiler import load
    from nnspec.compiler.cost import profile_costs, profile_option
    from nnspec.compiler.passes.manager import PassContext, run_passes
    from nnspec.compiler.spec.load import parse_overrides
    from nnspec.targets.registry import get

    pipeline = list(get("torch").pipeline)
    cut = pipeline.index("partition_pipeline")
    dump_after = getattr(args, "dump_after", None)
    if dump_after and dump_after not in pipeline:
        from nnspec.compiler.errors import PassError
        raise PassError(f"--dump-after {dump_after}: no such pass in the pipeline", expected=f"one of: {', '.join(pipeline)}")
    early = dump_after if dump_after in pipeline[:cut] else None
    program = load(args.spec, args.preset, parse_overrides(args.overrides), passes=pipeline[:cut], target="torch",
                   dump_after=early, dump=dump)
    opts = options_from_args(args)
    if getattr(args, "profile", None):
        opts["profile"] = profile_option(profile_costs(program, args.profile))
    ctx = PassContext(target="torch", options=opts)
    ctx.diagnostics = list(program.context.diagnostics) if program.context else []
    late = dump_after if dump_after in pipeline[cut:] else None
    return run_passes(program, pipeline[cut:], late, dump, ctx)


def cmd_plan(args) -> int:
    program = load_plan(args, dump=print)
    if args.dump_after:
        return 0
    summary = dict(program.results["partition_pipeline"].summary)
    summary["boundaries"] = [s.to_json() for s in program.forward.stages]
    if args.json:
        print(json.dumps({"spec": program.spec.name, "preset": program.spec.preset, **summary}, indent=1,
                         default=_jsonable))
    else:
        print(render(program, summary))
    return 0


def _jsonable(v):
    if isinstance(v, float) and v != v:
        return None
    return str(v)


def _b(n) -> str:
    return "-" if n is None else f"{human(n)}B"


def _s(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} us"


def render(program, s: dict) -> str:
    """The plan as a table a person reads."""
    spec = program.spec
    rows = s["stages"]
    k, m = len(rows), s["microbatches"]
    dims = ", ".join(f"{a}={b}" for a, b in s["dims"].items()) or "the declared shapes"
    unit = ("measured times (profile)" if s["cost_unit"] == "picoseconds" else
            f"training FLOPs (forward + backward) at {s['flops_per_s'] / 1e12:g} TFLOP/s")
    head = f"{spec.name}" + (f" --preset {spec.preset}" if spec.preset else "")
    out = [f"{head}: {k} stages, {m} microbatches of {dims}; cost: {unit}"
           + (" (stages as the spec's pipeline lists them)" if s.get("source") == "spec" else "")]
    if s.get("memory_cap") is not None:
        out.append(f"memory per stage: {_b(s['memory_cap'])} (params x{s['param_copies']} + {m} microbatches' "
                   "activations); cut and recompute chosen together")
    elif s.get("remat_budget") is not None:
        out.append(f"remat budget: each stage keeps at most {s['remat_budget']:g} of its activations")
    elif s.get("activation_cap") is not None:
        out.append(f"remat budget: each stage keeps at most {_b(s['activation_cap'])} of activations")
    cols = [("stage", ">5"), ("nodes", "<"), ("#", ">4"), ("params", ">8"), ("fwd FLOPs", ">9"), ("time", ">9"),
            ("recompute", ">9"), ("act", ">9"), ("saved", ">9"), ("w/ remat", ">9"), ("memory", ">9"), ("sends", ">9")]
    table = []
    for r in rows:
        span = r["first"] if r["first"] == r["last"] else f"{r['first']} .. {r['last']}"
        table.append([str(r["index"]), span, str(r["nodes"]), human(r["params"]), human(r["flops"]), _s(r["time_s"]),
                      _s(r["recompute_s"]) if r["recompute_s"] else "-", _b(r["activation_bytes"]),
                      _b(r["saved_bytes"]), _b(r["saved_bytes_remat"]), _b(r["memory_bytes"]),
                      _b(r["send_bytes"]) if r["index"] < k - 1 else "-"])
    t = s["totals"]
    table.append(["total", "", str(t["nodes"]), human(t["params"]), human(t["flops"]), _s(t["time_s"]), "",
                  _b(t["activation_bytes"]), _b(t["saved_bytes"]), "", "", _b(t["boundary_bytes"])])
    widths = [max(len(c[0]), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    widths[1] = min(widths[1], 60)

    def line(cells):
        parts = []
        for (name, align), w, cell in zip(cols, widths, cells):
            cell = cell if len(cell) <= w else cell[:w - 3] + "..."
            parts.append(f"{cell:<{w}}" if align == "<" else f"{cell:>{w}}")
        return "  ".join(parts).rstrip()

    rule = "-" * len(line([c[0] for c in cols]))
    out += [rule, line([c[0] for c in cols]), rule] + [line(r) for r in table[:-1]] + [rule, line(table[-1])]
    lb = s["lower_bound"]
    out.append(f"balance (max/mean stage time): {s['balance']:.3f}; lower bound {lb['balance']:.3f} = "
               f"max(largest node, total/K) = {_s(lb['time_s'])}")
    out.append(f"GPipe bubble (K-1)/(M+K-1) = {k - 1}/{m + k - 1} = {s['bubble']:.1%}; "
               f"step ~ (M+K-1) x slowest stage = {_s(s['step_time_s'])}")
    for r in rows:
        for lo, hi in r["remat"]:
            out.append(f"stage {r['index']} recomputes {lo} .. {hi} in backward")
    for note in s["notes"]:
        out.append(f"note: {note}")
    return "\n".join(out)
