"""Parallel training on CPU: a 2-stage GPipe pipeline's idle time and step time against the plan,
and DDP's throughput against one process.

Model: char_rnn on the word_corpus task with vocab=1024, embed=hidden=128, 2 LSTM layers, cut at
the LSTM (embed + LSTM | dropout + decoder + the loss); batch 32 windows of 32 words. The vocabulary
is chosen so the two stages take about the same measured time here (the softmax cross-entropy of
the last stage is not in the plan's FLOPs, and the LSTM's matmuls run faster per FLOP), which puts
2/3 of the training FLOPs in stage 0.

Pipeline (`nnspec train --pipeline-stages 2 --microbatches M`, M = 1, 4, 8, 32, GPipe): every rank
times the stage's forward / backward calls (NNSPEC_PIPELINE_TIMES, runtime/train/pipeline.py);
idle fraction of a stage = 1 - compute seconds / step seconds (medians over the steps after the
first two), beside the GPipe bubble (K-1)/(M+K-1). The plan's step time is partition_pipeline's
(M+K-1) x slowest stage, its FLOPs priced at this machine's rate: the training FLOPs of one batch
over a single process's measured step time (M=1), i.e. the cost model calibrated once, at M=1;
and, second, priced by `nnspec profile`'s measured forward / backward time of every node at one
micro-batch's shape (the plan's `--profile`), which sees small micro-batches run at a lower rate.

DDP: examples/s of `--nproc 2` over one process (both 1 thread per process).

Usage: .venv/bin/python benchmarks/train_parallel.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import REPO, header, table

MS = (1, 4, 8, 32)
SPEC = ["char_rnn", "--set", "vocab=1024", "--set", "embed=128", "--set", "hidden=128",
        "--set", "train.task.name=word_corpus", "--set", "train.task.options.vocab_size=1024",
        "--set", "train.task.options.seq_len=32", "--set", "train.schedule.name=constant",
        "--set", "train.log_every=1", "--set", "train.eval.batches=1", "--batch", "32", "--threads", "1",
        "--no-progress"]
SKIP = 2  # first steps: the pipeline's shape-finding pass, allocator warm-up


def train(out: Path, steps: int, *extra: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "nnspec.runtime.cli", "train", *SPEC, "--steps", str(steps), "--out", str(out),
           *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, env={**os.environ, **(env or {})})
    if p.returncode != 0:
        sys.exit(f"train failed: {' '.join(cmd)}\n{p.stdout[-2000:]}{p.stderr[-3000:]}")


def rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def examples_per_s(run: Path) -> float:
    return statistics.median(r["examples_per_s"] for r in rows(run)[SKIP:])


def pipeline_times(prefix: str) -> list[tuple[float, float]]:
    """[(median step s, median compute s)] per rank."""
    out = []
    for rank in range(2):
        doc = json.loads(Path(f"{prefix}.rank{rank}.json").read_text())
        out.append((statistics.median(doc["step_s"][SKIP:]), statistics.median(doc["busy_s"][SKIP:])))
    return out


def _overrides() -> dict:
    from nnspec.compiler.spec.load import parse_overrides
    return parse_overrides([SPEC[i + 1] for i, a in enumerate(SPEC) if a == "--set" and not SPEC[i + 1].startswith("train.")])


def predicted(M: int, flops_per_s: float | None = None, profile_path: Path | None = None) -> dict:
    """partition_pipeline's summary for this model, 2 stages, M micro-batches of 32/M windows: its
    FLOPs priced at `flops_per_s`, or the measured node times of `profile_path` (`nnspec profile`)."""
    from nnspec.compiler import load
    from nnspec.compiler.cost import profile_costs, profile_option
    from nnspec.compiler.spec.load import load_spec
    from nnspec.runtime.compile import program_for
    from nnspec.runtime.profile import profile_pipeline

    opts = {"stages": 2, "microbatches": M, "dims": {"N": 32 // M, "T": 32}}
    if flops_per_s:
        opts["flops_per_s"] = flops_per_s
    if profile_path is not None:
        early = load("char_rnn", None, _overrides(), passes=profile_pipeline(), target="torch")
        opts["profile"] = profile_option(profile_costs(early, profile_path))
    loaded = load_spec("char_rnn", None, _overrides())
    return program_for(loaded, "torch", options=opts).results["partition_pipeline"].summary


def measure_profile(M: int, path: Path) -> Path:
    """`nnspec profile` of the model at one micro-batch's dims (N = 32/M), 1 thread."""
    from nnspec.compiler import load
    from nnspec.runtime.profile import profile, profile_pipeline, write_profile

    program = load("char_rnn", None, _overrides(), passes=profile_pipeline(), target="torch")
    write_profile(profile(program, dims={"N": 32 // M, "T": 32}, threads=1, repeat=5), path)
    return path


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    a = ap.parse_args(argv[1:])
    steps = 5 if a.quick else 10
    print(header("Parallel training on CPU: GPipe idle time vs bubble, plan vs measured, DDP vs 1 process", argv))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train(tmp / "single", steps)
        single = examples_per_s(tmp / "single")
        step_single = 32 / single
        plan1 = predicted(1, None)
        rate = plan1["totals"]["cost"] / step_single  # training FLOPs of one batch / measured seconds
        body = []
        for M in MS:
            prefix = str(tmp / f"times-m{M}")
            train(tmp / f"pipe-m{M}", steps, "--pipeline-stages", "2", "--microbatches", str(M),
                  env={"NNSPEC_PIPELINE_TIMES": prefix})
            (s0, b0), (s1, b1) = pipeline_times(prefix)
            plan = predicted(M, rate)
            prof = predicted(M, profile_path=measure_profile(M, tmp / f"profile-m{M}.json"))
            step = max(s0, s1)
            costs = [r["cost"] for r in plan["stages"]]
            body.append([M, f"{plan['bubble']:.1%}", f"{b0 * 1e3:.1f} / {b1 * 1e3:.1f}",
                         f"{1 - b0 / s0:.1%}", f"{1 - b1 / s1:.1%}",
                         f"{costs[0] / sum(costs):.2f}", f"{plan['step_time_s'] * 1e3:.1f}",
                         f"{prof['step_time_s'] * 1e3:.1f}", f"{step * 1e3:.1f}",
                         f"{step / plan['step_time_s']:.2f}", f"{step / prof['step_time_s']:.2f}"])
        train(tmp / "ddp", steps, "--nproc", "2")
        ddp = examples_per_s(tmp / "ddp")
    print(f"single process: {step_single * 1e3:.1f} ms/step ({single:.0f} examples/s); calibrated rate "
          f"{rate / 1e9:.2f} GFLOP/s (training FLOPs of one batch / that step time)\n")
    print(table(["M", "bubble (K-1)/(M+K-1)", "compute ms stage 0 / 1", "idle stage 0", "idle stage 1", "stage 0 FLOP share",
                 "plan ms (FLOPs)", "plan ms (profile)", "measured ms", "measured / FLOPs plan",
                 "measured / profile plan"], body))
    print(f"\nDDP, 2 processes: {ddp:.0f} examples/s vs 1 process {single:.0f}: {ddp / single:.2f}x "
          f"({os.cpu_count()} CPU cores here)")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "benchmarks"))
    main(sys.argv)
