"""The cost model summary: parameters, FLOPs (forward and backward), output bytes and bytes saved for
backward, per node and in total; and per-node measured costs read back from `nnspec profile`.

Per-node numbers come from each op's `cost` and `params` (compiler/ops/base.py's `Cost` documents
the conventions); this module resolves symbolic dims to concrete values (N=1 and each symbol's
`opt`, unless given) and multiplies a scan body's cost by its step count. Parameters shared through
ties are counted once, as torch's `parameters()` does.

Saved-for-backward bytes are counted over the graph, not summed per op: a value two nodes keep (a
relu's result, which relu and the next conv both keep) or a view of it (flatten's output) is one
storage, charged to the first node in topological order that keeps it; so the rows add up to what
autograd holds for the whole forward. Requires-grad is propagated from the graph inputs (float
inputs require grad) and trainable parameters: a node with neither on its inputs keeps nothing and
has no backward. Scan bodies are counted per step as if every step's values were fresh (exact for
what the body computes, an over-count for inputs it keeps a view of).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

from .errors import NnspecError, clean, quote
from .ir.dims import DTYPE_BYTES, resolve, symbols

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass
class NodeCost:
    id: str
    op: str
    shape: str
    params: int
    flops: int
    act_bytes: int  # bytes of the node's outputs
    depth: int = 0
    bwd_flops: int = 0
    param_bytes: int = 0  # trainable parameters the node owns (ties counted at their owner)
    saved_bytes: int = 0  # kept for backward, values shared with earlier nodes not counted again


@dataclass
class CostReport:
    rows: list = field(default_factory=list)
    params: int = 0  # trainable parameters, ties counted once
    buffers: int = 0
    flops: int = 0
    act_bytes: int = 0
    dims: dict = field(default_factory=dict)
    bwd_flops: int = 0
    param_bytes: int = 0
    saved_bytes: int = 0


@dataclass
class _Totals:
    flops: int = 0
    bwd_flops: int = 0
    act_bytes: int = 0
    saved_bytes: int = 0


def dim_values(graph, given: dict | None = None) -> dict:
    """Concrete values for the symbols of `graph`: `given`, else N=1, else the spec's `opt` (or min)."""
    vals = {}
    syms = set()
    for n in graph.inputs():
        for d in n.outputs[0].shape:
            syms |= symbols(d)
    for s in sorted(syms):
        rng = graph.symbols.get(s, {})
        vals[s] = 1 if s == "N" else (rng.get("opt") or rng.get("min") or 1)
    vals.update(given or {})
    return vals


def _r(x, vals) -> int:
    return int(resolve(x, vals)) if x is not None else 0


def _own_params(n) -> tuple[int, int]:
    """(elements, bytes) of the trainable parameters node `n` owns (tied ones are its owner's)."""
    own = [p for k, p in n.params.items() if not p.buffer and k not in n.ties]
    return sum(p.numel() for p in own), sum(p.numel() * DTYPE_BYTES[p.dtype] for p in own)


def _steps(n, ins, vals) -> int:
    if n.attrs.steps is not None:  # a loop of a declared length
        return n.attrs.steps
    steps = 1
    for name, role, t in zip(n.attrs.inputs, n.attrs.roles, ins):
        if role == "over":
            steps = resolve(t.shape[n.attrs.axis % t.rank], vals)
    return steps


@dataclass
class Saved:
    """What a graph's nodes keep for backward, per value (`saved_values`).

    `keeps[node id]`: the storages the node keeps, in order, each a value `(node id, port)` that is
    the root of its views and is not module state; `extra[node id]`: bytes it keeps besides (its
    `saved_extra`, at the dim values; a scan's body is not in it); `active[node id]`: whether its
    backward runs; `root`: each value's storage root; `types`: each value's TensorType. A node whose
    backward does not run has no `keeps` or `extra` entry.
    """

    keeps: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    active: dict = field(default_factory=dict)
    root: dict = field(default_factory=dict)
    types: dict = field(default_factory=dict)
    vals: dict = field(default_factory=dict)  # the dim values the figures are at

    def nbytes(self, value) -> int:
        return self.types[value].nbytes(self.vals)


_COSTS: dict = {}  # (op, attrs, input types, output types) -> Cost
_COSTS_MAX = 4096


