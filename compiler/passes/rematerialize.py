"""The `rematerialize` pass: plan activation checkpointing for training within a memory budget.

It only decides; the torch target lowers the decision (`targets/torch/checkpoint.py`: contiguous
segments run under `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`).

Options (`PassContext.options`, from `nnspec compile --remat-budget ... --remat-policy ...`):
`remat_budget` (none: the pass does nothing), `remat_policy` (sqrt | chain | milp), `dims` (the
dim values the plan is made at; default N=1 and each other symbol's `opt`), `profile` (measured
`{node id: {"fwd": seconds, "bwd": seconds}}`; FLOPs and bytes estimate the times otherwise) and
`remat_time_limit` (seconds for the MILP, default 10) and `remat_cap` (what one checkpointed
segment may keep again while it is recomputed, in the budget's forms; default the budget itself).
Without a budget the pass does nothing (`on_request`), so the torch pipeline runs it always.

1. The budget is bytes kept for backward (what `saved_tensors_hooks` sees at the end of the
   forward pass; parameters and buffers excluded): a fraction of the figure with nothing
   recomputed (`0.33`, `33%`) or an amount (`200MB`, `1.5GiB`, `123456` bytes).
2. The forward graph becomes units (top-level nodes, block instances, repeat items: what the
   generated forward calls) with their costs and the tensors between them (compiler/remat/model.py).
3. Nothing is planned when the budget already holds that figure.
4. The policy plans on those units: `chain` (the default) is the exact dynamic program over the
   stages between the graph's articulation points; `milp` (the default where there are none to
   cut at) solves Checkmate's formulation with HiGHS under a time limit, the chain plan as its
   incumbent and fallback; `sqrt` is Chen et al.'s ceil(sqrt(n)) equal segments. Each
   checkpointed segment's own saves must fit the budget too (or `remat_cap`), so backward's peak
   stays within about twice the budget (compiler/remat/policies.py).
5. A budget no plan meets is an error naming the smallest one that is met.
6. Every node of a checkpointed segment is marked `remat` with its segment's number
   (`@remat @segment=2` in `--dump-after rematerialize`). A scan is one unit: stored, checkpointed
   whole, or -- when its body can run again (compiler/remat/model.py rule 4) -- with its steps
   checkpointed in chunks of k, the last s stored, marked `@checkpoint_steps=k @stored_steps=s`
   (its T steps are a chain of T equal stages with the carried state between them: each (k, s) is
   one of the scan unit's options, which `chain` and `milp` weigh with the other units exactly; a
   chunk's own saves while it is recomputed must fit the cap like a segment's). A scan fused into
   one nn.LSTM / nn.GRU kernel (`--fuse safe`, the torch default) runs its steps inside the kernel:
   it stays one unit, stored or checkpointed whole (compile with `--fuse none` to chunk it), and so
   do the `lstm` / `gru` ops: run over chunks of the sequence, the kernel sums its weight gradients
   chunk by chunk, so they would no longer be bit-identical to those without a budget (outputs and
   input gradients are).
7. The summary (and `nnspec inspect --remat-budget`) reports the plan: budget, bytes kept before
   and after, the estimated recompute cost, each segment and each chunked scan; the manifest
   records it.
"""
from __future__ import annotations

from ..cost import dim_values, parse_bytes
from ..errors import PassError
from ..remat import model as remat_model
from ..remat.policies import Infeasible, chain_of, dag_memory, plan_chain, plan_dag, plan_sqrt
from .manager import PassContext, PassResult, Program, register_pass

POLICIES = ("chain", "milp", "sqrt")
BUDGET_FORMS = "a fraction of what backward keeps without recomputation, such as 0.33 or 33%, or an amount " \
    "such as 200MB, 1.5GiB or 123456 (bytes)"


