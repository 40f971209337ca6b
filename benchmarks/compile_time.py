"""Compile time from a fresh process: spec -> module source -> instantiated nn.Module.

Every measurement is its own fresh interpreter, so import time counts for every variant in the
same way; variants are interleaved round by round. Measured:

  nnspec resnet152        import nnspec, spec -> IR, IR -> source, import torch, exec + construct
  torchvision resnet152   import torch + torchvision, torchvision.models.resnet152() (no weights)
  torch.fx resnet152      the torchvision build, then fx.symbolic_trace + recompile
  nnspec residual_stack   benchmarks/specs/residual_stack.yaml: 1000 blocks of linear+relu+add
  hand-written stack      the same 1000 blocks as a plain nn.ModuleList (reference point)

Goal: nnspec resnet152 (everything, fresh process) within 1.5x of torchvision's resnet152 build
(everything, fresh process). Ratios are of medians; wall time and child CPU time are both shown
because other work on a shared machine inflates wall time far more than CPU time.

Usage: .venv/bin/python benchmarks/compile_time.py [--quick] [--rounds N]
"""
from __future__ import annotations

import sys
import textwrap

from timing import REPO, header, median, percentile, rounds_from, run_fresh, sec, table

GOAL = 1.5
STACK_SPEC = str(REPO / "benchmarks" / "specs" / "residual_stack.yaml")

NNSPEC = textwrap.dedent("""
    import time, json
    t0 = time.perf_counter()
    import nnspec.compiler as c
    from nnspec.targets.torch.codegen import generate_source
    from nnspec.targets.torch.build import load_source
    t1 = time.perf_counter()
    p = c.load({spec!r}, {preset!r}, {{}})
    t2 = time.perf_counter()
    src, cls = generate_source(p)
    t3 = time.perf_counter()
    import torch
    torch.set_num_threads(1)
    t4 = time.perf_counter()
    mod = load_source(src, "bench_generated")
    torch.manual_seed(0)
    m = getattr(mod, cls)()
    t5 = time.perf_counter()
    print(json.dumps({{"imports": (t1 - t0) + (t4 - t3), "spec_ir": t2 - t1, "ir_source": t3 - t2,
                      "instantiate": t5 - t4, "in_process": t5 - t0,
                      "params": sum(q.numel() for q in m.parameters())}}))
""")

TORCHVISION = textwrap.dedent("""
    import time, json
    t0 = time.perf_counter()
    import torch
    torch.set_num_threads(1)
    import torchvision
    t1 = time.perf_counter()
    torch.manual_seed(0)
    m = torchvision.models.resnet152()
    t2 = time.perf_counter()
    out = {{"imports": t1 - t0, "instantiate": t2 - t1}}
    if {fx}:
        gm = torch.fx.symbolic_trace(m)
        t3 = time.perf_counter()
        gm.recompile()
        t4 = time.perf_counter()
        out.update(trace=t3 - t2, recompile=t4 - t3)
    else:
        t4 = t2
    out["in_process"] = t4 - t0
    out["params"] = sum(q.numel() for q in m.parameters())
    print(json.dumps(out))
""")

HAND_STACK = textwrap.dedent("""
    import time, json
    t0 = time.perf_counter()
    import torch
    from torch import nn
    torch.set_num_threads(1)
    t1 = time.perf_counter()

    class Residual(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = nn.Linear(width, width)

        def forward(self, x):
            return x + torch.relu(self.fc(x))

    class Stack(nn.Module):
        def __init__(self, width=64, depth=1000):
            super().__init__()
            self.stack = nn.ModuleList(Residual(width) for _ in range(depth))

        def forward(self, x):
            for blk in self.stack:
                x = blk(x)
            return x

    torch.manual_seed(0)
    m = Stack()
    t2 = time.perf_counter()
    print(json.dumps({"imports": t1 - t0, "instantiate": t2 - t1, "in_process": t2 - t0,
                      "params": sum(q.numel() for q in m.parameters())}))
""")

