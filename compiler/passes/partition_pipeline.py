"""The `partition_pipeline` pass: cut the forward graph into K pipeline stages (policy), recorded as
each node's `stage` mark (and `stage_remat` where a stage recomputes); targets lower the marks
(`split_stages`, then the torch target's stage classes).

Rules:
1. It runs on request only: `ctx.options["stages"]` (`--stages K`) or the spec's `pipeline:`
   section; otherwise it changes nothing.
2. It orders the forward graph's non-input nodes topologically, in the spec's order, so a block
   instance's nodes stay together; graph inputs are in stage 0, a scan's body goes with the scan,
   and other entry graphs (`graphs:`) are left unmarked.
3. A spec's `pipeline: {stages: [[conv1, layer1], [layer2], ...]}` is applied as written, after
   checks located at the entry they are about: every name matches a node or the nodes under it,
   no node is matched twice, every node is matched, and the stages follow each other in
   topological order (each a contiguous run). `--stages K` must then say as many stages.
4. Otherwise the cost vector (training FLOPs of forward and backward from the cost model, or a
   profile's measured seconds in `options["profile"]`: {node: {"fwd": s, "bwd": s}}) is cut into K
   contiguous stages minimising the slowest stage, then the bytes sent between stages
   (compiler/partition.py says how, exactly).
5. With a memory cap (`options["memory"]`, bytes per stage: parameters x `param_copies` for their
   gradients and optimizer state, plus M microbatches' activations) or a remat budget
   (`options["stage_remat_budget"]`, in the rematerialize pass's forms: a fraction of each stage's
   activations, or bytes of activations per stage), the cut and each stage's
   recompute are chosen together: the slowest stage's time includes its recompute, and nodes a
   stage recomputes get `marks["stage_remat"]` (their segment's number; `@stage_remat=k` in dumps).
   The torch stage classes run each segment under torch.utils.checkpoint (targets/torch/stages.py,
   rule 4). What a stage keeps with its segments is counted storage by storage (each once, from
   compiler/cost.saved_values, the checkpoints' inputs included), as saved_tensors_hooks sees it.
   No partition fitting the cap is an error saying what does not fit.
6. The summary is the plan: per stage its nodes, parameters, FLOPs, predicted time, activation and
   saved bytes (with and without remat; `kept_bytes_per_microbatch` with it) and bytes sent;
   totals; balance beside its lower bound; the GPipe bubble for `options["microbatches"]` (default
   4 x K). `nnspec plan` prints it.
"""
from __future__ import annotations

import numbers

from ..errors import PassError, SpecError, SpecErrors
from .. import partition as P
from .manager import PassContext, PassResult, Program, register_pass
from .rematerialize import parse_budget

OPTIONS = ("stages", "microbatches", "memory", "stage_remat_budget", "profile", "dims", "flops_per_s", "param_copies")


def _int_option(opts: dict, name: str, low: int, default=None):
    v = opts.get(name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise PassError(f"option {name}={v!r} is not an integer >= {low}", expected=f"e.g. {name}={max(low, 4)}")
    return int(v)


def _number_option(opts: dict, name: str, low: float, high: float | None = None):
    v = opts.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v > low) or (high is not None and v > high):
        rng = f"in ({low:g}, {high:g}]" if high is not None else f"> {low:g}"
        raise PassError(f"option {name}={v!r} is not a number {rng}")
    return float(v)


def _profile(opts: dict, ids: set):
    prof = opts.get("profile")
    if prof is None:
        return None
    if not isinstance(prof, dict):
        raise PassError("option profile is not a mapping of node id to {fwd: seconds, bwd: seconds}")
    unknown = sorted(k for k in prof if k not in ids)
    if unknown:
        raise PassError(f"the profile times {len(unknown)} node(s) this graph does not have: {', '.join(unknown[:5])}",
                        expected="a profile measured on this spec, preset and --set overrides")
    for k, v in prof.items():
        # {"fwd": s, "bwd": s}, or the (forward, backward) pairs compiler/cost.profile_costs returns
        pair = (v.get("fwd"), v.get("bwd")) if isinstance(v, dict) else tuple(v) if isinstance(v, (tuple, list)) else ()
        ok = len(pair) == 2 and all(isinstance(x, numbers.Real) and not isinstance(x, bool) and x >= 0 for x in pair)
        if not ok:
            raise PassError(f"the profile's entry for '{k}' is {v!r}", expected="{fwd: seconds, bwd: seconds}, both >= 0")
    return prof


def _remat_budget(opts: dict) -> tuple:
    """(fraction, bytes) of `options["stage_remat_budget"]` in the rematerialize pass's forms (a
    fraction such as 0.33 or 33% of each stage's activations, or an amount such as 200MB per stage)."""
    raw = opts.get("stage_remat_budget")
    if raw is None:
        return None, None
    kind, amount = parse_budget(raw)
    return (amount, None) if kind == "fraction" else (None, amount)


def planner_for(fig, microbatches: int):
    """The remat policy the joint planner asks per stage (compiler/partition.ChainPlanner, over
    compiler/remat/policies.plan_chain)."""
    return P.ChainPlanner(fig, microbatches)


