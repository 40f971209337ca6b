"""Compression estimates of entropy and apparent complexity (Aaronson, Carroll & Ouellette 2014,
"Quantifying the Rise and Fall of Complexity in Closed Systems: The Coffee Automaton"), and the run
of the `coffee_automaton` spec that measures them over time.

- Entropy estimate: the gzip-compressed size, in bytes, of the fine-grained frame (one byte a
  cell, 0 or 1, row by row). A sorted cup compresses to almost nothing, a mixed one to about a bit
  per cell; in between, runs and skewed counts compress (packing 8 cells a byte would hide that
  from gzip as soon as the cells look noisy).
- Complexity estimate: the compressed size of the coarse-grained picture (the mean over squares,
  the spec's `coarse` output) quantised to three levels, mean below 1/3, up to 2/3, above: the
  paper's thresholding, which keeps the small fluctuations of a well-mixed cup from reading as
  structure. A cup in two layers, or mixed through, is simple at that scale; the tendrils between
  are not.

gzip runs at level 9 with a zero timestamp, so the sizes are deterministic.

    python -m nnspec.runtime.complexity [--preset small] [--steps 12000] [--seed 0] -o DIR

builds the spec's generated module, mixes the cup for --steps automaton steps and writes
DIR/curves.csv (step, entropy, complexity) and DIR/curves.png (entropy blue, complexity red, each
scaled to its maximum), as one folder swapped in whole.
"""
from __future__ import annotations

import gzip
import sys

import numpy as np

LEVELS = (1.0 / 3.0, 2.0 / 3.0)


def compressed_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def entropy_estimate(frame: np.ndarray) -> int:
    """Compressed bytes of one fine-grained frame (cells > 0.5 are cream)."""
    return compressed_size((np.asarray(frame) > 0.5).astype(np.uint8).tobytes())


def complexity_estimate(coarse: np.ndarray) -> int:
    """Compressed bytes of one coarse-grained picture quantised to three levels."""
    return compressed_size(np.digitize(np.asarray(coarse), LEVELS).astype(np.uint8).tobytes())


def cream_on_top(size: int, batch: int = 1) -> np.ndarray:
    """The starting cup: the top half of the rows cream (1), the bottom half coffee (0)."""
    cup = np.zeros((batch, size, size), np.float32)
    cup[:, : size // 2] = 1.0
    return cup


def mix(module, size: int, steps: int, calls: int, seed: int = 0, every: int = 1) -> dict:
    """Run the compiled automaton `calls` times (`steps` automaton steps each) from cream_on_top,
    with uniform coins from numpy's generator for `seed`. Returns the time (automaton steps) and
    both estimates of every `every`-th frame, the start included, and the final cup."""
    import torch

    rng = np.random.default_rng(seed)
    state = torch.from_numpy(cream_on_top(size))
    out = {"step": [0], "entropy": [entropy_estimate(state[0].numpy())], "complexity": [], "final": None}
    for call in range(calls):
        coins = torch.from_numpy(rng.random((1, steps, 4, size, size), dtype=np.float32))
        with torch.no_grad():
            state, frames, coarse = module(state, coins)
        if call == 0:  # the start's coarse picture: the sorted cup's means over the same squares
            g = size // coarse.shape[-1]
            out["complexity"].append(complexity_estimate(cream_on_top(size)[0].reshape(size // g, g, size // g, g)
                                                         .mean((1, 3))))
        for k in range(steps):
            t = call * steps + k + 1
            if t % every == 0:
                out["step"].append(t)
                out["entropy"].append(entropy_estimate(frames[0, k].numpy()))
                out["complexity"].append(complexity_estimate(coarse[0, k].numpy()))
    out["final"] = state[0].numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    from nnspec.compiler import load
    from nnspec.compiler.errors import NnspecError
    from nnspec.runtime.plot import curves_png
    from nnspec.targets.files import staged_folder
    from nnspec.targets.torch.build import build_module

    ap = argparse.ArgumentParser(prog="python -m nnspec.runtime.complexity",
                                 description="entropy and complexity of the coffee automaton over time")
    ap.add_argument("--preset", "-p", help="a preset of coffee_automaton (default: its params, 128 x 128)")
    ap.add_argument("--steps", type=int, default=12000, help="automaton steps in all (rounded up to whole calls)")
    ap.add_argument("--every", type=int, default=50, help="measure every this many steps")
    ap.add_argument("--seed", type=int, default=0, help="seed of the coins")
    ap.add_argument("--out", "-o", required=True, metavar="DIR", help="results folder (replaced whole)")
    args = ap.parse_args(argv)
    if not 1 <= args.steps <= 10_000_000 or not 1 <= args.every <= args.steps:
        ap.error("--steps must be 1 .. 10,000,000 and --every 1 .. --steps")
    try:
        program = load("coffee_automaton", args.preset)
        p = program.spec.params
        calls = -(-args.steps // p["steps"])
        r = mix(build_module(program, seed=0).eval(), p["size"], p["steps"], calls, args.seed, args.every)
        rows = ["step,entropy_bytes,complexity_bytes"] + [f"{t},{e},{c}" for t, e, c in
                                                          zip(r["step"], r["entropy"], r["complexity"])]
        with staged_folder(args.out, replace="empty") as tmp:
            (tmp / "curves.csv").write_text("\n".join(rows) + "\n")
            (tmp / "curves.png").write_bytes(curves_png(
                r["step"], [r["entropy"], r["complexity"]], xlabel="automaton steps",
                labels=("entropy estimate (gzip bytes, fine)", "complexity estimate (gzip bytes, coarse)")))
    except NnspecError as e:  # an unknown preset, an --out folder that holds other files
        print(e.render(), file=sys.stderr)
        return 1
    peak = max(range(len(r["complexity"])), key=r["complexity"].__getitem__)
    print(f"{len(r['step'])} frames over {r['step'][-1]} steps: entropy {r['entropy'][0]} -> {r['entropy'][-1]} bytes; "
          f"complexity {r['complexity'][0]} -> {r['complexity'][peak]} (step {r['step'][peak]}) -> "
          f"{r['complexity'][-1]} bytes; wrote {args.out}/curves.csv, curves.png")
    return 0


__all__ = ["complexity_estimate", "compressed_size", "cream_on_top", "entropy_estimate", "mix"]

if __name__ == "__main__":
    raise SystemExit(main())