VARIANTS = {
    "nnspec resnet152": NNSPEC.format(spec="resnet", preset="resnet152"),
    "torchvision resnet152": TORCHVISION.format(fx=False),
    "torch.fx resnet152": TORCHVISION.format(fx=True),
    "nnspec residual_stack": NNSPEC.format(spec=STACK_SPEC, preset=None),
    "hand-written stack": HAND_STACK,
}
BASELINE = {"nnspec resnet152": "torchvision resnet152", "torchvision resnet152": "torchvision resnet152",
            "torch.fx resnet152": "torchvision resnet152", "nnspec residual_stack": "hand-written stack",
            "hand-written stack": "hand-written stack"}


def measure(rounds: int) -> dict:
    names = list(VARIANTS)
    runs = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            res = run_fresh(VARIANTS[n])
            runs[n].append(res)
            print(f"  round {r + 1}/{rounds} {n}: {res.get('error') or sec(res['wall_s']) + ' s'}",
                  file=sys.stderr, flush=True)
    return runs


def phase(runs: list, key: str) -> str:
    vals = [r[key] for r in runs if key in r]
    return sec(median(vals)) if vals else "-"


def report(runs: dict) -> tuple[str, str]:
    ok = {n: [r for r in rs if "error" not in r] for n, rs in runs.items()}
    med = {n: (median([r["wall_s"] for r in rs]), median([r["cpu_s"] for r in rs])) if rs else None
           for n, rs in ok.items()}
    rows = []
    for n, rs in ok.items():
        if not rs:
            rows.append([n, f"failed: {runs[n][0]['error']}"] + [""] * 9)
            continue
        compile_ = "-"
        if "spec_ir" in rs[0]:
            compile_ = f"{phase(rs, 'spec_ir')} + {phase(rs, 'ir_source')}"
        elif "trace" in rs[0]:
            compile_ = f"{phase(rs, 'trace')} + {phase(rs, 'recompile')}"
        base = med.get(BASELINE[n])
        wall, cpu = med[n]
        startup = median([r["wall_s"] - r["in_process"] for r in rs])
        rows.append([n, len(rs), sec(startup), phase(rs, "imports"), compile_, phase(rs, "instantiate"),
                     sec(wall), sec(percentile([r["wall_s"] for r in rs], 90)), sec(cpu),
                     f"{wall / base[0]:.2f}x" if base else "-", f"{cpu / base[1]:.2f}x" if base else "-"])
    head = ["variant", "runs", "interp start", "imports", "compile", "instantiate", "total wall", "wall p90",
            "total CPU", "wall / base", "CPU / base"]
    notes = ("compile: spec->IR + IR->source for nnspec, symbolic_trace + recompile for torch.fx; "
             "instantiate: exec of the generated source + construction (nnspec), model construction "
             "(torchvision, hand-written). All phases are medians in seconds; totals are the whole "
             "fresh process as seen by the parent. base: torchvision resnet152 for the resnet152 rows, "
             "the hand-written stack for the residual_stack rows.")
    nn_, tv = med.get("nnspec resnet152"), med.get("torchvision resnet152")
    if nn_ and tv:
        rw, rc = nn_[0] / tv[0], nn_[1] / tv[1]
        met = "MET" if max(rw, rc) <= GOAL else ("MET on CPU time only" if rc <= GOAL else "NOT MET")
        verdict = (f"verdict: nnspec resnet152 fresh-process compile+instantiate is {rw:.2f}x torchvision's "
                   f"build by wall time and {rc:.2f}x by CPU time (goal <= {GOAL}x): {met}")
    else:
        verdict = "verdict: not measurable (a variant failed)"
    return table(head, rows) + "\n\n" + notes, verdict


def main(argv: list) -> None:
    rounds = rounds_from(argv, __doc__)
    print(header("Compile time (fresh processes)", argv))
    text, verdict = report(measure(rounds))
    print(text + "\n\n" + verdict + "\n")


if __name__ == "__main__":
    main(sys.argv)