@register_pass("partition_pipeline", requires=("infer_shapes",), changes=(), on_request=True)
def partition_pipeline(program: Program, ctx: PassContext) -> PassResult:
    """Cut the forward graph into pipeline stages: every node gets `stage` (rules in the module docstring)."""
    opts = ctx.options
    spec_pipe = program.spec.model.pipeline
    k = _int_option(opts, "stages", 1)
    if k is None and spec_pipe is None:
        return PassResult(summary={"stages": None})
    g = program.forward
    seq = P.positions(g)
    if not seq:
        raise PassError("the forward graph has no node to put in a pipeline stage")
    if spec_pipe is not None and k is not None and k != len(spec_pipe.stages):
        raise SpecError(f"--stages {k}, but the spec's pipeline lists {len(spec_pipe.stages)} stages",
                        program.spec.loc(("pipeline", "stages")), expected=f"--stages {len(spec_pipe.stages)} or no --stages")
    k = len(spec_pipe.stages) if spec_pipe is not None else k
    if k > len(seq):
        raise PassError(f"cannot cut {len(seq)} nodes into {k} stages", expected=f"--stages at most {len(seq)}")
    m = _int_option(opts, "microbatches", 1, 4 * k)
    fraction, act_cap = _remat_budget(opts)
    budget = P.Budget(_number_option(opts, "memory", 0), fraction, m,
                      _int_option(opts, "param_copies", 0, P.PARAM_COPIES), act_cap)
    rate = _number_option(opts, "flops_per_s", 0) or P.DEFAULT_FLOPS_PER_S
    fig = P.figures(program, "forward", opts.get("dims"), _profile(opts, {n.id for n in seq}))
    if spec_pipe is not None:
        plan = _spec_plan(program, fig, spec_pipe, budget, ctx)
        source = "spec"
    else:
        try:
            plan = P.plan(fig, k, budget, planner_for(fig, m) if budget.active else None)
        except P.NoFit as e:
            raise PassError(str(e), expected="a larger --memory or --remat-budget, more --stages, or fewer or "
                            "smaller microbatches (--microbatches, --dim N=...)") from None
        source = "planned"
    for p, node in enumerate(seq):
        node.stage = next(s for s in range(k) if plan.cuts[s] <= p < plan.cuts[s + 1])
    for n in g.inputs():
        n.stage = 0
    # Each stage's recompute, as `stage_remat` marks (segment numbers, model-wide): not `remat` and
    # `segment`, which are the rematerialize pass's whole-model checkpoints the torch target lowers.
    segment = 0
    for r in plan.remat if budget.active else ():
        for lo, hi in (r.segments if r is not None else ()):
            for p in range(lo, hi):
                seq[p].marks["stage_remat"] = segment
            segment += 1
    summary = P.report(fig, plan, m, budget if budget.active else None, rate, program)
    summary.update(source=source, memory_cap=budget.cap, remat_budget=budget.fraction,
                   activation_cap=budget.activation_cap, param_copies=budget.param_copies,
                   flops_per_s=None if fig.unit == "ps" else rate)
    for row in summary["stages"]:
        extra = f", recomputes {row['recompute_s'] * 1e3:.3g} ms" if row["recompute_s"] else ""
        ctx.note(f"stage {row['index']}: {row['first']} .. {row['last']} ({row['nodes']} nodes), "
                 f"{row['time_s'] * 1e3:.3g} ms{extra}, sends {P._human(row['send_bytes'])}B")
    ctx.note(f"{k} stages: balance {summary['balance']:.3f} (lower bound {summary['lower_bound']['balance']:.3f}), "
             f"bubble {summary['bubble']:.1%} at {m} microbatches")
    for note in fig.notes:
        ctx.note(note)
    return PassResult(rewritten=len(seq), summary=summary)


def _spec_plan(program, fig, spec_pipe, budget, ctx) -> P.Plan:
    """The plan of the spec's own stages (rule 3); with a budget, each stage's cheapest remat that fits."""
    assigned, problems = P.stages_from_names(fig.ids, spec_pipe.stages)
    if problems:
        errs = []
        for message, at, expected in problems:
            path = ("pipeline", "stages") + (tuple(at) if at is not None else ())
            errs.append(SpecError(message, program.spec.loc(path), expected=expected))
        raise errs[0] if len(errs) == 1 else SpecErrors(errs)
    k = len(spec_pipe.stages)
    cuts = P.cuts_of(assigned, k)
    S = P.StageSaved(fig)
    remats, memory = [], []
    if budget.active:
        planner = planner_for(fig, budget.microbatches)
        Pb, Bb = P.Prefix(fig.param_bytes), P.Prefix(fig.buffer_bytes)
        for s, (a, b) in enumerate(zip(cuts, cuts[1:])):
            held = P.stage_param_bytes(fig, Pb, Bb, a, b, budget.param_copies)
            room = (budget.cap - held) if budget.cap is not None else float("inf")
            if budget.fraction is not None:
                room = min(room, budget.fraction * budget.microbatches * S.s(a, b))
            if budget.activation_cap is not None:
                room = min(room, budget.activation_cap)
            r = planner(a, b, room) if room >= 0 else None
            if r is None:
                ctx.warn(f"stage {s} of the spec's pipeline does not fit the memory budget whatever it recomputes")
                r = P.Remat(0, S.s(a, b))
            remats.append(r)
            memory.append(held + r.memory(budget.microbatches))
    else:
        remats = [P.Remat(0, S.s(a, b)) for a, b in zip(cuts, cuts[1:])]
        memory = [None] * k
    C = P.Prefix(fig.cost)
    bound = max(C.s(a, b) + r.extra for (a, b), r in zip(zip(cuts, cuts[1:]), remats))
    return P.Plan(cuts, bound, remats, memory, P.lower_bound(fig.cost, k))
