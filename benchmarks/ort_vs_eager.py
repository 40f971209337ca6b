"""Inference latency: onnxruntime running nnspec's ONNX model against torch eager on the generated
module, both on one CPU thread, in one process.

For each model and batch size the two runtimes get the same inputs (from nnspec's
`example_inputs`), are checked to agree, and are then timed in interleaved rounds (ABBA order).
Torch runs in eval mode under `torch.inference_mode()`; onnxruntime uses nnspec's `ort_session`
(CPU provider, 1 intra-op thread, default graph optimisations). The ratio is the median of per-round
ratios torch / onnxruntime: above 1 means onnxruntime is faster.

Usage: .venv/bin/python benchmarks/ort_vs_eager.py [--quick] [--rounds N]
"""
from __future__ import annotations

import argparse
import sys

from timing import header, interleaved, median, ms, paired_ratios, percentile, table

# model -> (spec, preset, {dim symbol: value} besides the batch N, rounds multiplier); char_rnn's
# calls take milliseconds, so it gets more rounds for the same confidence
MODELS = {
    "resnet50": ("resnet", "resnet50", {}, 1),
    "transformer T=128": ("transformer", None, {"T": 128}, 1),
    "char_rnn T=128": ("char_rnn", None, {"T": 128}, 10),
}


def bench_model(label: str, batches: list, rounds: int, quick: bool) -> list:
    import numpy as np
    import torch

    import nnspec.compiler as c
    from nnspec.targets.onnx.export import to_onnx_model
    from nnspec.targets.onnx.runner import example_inputs, ort_session, run_ort
    from nnspec.targets.torch.build import build_module

    spec, preset, dims, mult = MODELS[label]
    rounds *= mult
    overrides = {"image_size": 160} if quick and spec == "resnet" else {}
    program = c.load(spec, preset, overrides)
    module = build_module(program).eval()
    weights = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    session = ort_session(to_onnx_model(program, weights), threads=1)
    graph = program.graphs["forward"]
    rows = []
    for n in batches:
        feed = example_inputs(program, {"N": n, **dims})
        args = [torch.from_numpy(feed[i.attrs.name]) for i in graph.inputs()]

        def eager():
            with torch.inference_mode():
                return module(*args)

        def ort():
            return run_ort(session, feed)

        want = eager()
        want = want if isinstance(want, (tuple, list)) else (want,)
        got = list(ort().values())
        err = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
        wall, _ = interleaved({"torch eager": eager, "onnxruntime": ort}, rounds, warmup=2)
        r = paired_ratios(wall["torch eager"], wall["onnxruntime"])
        shape = "x".join(str(s) for s in next(iter(feed.values())).shape)
        rows.append([label, n, shape, rounds, ms(median(wall["torch eager"])), ms(percentile(wall["torch eager"], 90)),
                     ms(median(wall["onnxruntime"])), ms(percentile(wall["onnxruntime"], 90)),
                     f"{median(r):.2f}x", f"{err:.1e}"])
        print(f"  {label} batch {n}: torch {ms(median(wall['torch eager']))} ms, "
              f"ort {ms(median(wall['onnxruntime']))} ms", file=sys.stderr, flush=True)
    return rows


def main(argv: list) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="resnet50 at 160x160, 4 rounds")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv[1:])
    rounds = args.rounds or (4 if args.quick else 10)

    import torch
    torch.set_num_threads(1)
    print(header("onnxruntime (nnspec ONNX) vs torch eager (generated module), 1 thread", argv))
    rows = []
    for label in MODELS:
        rows += bench_model(label, [1, 8], rounds, args.quick)
    print(table(["model", "batch", "input", "rounds", "torch ms (median)", "torch p90", "ort ms (median)", "ort p90",
                 "torch / ort", "max abs diff"], rows))
    ratios = ", ".join(f"{r[0]} b{r[1]} {r[8]}" for r in rows)
    print(f"\nverdict (no numeric goal; > 1x means onnxruntime is faster): {ratios}\n")


if __name__ == "__main__":
    main(sys.argv)
