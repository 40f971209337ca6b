"""Pipeline partition balance: nnspec's partition_pipeline against the splits pipeline libraries make.

For each spec and K = 2, 4, 8 stages, one cost vector (training FLOPs per microbatch, forward +
backward, from nnspec's cost model at N=1) is cut three ways, and each cut is scored by its balance,
max / mean stage cost (1.0 is perfect; the step time of a pipeline is set by its slowest stage):

  nnspec              partition_pipeline: the exact min-max contiguous partition of the nodes in
                      topological order (compiler/partition.py), ties to the fewest bytes sent
  uniform-by-layer    DeepSpeed's `partition_method: uniform`: the same number of layers per stage
  parameter-balanced  DeepSpeed's `partition_method: parameters`: the min-max partition of the
                      layers' parameter counts (its `partition_balanced`)

"Layers" are what a pipeline library's layer list holds: each top-level node and each outermost
block instance (a bottleneck, a decoder block) is one. The lower bound is max(largest node,
total / K) / mean: no contiguous cut of the nodes does better. Goal: nnspec optimal on chains (the
tests check brute force) and <= 1.05 wherever the lower bound allows.

A last table runs the recompute `--memory` plans: the torch stage classes checkpoint each stage's
planned segments (targets/torch/stages.py); per stage, the bytes its forward keeps for backward per
microbatch as predicted by the plan and as measured (saved_tensors_hooks, each storage once,
parameters and buffers excluded, plus the inputs each checkpoint call holds), and the composed
stages' forward + backward time with the recompute against the same model's stages without it.

Usage: .venv/bin/python benchmarks/partition.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time

from timing import REPO, header, table

from nnspec.compiler import load
from nnspec.compiler import partition as P

SPECS = [("resnet50", "resnet", "resnet50"), ("resnet152", "resnet", "resnet152"),
         ("transformer (base)", "transformer", "base"),
         ("gpt_small", str(REPO / "benchmarks" / "specs" / "gpt_small.yaml"), None)]
KS = (2, 4, 8)
GOAL = 1.05


def layers(fig: P.Figures, program) -> list:
    """(first position, last position + 1) of each layer: a top-level node or an outermost block instance."""
    g = program.forward
    out, key_of = [], []
    for nid in fig.ids:
        keys = P.instance_keys(g.node(nid))
        key_of.append(keys[0] if keys else nid)
    start = 0
    for p in range(1, fig.n + 1):
        if p == fig.n or key_of[p] != key_of[p - 1]:
            out.append((start, p))
            start = p
    return out


def uniform(units: int, k: int) -> list | None:
    """DeepSpeed's partition_uniform: layer boundaries of k parts of (nearly) equal layer counts."""
    if units < k:
        return None
    base, extra = divmod(units, k)
    cuts = [0]
    for s in range(k):
        cuts.append(cuts[-1] + base + (1 if s < extra else 0))
    return cuts


def balanced(weights: list, k: int) -> list | None:
    """DeepSpeed's partition_balanced: the contiguous split of `weights` into k parts minimising the
    heaviest part (the same exact bisection nnspec uses, on these weights)."""
    if len(weights) < k:
        return None
    fig = P.Figures([str(i) for i in range(len(weights))], list(weights), [0] * len(weights), [0] * len(weights),
                    [0] * len(weights), [0] * len(weights), [0] * len(weights), [0] * len(weights),
                    [0] * len(weights), [0] * (len(weights) + 1), [0] * (len(weights) + 1))
    return P.plan(fig, k).cuts


def balance_of(cost: list, cuts: list) -> float:
    stages = [sum(cost[a:b]) for a, b in zip(cuts, cuts[1:])]
    return max(stages) / (sum(stages) / len(stages))


def exact_dp(cost: list, k: int) -> int:
    """The textbook min-max DP over every (stage, end, start): the optimum nnspec's bisection must equal."""
    C = P.Prefix(cost)
    return P._dp_bound(len(cost), k, C.s, C.s)