def op_cost(n, ins):
    """`n.opdef.cost(n.attrs, ins, n.outputs)`, computed once per distinct (op, attrs, types): an op's
    cost is a function of those alone (the op contract), and the 32 layers of a 7B model are 32 copies
    of the same nodes, whose symbolic saved-bytes expressions are the slow part of a report."""
    key = (n.op, repr(n.attrs), tuple(repr(t) for t in ins), tuple(repr(t) for t in n.outputs))
    c = _COSTS.get(key)
    if c is None:
        c = n.opdef.cost(n.attrs, ins, n.outputs)
        if len(_COSTS) >= _COSTS_MAX:
            _COSTS.clear()
        _COSTS[key] = c
    return c


def saved_values(graph, vals: dict) -> Saved:
    """Which storages each node of `graph` keeps for backward at dim values `vals`: the one place the
    ops' `Cost` fields (saved_inputs, saved_for, saved_outputs, saved_extra, views, state_output,
    differentiable) become values. Requires-grad is propagated from the float graph inputs and the
    trainable parameters (the convention `Cost` documents). `graph_cost` adds these up (each storage
    once); the rematerialization planner (compiler/remat/model.py) assigns them to segments."""
    out = Saved(vals=dict(vals))
    grad: dict = {}  # (node id, port) -> requires grad
    state: set = set()  # values that are module state (parameters, fixed tensors): kept for free
    root, types = out.root, out.types
    for n in graph.topo():
        for port, t in enumerate(n.outputs):
            types[(n.id, port)] = t
        if n.op == "input":
            grad[(n.id, 0)] = n.outputs[0].dtype in FLOAT_DTYPES
            continue
        ins = graph.input_types(n.id)
        refs = graph.inputs_of(n.id)
        c = op_cost(n, ins)
        trainable = any(not p.buffer for p in n.params.values())
        active = trainable or any(grad.get(r, False) for r in refs)
        out.active[n.id] = active
        for port, t in enumerate(n.outputs):
            grad[(n.id, port)] = active and c.differentiable and t.dtype in FLOAT_DTYPES
        for o, slot in c.views:
            root[(n.id, o)] = root.get(refs[slot], refs[slot])
        if c.state_output:
            state.update((n.id, port) for port in range(len(n.outputs)))
        if not active:
            continue
        needs = [grad.get(r, False) for r in refs]
        keep = [refs[slot] for slot, when in c.input_slots()
                if _r(when, vals) and (slot not in c.saved_for or any(needs[i] for i in c.saved_for[slot]))]
        keep += [(n.id, port) for port, when in c.output_slots() if _r(when, vals)]
        bases = []
        for ref in keep:
            base = root.get(ref, ref)
            if base not in state and base not in bases:
                bases.append(base)
        out.keeps[n.id] = bases
        out.extra[n.id] = _r(c.saved_extra, vals)
    return out


def graph_cost(graph, vals: dict, rows: list | None = None, depth: int = 0, mult=1) -> _Totals:
    """Totals of `graph` at symbol values `vals` (every figure times `mult`), appending a NodeCost per
    node to `rows` when given. Saved bytes: each storage `saved_values` names is charged once, to the
    first node in topological order that keeps it."""
    tot = _Totals()
    saved = saved_values(graph, vals)
    kept: set = set()  # storages (root values) already counted as saved
    for n in graph.topo():
        if n.op == "input":
            continue
        ins = graph.input_types(n.id)
        c = op_cost(n, ins)
        f = _r(c.flops, vals) * mult
        a = sum(t.nbytes(vals) for t in n.outputs) * mult
        b = s = 0
        if saved.active[n.id]:
            b = _r(c.bwd_flops, vals) * mult
            s = saved.extra[n.id]
            for base in saved.keeps[n.id]:
                if base not in kept:
                    kept.add(base)
                    s += saved.nbytes(base)
            s *= mult
        if n.body is not None:
            body = graph_cost(n.body, vals, None, depth + 1, mult * _steps(n, ins, vals))
            f, b, s = f + body.flops, b + body.bwd_flops, s + body.saved_bytes
        if rows is not None:
            own, own_bytes = _own_params(n)
            rows.append(NodeCost(n.id, n.op, ", ".join(str(t) for t in n.outputs), own, f, a, depth,
                                 b, own_bytes, s))
            if n.body is not None:  # the body's nodes are listed; their costs are in the scan's row
                for bn in n.body.topo():
                    if bn.op != "input":
                        own_b, own_b_bytes = _own_params(bn)
                        rows.append(NodeCost(bn.id, bn.op, ", ".join(str(t) for t in bn.outputs), own_b, 0, 0,
                                             depth + 1, 0, own_b_bytes, 0))
        tot.flops += f
        tot.bwd_flops += b
        tot.act_bytes += a
        tot.saved_bytes += s
    return tot


