"""Rematerialization: bytes kept for backward and step-time overhead under a budget sweep.

For each model, the generated module is compiled at budgets of 10%...100% of what backward keeps
without recomputation, with nnspec's `chain` and `milp` policies; every module holds the same
weights. Per budget: the bytes the plan predicts, the bytes measured on the module (every storage
`saved_tensors_hooks` sees over one forward, plus the inputs each checkpoint keeps, each once,
parameters and buffers out) and the training step's time (forward + `out.sum().backward()`,
train mode, one thread; the least CPU time of the rounds, which other processes on a shared
machine only ever add to) over the module without a budget. The baseline is
`torch.utils.checkpoint.checkpoint_sequential` over the same modules in a row with 2, 4, sqrt(n)
and 2 sqrt(n) segments; for each of its points nnspec's chain policy is compiled at the bytes it
measured (an absolute budget), so the two are compared at equal saved bytes.

Models: resnet50 (batch 4, 224x224), the 1000-block residual MLP stack
(benchmarks/specs/residual_stack.yaml, batch 64) and `lstm500`, the LSTM cell scanned over 500 steps
(benchmarks/specs/scan_lstm.yaml with steps=500, batch 8, `--fuse none` so the scan stays a loop of
cell calls): nnspec checkpoints its steps in chunks, checkpoint_sequential runs over the 500 steps.
The MILP's solve time is measured on 500-unit graphs: the residual stack at depth 500 and a random
DAG with long skips (no articulation points); `--no-milp-times` leaves that table out.

Goals: at equal saved bytes nnspec's overhead <= checkpoint_sequential's; a 3x cut of saved bytes
at <= 15% step-time overhead on resnet50; milp on 500-node graphs in <= 10 s.

Usage: .venv/bin/python benchmarks/remat.py [--models resnet50,residual,lstm500] [--rounds N] [--quick]
"""
from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import time
from pathlib import Path

from timing import header, interleaved, table

HERE = Path(__file__).resolve().parent
FRACTIONS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def models():
    import torch.nn as nn

    def resnet_seq(m):  # the generated forward's calls, in a row (relu and max pooling as modules)
        return [m.conv1, m.bn1, nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), *m.layer1, *m.layer2, *m.layer3,
                *m.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten(), m.fc]

    return {
        "resnet50": dict(spec="resnet", preset="resnet50", overrides={}, dims={"N": 4}, seq=resnet_seq),
        "residual": dict(spec=str(HERE / "specs" / "residual_stack.yaml"), preset=None, overrides={},
                         dims={"N": 64}, seq=lambda m: list(m.stack)),
    }


def compiled(cfg, **options):
    from nnspec.compiler.passes import compile_spec
    from nnspec.targets.registry import get
    return compile_spec(cfg["spec"], cfg["preset"], cfg["overrides"], passes=list(get("torch").pipeline),
                        target="torch", options={"dims": cfg["dims"], **options})


def kept_bytes(run, state: set) -> int:
    """Bytes kept for backward over one forward (`run()`): every storage saved_tensors_hooks sees and
    every tensor a checkpoint keeps, each once, module state out."""
    import torch
    import torch.utils.checkpoint as cp

    held = []
    original = cp.checkpoint

    def recording(fn, *args, **kw):
        for a in args:  # checkpoint_sequential hands a tuple of tensors on as one argument
            held.extend(t for t in (a if isinstance(a, (tuple, list)) else (a,)) if isinstance(t, torch.Tensor))
        return original(fn, *args, **kw)

    cp.checkpoint = recording  # checkpoint_sequential calls the module's global too
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: held.append(t) or t, lambda t: t):
            out = run()
    finally:
        cp.checkpoint = original
    sizes = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held}
    del out
    return sum(v for k, v in sizes.items() if k not in state)


def state_of(module) -> set:
    return {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())}


def step_fn(run, module):
    def f():
        module.zero_grad(set_to_none=True)
        run().sum().backward()
    return f


