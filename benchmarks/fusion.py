"""Operator fusion (the fuse_ops pass): each fused form against the unfused one, side by side, in one run.

1. BN folding: resnet50 eval, torch eager, the generated module against the one compiled with
   `--fuse inference` (batch norms folded into the convolutions as the training state dict loads),
   and PyTorch's own fold (torch.fx.experimental.optimization.fuse) of the unfused module; batch 1 and 8.
2. ONNX: onnxruntime with all its graph optimisations on nnspec's unfused resnet50 against
   onnxruntime on nnspec's fused model (`--target onnx`, batch norms folded) with its optimisations
   off (and on); batch 1 and 8.
3. Attention: benchmarks/specs/attention_core.yaml (q, k, v given: T=512, 8 heads of 64, a causal
   mask built from aranges) written from swap / matmul / scale / add / softmax / dropout / matmul,
   against its fused form (`--fuse safe`: F.scaled_dot_product_attention with is_causal); then the
   whole layer, benchmarks/specs/attention_primitives.yaml (the same core between four 512x512
   projections, which fusion does not change), `--fuse safe` and `--fuse inference`; batch 1.
4. LSTM: benchmarks/specs/scan_lstm.yaml (a scan over lstm_cell, T=100) against its fused form
   (`--fuse safe`: the cell run by torch's LSTM kernel); batch 8.

All variants share one set of weights (batch norms given random statistics, so folding has work to
do), are checked to agree, and are timed in interleaved rounds (ABBA) on one thread
(torch.set_num_threads(1), onnxruntime 1 intra-op and 1 inter-op thread), torch under
inference_mode. Ratios are medians of per-round paired ratios unfused / fused, of wall time and of
process CPU time (less inflated by other load on shared cores): above 1 the fused form is faster.

Usage: .venv/bin/python benchmarks/fusion.py [--quick] [--rounds N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from timing import header, interleaved, median, ms, paired_ratios, table

SPECS = Path(__file__).resolve().parent / "specs"


def randomised(module):
    """Random running statistics and affine in every batch norm (fixed seed)."""
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.running_mean.shape[0]
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return module


def fused_module(program, ref):
    from nnspec.targets.torch.build import build_module

    m = build_module(program, seed=None)
    m.load_state_dict(ref.state_dict(), strict=True)
    return m.eval()


def session(model, optimise: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def eager(module, args):
    import torch

    def run():
        with torch.inference_mode():
            return module(*args)
    return run


def max_diff(a, b) -> float:
    import numpy as np

    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


def time_pair(rows: list, label: str, batch, variants: dict, base: str, rounds: int, goal="") -> None:
    """Time `variants` ({name: fn}) interleaved; one row per variant other than `base`: base / it.
    `goal`: the goal column, or {variant: its goal}."""
    wall, cpu = interleaved(variants, rounds, warmup=2)
    ref = variants[base]()
    for name, fn in variants.items():
        if name == base:
            continue
        r = median(paired_ratios(wall[base], wall[name]))
        rc = median(paired_ratios(cpu[base], cpu[name]))
        rows.append([label, batch, rounds, f"{base} {ms(median(wall[base]))}", f"{name} {ms(median(wall[name]))}",
                     f"{r:.2f}x", f"{rc:.2f}x", goal.get(name, "") if isinstance(goal, dict) else goal,
                     f"{max_diff(ref, fn()):.1e}"])
        print(f"  {label} b{batch}: {base} {ms(median(wall[base]))} ms / {name} {ms(median(wall[name]))} ms "
              f"= {r:.2f}x", file=sys.stderr, flush=True)


def to_numpy(out):
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def bench_resnet(rows: list, rounds: int, quick: bool) -> None:
    import torch
    from torch.fx.experimental.optimization import fuse

    import nnspec.compiler as c
    from nnspec.runtime.compile import program_for
    from nnspec.targets.inputs import example_inputs
    from nnspec.targets.onnx.export import to_onnx_model
    from nnspec.targets.onnx.runner import run_ort
    from nnspec.targets.torch.build import build_module

    overrides = {"image_size": 160} if quick else {}
    p = c.load("resnet", "resnet50", overrides)
    ref = randomised(build_module(p, 0)).eval()
    folded = fused_module(program_for(p, "torch", "inference"), ref)
    torch_fold = fuse(ref)  # PyTorch's own conv-bn fold (torch.fx), on a copy
    weights = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    plain = to_onnx_model(p, weights)
    fused = to_onnx_model(program_for(p, "onnx"), weights)
    s_plain, s_fused, s_fused_opt = session(plain, True), session(fused, False), session(fused, True)
    for n in (1, 8):
        rounds_n = rounds if n == 1 else max(3, rounds // 2)
        feed = example_inputs(p, {"N": n})
        args = [torch.from_numpy(feed["image"])]
        time_pair(rows, "BN fold, resnet50 torch eager", n,
                  {"unfused": eager(ref, args), "nnspec fused": eager(folded, args),
                   "torch.fx fuse": eager(torch_fold, args)}, "unfused", rounds_n,
                  {"nnspec fused": ">= 1.15x", "torch.fx fuse": "(PyTorch's own fold; 1.21x quoted)"})
        time_pair(rows, "BN fold, resnet50 onnxruntime", n,
                  {"unfused, ORT all opts": lambda: list(run_ort(s_plain, feed).values()),
                   "fused, ORT no opts": lambda: list(run_ort(s_fused, feed).values()),
                   "fused, ORT all opts": lambda: list(run_ort(s_fused_opt, feed).values())},
                  "unfused, ORT all opts", rounds_n,
                  {"fused, ORT all opts": "within 5% (>= 0.95x)", "fused, ORT no opts": "(information)"})


def bench_module_pair(rows: list, label: str, spec: str, dims: dict, modes: list, rounds: int, goal: str) -> None:
    import torch

    import nnspec.compiler as c
    from nnspec.runtime.compile import program_for
    from nnspec.targets.inputs import example_inputs
    from nnspec.targets.torch.build import build_module

    p = c.load(str(SPECS / spec))
    ref = build_module(p, 0).eval()
    feed = example_inputs(p, dims)
    args = [torch.from_numpy(feed[i.attrs.name]) for i in p.forward.inputs()]
    variants = {"unfused": eager(ref, args)}
    for mode in modes:
        variants[f"--fuse {mode}"] = eager(fused_module(program_for(p, "torch", mode), ref), args)
    time_pair(rows, label, dims.get("N", 1), variants, "unfused", rounds, goal)


def main(argv: list) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="resnet50 at 160x160, fewer rounds")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per comparison (resnet batch 8 gets half)")
    args = ap.parse_args(argv[1:])
    rounds = args.rounds or (4 if args.quick else 10)

    import torch
    torch.set_num_threads(1)
    print(header("fuse_ops: fused vs unfused, 1 thread", argv))
    rows: list = []
    bench_module_pair(rows, "attention core from primitives, T=512", "attention_core.yaml", {"N": 1},
                      ["safe"], rounds * 2, ">= 1.5x")
    bench_module_pair(rows, "attention layer from primitives, T=512", "attention_primitives.yaml", {"N": 1},
                      ["safe", "inference"], rounds * 2, "(with its 4 projections)")
    bench_module_pair(rows, "LSTM as scan over lstm_cell, T=100", "scan_lstm.yaml", {"N": 8}, ["safe"], rounds * 2,
                      ">= 3x")
    bench_resnet(rows, rounds, args.quick)
    print(table(["comparison", "batch", "rounds", "baseline ms (median)", "variant ms (median)",
                 "baseline / variant (wall)", "(CPU time)", "goal", "max abs diff"], rows))


if __name__ == "__main__":
    main(sys.argv)