def parse_budget(value) -> tuple[str, float]:
    """("fraction", f) with 0 < f <= 1, or ("bytes", n): rule 1's forms. A plain integer is bytes,
    a number with a decimal point a fraction; PassError naming the forms otherwise."""
    if isinstance(value, bool):
        raise PassError(f"--remat-budget {value!r} is not a budget", expected=BUDGET_FORMS)
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = str(value)
    else:
        text = str(value).strip()
    shown = text if len(text) <= 40 else text[:40] + "..."
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise PassError(f"--remat-budget {shown!r} is not a budget", expected=BUDGET_FORMS) from None
        if not 0 < pct <= 100:
            raise PassError(f"--remat-budget {shown}: a percentage must be more than 0 and at most 100",
                            expected=BUDGET_FORMS)
        return "fraction", pct / 100
    try:
        amount, plain = parse_bytes(text)
    except ValueError:
        raise PassError(f"--remat-budget {shown!r} is not a budget", expected=BUDGET_FORMS) from None
    if plain:
        f = amount
        if not 0 < f <= 1:
            raise PassError(f"--remat-budget {shown}: a fraction must be more than 0 and at most 1",
                            expected=BUDGET_FORMS + " (more than 1 is bytes: write it without a decimal point)")
        return "fraction", f
    if amount < 1:
        raise PassError(f"--remat-budget {shown}: the budget must be at least one byte", expected=BUDGET_FORMS)
    return "bytes", float(int(amount))


def human_bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g} {unit}"
    return f"{int(n)} B"


@register_pass("rematerialize", requires=("infer_shapes",), changes=(), on_request=True)
def rematerialize(program: Program, ctx: PassContext) -> PassResult:
    """Plan activation checkpointing within `--remat-budget` (rules in the module docstring)."""
    opts = ctx.options
    budget_opt = opts.get("remat_budget")
    policy = opts.get("remat_policy")
    if policy is not None and policy not in POLICIES:
        raise PassError(f"--remat-policy {str(policy)[:40]!r} is not a policy", expected=f"one of: {', '.join(POLICIES)}")
    if budget_opt is None:
        if policy is not None:
            raise PassError("--remat-policy needs --remat-budget", expected="a budget, e.g. --remat-budget 0.33")
        return PassResult(summary={"planned": False})
    kind, amount = parse_budget(budget_opt)
    g = program.forward
    vals = dim_values(g, opts.get("dims"))
    model = remat_model.build(g, vals, opts.get("profile"))
    full = model.full
    budget = amount * full if kind == "fraction" else amount
    summary = {"planned": True, "budget": _budget_text(budget_opt, kind, amount), "budget_bytes": int(budget),
               "dims": vals, "saved_before": full, "forward_cost": sum(model.dag.compute)}
    if model.inexact:
        summary["estimated_ops"] = model.inexact
        ctx.warn("bytes kept for backward are estimated for op(s) " + ", ".join(model.inexact))
    if budget >= full:  # rule 3
        summary.update(policy=policy or "chain", saved_after=full, recompute=0.0, segments=[])
        summary["report"] = _report(program, summary, model)
        ctx.note(f"backward keeps {human_bytes(full)} without recomputation, within the budget: nothing to do")
        return PassResult(summary=summary)
    if opts.get("remat_cap") is not None:
        ckind, camount = parse_budget(opts["remat_cap"])
        cap = camount * full if ckind == "fraction" else camount
    else:
        cap = budget
    _fit_chunks(model, cap)
    chain, stages = chain_of(model.dag)
    policy = policy or ("chain" if len(chain) >= 2 or any(model.dag.options) else "milp")
    segments, choices, status = _plan(model, chain, stages, policy, budget, cap, opts, program, vals)
    kept, cost, peak = dag_memory(model.dag, segments, choices)
    marked = _mark(model, segments, choices)
    peak = max([peak] + [model.units[u].chunk_peak[j] for u, j in choices.items()])
    summary.update(policy=policy, saved_after=kept, recompute=cost, peak_segment=peak,
                   segments=_segment_rows(model, segments), scans=_scan_rows(model, choices))
    if status != "optimal":
        summary["solver"] = status
    summary["report"] = _report(program, summary, model)
    ctx.note(f"{policy}: {len(segments)} checkpointed segment(s) keep {human_bytes(kept)} of {human_bytes(full)} "
             f"for backward ({kept / full:.0%}), recomputing {cost / max(summary['forward_cost'], 1e-30):.0%} of the "
             "forward pass")
    return PassResult(rewritten=marked, summary=summary)


def _budget_text(raw, kind: str, amount: float) -> str:
    return f"{amount:g}" if kind == "fraction" else f"{int(amount)} bytes ({str(raw)[:40]})"


