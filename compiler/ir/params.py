"""Parameters as the IR records them: what an op declares for each of its weights and buffers.

A module of its own so the ops (which declare parameters) and the graph (which stores them on
nodes) both depend on it and not on each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    """A parameter or buffer owned by a node: shape, dtype, initialiser (`nnspec.compiler.init.Init`:
    the op's reference default; the node's `init:` and the spec's `init_defaults` take precedence)
    and buffer flag. Immutable, so nodes with equal attributes and inputs may share one."""

    shape: tuple
    dtype: str = "float32"
    init: Any = None
    buffer: bool = False

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n
