"""The target contract: what one entry of the target registry (`registry.py`) holds, and the runner
interface every target's runner implements.

A `Target` is data plus five functions, each from the target's own module:

    can_compile() -> None | why not     can this machine build the artifact (toolchain present)?
    can_run() -> None | why not         can it run one (runtime present, a GPU where needed)?
    compile(program, folder, job)       write the artifact's files into `folder` (a staged temp
                                        folder) and add the target's fields to `job.manifest`;
                                        may return an error to raise once the folder is in place
    runner(program, module, opts)       a Runner for a Program in memory, with `module`'s weights
    load(folder, manifest, opts)        a Runner for an artifact folder `nnspec compile` wrote

plus `pipeline` (the pass names `compile_spec` runs for it), optionally `check` (refusals before
anything is written, e.g. TensorRT's op-support lint) and `lint` (what `nnspec check --target`
reports). Probes answer without raising and without importing heavy libraries where they can.

Nothing here imports torch, onnx or TensorRT.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nnspec.compiler.errors import LoweringError

from .inputs import check_inputs


@dataclass
class CompileJob:
    """What a target's `compile` gets besides the program and the folder."""

    manifest: dict  # the base manifest (spec, interface, cost); the target adds its own section
    arrays: dict | None = None  # checked weights ({state-dict key: array}) from --weights, or None
    seed: int = 0  # initialisation seed when no weights are given
    options: dict = field(default_factory=dict)  # target options: precision, workspace_mb, opt_level


@dataclass
class RunOptions:
    """Options a runner factory may use (each target reads the ones it understands)."""

    seed: int | None = None  # None: the artifact's own seed when loading one, else 0
    threads: int = 1  # intra-op threads (torch, onnxruntime)
    graph: str = "forward"  # entry graph
    work_dir: str | Path | None = None  # where a runner may build files (TensorRT engines)
    precision: str = "fp32"
    dims: dict | None = None  # symbol values the runner must cover (an engine's profile)
    model: object = None  # a prebuilt model to run instead of lowering the program (an artifact's ONNX)


class Runner:
    """`run({input name: array or tensor}) -> {output name: np.ndarray}`, by the spec's names."""

    target = "?"
    input_names: list
    output_names: list
    inputs_spec: list | None = None  # the manifest's inputs, for runners loaded from an artifact folder
    # False where the model's outputs carry no names of their own (a torch module returns a tuple):
    # its output_names were given to it, so comparing them with the manifest proves nothing.
    own_output_names = True

    def run(self, inputs: dict) -> dict:
        raise NotImplementedError

    def _check(self, inputs: dict) -> None:
        if self.inputs_spec is not None:  # names, dtypes, ranks and shapes, before any backend sees them
            check_inputs(self.inputs_spec, inputs)
            return
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise LoweringError(f"{self.target} runner: missing input(s) {', '.join(missing)}",
                                expected=f"inputs named {', '.join(self.input_names)}")


@dataclass(frozen=True)
class Target:
    name: str
    summary: str  # one line: what it writes and what it needs
    pipeline: tuple  # pass names, in order
    can_compile: Callable[[], str | None]
    can_run: Callable[[], str | None]
    compile: Callable  # (program, folder: Path, job: CompileJob) -> Exception | None
    runner: Callable  # (program, module, opts: RunOptions) -> Runner
    load: Callable  # (folder: Path, manifest: dict, opts: RunOptions) -> Runner
    # Building its runner can fail for reasons of the machine rather than of nnspec (a TensorRT build
    # this GPU or driver refuses): verify reports that target as skipped instead of failing.
    build_may_fail: bool = False
    check: Callable | None = None  # (program) -> None, raising before anything is written
    lint: Callable | None = None  # (program) -> report: falsy when clean, `.render()` text
    # (program, module, runner, inputs, opts) -> {(node id, port): array}: every IR value as the
    # target computed it, for `nnspec verify`'s first-diverging-node search
    node_values: Callable | None = None
    # fuse_ops' mode when `--fuse` is not given: "safe" keeps training semantics (outputs and
    # gradients), "inference" also folds batch norms and drops dropout (eval mode only), "none".
    fuse: str = "safe"

    def availability(self) -> dict:
        """{"compile": None | why not, "run": None | why not} on this machine."""
        return {"compile": self.can_compile(), "run": self.can_run()}


def module_missing(name: str, hint: str) -> str | None:
    """None when Python module `name` can be imported here (found, not imported), else why not."""
    import importlib.util

    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"the `{name}` Python package is not installed ({hint})"
