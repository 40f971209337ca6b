"""The torch target: `model.py` (the generated, standalone nn.Module) and its runner.

compile writes `model.py` and `weights.safetensors` (the given weights, or the IR's initial weights
for the seed, the same every target draws); generating source needs no torch. The runner is the module in eval mode under `torch.inference_mode`; loading an
artifact executes `model.py` only after its bytes matched the sha256 its manifest records.
"""
from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

from ..base import CompileJob, RunOptions, Runner, module_missing
from ..files import ArtifactError, atomic_write, read_verified, verified_path


def can_compile() -> str | None:
    return None  # source generation is plain Python


def can_run() -> str | None:
    return module_missing("torch", "pip install torch")


def compile_artifact(program, folder: Path, job: CompileJob) -> None:
    from ..initialise import initial_weights
    from ..weights import complete_tied, save_weights
    from .stages import generate_source  # the whole model, then its pipeline stages' classes when it has any

    from .folding import eval_only

    src, cls = generate_source(program)
    atomic_write(folder / "model.py", src.encode())
    # eval_only: compiled with --fuse inference (batch norms folded into the layers, no dropout)
    job.manifest["torch"] = {"class": cls, "file": "model.py", "eval_only": eval_only(program)}
    if program.forward.stages:  # model.py's STAGES and split_state_dict (targets/torch/stages.py)
        job.manifest["torch"]["stages"] = "STAGES"
    # The checked arrays (or the IR's initial weights for the seed: what onnx and TensorRT get too) are
    # written anew, with tied entries filled in so that a strict `load_state_dict` of the file works.
    if job.options.get("meta") and job.arrays is None:
        return  # --meta: model.py alone (the manifest's `weights` says so)
    arrays = job.arrays if job.arrays is not None else initial_weights(program, job.seed)
    atomic_write(folder / "weights.safetensors", save_weights(complete_tied(program, arrays)))


class TorchRunner(Runner):
    """The generated nn.Module (eval mode, no grad); `graph` picks the entry method."""

    target = "torch"
    own_output_names = False

    def __init__(self, module, input_names: list, output_names: list, graph: str = "forward"):
        self.module = module.eval()
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.fn = getattr(module, graph)

    def run(self, inputs: dict) -> dict:
        import numpy as np
        import torch

        self._check(inputs)
        args = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, order="C")) for x in
                (inputs[n] for n in self.input_names)]
        with torch.inference_mode():
            res = self.fn(*args)
        res = res if isinstance(res, (tuple, list)) else (res,)
        return {name: r.detach().cpu().numpy() for name, r in zip(self.output_names, res)}


def runner(program, module, opts: RunOptions) -> TorchRunner:
    g = program.graphs[opts.graph]
    return TorchRunner(module, [n.attrs.name for n in g.inputs()], list(g.outputs), opts.graph)


def load(folder: Path, manifest: dict, opts: RunOptions) -> TorchRunner:
    """model.py with weights.safetensors (an artifact without it keeps the module's torch
    initialisation from the manifest's seed)."""
    import torch

    from .build import load_source

    t = manifest.get("torch")
    if t is None:
        raise ArtifactError(f"'{folder}' holds no torch model (manifest.json has no 'torch' section)",
                            expected="an artifact compiled with --target torch")
    # model.py is Python code and is executed below. It runs only after its bytes matched the sha256
    # manifest.json records for it (the manifest documents what was compiled): a corrupt, partly edited
    # or swapped file is refused. That guards the artifact's integrity, not against its author: an
    # artifact is code from whoever wrote it, so run the ones you trust.
    raw = read_verified(folder, manifest, t["file"])
    try:
        src = raw.decode("utf-8")
        mod = load_source(src, f"nnspec_artifact_{hashlib.sha256(raw).hexdigest()[:12]}")
    except (UnicodeDecodeError, SyntaxError) as e:
        raise ArtifactError(f"{t['file']} is not valid Python: {_first_line(e)}") from None
    cls = getattr(mod, t["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ArtifactError(f"{t['file']} defines no nn.Module class '{t['class']}' (manifest.json's torch.class)")
    seed = opts.seed if opts.seed is not None else (manifest.get("weights") or {}).get("seed") or 0
    torch.manual_seed(seed)  # same initialisation as build_module(program, seed)
    module = cls()
    if "weights.safetensors" in manifest["files"]:
        _load_checked_weights(module, verified_path(folder, manifest, "weights.safetensors"))
    params = list(inspect.signature(module.forward).parameters)
    return TorchRunner(module, params, [d["name"] for d in manifest["outputs"]])


def _load_checked_weights(module, path: Path) -> None:
    """Load a weights file into `module` through the compile-time checks (no pickle; every missing,
    unexpected, mis-shaped or mis-typed entry listed), against the module's own state dict."""
    import torch

    from ..weights import check_state, load_weights
    from .folding import training_state

    state = module.state_dict()
    # An eval-only module (--fuse inference) loads the training weights and folds them as they load.
    expected = training_state(module) or {k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
                                          for k, v in state.items()}
    owners, tied = {}, {}
    for k, v in state.items():  # keys sharing storage with an earlier key are tied to it (optional)
        ptr = v.untyped_storage().data_ptr()
        if ptr in owners and ptr != 0:
            tied[k] = owners[ptr]
        owners.setdefault(ptr, k)
    arrays = load_weights(path)
    check_state(expected, arrays, tied, f"weights in '{path.name}'")
    for k, owner in tied.items():
        arrays.setdefault(k, arrays[owner])
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, strict=True)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else type(e).__name__
