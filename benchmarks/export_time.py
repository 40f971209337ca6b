"""ONNX export time: nnspec's direct lowering against torch.onnx.export (dynamo and legacy).

Each exporter starts from what it needs in memory and ends with a file on disk holding the model
and its weights: nnspec from the compiled Program plus the module's weights (state dict -> numpy,
lowering through each op's `to_onnx`, the full ONNX checker and nnspec's own output check, write);
torch.onnx.export from the same generated nn.Module in eval mode. All keep the batch dim dynamic
(and the sequence dim for the transformer), as nnspec's model does. Calls of the exporters are
interleaved round by round in one process; the first call of each exporter is reported apart
(it pays one-time imports and caches), the later calls as a median.

Goal: nnspec at least 20x faster than the dynamo exporter.

Usage: .venv/bin/python benchmarks/export_time.py [--quick] [--models resnet50,transformer]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from timing import header, median, sec, table

GOAL = 20.0
OPSET = 20  # nnspec's opset (targets/onnx/builder.OPSET), asked of the torch exporters too

# model -> (spec, preset, example input shape, dynamic dims by axis)
MODELS = {
    "resnet50": ("resnet", "resnet50", (1, 3, 224, 224), {0: "N"}),
    "transformer": ("transformer", None, (2, 128, 512), {0: "N", 1: "T"}),
}


def short(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:160]}"


def exporters(program, module, x, dyn: dict, out_dir: Path, phases: list) -> dict:
    """The three exporters as callables; nnspec's appends its phase times to `phases`. Its steps
    are those of `compile_onnx`: lower, then check and write the model serialised once."""
    import torch

    from nnspec.targets.onnx.export import to_onnx_model, write_checked

    def nnspec_direct():
        t0 = time.perf_counter()
        weights = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        t1 = time.perf_counter()
        model = to_onnx_model(program, weights, checked=False)
        t2 = time.perf_counter()
        write_checked(model, out_dir / "nnspec.onnx", program)  # what `compile_onnx` does per model
        t3 = time.perf_counter()
        phases.append({"weights": t1 - t0, "lower": t2 - t1, "check+write": t3 - t2})

    def legacy():
        torch.onnx.export(module, (x,), str(out_dir / "legacy.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=["x"], dynamic_axes={"x": dyn})

    def dynamo():
        dims = {ax: torch.export.Dim(name, min=1, max=512) for ax, name in dyn.items()}
        torch.onnx.export(module, (x,), str(out_dir / "dynamo.onnx"), dynamo=True, opset_version=OPSET,
                          dynamic_shapes=(dims,), artifacts_dir=str(out_dir))

    return {"nnspec direct": nnspec_direct, "torch.onnx dynamo": dynamo, "torch.onnx legacy": legacy}


def measure(name: str, calls: dict) -> list:
    import torch
    import warnings

    import nnspec.compiler as c
    from nnspec.targets.torch.build import build_module

    spec, preset, shape, dyn = MODELS[name]
    program = c.load(spec, preset, {})
    module = build_module(program).eval()
    x = torch.randn(*shape)
    times = {}
    failed = {}
    phases = []
    with tempfile.TemporaryDirectory(prefix="nnspec-bench-") as tmp:
        fns = exporters(program, module, x, dyn, Path(tmp), phases)
        names = list(fns)
        for r in range(max(calls.values())):
            for n in (names if r % 2 == 0 else names[::-1]):
                if n in failed or len(times.get(n, [])) >= calls[n]:
                    continue
                t0 = time.perf_counter()
                try:
                    # the dynamo exporter narrates its phases on stdout/stderr; keep the table readable
                    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                            contextlib.redirect_stderr(io.StringIO()):
                        warnings.simplefilter("ignore")
                        fns[n]()
                except Exception as e:  # an exporter's failure is a result, reported as text
                    failed[n] = short(e)
                    print(f"  {name} {n}: FAILED {failed[n]}", file=sys.stderr, flush=True)
                    continue
                dt = time.perf_counter() - t0
                times.setdefault(n, []).append(dt)
                stem = {"nnspec direct": "nnspec", "torch.onnx dynamo": "dynamo", "torch.onnx legacy": "legacy"}[n]
                size = sum(os.path.getsize(f) for f in Path(tmp).glob(stem + ".onnx*"))  # with .data files
                print(f"  {name} {n}: {sec(dt)} s ({size / 1e6:.1f} MB)", file=sys.stderr, flush=True)
    rows = []
    base = times.get("nnspec direct")
    base_warm = median(base[1:] or base) if base else None
    for n in names:
        if n in failed:
            rows.append([name, n, "-", "-", "-", "-", f"failed: {failed[n]}"])
            continue
        t = times[n]
        warm = median(t[1:] or t)
        rows.append([name, n, len(t), sec(t[0]), sec(warm),
                     f"{t[0] / base[0]:.1f}x" if base else "-", f"{warm / base_warm:.1f}x" if base else "-"])
    later = phases[1:] or phases
    split = ", ".join(f"{k} {sec(median([p[k] for p in later]))}" for k in (later[0] if later else {}))
    return rows, {n: median(t[1:] or t) for n, t in times.items()}, failed, f"{name}: {split}"


def main(argv: list) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls per exporter")
    ap.add_argument("--models", default="resnet50,transformer")
    args = ap.parse_args(argv[1:])
    calls = ({"nnspec direct": 3, "torch.onnx dynamo": 2, "torch.onnx legacy": 2} if args.quick else
             {"nnspec direct": 5, "torch.onnx dynamo": 3, "torch.onnx legacy": 3})

    import torch
    torch.set_num_threads(1)
    print(header("ONNX export time: nnspec direct lowering vs torch.onnx.export", argv))
    rows, verdicts, splits = [], [], []
    for name in args.models.split(","):
        r, warm, failed, split = measure(name, calls)
        rows += r
        splits.append(split)
        if "torch.onnx dynamo" in warm and "nnspec direct" in warm:
            ratio = warm["torch.onnx dynamo"] / warm["nnspec direct"]
            verdicts.append(f"{name} {ratio:.1f}x {'MET' if ratio >= GOAL else 'NOT MET'}")
        else:
            verdicts.append(f"{name}: not measurable ({'; '.join(f'{k} failed' for k in failed)})")
    print(table(["model", "exporter", "calls", "first call s", "later calls s (median)",
                 "first / nnspec", "later / nnspec"], rows))
    print("\nnnspec direct, later calls, median seconds per phase (weights = state dict to numpy; "
          "check = ONNX full checker + strict shape inference with data propagation):")
    for line in splits:
        print(f"  {line}")
    print(f"\nverdict: dynamo export time / nnspec export time: {'; '.join(verdicts)} (goal >= {GOAL:.0f}x)\n")


if __name__ == "__main__":
    main(sys.argv)