def _plan(model, chain, stages, policy: str, budget: float, cap: float, opts: dict, program,
          vals) -> tuple[list, dict, str]:
    """(unit segments, {unit: option index}, solver status) under `policy`, or the rule 5 error."""
    def to_units(plan) -> tuple[list, dict]:
        segs = [(stages[a][0], stages[b - 1][1]) for a, b in plan.segments]
        return segs, {stages[k][0]: j for k, j in plan.choices.items()}

    def infeasible(smallest) -> PassError:
        full = model.full
        where = f"{program.spec.name}" + (f" (preset {program.spec.preset})" if program.spec.preset else "")
        dims = ", ".join(f"{k}={v}" for k, v in vals.items())
        at = f" at {dims}" if dims else ""
        return PassError(f"--remat-budget {human_bytes(budget)} ({budget / full:.3g} of the {human_bytes(full)} "
                         f"backward keeps without recomputation) cannot be met for {where}{at} with the "
                         f"{policy} policy: the smallest feasible budget is {smallest / full:.3g} "
                         f"({human_bytes(smallest)}, {int(smallest)} bytes)",
                         expected=f"--remat-budget {_ceil3(smallest / full)} or more" + _unfuse_hint(model))

    if policy == "sqrt":
        plan = plan_sqrt(chain)
        if plan.saved > budget or plan.peak > cap:
            smallest = max(plan.saved, plan.peak if cap == budget else 0)
            raise infeasible(smallest)
        segs, choices = to_units(plan)
        return segs, choices, "optimal"
    try:
        plan = plan_chain(chain, None, budget, cap=None if cap == budget else cap)
        incumbent = to_units(plan)
    except Infeasible as e:
        if policy == "chain":
            if any(u.chunks or u.offered is not None for u in model.units):  # the chunks offered depend on the cap
                raise infeasible(_smallest_with_chunks(model, None if cap == budget else cap)) from None
            raise infeasible(e.smallest) from None
        incumbent, plan = None, None
    if policy == "chain":
        return incumbent[0], incumbent[1], "optimal"
    limit = float(opts.get("remat_time_limit", 10.0))
    inc = (incumbent[0], dag_memory(model.dag, *incumbent)[1]) if incumbent else None
    try:
        segs, choices, status = plan_dag(model.dag, budget, cap, time_limit=limit, incumbent=inc)
    except Infeasible:
        raise infeasible(_milp_smallest(model, budget, limit)) from None
    if status == "incumbent":
        return incumbent[0], incumbent[1], status
    return segs, choices, status


def _unfuse_hint(model) -> str:
    """Rule 6: a scan fused into one kernel cannot checkpoint its steps; unfused it can."""
    fused = [n.id for u in model.units for n in u.nodes if n.op == "scan" and n.fused is not None]
    if not fused:
        return ""
    return f", or --fuse none so that scan '{fused[0]}' can checkpoint its steps in chunks"


def _milp_smallest(model, budget: float, limit: float) -> float:
    """The smallest budget the MILP meets, to within 1% (bisection over feasibility solves)."""
    full = model.full
    lo, hi = budget, float(full)
    while hi - lo > 0.01 * full:
        mid = (lo + hi) / 2
        _fit_chunks(model, mid)  # the chunk sizes that fit a budget of `mid`
        try:
            plan_dag(model.dag, mid, time_limit=max(1.0, limit / 10))
            hi = mid
        except Infeasible:
            lo = mid
    return hi


def _ceil3(x: float) -> str:
    """`x` rounded up to three significant figures (a budget that certainly is enough)."""
    import math
    if x <= 0:
        return "0"
    digits = 3 - int(math.floor(math.log10(x))) - 1
    return f"{math.ceil(x * 10 ** digits) / 10 ** digits:.{max(digits, 0)}f}"


def _mark(model, segments: list, choices: dict) -> int:
    """Rule 6: write the plan on the nodes; returns how many were marked."""
    count = 0
    for u, j in choices.items():  # a scan with its steps checkpointed in chunks
        node = model.units[u].nodes[0]
        k, last = model.units[u].chunks[j]
        node.marks["checkpoint_steps"] = k
        if last:
            node.marks["stored_steps"] = last
        count += 1
    for k, (a, b) in enumerate(segments, 1):
        for unit in model.units[a:b]:
            for n in unit.nodes:
                n.remat = True
                n.marks["segment"] = k
                count += 1
    return count