def sweep(name, cfg, rounds: int, fractions: list, out: list) -> None:
    import torch
    from torch.utils.checkpoint import checkpoint_sequential

    from nnspec.compiler.errors import PassError
    from nnspec.targets.inputs import example_inputs
    from nnspec.targets.torch.build import build_module
    from nnspec.targets.torch.codegen import generate_source

    base = compiled(cfg)
    m0 = build_module(base, seed=0).train()
    x = torch.from_numpy(next(iter(example_inputs(base, cfg["dims"], 1).values())))
    state = state_of(m0)
    full = kept_bytes(lambda: m0(x), state)
    variants = {"none": (m0, lambda: m0(x))}
    modules: dict = {}  # source digest -> variant name (a plan two budgets share is timed once)
    rows = []

    def nnspec_variant(label, **opts):
        t0 = time.perf_counter()
        try:
            p = compiled(cfg, **opts)
        except PassError as e:
            return None, e.message.split(": ")[-1]
        plan_s = time.perf_counter() - t0
        s = p.results["rematerialize"].summary
        src = generate_source(p)[0]
        digest = hashlib.sha256(src.encode()).hexdigest()
        if digest not in modules:
            m = build_module(p, seed=None).train()
            m.load_state_dict(m0.state_dict())
            modules[digest] = label
            variants[label] = (m, (lambda m=m: m(x)))
        m = variants[modules[digest]][0]
        measured = kept_bytes(lambda: m(x), state_of(m))  # its own parameters are module state
        return dict(label=modules[digest], predicted=s["saved_after"], measured=measured,
                    predicted_full=s["saved_before"], segments=len(s.get("segments", [])), plan_s=plan_s,
                    solver=s.get("solver", "optimal")), None

    for policy in ("chain", "milp"):
        for f in fractions:
            r, why = nnspec_variant(f"{policy}@{f:g}", remat_budget=f"{f:.0%}", remat_policy=policy)
            rows.append((policy, f, r, why))
    seq = cfg["seq"](m0)
    n = len(seq)
    root = math.ceil(math.sqrt(n))
    cs_rows = []
    for segs in sorted({2, 4, root, 2 * root} & set(range(2, n + 1))):
        run = (lambda segs=segs: checkpoint_sequential(seq, segs, x, use_reentrant=False))
        label = f"checkpoint_sequential({segs})"
        variants[label] = (m0, run)
        measured = kept_bytes(run, state)
        r, why = nnspec_variant(f"chain@{measured}B", remat_budget=str(measured), remat_policy="chain")
        # checkpoint_sequential bounds no segment's recomputation: nnspec without its cap either
        free, _ = nnspec_variant(f"chain@{measured}B-nocap", remat_budget=str(measured), remat_policy="chain",
                                 remat_cap="1.0")
        cs_rows.append((segs, label, measured, r, why, free))
    fns = {k: step_fn(run, m) for k, (m, run) in variants.items()}
    wall, cpu = interleaved(fns, rounds)
    # the least CPU time of the rounds: other processes on a shared machine only ever add to it
    t = {k: min(v) for k, v in cpu.items()}

    def over(label):
        return f"{(t[label] / t['none'] - 1) * 100:+.1f}%"

    predicted_full = next((r["predicted_full"] for _, _, r, _ in rows if r), float("nan"))
    out.append(f"### {name}: batch {cfg['dims']['N']}, {n} units in a row, step {t['none'] * 1e3:.0f} ms "
               f"(CPU time, least of {rounds}), {full / 1e6:.2f} MB kept without recomputation "
               f"(predicted {predicted_full / 1e6:.2f} MB)\n")
    body = []
    for policy, f, r, why in rows:
        if r is None:
            body.append([policy, f"{f:.0%}", "-", "-", "-", "-", "-", f"infeasible: {why}"])
            continue
        err = (r["predicted"] - r["measured"]) / max(r["measured"], 1)
        body.append([policy, f"{f:.0%}", f"{r['predicted'] / 1e6:.2f}", f"{r['measured'] / 1e6:.2f}",
                     f"{r['measured'] / full:.1%}", f"{err:+.1%}", over(r["label"]),
                     f"{r['segments']} segments, planned in {r['plan_s']:.2f} s ({r['solver']})"])
    out.append(table(["policy", "budget", "predicted MB", "measured MB", "of full", "pred. error", "overhead",
                      "plan"], body))
    body = []
    for segs, label, measured, r, why, free in cs_rows:
        cells = [segs, f"{measured / 1e6:.2f} ({measured / full:.0%})", over(label)]
        for v in (r, free):
            if v is None:
                cells += ["-", "infeasible"]
            else:
                cells += [f"{v['measured'] / 1e6:.2f} ({v['measured'] / full:.0%})", over(v["label"])]
        cells.append("yes" if free is not None and t[free["label"]] <= t[label] * 1.02 else "no")
        body.append(cells)
    out.append("\ncheckpoint_sequential against nnspec chain at its bytes (budget = what it measured), with the "
               "default cap (each segment's own saves within the budget) and without it (as checkpoint_sequential):\n")
    out.append(table(["segments", "ckpt_seq MB", "ckpt_seq overhead", "nnspec MB", "nnspec overhead",
                      "nnspec no-cap MB", "nnspec no-cap overhead", "no-cap <= ckpt_seq (2% noise)"], body))
    out.append("")


