"""`nnspec check` on a 100k-node spec, as a user runs it: a fresh `nnspec` process, end to end.

Measured per round (interleaved, fresh processes): the CLI checking benchmarks/specs/stack_100k.yaml
(100,001 nodes: 10,000 instances of a 10-node block), and, as the reference point, the same CLI
checking a 1-node spec (interpreter start-up and imports only). Reported: median wall and CPU
time, peak resident memory, and the check's own share (100k minus the 1-node run).

Goal: the 100k-node check in < 3 s and < 500 MB.

Usage: .venv/bin/python benchmarks/check_time.py [--quick] [--rounds N]
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

from timing import PYTHON, REPO, header, median, rounds_from, sec, table

GOAL_S, GOAL_MB = 3.0, 500
BIG = str(REPO / "benchmarks" / "specs" / "stack_100k.yaml")
TINY = ("nnspec: 1\nname: tiny\ninputs: {x: {shape: [1, 4]}}\nnodes: {r: {op: relu}}\noutputs: {y: r}\n")


def run_cli(spec: str) -> dict:
    """One fresh `nnspec check SPEC`: wall time, CPU time and peak RSS of the child."""
    cmd = [PYTHON, "-m", "nnspec.runtime.cli", "check", spec]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return {"wall_s": wall, "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "rss_mb": r1.ru_maxrss / 1024}  # ru_maxrss: the largest child so far, in KiB (Linux)


def main(argv: list) -> None:
    rounds = rounds_from(argv, __doc__)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = os.path.join(tmp, "tiny.yaml")
        with open(tiny, "w") as f:
            f.write(TINY)
        runs = {"1-node spec": [], "100k-node spec": []}
        rss_big = 0.0
        for r in range(rounds):
            order = [("1-node spec", tiny), ("100k-node spec", BIG)]
            for name, spec in (order if r % 2 == 0 else order[::-1]):
                res = run_cli(spec)
                if name == "100k-node spec" and "rss_mb" in res:
                    rss_big = max(rss_big, res["rss_mb"])  # the children's max: the 100k run dominates
                runs[name].append(res)
                print(f"  round {r + 1}/{rounds} {name}: {res.get('error') or sec(res['wall_s']) + ' s'}",
                      file=sys.stderr, flush=True)
    ok = {n: [x for x in rs if "error" not in x] for n, rs in runs.items()}
    if not all(ok.values()):
        print(header("nnspec check on a 100k-node spec (fresh processes)", argv))
        print("failed:", {n: rs[0].get("error") for n, rs in runs.items() if rs and "error" in rs[0]})
        return
    med = {n: (median([x["wall_s"] for x in rs]), median([x["cpu_s"] for x in rs])) for n, rs in ok.items()}
    rows = [[n, len(ok[n]), sec(w), sec(c)] for n, (w, c) in med.items()]
    (bw, bc), (tw, tc) = med["100k-node spec"], med["1-node spec"]
    print(header("nnspec check on a 100k-node spec (fresh processes)", argv))
    print(table(["variant", "runs", "wall s (median)", "CPU s (median)"], rows))
    print(f"\nthe check itself (100k minus 1-node): {sec(bw - tw)} s wall, {sec(bc - tc)} s CPU; "
          f"peak RSS of the 100k run {rss_big:.0f} MB")
    met = "MET" if bw < GOAL_S and rss_big < GOAL_MB else ("MET on CPU time" if bc < GOAL_S and rss_big < GOAL_MB
                                                          else "NOT MET")
    print(f"verdict: `nnspec check` of 100,001 nodes takes {sec(bw)} s wall / {sec(bc)} s CPU and "
          f"{rss_big:.0f} MB (goal < {GOAL_S:g} s and < {GOAL_MB} MB): {met}")


if __name__ == "__main__":
    main(sys.argv)