def _unique_param_nodes(program):
    """Every node holding parameters once: a node of an extra entry graph (`graphs:`) with the id of
    another graph's node is that node (one module, one set of weights), so it is not counted again."""
    seen = set()
    for n in program.all_nodes():
        if n.params and n.id not in seen:
            seen.add(n.id)
            yield n


def param_count(program) -> tuple[int, int]:
    """(trainable parameters, buffer elements) of every graph, ties and shared nodes counted once."""
    params = buffers = 0
    for n in _unique_param_nodes(program):
        for k, p in n.params.items():
            if k in n.ties:
                continue
            if p.buffer:
                buffers += p.numel()
            else:
                params += p.numel()
    return params, buffers


def cost_report(program, graph: str = "forward", dims: dict | None = None) -> CostReport:
    g = program.graphs[graph]
    vals = dim_values(g, dims)
    rep = CostReport(dims=vals)
    tot = graph_cost(g, vals, rep.rows)
    rep.flops, rep.bwd_flops, rep.act_bytes, rep.saved_bytes = tot.flops, tot.bwd_flops, tot.act_bytes, tot.saved_bytes
    rep.params, rep.buffers = param_count(program)
    rep.param_bytes = sum(_own_params(n)[1] for n in _unique_param_nodes(program))
    return rep


# -- measured costs (`nnspec profile`) -----------------------------------------------------------
# A profile is data from anyone (a file passed with --profile), so it is read like a spec: bounded
# before it is parsed, and every field checked before a pass sees it.
PROFILE_FORMAT = 1
MAX_PROFILE_BYTES = 1 << 25  # 32 MiB: ~150 bytes a node covers the largest graph limits.py allows


class ProfileError(NnspecError):
    """A profile file is malformed or does not belong to the program."""

    kind = "profile error"


def _seconds(entry: dict, key: str, where: str) -> float:
    v = entry.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ProfileError(f"{where}: {key} is {quote(v)}", expected="a finite number of seconds >= 0")
    return float(v)


@dataclass
class Profile:
    """A profile file as read: the graph it measured, {node id: (forward s, backward s)} in file
    order, and the dims it was measured at; not yet checked against a program (`check_profile`)."""

    path: str
    graph: str
    times: dict
    dims: dict = field(default_factory=dict)