class _Step:
    """Step t of the LSTM as checkpoint_sequential takes it: (h, c) -> (h, c), reading x[:, t] and
    appending h to the per-step outputs (the loop a user would hand to checkpoint_sequential)."""

    def __init__(self, cell, t: int, box: dict):
        self.cell, self.t, self.box = cell, t, box

    def __call__(self, hc):
        h, c = self.cell(self.box["x"].select(1, self.t), hc)
        self.box["ys"].append(h)  # the recomputation in backward appends again: read only before it
        return h, c


def scan_sweep(rounds: int, fractions: list, out: list, steps: int = 500, batch: int = 8) -> None:
    """The LSTM cell scanned over `steps` steps (benchmarks/specs/scan_lstm.yaml, `--fuse none` so
    the scan stays a loop of cell calls): nnspec's plans checkpoint the steps in chunks
    (`@checkpoint_steps=k`); checkpoint_sequential runs over the steps as 2, 4, sqrt(T), 2 sqrt(T)
    segments. The loss is the stacked per-step outputs' sum."""
    import torch
    from torch.utils.checkpoint import checkpoint_sequential

    from nnspec.compiler.errors import PassError
    from nnspec.targets.inputs import example_inputs
    from nnspec.targets.torch.build import build_module
    from nnspec.targets.torch.codegen import generate_source

    cfg = dict(spec=str(HERE / "specs" / "scan_lstm.yaml"), preset=None, overrides={"steps": steps},
               dims={"N": batch})
    base = compiled(cfg, fuse="none")
    m0 = build_module(base, seed=0).train()
    xs = [torch.from_numpy(v) for v in example_inputs(base, cfg["dims"], 1).values()]
    state = state_of(m0)
    full = kept_bytes(lambda: m0(*xs)[0], state)
    variants = {"none": (m0, lambda: m0(*xs)[0])}
    modules = {hashlib.sha256(generate_source(base)[0].encode()).hexdigest(): "none"}  # a plan of no change is it
    rows = []

    def nnspec_variant(label, **opts):
        t0 = time.perf_counter()
        try:
            p = compiled(cfg, fuse="none", **opts)
        except PassError as e:
            return None, e.message.split(": ")[-1]
        plan_s = time.perf_counter() - t0
        s = p.results["rematerialize"].summary
        digest = hashlib.sha256(generate_source(p)[0].encode()).hexdigest()
        if digest not in modules:
            m = build_module(p, seed=None).train()
            m.load_state_dict(m0.state_dict())
            modules[digest] = label
            variants[label] = (m, (lambda m=m: m(*xs)[0]))
        m = variants[modules[digest]][0]
        measured = kept_bytes(lambda: m(*xs)[0], state_of(m))
        scans = s.get("scans") or []
        stored = f", last {scans[0]['stored_steps']} stored" if scans and scans[0]["stored_steps"] else ""
        redone = steps - scans[0]["stored_steps"] if scans else 0
        plan = f"chunks of {scans[0]['checkpoint_steps']} steps{stored}" if scans else \
            f"{len(s.get('segments', []))} segments"
        plan += f", planned in {plan_s:.2f} s ({s.get('solver', 'optimal')})"
        return dict(label=modules[digest], predicted=s["saved_after"], measured=measured, plan=plan,
                    redone=redone), None

    for policy in ("chain", "milp"):
        for f in fractions:
            r, why = nnspec_variant(f"{policy}@{f:g}", remat_budget=f"{f:.0%}", remat_policy=policy)
            rows.append((policy, f, r, why))
    box: dict = {}
    seq = [_Step(m0.rnn.cell, t, box) for t in range(steps)]

    def sequential(segs):
        def run():
            box.update(x=xs[0], ys=[])
            checkpoint_sequential(seq, segs, (xs[1], xs[2]), use_reentrant=False)
            return torch.stack(box["ys"][:steps], 1)
        return run

    # the baseline computes what the module does: same outputs, same gradients
    ref, got = m0(*xs)[0], sequential(2)()
    assert torch.allclose(ref, got), "checkpoint_sequential over the steps differs from the module"
    root = math.ceil(math.sqrt(steps))
    cs_rows = []
    for segs in (2, 4, root, 2 * root):
        run = sequential(segs)
        label = f"checkpoint_sequential({segs})"
        variants[label] = (m0, run)
        measured = kept_bytes(run, state)
        r, why = nnspec_variant(f"chain@{measured}B", remat_budget=str(measured), remat_policy="chain")
        free, _ = nnspec_variant(f"chain@{measured}B-nocap", remat_budget=str(measured), remat_policy="chain",
                                 remat_cap="1.0")
        cs_rows.append((segs, label, measured, r, why, free))
    fns = {k: step_fn(run, m) for k, (m, run) in variants.items()}
    wall, cpu = interleaved(fns, rounds)
    t = {k: min(v) for k, v in cpu.items()}

    def over(label):
        return f"{(t[label] / t['none'] - 1) * 100:+.1f}%"

    out.append(f"### lstm{steps}: LSTM cell (64 -> 128) scanned over {steps} steps, batch {batch}, `--fuse none`, "
               f"step {t['none'] * 1e3:.0f} ms (CPU time, least of {rounds}), {full / 1e6:.2f} MB kept without "
               "recomputation\n")
    body = []
    for policy, f, r, why in rows:
        if r is None:
            body.append([policy, f"{f:.0%}", "-", "-", "-", "-", "-", "-", f"infeasible: {why}"])
            continue
        err = (r["predicted"] - r["measured"]) / max(r["measured"], 1)
        body.append([policy, f"{f:.0%}", f"{r['predicted'] / 1e6:.2f}", f"{r['measured'] / 1e6:.2f}",
                     f"{r['measured'] / full:.1%}", f"{err:+.1%}", r["redone"], over(r["label"]), r["plan"]])
    out.append(table(["policy", "budget", "predicted MB", "measured MB", "of full", "pred. error", "steps redone",
                      "overhead", "plan"], body))
    body = []
    for segs, label, measured, r, why, free in cs_rows:
        size = steps // segs  # checkpoint_sequential checkpoints all but its last segment
        cells = [segs, f"{measured / 1e6:.2f} ({measured / full:.0%})", size * (segs - 1), over(label)]
        for v in (r, free):
            if v is None:
                cells += ["-", "-", "infeasible", "-"]
            else:
                cells += [f"{v['measured'] / 1e6:.2f} ({v['measured'] / full:.0%})", v["redone"], over(v["label"]),
                          v["plan"]]
        body.append(cells)
    out.append("\ncheckpoint_sequential over the steps against nnspec chain at its bytes (budget = what it "
               "measured), with the default cap (one chunk's saves within the budget) and without it:\n")
    out.append(table(["segments", "ckpt_seq MB", "ckpt_seq steps redone", "ckpt_seq overhead", "nnspec MB",
                      "nnspec steps redone", "nnspec overhead", "nnspec plan", "nnspec no-cap MB",
                      "no-cap steps redone", "nnspec no-cap overhead", "no-cap plan"], body))
    out.append("")


