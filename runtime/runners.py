"""One runner interface for every target: the generated torch module, onnxruntime and TensorRT engines.

A runner is called by the spec's input names with numpy arrays or torch tensors and answers with
numpy arrays by the spec's output names:

    runner = load_runner("out/")            # target from the artifact's manifest
    outs = runner.run({"image": x})         # {"logits": np.ndarray}

`load_runner` opens an artifact folder written by `nnspec compile`; `runner_for` makes one from a
Program in memory (bench and verify use it); `generate_inputs` draws inputs for a spec (floats
N(0, 1), integer inputs uniform in their declared `range`). Each target's runner lives in its own
module and is found through the target registry (`nnspec.targets.registry`).
"""
from __future__ import annotations

from pathlib import Path

from nnspec.targets import registry
from nnspec.targets.base import RunOptions, Runner  # noqa: F401  (re-exported)
from nnspec.targets.files import ArtifactError
from nnspec.targets.inputs import example_inputs, symbol_values  # noqa: F401  (re-exported)
from nnspec.targets.onnx.target import OrtRunner  # noqa: F401  (re-exported)
from nnspec.targets.tensorrt.target import TensorRTRunner  # noqa: F401  (re-exported)
from nnspec.targets.torch.target import TorchRunner  # noqa: F401  (re-exported)

# One generator for every runner and check (re-exported under the runtime's historical name).
generate_inputs = example_inputs


def _io_names(manifest: dict, key: str) -> list:
    return [d["name"] for d in manifest[key]]


def load_runner(artifact_dir, target: str | None = None, threads: int = 1, seed: int | None = None) -> Runner:
    """A runner for an artifact folder written by `nnspec compile` (target: from its manifest unless given).

    torch: model.py (+ weights.safetensors, else the module's initialisation from the manifest's seed);
    onnx: model.onnx; trt / trt-rtx: model.engine, after checking it was built for this machine.
    The manifest is checked field by field, and only files it lists whose sha256 matches are loaded.
    """
    from .artifacts import load_manifest

    d = Path(artifact_dir)
    manifest = load_manifest(d)
    target = target or manifest["target"]
    runner = registry.get(target).load(d, manifest, RunOptions(seed=seed, threads=threads))
    _agree(runner, manifest, target)
    runner.inputs_spec = manifest["inputs"]
    return runner


def _agree(runner: Runner, manifest: dict, target: str) -> None:
    """The model's own input/output names must be the manifest's: the manifest is not covered by
    any sha256, so an edited one must not make the runner feed or read the wrong tensors. (Outputs
    only where the model names them itself: a torch module returns a tuple.)"""
    ins, outs = _io_names(manifest, "inputs"), _io_names(manifest, "outputs")
    if list(runner.input_names) != ins or (runner.own_output_names and list(runner.output_names) != outs):
        have = f"({', '.join(runner.input_names)}) -> ({', '.join(runner.output_names)})"
        raise ArtifactError(f"the {target} model takes {have}, but manifest.json lists ({', '.join(ins)}) -> "
                            f"({', '.join(outs)})", hint="the manifest was edited; recompile the artifact")


# -- runners from a Program in memory ----------------------------------------------------------
def program_io(program, graph: str = "forward") -> tuple[list, list]:
    g = program.graphs[graph]
    return [n.attrs.name for n in g.inputs()], list(g.outputs)


def torch_runner(program, module=None, seed: int = 0, graph: str = "forward") -> TorchRunner:
    from nnspec.targets.torch.build import build_module

    module = module if module is not None else build_module(program, seed)
    return registry.get("torch").runner(program, module, RunOptions(seed=seed, graph=graph))


def module_weights(module) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def runner_for(program, target: str, module=None, seed: int = 0, threads: int = 1, work_dir=None,
               precision: str = "fp32", dims: dict | None = None, graph: str = "forward", model=None) -> Runner:
    """A runner of `target` for `program`, sharing the torch module's weights (built from `seed`).

    trt / trt-rtx build an engine in `work_dir` (a temp folder by default) and need a CUDA GPU to run;
    the engine's profile covers `dims`. `model`: a prebuilt model to run instead (an ONNX ModelProto).
    """
    from nnspec.targets.torch.build import build_module

    entry = registry.get(target)
    module = module if module is not None else build_module(program, seed)
    opts = RunOptions(seed=seed, threads=threads, graph=graph, work_dir=work_dir, precision=precision, dims=dims,
                      model=model)
    return entry.runner(program, module, opts)


def runnable_targets(targets=None) -> dict:
    """{target: None if it can run here, else why not}, from each target's own probe."""
    out = {}
    for t in targets or registry.names():
        entry = registry.TARGETS.get(t)
        out[t] = entry.can_run() if entry is not None else f"unknown target (one of {', '.join(registry.names())})"
    return out

