"""Trained weights for `nnspec compile --weights`: a safetensors file, a checkpoint folder, or a run
folder (its newest complete checkpoint).

A checkpoint's weights are read once, checked against the sha256 its state.json records, and
parsed from those same bytes (no window between the check and the use). The manifest of the
compiled artifact then names the checkpoint and its step.
"""
from __future__ import annotations

from pathlib import Path

from nnspec.compiler.errors import LoweringError


def read_weights(path) -> tuple[dict, dict]:
    """({state-dict key: numpy array}, what the manifest records about where they came from)."""
    from nnspec.targets.weights import load_weights

    p = Path(path)
    if not p.is_dir():
        return load_weights(p), {}
    from .checkpoint import CHECKPOINTS, WEIGHTS, CheckpointError, latest_checkpoint, read_weights_bytes

    folder = p
    if (p / CHECKPOINTS).is_dir():
        folder = latest_checkpoint(p)
        if folder is None:
            raise CheckpointError(f"run folder '{path}' has no complete checkpoint")
    data, state = read_weights_bytes(folder)
    from safetensors.numpy import load

    try:
        arrays = load(data)
    except Exception as e:  # the bytes matched their sha256, so this is a foreign or broken writer
        raise LoweringError(f"cannot read {WEIGHTS} in '{folder}': {str(e).splitlines()[0] if str(e) else e}") from None
    return arrays, {"checkpoint": Path(folder).name, "step": state["step"]}


__all__ = ["read_weights"]