def milp_times(out: list) -> None:
    from nnspec.compiler.remat.policies import Dag, Value, dag_memory, plan_dag

    rng = random.Random(0)
    m = 500
    values = [Value(rng.randrange(1000, 5000), u, tuple(sorted({u + 1, min(m - 1, u + rng.randrange(2, 12))})),
                    (u,) if rng.random() < 0.7 else ()) for u in range(m - 1)]
    dag = Dag([rng.uniform(1, 5) for _ in range(m)], [rng.randrange(0, 3000) for _ in range(m)], values)
    full = dag_memory(dag, [])[0]
    rows = []
    for f in (0.3, 0.5, 0.7):
        t0 = time.perf_counter()
        segs, _, status = plan_dag(dag, f * full, time_limit=10)
        kept = dag_memory(dag, segs)[0]
        rows.append([f"random DAG, {m} units, skips up to 11", f"{f:.0%}", f"{time.perf_counter() - t0:.2f}", status,
                     f"{kept / full:.1%}"])
    cfg = dict(spec=str(HERE / "specs" / "residual_stack.yaml"), preset=None, overrides={"depth": 500},
               dims={"N": 64})
    for f in (0.3, 0.5):
        t0 = time.perf_counter()
        p = compiled(cfg, remat_budget=f"{f:g}", remat_policy="milp")
        s = p.results["rematerialize"].summary
        rows.append(["residual stack, depth 500 (1500 nodes, 500 units)", f"{f:.0%}",
                     f"{time.perf_counter() - t0:.2f} (whole pass)", s.get("solver", "optimal"),
                     f"{s['saved_after'] / s['saved_before']:.1%}"])
    out.append("### milp solve time (HiGHS, time limit 10 s)\n")
    out.append(table(["graph", "budget", "seconds", "status", "kept"], rows))
    out.append("")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet50,residual,lstm500")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-milp-times", action="store_true", help="skip the MILP solve-time table")
    ap.add_argument("--quick", action="store_true", help="budgets 20/40/60/80%%, 3 rounds")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    fractions = [0.2, 0.4, 0.6, 0.8] if args.quick else FRACTIONS
    rounds = 3 if args.quick else args.rounds
    out = [header("Rematerialization: budget sweep", sys.argv)]
    if not args.no_milp_times:
        milp_times(out)
    print("\n".join(out), flush=True)
    cfgs = models()
    for name in args.models.split(","):
        part: list = []
        if name == "lstm500":
            scan_sweep(rounds, fractions, part)
        else:
            sweep(name, cfgs[name], rounds, fractions, part)
        print("\n".join(part), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
