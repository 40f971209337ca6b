"""ONNX export as a user runs it: a fresh `nnspec compile --target onnx` process against a fresh
Python process exporting the reference model with `torch.onnx.export(dynamo=True)`.

Both start from nothing and end with a model and its weights on disk: nnspec from the spec
(imports, spec -> IR, initial weights drawn with numpy, lowering, the full ONNX checker and
strict shape inference, the fsynced artifact folder); torch from the reference implementation
(imports, building the model, tracing it with torch.export, writing the ONNX file). The references
are torchvision's resnet50 and the transformer spec's own reference, torch.nn.TransformerEncoder
(d_model 512, 8 heads, ffn 2048, 6 layers); both keep the batch dim (and the sequence dim)
dynamic, as nnspec's models do. Runs are interleaved, variants alternating in order (ABBA); the
table gives medians of wall time seen by the parent and of the child's CPU time.

Goal: nnspec at least 8x faster than the dynamo exporter, end to end in fresh processes.

Usage: .venv/bin/python benchmarks/export_cli.py [--quick] [--rounds N] [--models resnet50,transformer]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time

from timing import PYTHON, REPO, header, median, sec, table

GOAL = 8.0
OPSET = 20

NNSPEC = {"resnet50": ["resnet", "-p", "resnet50"], "transformer": ["transformer"]}

TORCH = textwrap.dedent("""
    import sys, warnings, contextlib, io
    warnings.simplefilter("ignore")
    import torch
    torch.set_num_threads(1)
    name, path = sys.argv[1], sys.argv[2]
    if name == "resnet50":
        import torchvision
        model, x, dyn = torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224), {{0: "N"}}
    else:
        layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True)
        model = torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False).eval()
        x, dyn = torch.randn(2, 128, 512), {{0: "N", 1: "T"}}
    dims = {{ax: torch.export.Dim(n, min=1, max=512) for ax, n in dyn.items()}}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (x,), path, dynamo=True, opset_version={opset}, dynamic_shapes=(dims,))
""").format(opset=OPSET)


def run(cmd: list) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:200]}
    return {"wall_s": wall, "cpu_s": cpu}


def main(argv: list) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds instead of 4")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--models", default="resnet50,transformer")
    args = ap.parse_args(argv[1:])
    rounds = args.rounds or (2 if args.quick else 4)
    print(header("ONNX export end to end: fresh `nnspec compile --target onnx` vs fresh torch.onnx.export(dynamo=True)",
                 argv))
    rows, verdicts = [], []
    with tempfile.TemporaryDirectory(prefix="nnspec-export-") as tmp:
        for name in args.models.split(","):
            variants = {
                "nnspec compile": [PYTHON, "-m", "nnspec.runtime.cli", "compile", *NNSPEC[name], "--target", "onnx",
                                   "-o", os.path.join(tmp, f"{name}-nnspec")],
                "torch.onnx dynamo": [PYTHON, "-c", TORCH, name, os.path.join(tmp, f"{name}-dynamo.onnx")],
            }
            runs = {v: [] for v in variants}
            for r in range(rounds):
                for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                    res = run(variants[v])
                    runs[v].append(res)
                    print(f"  {name} round {r + 1}/{rounds} {v}: {res.get('error') or sec(res['wall_s']) + ' s'}",
                          file=sys.stderr, flush=True)
            med = {}
            for v, rs in runs.items():
                good = [x for x in rs if "error" not in x]
                if good:
                    med[v] = (median([x["wall_s"] for x in good]), median([x["cpu_s"] for x in good]))
                rows.append([name, v, len(good), sec(med[v][0]) if good else "-", sec(med[v][1]) if good else "-",
                             "" if good else f"failed: {rs[0]['error']}"])
            if len(med) == 2:
                rw = med["torch.onnx dynamo"][0] / med["nnspec compile"][0]
                rc = med["torch.onnx dynamo"][1] / med["nnspec compile"][1]
                rows[-2][-1] = f"{rw:.1f}x faster (wall), {rc:.1f}x (CPU)"
                verdicts.append(f"{name} {rw:.1f}x wall, {rc:.1f}x CPU: {'MET' if rw >= GOAL else 'NOT MET'}")
    print(table(["model", "variant", "runs", "wall s (median)", "CPU s (median)", "nnspec vs dynamo"], rows))
    print(f"\nverdict: dynamo / nnspec, fresh processes: {'; '.join(verdicts)} (goal >= {GOAL:.0f}x)\n")


if __name__ == "__main__":
    main(sys.argv)