def _fit_chunks(model, cap: float) -> None:
    """Drop the chunk sizes whose chunk keeps more than `cap` while it is recomputed (rule 6), and
    then, per number of stored steps, every option but the one of fewest chunks (it dominates)."""
    for u, unit in enumerate(model.units):
        if not unit.chunks and unit.offered is None:
            continue
        if unit.offered is None:  # every chunk size the model offers, before any cap
            unit.offered = (list(unit.chunks), list(unit.chunk_peak), list(model.dag.options[u]))
        chunks, peaks, options = unit.offered
        best: dict = {}  # stored steps -> the fitting option of fewest chunks (fewest bytes, least cost)
        for j, p in enumerate(peaks):
            last = chunks[j][1]
            if p <= cap and (last not in best or options[j][:2] < options[best[last]][:2]):
                best[last] = j
        fit = sorted(best.values())
        model.dag.options[u] = [options[j] for j in fit]
        unit.chunks = [chunks[j] for j in fit]
        unit.chunk_peak = [peaks[j] for j in fit]


def _smallest_with_chunks(model, cap: float | None) -> float:
    """The smallest budget the chain meets when the chunk sizes allowed depend on it (the cap
    following the budget, or fixed at `cap`): bisection over budgets."""
    def feasible(b: int) -> bool:
        _fit_chunks(model, cap if cap is not None else b)
        try:
            plan_chain(chain_of(model.dag)[0], None, b, cap=cap)
            return True
        except Infeasible:
            return False

    lo, hi = 0, int(model.full)
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _scan_rows(model, choices: dict) -> list:
    rows = []
    for u, j in sorted(choices.items()):
        unit = model.units[u]
        kept, cost, _, _ = model.dag.options[u][j]
        rows.append({"scan": unit.key, "checkpoint_steps": unit.chunks[j][0], "stored_steps": unit.chunks[j][1],
                     "kept": kept,
                     "chunk_saves": unit.chunk_peak[j], "stored_saves": model.dag.extra[u], "recompute": cost})
    return rows


def _segment_rows(model, segments: list) -> list:
    dag = model.dag
    rows = []
    for k, (a, b) in enumerate(segments, 1):
        inputs = sum(v.bytes for v in dag.values if any(a <= c < b for c in v.consumers) and not a <= v.producer < b)
        own = dag_memory(dag, [(a, b)])[2]
        rows.append({"segment": k, "first": model.units[a].key, "last": model.units[b - 1].key, "units": b - a,
                     "nodes": sum(len(u.nodes) for u in model.units[a:b]), "input_bytes": inputs, "own_saves": own,
                     "recompute": sum(dag.compute[a:b])})
    return rows


def _report(program, s: dict, model) -> list:
    """The plan as lines a person reads (`nnspec inspect --remat-budget`)."""
    full = s["saved_before"]
    dims = ", ".join(f"{k}={v}" for k, v in s["dims"].items())
    lines = [f"rematerialize: policy {s['policy']}, budget {s['budget']} = {human_bytes(s['budget_bytes'])}"
             f" at {dims or 'the declared shapes'}",
             f"  kept for backward: {human_bytes(full)} without recomputation -> {human_bytes(s['saved_after'])}"
             f" ({s['saved_after'] / max(full, 1):.1%})",
             f"  recomputed in backward: {s['recompute'] / max(s['forward_cost'], 1e-30):.1%} of the forward pass"
             " (estimated)"]
    for r in s.get("segments", []):
        span = r["first"] if r["first"] == r["last"] else f"{r['first']} .. {r['last']}"
        lines.append(f"  segment {r['segment']}: {span} ({r['nodes']} nodes) keeps its input "
                     f"{human_bytes(r['input_bytes'])} instead of {human_bytes(r['own_saves'])}")
    for r in s.get("scans", []):
        stored = f", the last {r['stored_steps']} stored" if r["stored_steps"] else ""
        lines.append(f"  scan {r['scan']}: steps checkpointed in chunks of {r['checkpoint_steps']}{stored}, keeping "
                     f"{human_bytes(r['kept'])} instead of {human_bytes(r['stored_saves'])}"
                     f" (a chunk keeps {human_bytes(r['chunk_saves'])} while it is recomputed)")
    if s.get("estimated_ops"):
        lines.append(f"  estimated (not exact) for op(s): {', '.join(s['estimated_ops'])}")
    return lines
