"""Example inputs for a program's entry graph: the one generator every runner, check and test uses.

Floats are N(0, 1); integer inputs are uniform in their declared `range` [low, high) (default
[0, 2)), where a bound may name a dim symbol (`range: [0, V]`); bools are fair coin flips. The same
seed gives the same arrays. numpy only.

`check_inputs` is the other direction: arrays someone hands a runner, held to an artifact's declared
inputs (names, dtypes, ranks, dims within their ranges, integer values within their `range`).
"""
from __future__ import annotations

from nnspec.compiler.errors import LoweringError, NnspecError, quote
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


class InputError(NnspecError):
    """Arrays given to a runner do not fit the artifact's inputs."""

    kind = "input error"


def _describe(io: dict) -> str:
    return f"{io['dtype']} [{', '.join(str(d) for d in io['shape'])}]"


def check_inputs(specs: list, feeds: dict) -> None:
    """Raise InputError unless `feeds` ({name: array or tensor}) holds exactly the inputs `specs`
    (the manifest's `inputs`) declare, each with their dtype and rank, concrete dims equal, and each
    symbolic dim within its declared min/max and equal wherever the symbol recurs."""
    names = [io["name"] for io in specs]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        what = "; ".join(([f"missing input(s) {', '.join(missing)}"] if missing else [])
                         + ([f"unknown input(s) {', '.join(map(quote, extra))}"] if extra else []))
        raise InputError(what, expected="inputs " + ", ".join(f"{io['name']}: {_describe(io)}" for io in specs))
    seen: dict = {}
    for io in specs:
        name, x = io["name"], feeds[io["name"]]
        dtype = str(getattr(x, "dtype", "?")).replace("torch.", "")
        shape = tuple(int(d) for d in getattr(x, "shape", ()))
        want = f"{_describe(io)}"
        if dtype != io["dtype"]:
            raise InputError(f"input '{name}' has dtype {dtype}", expected=want)
        if len(shape) != len(io["shape"]):
            raise InputError(f"input '{name}' has rank {len(shape)} (shape {list(shape)})",
                             expected=f"{want} (rank {len(io['shape'])})")
        for axis, (got, d) in enumerate(zip(shape, io["shape"])):
            if isinstance(d, int):
                if got != d:
                    raise InputError(f"input '{name}' has size {got} on axis {axis} (shape {list(shape)})", expected=want)
                continue
            rng = (io.get("dims") or {}).get(d) or {}
            lo, hi = rng.get("min"), rng.get("max")
            if (lo is not None and got < lo) or (hi is not None and got > hi):
                raise InputError(f"input '{name}' has {d}={got} on axis {axis} (shape {list(shape)})",
                                 expected=f"{want} with {lo if lo is not None else 0} <= {d} <= "
                                          f"{hi if hi is not None else 'any'}")
            if d in seen and seen[d][0] != got:
                raise InputError(f"input '{name}' has {d}={got} on axis {axis}, but input '{seen[d][1]}' has "
                                 f"{d}={seen[d][0]}", expected=f"one value of {d} across inputs")
            seen.setdefault(d, (got, name))
    for io in specs:  # integer inputs index tables and axes: values outside `range` fail inside torch
        rng = io.get("range")
        x = feeds[io["name"]]
        count = x.numel() if hasattr(x, "numel") else getattr(x, "size", 0)  # a torch tensor, or numpy
        if not rng or not io["dtype"].startswith(("int", "uint")) or not count:
            continue
        lo, hi = (seen[b][0] if isinstance(b, str) and b in seen else b for b in rng)
        if not all(isinstance(b, (int, float)) for b in (lo, hi)):
            continue  # a bound names a dim no input carries: nothing to compare with
        vmin, vmax = (int(v.item()) if hasattr(v, "item") else int(v) for v in (x.min(), x.max()))
        if vmin < lo or vmax >= hi:
            raise InputError(f"input '{io['name']}' holds values from {vmin} to {vmax}",
                             expected=f"values in [{lo}, {hi}) (its declared range [{rng[0]}, {rng[1]}))")
