"""Step time: the generated resnet50 against torchvision's resnet50 holding the same weights.

Both modules live in one process with one torch thread. Forward is eval mode under no_grad;
forward+backward is train mode with `out.sum().backward()` and the gradients cleared before each
step. Rounds alternate the order of the two models (ABBA); the reported ratio is the median of
per-round ratios, which cancels most of the drift a shared machine adds.

Goal: the generated module within 2% of torchvision (ratio <= 1.02).

A third model, torchvision's resnet50 with its ReLUs switched out of in-place mode, shows how much
of any gap comes from the generated code's out-of-place `torch.relu` (a diagnostic, not the goal).

Usage: .venv/bin/python benchmarks/step_time.py [--quick] [--rounds N] [--batch B] [--size S]
"""
from __future__ import annotations

import argparse
import sys

from timing import header, interleaved, median, ms, paired_ratios, percentile, table

GOAL = 1.02
def models(size: int):
    import torch
    import torchvision

    import nnspec.compiler as c
    from nnspec.targets.torch.build import build_module

    torch.manual_seed(0)
    ref = torchvision.models.resnet50()
    from nnspec.runtime.import_weights import rename
    program = c.load("resnet", "resnet50", {"image_size": size})
    ours = build_module(program)
    keys = program.spec.model.reference.keys  # the spec's own map of torchvision's names onto its own
    ours.load_state_dict({rename(k, keys): v for k, v in ref.state_dict().items()}, strict=True)
    plain = torchvision.models.resnet50()
    plain.load_state_dict(ref.state_dict())
    for mod in plain.modules():
        if isinstance(mod, torch.nn.ReLU):
            mod.inplace = False
    return ours, ref, plain


def check_same(ours, ref, x) -> float:
    import torch

    ours.eval(), ref.eval()
    with torch.no_grad():
        return float((ours(x) - ref(x)).abs().max())


def forward_fn(model, x):
    import torch

    def run():
        model.eval()
        with torch.no_grad():
            model(x)
    return run


def train_step_fn(model, x):
    def run():
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    return run


def main(argv: list) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 4 at 128, 5 rounds")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    args = ap.parse_args(argv[1:])
    batch = args.batch or (4 if args.quick else 8)
    size = args.size or (128 if args.quick else 224)
    rounds = args.rounds or (5 if args.quick else 11)

    import torch
    torch.set_num_threads(1)
    print(header("Step time: generated resnet50 vs torchvision resnet50", argv))
    ours, ref, plain = models(size)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    diff = check_same(ours, ref, x)

    rows, verdicts = [], []
    for label, make in (("forward (eval, no_grad)", forward_fn), ("forward+backward (train)", train_step_fn)):
        t, cpu = interleaved({"nnspec": make(ours, x), "torchvision": make(ref, x),
                              "plain": make(plain, x)}, rounds, warmup=1)
        r = paired_ratios(t["nnspec"], t["torchvision"])
        rc = paired_ratios(cpu["nnspec"], cpu["torchvision"])
        rp = paired_ratios(t["nnspec"], t["plain"])
        rows.append([label, rounds, ms(median(t["nnspec"])), ms(percentile(t["nnspec"], 90)),
                     ms(median(t["torchvision"])), ms(percentile(t["torchvision"], 90)),
                     f"{median(r):.3f}", f"{min(r):.3f}..{max(r):.3f}", f"{median(rc):.3f}",
                     ms(median(t["plain"])), f"{median(rp):.3f}"])
        verdicts.append((label, median(r), median(rc)))
    print(f"batch {batch}, {size}x{size}, 1 thread; eval outputs agree to {diff:.2e} (max abs)\n")
    print(table(["step", "rounds", "nnspec ms (median)", "nnspec p90", "torchvision ms (median)",
                 "torchvision p90", "wall ratio (median of paired)", "wall ratio range",
                 "CPU-time ratio (median)", "tv no-inplace ms", "nnspec / tv no-inplace"], rows))
    parts = [f"{lbl} {r:.3f} wall / {rc:.3f} CPU" for lbl, r, rc in verdicts]
    met = all(r <= GOAL for _, r, _ in verdicts)
    print(f"\nverdict: nnspec/torchvision time ratio {'; '.join(parts)} (goal <= {GOAL}): "
          f"{'MET' if met else 'NOT MET'}\n")


if __name__ == "__main__":
    main(sys.argv)
