"""Example inputs for a program's entry graph: the one generator every runner, check and test uses.

Floats are N(0, 1); integer inputs are uniform in their declared `range` [low, high) (default
[0, 2)), where a bound may name a dim symbol (`range: [0, V]`); bools are fair coin flips. The same
seed gives the same arrays. numpy only.
"""
from __future__ import annotations

from nnspec.compiler.errors import LoweringError
from nnspec.compiler.ir.dims import resolve, symbols


def symbol_values(program, dims: dict | None = None, graph: str = "forward") -> dict:
    """Concrete symbol values: `dims`, else each symbol's `opt` (or `min`, or 1)."""
    g = program.graphs[graph]
    vals = {s: (r.get("opt") or r.get("min") or 1) for s, r in g.symbols.items()}
    for n in g.inputs():
        for d in n.outputs[0].shape:
            for s in symbols(d):
                vals.setdefault(s, 1)
    vals.update(dims or {})
    return vals


def example_inputs(program, dims: dict | None = None, seed: int = 0, graph: str = "forward") -> dict:
    """{input name: np.ndarray} for entry `graph` at symbol values `dims` (default: each dim's opt)."""
    import numpy as np

    g = program.graphs[graph]
    vals = symbol_values(program, dims, graph)
    rng = np.random.default_rng(seed)
    out = {}
    for n in g.inputs():
        t = n.outputs[0]
        try:
            shape = tuple(int(resolve(d, vals)) for d in t.shape)
            lo, hi = (int(resolve(b, vals)) for b in (list(n.attrs.range) if n.attrs.range else [0, 2])[:2])
        except KeyError as e:
            raise LoweringError(f"input '{n.attrs.name}': no value for dim {e}",
                                expected="a value for every symbolic dim") from None
        if t.dtype.startswith(("float", "bfloat")):
            arr = rng.standard_normal(shape).astype("float32")
            out[n.attrs.name] = arr if t.dtype == "bfloat16" else arr.astype(t.dtype)
        elif t.dtype == "bool":
            out[n.attrs.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[n.attrs.name] = rng.integers(lo, hi, shape).astype(t.dtype)
    return out
