"""The trainer's own overhead: `nnspec train`'s loop against a hand-written torch loop over the same
generated module and the same data.

Both train char_rnn's generated module (2 x 128 LSTM, batch 32 x 100 characters, RMSprop with
gradients clamped at 5, as the spec's train: section says) from the same initial weights. The hand
loop is what a user writes around the module: batches already in memory, forward, cross-entropy,
backward, clamp, step — no logging, no evaluation, no checkpoints. The trainer does everything it
does in a real run: draws each batch from the task (seeded per step), logs every 10 steps to
metrics.jsonl, saves an atomic checkpoint every 100 steps (weights, optimizer, RNG states) and
updates the progress bar (off here: stderr is not a terminal). The final validation pass is timed
separately and left out of the ratio (the hand loop does none).

Rounds alternate the two loops in one process (threads 1); the figure is the median over rounds of
the paired per-step time ratios; the goal is an overhead of at most 5% of the step time.

Usage: .venv/bin/python benchmarks/train_overhead.py [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time

from timing import header, median, paired_ratios, table

import torch
import torch.nn.functional as F

from nnspec.compiler.spec.load import load_spec
from nnspec.runtime.compile import program_for
from nnspec.runtime.train.loop import Trainer, bind_task
from nnspec.runtime.train.section import recipe
from nnspec.targets.torch.build import build_module


def hand_loop(program, cfg, batches) -> float:
    """Seconds per step of the plain loop over pre-made batches."""
    module = build_module(program, seed=cfg.seed).train()
    opt = torch.optim.RMSprop(module.parameters(), lr=cfg.optimizer.lr, alpha=cfg.optimizer.alpha,
                              eps=cfg.optimizer.eps)
    t0 = time.perf_counter()
    for ids, targets in batches:
        opt.zero_grad(set_to_none=True)
        logits = module(ids)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_value_(module.parameters(), cfg.clip.value)
        opt.step()
        float(loss)  # the value a user prints
    return (time.perf_counter() - t0) / len(batches)


def trainer_loop(loaded, program, cfg) -> tuple[float, float]:
    """(seconds per step of Trainer.run without its final evaluation, seconds of that evaluation)."""
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(loaded, cfg, d, program=program, progress=False)
        evaluate = trainer.evaluate
        spent = []

        def timed():
            t = time.perf_counter()
            out = evaluate()
            spent.append(time.perf_counter() - t)
            return out

        trainer.evaluate = timed
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # its evaluation lines are progress, not the report
            trainer.run()
        total = time.perf_counter() - t0
    return (total - sum(spent)) / cfg.steps, sum(spent)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv[1:])
    torch.set_num_threads(1)
    steps, rounds = (40, 2) if args.quick else (200, 5)
    loaded = load_spec("char_rnn")
    cfg = recipe(loaded, steps=steps)
    cfg = cfg.model_copy(update={"log_every": 10, "eval": cfg.eval.model_copy(update={"every": 10**9, "batches": 2}),
                                 "checkpoint": cfg.checkpoint.model_copy(update={"every": 100})})
    program = program_for(loaded, "torch")
    task = bind_task(cfg)
    batches = []
    for k in range(steps):
        b = task.batch(k, cfg.batch_size)
        batches.append((torch.from_numpy(b["ids"]), torch.from_numpy(b["targets"])))
    hand, ours, evals = [], [], []
    for _ in range(rounds):
        hand.append(hand_loop(program, cfg, batches))
        t, e = trainer_loop(loaded, program, cfg)
        ours.append(t)
        evals.append(e)
    h, o = median(hand), median(ours)
    ratio = median(paired_ratios(ours, hand))  # each round's pair ran back to back: noise mostly cancels
    print(header("Trainer overhead: nnspec train's loop vs a hand-written torch loop", argv))
    print(f"char_rnn (2 x 128 LSTM), batch {cfg.batch_size} x 100, {steps} steps per round, {rounds} rounds "
          f"alternating, threads 1; median per-step times\n")
    print(table(["loop", "ms / step", "vs hand loop"],
                [["hand-written torch (batches in memory)", f"{1e3 * h:.2f}", "1.000"],
                 ["nnspec Trainer (task batches, log /10, checkpoint /100)", f"{1e3 * o:.2f}", f"{ratio:.3f}"]]))
    print(f"\noverhead: {100 * (ratio - 1):+.1f}% of the step time (median of the per-round ratios) (goal <= 5%); per-round ratios "
          f"{', '.join(f'{a / b:.3f}' for a, b in zip(ours, hand))}; final validation (2 batches, not in the "
          f"ratio) {1e3 * median(evals):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