def row(name: str, fig: P.Figures, program, k: int) -> tuple[list, float]:
    t0 = time.perf_counter()
    pl = P.plan(fig, k)
    took = time.perf_counter() - t0
    nn = balance_of(fig.cost, pl.cuts)
    optimum = exact_dp(fig.cost, k)
    assert optimum == pl.bound, (name, k, optimum, pl.bound)  # nnspec is the exact optimum
    spans = layers(fig, program)
    unit_cost = [sum(fig.cost[a:b]) for a, b in spans]
    unit_params = [sum(fig.params[a:b]) for a, b in spans]
    u = uniform(len(spans), k)
    b = balanced(unit_params, k)
    lb = pl.lower_bound / (sum(fig.cost) / k)
    cell = lambda cuts: "-" if cuts is None else f"{balance_of(unit_cost, cuts):.3f}"
    ok = "yes" if nn <= GOAL else "optimal" if optimum == pl.bound else "NO"
    return [name, k, fig.n, len(spans), f"{nn:.3f}", cell(u), cell(b), f"{lb:.3f}", ok, f"{took * 1e3:.0f}"], nn


def joint_rows(program, fig: P.Figures, k: int, m: int, caps: list) -> list:
    """--memory: the cut and each stage's remat chosen together, against cutting for FLOPs first and
    then planning each stage's remat to fit (what a pipeline library plus checkpointing does)."""
    out = []
    free = P.plan(fig, k)
    C, Pb, Bb = P.Prefix(fig.cost), P.Prefix(fig.param_bytes), P.Prefix(fig.buffer_bytes)
    for cap in caps:
        budget = P.Budget(cap=cap, microbatches=m)
        planner = P.ChainPlanner(fig, m)
        t0 = time.perf_counter()
        try:
            joint = P.plan(fig, k, budget, planner)
            jt = joint.bound / free.bound
        except P.NoFit:
            joint, jt = None, None
        took = time.perf_counter() - t0
        seq = []
        for a, b in zip(free.cuts, free.cuts[1:]):
            room = cap - P.stage_param_bytes(fig, Pb, Bb, a, b, P.PARAM_COPIES)
            r = planner(a, b, room) if room >= 0 else None
            seq.append(P.INF if r is None else C.s(a, b) + r.extra)
        st = max(seq) / free.bound
        out.append([f"{cap / 1e6:.0f} MB", "-" if jt is None else f"{jt:.3f}",
                    "does not fit" if st == P.INF else f"{st:.3f}",
                    "-" if joint is None else sum(len(r.segments) for r in joint.remat), f"{took:.1f}"])
    return out


def main(argv: list) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="resnet50 and gpt_small only")
    args = ap.parse_args(argv[1:])
    specs = [s for s in SPECS if not args.quick or s[0] in ("resnet50", "gpt_small")]
    rows = []
    for name, spec, preset in specs:
        print(f"{name} ...", file=sys.stderr)
        program = load(spec, preset)
        fig = P.figures(program)
        for k in KS:
            r, _ = row(name, fig, program, k)
            rows.append(r)
    print(header("Pipeline partition balance (max / mean stage cost; 1.000 is perfect)", argv))
    print("cost: training FLOPs per microbatch (forward + backward) from nnspec's cost model at N=1; "
          "the same vector for every column.\n")
    print(table(["spec", "K", "nodes", "layers", "nnspec", "uniform-by-layer", "parameter-balanced", "lower bound",
                 f"<= {GOAL}", "plan ms"], rows))
    print("\n`-`: fewer layers than stages (a layer-list pipeline cannot make K stages); nnspec cuts between "
          "nodes, so it can. lower bound: max(largest node, total/K) / mean. `optimal`: above 1.05, but equal to "
          "the exact min-max DP over every contiguous cut of the nodes (asserted for every row), so no cut "
          "of these nodes does better: the bound is loose where a few large nodes (attention, the LM head) "
          "cannot be spread evenly.")
    program = load("resnet", "resnet50")
    fig = P.figures(program)
    k, m = 4, 16
    need = max(P.plan(fig, k, P.Budget(cap=1e18, microbatches=m)).memory)
    caps = [round(need * f, -6) for f in ((0.6, 0.4) if args.quick else (0.8, 0.6, 0.4, 0.3))]
    print(f"\n### --memory: cut and remat planned together (resnet50, K={k}, M={m} microbatches of N=1)\n")
    print(f"Slowest stage time, recompute included, relative to the unconstrained plan; keeping everything "
          f"needs {need / 1e6:.0f} MB in the largest stage (params x4 + {m} microbatches' saved activations).\n")
    print(table(["memory per stage", "joint (nnspec --memory)", "cut for FLOPs, then remat per stage",
                 "recomputed segments", "plan s"], joint_rows(program, fig, k, m, caps)))
    cases = [("resnet20", "resnet", "resnet20", None, 2, 6e6),
             ("transformer (2 layers, d 32)", "transformer", None, {"layers": 2, "d_model": 32, "heads": 4}, 2, 2e6)]
    print("\n### Stage classes running the recompute (`compile --target torch --stages K --memory B`, N=1)\n")
    print("Per stage and microbatch: bytes kept for backward without remat, and with the planned remat as "
          "predicted and as measured in torch; step: composed stages' forward + backward with the recompute / "
          "without (median), beside the recompute's share of the plan's FLOPs.\n")
    print(table(["spec", "stage", "segments", "kept, no remat", "kept, plan", "kept, measured", "measured / plan",
                 "step: remat / none"], recompute_rows(cases, 5 if args.quick else 20)))


