"""The cost model summary: parameters, FLOPs and activation bytes per node and in total.

Per-node numbers come from each op's `cost` and `params`; this module resolves symbolic dims to
concrete values (N=1 and each symbol's `opt`, unless given) and multiplies a scan body's cost by
its step count. Parameters shared through ties are counted once, as torch's `parameters()` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .ir.dims import resolve, symbols


@dataclass
class NodeCost:
    id: str
    op: str
    shape: str
    params: int
    flops: int
    act_bytes: int
    depth: int = 0


@dataclass
class CostReport:
    rows: list = field(default_factory=list)
    params: int = 0  # trainable parameters, ties counted once
    buffers: int = 0
    flops: int = 0
    act_bytes: int = 0
    dims: dict = field(default_factory=dict)


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


def graph_cost(graph, vals: dict, rows: list | None = None, depth: int = 0, mult=1) -> tuple[int, int]:
    flops = act = 0
    for n in graph.topo():
        if n.op == "input":
            continue
        ins = graph.input_types(n.id)
        c = n.opdef.cost(n.attrs, ins, n.outputs)
        f = _r(c.flops, vals) * mult
        a = sum(t.nbytes(vals) for t in n.outputs) * mult
        if n.body is not None:
            steps = 1
            for name, role, t in zip(n.attrs.inputs, n.attrs.roles, ins):
                if role == "over":
                    steps = resolve(t.shape[n.attrs.axis % t.rank], vals)
            bf, ba = graph_cost(n.body, vals, None, depth + 1, mult * steps)
            f += bf
        own = sum(p.numel() for k, p in n.params.items() if not p.buffer and k not in n.ties)
        if rows is not None:
            rows.append(NodeCost(n.id, n.op, ", ".join(str(t) for t in n.outputs), own, f, a, depth))
            if n.body is not None:
                for b in n.body.topo():
                    if b.op != "input":
                        own_b = sum(p.numel() for k, p in b.params.items() if not p.buffer and k not in b.ties)
                        rows.append(NodeCost(b.id, b.op, ", ".join(str(t) for t in b.outputs), own_b, 0, 0, depth + 1))
        flops += f
        act += a
    return flops, act


def param_count(program) -> tuple[int, int]:
    """(trainable parameters, buffer elements) of every graph, ties counted once."""
    params = buffers = 0
    for n in program.all_nodes():
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
    rep.flops, rep.act_bytes = graph_cost(g, vals, rep.rows)
    rep.params, rep.buffers = param_count(program)
    return rep


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
