"""`nnspec bench`: latency and throughput of targets side by side.

Each batch size gets its inputs once; every target is warmed up, then the targets run interleaved
(one call of each per iteration, in rotating order) so that load from other processes on a shared
machine falls on all of them alike. A row per (target, batch): median and p90 latency, throughput
(samples/s at the median), the ratio to torch eager's median (eager / target: >1 means faster) and
achieved GFLOP/s from the cost model's FLOPs at that batch.
"""
from __future__ import annotations

import json
import time


def _percentile(xs: list, q: float) -> float:
    s = sorted(xs)
    if not s:
        return 0.0
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def bench(program, targets=("torch", "onnx"), batches=(1, 8), threads: int = 1, warmup: int = 3,
          repeat: int = 20, progress: bool = True, seed: int = 0, batch_dim: str = "N",
          dims: dict | None = None, fuse: str | None = None) -> list[dict]:
    """Benchmark `targets` (names from the target registry) at each batch size; returns JSON-ready rows.

    Each target runs `program`'s spec as compiled for it (its pipeline, fuse_ops in mode `fuse` or the
    target's default: torch's fused module too), all with the weights of `program`'s module.
    threads: intra-op threads for torch and onnxruntime (1 gives the steadiest numbers on shared
    machines). Targets that cannot run here get a row with `skipped` set instead of timings.
    """
    import torch
    from tqdm import tqdm

    from nnspec.compiler.cost import cost_report
    from nnspec.targets import registry
    from nnspec.targets.torch.build import build_module

    from .runners import generate_inputs, runnable_targets, runner_for
    from .verify import fused_changes, fused_module, target_program

    torch.set_num_threads(int(threads))
    targets = list(dict.fromkeys(targets))
    for t in targets:
        registry.get(t)  # an unknown name is a usage error, not a skipped row
    module = build_module(program, seed)
    module.eval()
    why_not = runnable_targets(targets)
    runners, rows = {}, []
    for t in targets:
        if why_not.get(t):
            continue
        try:
            prog_t = target_program(program, t, fuse)
            mod_t = fused_module(prog_t, module) if t == registry.REFERENCE and fused_changes(prog_t) else module
            runners[t] = runner_for(prog_t, t, module=mod_t, seed=seed, threads=threads,
                                    dims={**(dims or {}), batch_dim: max(batches)})
        except Exception as e:  # report and go on with the other targets
            why_not[t] = getattr(e, "message", str(e)).splitlines()[0]
    total = len(batches) * (warmup + repeat) * len(runners)
    bar = tqdm(total=total, desc=f"bench {program.spec.name}", unit="run", disable=not progress, leave=False)
    try:
        for batch in batches:
            d = {**(dims or {}), batch_dim: batch}
            inputs = generate_inputs(program, d, seed)
            flops = cost_report(program, dims=d).flops
            times = {t: [] for t in runners}
            order = list(runners)
            for i in range(warmup + repeat):
                rot = order[i % len(order):] + order[:i % len(order)]
                for t in rot:
                    t0 = time.perf_counter()
                    runners[t].run(inputs)
                    dt = time.perf_counter() - t0
                    if i >= warmup:
                        times[t].append(dt)
                    bar.update(1)
            ref = registry.REFERENCE
            base = _percentile(times[ref], 0.5) if ref in times else None
            for t in targets:
                if t not in runners:
                    rows.append({"target": t, "batch": batch, "skipped": why_not.get(t) or "not run"})
                    continue
                med, p90 = _percentile(times[t], 0.5), _percentile(times[t], 0.9)
                rows.append({
                    "target": t, "batch": batch, "threads": int(threads), "repeat": repeat,
                    "median_ms": med * 1e3, "p90_ms": p90 * 1e3,
                    "throughput": batch / med if med > 0 else 0.0,
                    "vs_torch": base / med if base and med > 0 else None,
                    "gflops": flops / med / 1e9 if med > 0 else 0.0,
                    "flops": flops,
                })
    finally:
        bar.close()
    return rows


def render_table(rows: list[dict]) -> str:
    """Rows side by side: one line per (batch, target)."""
    head = f"{'batch':>5}  {'target':<8} {'median ms':>10} {'p90 ms':>10} {'samples/s':>10} {'vs torch':>9} {'GFLOP/s':>9}"
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: r["batch"]):
        if r.get("skipped"):
            lines.append(f"{r['batch']:>5}  {r['target']:<8} skipped: {r['skipped']}")
            continue
        ratio = f"{r['vs_torch']:.2f}x" if r.get("vs_torch") else "-"
        lines.append(f"{r['batch']:>5}  {r['target']:<8} {r['median_ms']:>10.3f} {r['p90_ms']:>10.3f} "
                     f"{r['throughput']:>10.1f} {ratio:>9} {r['gflops']:>9.2f}")
    return "\n".join(lines)


def render_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1, sort_keys=True)
