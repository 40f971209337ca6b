"""The target registry: every target nnspec compiles to is one entry here, and nothing else in
nnspec spells the list out. The CLI's `--target` choices and `--targets` parsing, `compile_artifacts`,
`load_runner` / `runner_for`, `verify` and `bench` all read it.

An entry (`base.Target`) names its pass pipeline, its availability probes and the functions of its
own module (`targets/<name>/target.py`): compile, runner, loader. Adding a target means writing that
module and adding one entry to `TARGETS` below.

Importing this loads no torch, onnx or TensorRT: `nnspec check` and `compile --target torch` stay fast.
"""
from __future__ import annotations

from nnspec.compiler.errors import LoweringError
from nnspec.compiler.passes import fuse_ops
from nnspec.compiler.passes.manager import DEFAULT_PIPELINE

from .base import Target
from .onnx import target as onnx_target
from .tensorrt import target as trt_target
from .torch import target as torch_target

# The passes every pipeline starts with: the spec expanded and typed, ties resolved, dead code gone.
CORE = tuple(DEFAULT_PIPELINE)
# The torch target emits a trainable module: nothing here may assume eval mode (dropout and batch
# statistics stay), and parameters keep the spec's names (the state dict is the interface).
TRAINING = CORE + ("fuse_ops",)  # in `safe` mode by default: outputs and gradients kept
# Pipeline stages (`--stages K`; no-ops without it), after any pass that adds or replaces nodes so
# every node the torch target writes carries its stage.
TRAINING += ("partition_pipeline", "split_stages")
# Activation checkpointing within `--remat-budget` (a no-op without it); it only marks nodes, so it
# may run last, and the torch target writes the marked segments under torch.utils.checkpoint.
TRAINING += ("rematerialize",)
# ONNX and TensorRT lower the eval-mode form: inference-only passes (folding batch norm into the
# convolution before it, dropping dropout, the fusion rules) go here.
INFERENCE = CORE + ("fuse_ops",)  # in `inference` mode by default

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("torch", "model.py: a standalone, trainable nn.Module (no torch needed to compile)", TRAINING,
           torch_target.can_compile, torch_target.can_run, torch_target.compile_artifact, torch_target.runner,
           torch_target.load),
    Target("onnx", "model.onnx + weights.safetensors, run by onnxruntime on the CPU", INFERENCE,
           onnx_target.can_compile, onnx_target.can_run, onnx_target.compile_artifact, onnx_target.runner,
           onnx_target.load, node_values=onnx_target.node_values, fuse="inference"),
    Target("trt", "+ model.engine from datacenter TensorRT (needs an NVIDIA GPU to build and run)", INFERENCE,
           trt_target.TRT.can_compile, trt_target.TRT.can_run, trt_target.TRT.compile_artifact,
           trt_target.TRT.runner, trt_target.TRT.load, build_may_fail=True, check=trt_target.TRT.check,
           lint=trt_target.TRT.lint, fuse="inference"),
    Target("trt-rtx", "+ model.engine from TensorRT-RTX (builds without a GPU; running needs one)", INFERENCE,
           trt_target.TRT_RTX.can_compile, trt_target.TRT_RTX.can_run, trt_target.TRT_RTX.compile_artifact,
           trt_target.TRT_RTX.runner, trt_target.TRT_RTX.load, build_may_fail=True, check=trt_target.TRT_RTX.check,
           lint=trt_target.TRT_RTX.lint, fuse="inference"),
)}

REFERENCE = "torch"  # what verify and bench compare the others with (torch eager)
# fuse_ops' mode for each target when `--fuse` is not given (the entries' `fuse` field).
fuse_ops.TARGET_DEFAULTS.update({t.name: t.fuse for t in TARGETS.values()})


def names() -> list[str]:
    """Every target's name, in registry order."""
    return list(TARGETS)


def get(name: str) -> Target:
    """The entry of target `name`; LoweringError listing the targets when there is none."""
    t = TARGETS.get(name)
    if t is None:
        raise LoweringError(f"unknown target '{name}'", expected=f"one of: {', '.join(TARGETS)}")
    return t


def availability(targets=None) -> dict:
    """{target: {"compile": None | why not, "run": None | why not}} on this machine."""
    return {name: get(name).availability() for name in (targets or TARGETS)}


__all__ = ["TARGETS", "REFERENCE", "CORE", "TRAINING", "INFERENCE", "names", "get", "availability"]
