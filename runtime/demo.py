"""`make demo`: the main job on the bundled zoo.

Checks every bundled spec and preset, inspects a few, compiles resnet50 to a standalone PyTorch
module, imports that file (not nnspec) and runs it once; then, where the ONNX tools are
installed, compiles it to ONNX and compares onnxruntime with torch.
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from nnspec.runtime.cli import main as nnspec


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(*argv: str) -> None:
    print("$ nnspec " + " ".join(argv), flush=True)
    code = nnspec(list(argv))
    if code != 0:
        sys.exit(code)


def main() -> int:
    from nnspec.compiler.spec.load import bundled_specs, load_spec
    out = Path("demo-out")
    step("every bundled spec and preset passes `nnspec check`")
    for path in bundled_specs():
        presets = list(load_spec(path).model.presets) or [None]
        for preset in presets:
            run("check", path.stem, *(["--preset", preset] if preset else []))
    step("inspect")
    run("list")
    run("inspect", "resnet", "--preset", "resnet50", "--depth", "1")
    run("inspect", "char_rnn", "--depth", "1")
    step("compile resnet50 to a standalone torch module and run it")
    run("compile", "resnet", "--preset", "resnet50", "--target", "torch", "-o", str(out / "resnet50"))
    import torch
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("resnet50_model", out / "resnet50" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import json
    cls = json.loads((out / "resnet50" / "manifest.json").read_text())["torch"]["class"]
    torch.manual_seed(0)
    model = getattr(mod, cls)().eval()
    x = torch.randn(1, 3, 224, 224)
    t0 = time.perf_counter()
    with torch.no_grad():
        y = model(x)
    print(f"{cls}: {sum(p.numel() for p in model.parameters()):,} params; logits {list(y.shape)} "
          f"in {1e3 * (time.perf_counter() - t0):.0f} ms; top-1 class {int(y.argmax())}")
    if importlib.util.find_spec("onnxruntime") is not None:
        step("compile to ONNX and verify against torch")
        run("compile", "resnet", "--preset", "resnet50", "--target", "onnx", "-o", str(out / "resnet50-onnx"))
        run("verify", "char_rnn")
    print(f"\ndone: artifacts in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