def read_profile(path) -> Profile:
    """A profile JSON written by `nnspec profile`, checked on its own: bounded size, the format
    version, every node id a string listed once and every figure a finite number of seconds >= 0."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(MAX_PROFILE_BYTES + 1) if size <= MAX_PROFILE_BYTES else b""
    if size > MAX_PROFILE_BYTES or len(data) > MAX_PROFILE_BYTES:  # the file may grow after the stat
        raise ProfileError(f"{clean(path)} is {max(size, len(data))} bytes or more",
                           expected=f"a profile of at most {MAX_PROFILE_BYTES} bytes")

    def no_constants(name):  # NaN, Infinity: json accepts them, a profile may not hold them
        raise ProfileError(f"{clean(path)}: {name} is not a number of seconds", expected="finite numbers")

    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, ProfileError):
            raise
        raise ProfileError(f"{clean(path)} is not a JSON profile ({clean(str(e), 120)})",
                           expected="the JSON file `nnspec profile -o` writes") from None
    if not isinstance(doc, dict) or doc.get("nnspec_profile") != PROFILE_FORMAT:
        raise ProfileError(f"{clean(path)} is not an nnspec profile",
                           expected=f'a JSON object with "nnspec_profile": {PROFILE_FORMAT}')
    graph = doc.get("graph", "forward")
    if not isinstance(graph, str):
        raise ProfileError(f"{clean(path)}: graph is {quote(graph)}", expected="a graph name")
    dims = doc.get("dims", {})
    if not isinstance(dims, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                             for k, v in dims.items()):
        raise ProfileError(f"{clean(path)}: 'dims' is not a map of symbol to size", expected='{"N": 8, ...}')
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        raise ProfileError(f"{clean(path)}: 'nodes' is not a list", expected="a list of {id, forward_s, backward_s}")
    times: dict[str, tuple[float, float]] = {}
    for i, entry in enumerate(nodes):
        where = f"{clean(path)}: nodes[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise ProfileError(f"{where} has no string 'id'", expected="{id, forward_s, backward_s}")
        nid = entry["id"]
        if nid in times:
            raise ProfileError(f"{where}: node {quote(nid)} is listed twice", expected="one entry per node")
        times[nid] = (_seconds(entry, "forward_s", where), _seconds(entry, "backward_s", where))
    return Profile(path, graph, times, dims)


def check_profile(program, prof: Profile, graph: str | None = None) -> dict[str, tuple[float, float]]:
    """`prof`'s times, every node id one of `graph`'s (default: the graph the profile names)."""
    where = clean(prof.path)
    graph = graph or prof.graph
    if graph not in program.graphs:
        raise ProfileError(f"{where}: graph {quote(graph)} is not one of the program's",
                           expected=f"one of {', '.join(sorted(program.graphs))}")
    g = program.graphs[graph]
    for i, nid in enumerate(prof.times):
        if nid not in g or g.node(nid).op == "input":
            raise ProfileError(f"{where}: nodes[{i}]: node {quote(nid)} is not a node of graph '{graph}' of "
                               f"{program.spec.name}", expected="a profile of this spec, preset and overrides")
    return dict(prof.times)


def profile_costs(program, path, graph: str | None = None) -> dict[str, tuple[float, float]]:
    """{node id: (forward seconds, backward seconds)} from a profile JSON written by `nnspec profile`,
    checked on its own (`read_profile`) and against `program` (`check_profile`). Nodes the profile
    leaves out are absent (a pass falls back to FLOPs for them)."""
    return check_profile(program, read_profile(path), graph)


def profile_option(times: dict) -> dict:
    """The one form passes read measured costs in, `PassContext.options["profile"]`:
    {node id: {"fwd": seconds, "bwd": seconds}} (partition_pipeline and rematerialize read it)."""
    return {k: {"fwd": f, "bwd": b} for k, (f, b) in times.items()}


# A byte size as users write it on the command line: `800MB`, `1.5GiB`, `24G`, `2.5e10`, `123456`.
# K, M, G, T are powers of 1000, Ki, Mi, Gi, Ti of 1024; the trailing B is optional.
_BYTE_SIZE = re.compile(r"\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?:([KMGT])(i)?)?B?\s*\Z", re.I)
BYTE_SIZE_FORMS = "a byte size such as 800MB, 1.5GiB, 24G, 2.5e10 or 123456"


def parse_bytes(text: str) -> tuple[float, bool]:
    """(bytes, unitless decimal) of a byte size (`_BYTE_SIZE`); ValueError when `text` is not one.
    The flag is True for a plain decimal like `0.33` (no unit, no exponent), which callers that also
    take fractions read as one."""
    m = _BYTE_SIZE.match(str(text))
    if not m or len(str(text)) > 64:
        raise ValueError(f"not {BYTE_SIZE_FORMS}")
    number, unit, binary = m.group(1), (m.group(2) or "").upper(), bool(m.group(3))
    power = "KMGT".index(unit) + 1 if unit else 0
    value = float(number) * (1024 if binary else 1000) ** power
    if not math.isfinite(value):
        raise ValueError(f"not {BYTE_SIZE_FORMS}")
    plain = not unit and "." in number and "e" not in number.lower() and not str(text).strip().upper().endswith("B")
    return value, plain


_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}


def parse_figure(v) -> tuple[float, float]:
    """A reported figure (`25.6M`, `61100840`, `3.6G`) -> (value, tolerance implied by its precision)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v), 0.5
    s = str(v).strip().upper().replace(",", "").replace("_", "")
    mult = _SUFFIX.get(s[-1], None) if s and s[-1].isalpha() else 1
    if mult is None:
        raise ValueError(f"cannot read figure {v!r}")
    num = s[:-1] if s[-1].isalpha() else s
    decimals = len(num.split(".")[1]) if "." in num else 0
    return float(num) * mult, 0.5 * 10 ** (-decimals) * mult


def compare_reported(reported: dict, computed: dict) -> list[dict]:
    """One row per reported figure that nnspec computes: reported, computed, relative error, match."""
    rows = []
    for key, v in reported.items():
        if key not in computed:
            continue
        value, tol = parse_figure(v)
        got = computed[key]
        rows.append({"figure": key, "reported": v, "reported_value": value, "computed": got,
                     "rel_err": abs(got - value) / value if value else 0.0, "match": abs(got - value) <= tol})
    return rows


def human(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))
