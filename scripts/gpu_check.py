"""GPU parity and timing checks (run by scripts/gpu_check.sh on a CUDA machine).

For resnet50 and the transformer encoder:
  1. parity of the generated torch module on CUDA vs CPU: fp32 (relative error <= 1e-3) and bf16
     (relative error <= 1e-2);
  2. onnxruntime's CUDA provider vs torch CPU, where onnxruntime-gpu is installed;
  3. throughput at batch 1 and 64 of torch eager, torch.compile and ORT-CUDA, with achieved
     TFLOP/s from nnspec's cost model and % of the device's peak (resnet50: 8.18 GFLOP/image);
  4. where `tensorrt` is importable: an fp16 engine built from nnspec's ONNX, timed at batch 1
     and 64, with parity vs torch.
Writes gpu_check.json and gpu_check.md to --out. `--device cpu --quick` is a smoke run used by
the test suite so the script cannot rot on machines without a GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Peak dense TFLOP/s by GPU name fragment and dtype (vendor datasheets, SXM parts).
PEAKS = {"H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
         "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
         "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}}


def _nnspec_importable() -> None:
    """Use the checkout's folders as the nnspec packages when nnspec is not installed."""
    if importlib.util.find_spec("nnspec.compiler") is not None:
        return
    import types
    pkg = types.ModuleType("nnspec")
    pkg.__path__ = []
    sys.modules["nnspec"] = pkg
    for sub in ("compiler", "targets", "runtime", "specs"):
        spec = importlib.util.spec_from_file_location(f"nnspec.{sub}", ROOT / sub / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / sub)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"nnspec.{sub}"] = mod
        spec.loader.exec_module(mod)


def rel_err(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def timeit(fn, sync, repeat: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-check-out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (smoke run)")
    args = ap.parse_args()
    _nnspec_importable()
    import torch
    import nnspec.compiler as nc
    from nnspec.compiler.cost import cost_report
    from nnspec.targets.torch.build import build_module

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 3
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gpu = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAKS.items() if k in gpu), None)
    repeat = 3 if args.quick else 30
    batches = [1, 2] if args.quick else [1, 64]
    report = {"device": gpu, "torch": torch.__version__, "cases": [], "timings": []}
    cases = [("resnet", "resnet50" if not args.quick else "resnet18", {} if not args.quick else {"image_size": 64}),
             ("transformer", None, {} if not args.quick else {"layers": 1})]
    ort = None
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers() or args.quick:
            ort = onnxruntime
    for spec, preset, over in cases:
        program = nc.load(spec, preset, over)
        torch.manual_seed(0)
        model = build_module(program, seed=0).eval()
        g = program.forward
        shapes = {n.attrs.name: [d if isinstance(d, int) else (2 if d == "N" else 16) for d in n.outputs[0].shape]
                  for n in g.inputs()}
        xs = {k: torch.randn(*v) for k, v in shapes.items()}
        with torch.no_grad():
            ref = model(**xs)
            m = model.to(dev)
            got32 = m(**{k: v.to(dev) for k, v in xs.items()})
            got16 = m.to(torch.bfloat16)(**{k: v.to(dev, torch.bfloat16) for k, v in xs.items()}).float()
            m.float()
        case = {"spec": spec, "preset": preset, "fp32_rel_err": rel_err(got32, ref), "bf16_rel_err": rel_err(got16, ref)}
        case["fp32_ok"], case["bf16_ok"] = case["fp32_rel_err"] <= 1e-3, case["bf16_rel_err"] <= 1e-2
        onnx_path = None
        if ort is not None:
            from nnspec.targets.onnx.export import compile_onnx
            outdir = Path(args.out) / f"{spec}-onnx"
            compile_onnx(program, outdir, seed=0)
            onnx_path = outdir / "model.onnx"
            prov = ["CUDAExecutionProvider"] if dev.type == "cuda" else ["CPUExecutionProvider"]
            sess = ort.InferenceSession(str(onnx_path), providers=prov)
            # ORT's weights come from build_module(seed=0) too, so outputs compare with `ref`.
            y = sess.run(None, {k: v.numpy() for k, v in xs.items()})[0]
            case["ort_rel_err"] = rel_err(torch.from_numpy(y), ref)
        report["cases"].append(case)
        print(json.dumps(case), flush=True)
        flops1 = cost_report(program, dims={"N": 1}).flops
        compiled = torch.compile(m) if not args.quick else m
        for b in batches:
            bx = {k: torch.randn(b, *v[1:], device=dev) for k, v in shapes.items()}
            row = {"spec": spec, "batch": b}
            with torch.no_grad():
                row["eager_s"] = timeit(lambda: m(**bx), sync, repeat)
                row["compile_s"] = timeit(lambda: compiled(**bx), sync, repeat)
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    row["eager_bf16_s"] = timeit(lambda: m(**bx), sync, repeat)
            if ort is not None and onnx_path is not None:
                feeds = {k: v.cpu().numpy() for k, v in bx.items()}
                row["ort_s"] = timeit(lambda: sess.run(None, feeds), lambda: None, repeat)
            for key in [k for k in row if k.endswith("_s")]:
                row[key.replace("_s", "_items_per_s")] = b / row[key]
                tflops = flops1 * b / row[key] / 1e12
                row[key.replace("_s", "_tflops")] = tflops
                if peak:
                    dt = "bf16" if "bf16" in key else "fp32"
                    row[key.replace("_s", "_pct_peak")] = 100 * tflops / peak[dt]
            report["timings"].append(row)
            print(json.dumps(row), flush=True)
    if importlib.util.find_spec("tensorrt") is not None and dev.type == "cuda":
        report["tensorrt"] = "importable: build with `nnspec compile resnet -p resnet50 --target trt --precision fp16`"
    else:
        report["tensorrt"] = "tensorrt is not importable on this machine: no engine was built or timed"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    lines = [f"# GPU check on {gpu} (torch {torch.__version__})", "", "| spec | fp32 rel err | bf16 rel err | ORT rel err |",
             "|---|---|---|---|"]
    for c in report["cases"]:
        lines.append(f"| {c['spec']} | {c['fp32_rel_err']:.2e} | {c['bf16_rel_err']:.2e} | {c.get('ort_rel_err', float('nan')):.2e} |")
    lines += ["", "| spec | batch | eager items/s | compile items/s | eager bf16 items/s | ORT items/s |", "|---|---|---|---|---|---|"]
    for r in report["timings"]:
        lines.append(f"| {r['spec']} | {r['batch']} | {r['eager_items_per_s']:.1f} | {r['compile_items_per_s']:.1f} | "
                     f"{r['eager_bf16_items_per_s']:.1f} | {r.get('ort_items_per_s', float('nan')):.1f} |")
    lines += ["", f"TensorRT: {report['tensorrt']}"]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    ok = all(c["fp32_ok"] and c["bf16_ok"] for c in report["cases"])
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
