"""`make demo`: the main job on the bundled zoo.

Checks every bundled spec and preset and inspects a few; then closes the loop on char_rnn: trains
the generated module on CPython's help topics (bits per character falling at each evaluation),
exports the trained weights to ONNX, and samples text from the ONNX model with onnxruntime. Last,
compiles resnet50 to a standalone PyTorch module, imports that file (not nnspec) and runs it once.
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
    if importlib.util.find_spec("onnxruntime") is not None:
        train_and_sample(out)
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
    print(f"\ndone: artifacts in {out}/")
    return 0


def train_and_sample(out: Path) -> None:
    """Train char_rnn, export the trained weights to ONNX, sample from it with onnxruntime."""
    import shutil

    run_dir = out / "char_rnn-run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo starts its run afresh each time
    step("train char_rnn on CPython's help topics as its train: section says (600 steps of 32 x 100 characters)")
    run("train", "char_rnn", "--out", str(run_dir), "--threads", "1")
    step("export the trained weights to ONNX and check them against torch")
    run("compile", "char_rnn", "--target", "onnx", "--weights", str(run_dir), "-o", str(out / "char_rnn-onnx"))
    step("sample 300 characters from the ONNX model with onnxruntime")
    print(sample(out / "char_rnn-onnx", "The ", 300))


def sample(artifact: Path, prompt: str, length: int, temperature: float = 0.6, seed: int = 0) -> str:
    """Characters drawn one at a time from the ONNX char_rnn (the whole prefix run each time, since
    the exported graph takes ids and returns logits at every position)."""
    import numpy as np
    import onnxruntime as ort

    from nnspec.compiler.spec.load import load_spec
    from nnspec.runtime.train.loop import bind_task
    from nnspec.runtime.train.section import recipe

    task = bind_task(recipe(load_spec("char_rnn")))  # the run's vocabulary, from the same corpus
    lookup = {c: i for i, c in enumerate(task.vocab)}
    ids = [lookup.get(c, len(task.vocab) - 1) for c in prompt]
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    window = 100  # the training windows' length: the model has seen no longer context
    for _ in range(length):
        logits = session.run(None, {"ids": np.array([ids[-window:]], dtype=np.int64)})[0][0, -1]
        p = np.exp((logits - logits.max()) / temperature)
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
    return task.decode(ids)


if __name__ == "__main__":
    sys.exit(main())
