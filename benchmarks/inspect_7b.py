"""`nnspec inspect` of the 7B specs as a user runs it: a fresh `nnspec` process, end to end, against
a fresh Python process that builds the same model with transformers on the meta device and counts
its parameters (the quickest way to a 7B model's layout and count without nnspec).

Measured per round (interleaved, fresh processes, 1 thread): `nnspec inspect mistral` (the whole
node table: shapes, parameters and FLOPs of 7,241,732,096 weights, none allocated),
`nnspec inspect mtp -p llama7b_n4`, and `MistralForCausalLM(MistralConfig())` under
`torch.device("meta")` with `sum(p.numel() ...)`. Reported: median wall time and the ratio.

Goal: `nnspec inspect mistral` in < 2 s.

Usage: .venv/bin/python benchmarks/inspect_7b.py [--quick] [--rounds N]
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from timing import PYTHON, REPO, header, median, rounds_from, sec, table

GOAL_S = 2.0
TRANSFORMERS = ("import torch, transformers\n"
                "with torch.device('meta'):\n"
                "    m = transformers.MistralForCausalLM(transformers.MistralConfig())\n"
                "print(sum(p.numel() for p in m.parameters()))\n")
VARIANTS = {
    "nnspec inspect mistral": [PYTHON, "-m", "nnspec.runtime.cli", "inspect", "mistral"],
    "nnspec inspect mtp -p llama7b_n4": [PYTHON, "-m", "nnspec.runtime.cli", "inspect", "mtp", "-p", "llama7b_n4"],
    "transformers MistralForCausalLM on meta": [PYTHON, "-c", TRANSFORMERS],
}


def run(cmd: list) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return {"wall_s": wall}


def main(argv: list) -> None:
    rounds = rounds_from(argv, __doc__)
    runs = {name: [] for name in VARIANTS}
    for r in range(rounds):
        names = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]  # alternate the order: drift cancels
        for name in names:
            res = run(VARIANTS[name])
            runs[name].append(res)
            print(f"  round {r + 1}/{rounds} {name}: {res.get('error') or sec(res['wall_s']) + ' s'}",
                  file=sys.stderr, flush=True)
    print(header("inspecting a 7B spec (fresh processes)", argv))
    failed = {n: rs[0]["error"] for n, rs in runs.items() if any("error" in x for x in rs)}
    if failed:
        print("failed:", failed)
        return
    med = {n: median([x["wall_s"] for x in rs]) for n, rs in runs.items()}
    ref = med["transformers MistralForCausalLM on meta"]
    print(table(["variant", "runs", "wall s (median)", "x transformers"],
                [[n, len(runs[n]), sec(w), f"{w / ref:.2f}"] for n, w in med.items()]))
    w = med["nnspec inspect mistral"]
    print(f"verdict: `nnspec inspect mistral` takes {sec(w)} s (goal < {GOAL_S:g} s): "
          f"{'MET' if w < GOAL_S else 'NOT MET'}")


if __name__ == "__main__":
    main(sys.argv)