def measured_kept(stages, inputs: dict) -> list:
    """Per stage: bytes its forward keeps for backward, as torch sees them (see the module docstring)."""
    import torch
    import torch.utils.checkpoint

    excluded = {t.untyped_storage().data_ptr() for s in stages for t in [*s.parameters(), *s.buffers()]}
    seen: dict = {}

    def keep(t):
        st = t.untyped_storage()
        if st.data_ptr() not in excluded:
            seen[st.data_ptr()] = st.nbytes()
        return t

    real = torch.utils.checkpoint.checkpoint

    def checkpoint(fn, *args, **kw):  # the real call, after noting what it holds to run fn again
        for a in args:
            if isinstance(a, torch.Tensor):
                keep(a)
        return real(fn, *args, **kw)

    out, x = [], inputs
    torch.utils.checkpoint.checkpoint = checkpoint
    try:
        for s in stages:
            seen.clear()
            x = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in x.items()}
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
                y = s(**x)
            out.append(sum(seen.values()))
            x = y if isinstance(y, dict) else {}
    finally:
        torch.utils.checkpoint.checkpoint = real
    return out


def step_ms(stages, inputs: dict, reps: int) -> float:
    """Median forward + backward time of the stages composed in one process."""
    import torch

    times = []
    for _ in range(reps + 1):
        x = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
        t0 = time.perf_counter()
        for s in stages:
            x = s(**x)
        out = x if isinstance(x, tuple) else (x,)
        sum(o.float().sum() for o in out).backward()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[reps // 2] * 1e3


def recompute_rows(cases: list, reps: int) -> list:
    import torch

    from nnspec.targets.inputs import example_inputs
    from nnspec.targets.registry import get
    from nnspec.targets.torch.stages import build_stages

    torch.set_num_threads(1)
    passes = list(get("torch").pipeline)
    out = []
    for name, spec, preset, over, k, memory in cases:
        program = load(spec, preset, over, passes=passes, target="torch", options={"stages": k, "memory": memory})
        summary = program.results["partition_pipeline"].summary
        plain = load(spec, preset, over, passes=passes, target="torch", options={"stages": k})
        inputs = {n: torch.tensor(v) for n, v in example_inputs(program, summary["dims"], seed=1).items()}
        _, stages = build_stages(program)
        _, plain_stages = build_stages(plain)
        kept = measured_kept(stages, inputs)
        t, t0 = step_ms(stages, inputs, reps), step_ms(plain_stages, inputs, reps)
        predicted = sum(r["recompute_s"] for r in summary["stages"]) / sum(r["time_s"] - r["recompute_s"]
                                                                         for r in summary["stages"])
        for r, got in zip(summary["stages"], kept):
            want = r["kept_bytes_per_microbatch"]
            out.append([name if r["index"] == 0 else "", r["index"], len(r["remat"]),
                        P._human(r["saved_bytes"] // summary["microbatches"]) + "B", P._human(want) + "B",
                        P._human(got) + "B", f"{got / want:.3f}",
                        f"{t:.1f} / {t0:.1f} ms (+{(t / t0 - 1):.0%}; FLOPs +{predicted:.0%})" if r["index"] == 0 else ""])
    return out


if __name__ == "__main__":
    main(sys.argv)
