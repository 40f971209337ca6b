"""From a typed graph to the planners' model (`policies.Dag`): units, their costs, the tensors
between them and who keeps each one for backward.

1. Units are what a checkpointed segment can start or end at, as the torch target writes the
   forward: each top-level node, each top-level block instance, each item of a top-level repeat.
   Their order is the order the generated forward calls them in.
2. What each node keeps for backward comes from its op's `Cost`, through `compiler/cost.py`'s
   `saved_values` (the one place those fields become values): the storages it keeps (a view is
   its input's storage, so a tensor two nodes keep through two views counts once, as
   `saved_tensors_hooks` counts it) and its own extra bytes. A scan keeps its body's saves for
   every step (`graph_cost` of the body): its unit's extra bytes.
3. A unit's cost is its nodes' forward time from a measured profile (`{node id: {"fwd": s}}`) when
   one is given, else a roofline estimate: FLOPs at `FLOPS` plus the bytes its outputs and inputs
   move at `BANDWIDTH` (elementwise ops cost time too, though they count no FLOPs). A scan's cost
   is its body's per step times the steps.
4. A scan whose body can run again (not fused into one kernel, no buffers) gets options besides
   stored and checkpointed whole: its steps checkpointed in chunks of k (`Unit.chunks`, the planners'
   `options`). Its T steps are a chain of T identical stages with the carried state as the one
   tensor between them, so a chunked scan keeps its inputs plus the carried state at the start of
   each chunk but the first, ceil(T / k) - 1 of them, and recomputes every step once in backward
   (T steps, plus CHECKPOINT_CALL per chunk: the calls' own overhead). Fewer chunks keep less but
   recompute more steps at a time: `Unit.chunk_peak[j]` is what one chunk keeps again while it is
   recomputed (the cap applies to it). Only the k that are smallest for their chunk count are
   offered. Like checkpoint_sequential's last segment, the last s steps may run stored (backward
   needs them first): they keep their saves and are not recomputed, so an option is (k, s), s any
   number of steps below T when T <= STORED_LEVELS, else a multiple of T / STORED_LEVELS (s = 0
   only for a reverse scan). Once the cap has dropped the chunks too large for it, the pass keeps
   per s only the option with the fewest chunks: it keeps fewer bytes at less cost than the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..cost import _steps, graph_cost, saved_values
from ..ir.dims import resolve
from .policies import Dag, Value, dag_memory

FLOPS = 50e9  # FLOP/s of one core's matmul and convolution kernels (order of magnitude)
BANDWIDTH = 10e9  # bytes/s a memory-bound kernel moves
CHECKPOINT_CALL = 50e-6  # seconds one torch.utils.checkpoint call adds besides the recomputation (order of magnitude)
STORED_LEVELS = 256  # a chunked scan may store its last s steps, s any of 0 .. T - 1 up to 256 values (rule 4)


@dataclass
class Unit:
    key: str  # node id, block instance key (`layer1`) or repeat item (`layer1.0`)
    nodes: list  # Node objects, in topological order
    compute: float = 0.0
    extra: int = 0
    chunks: list = field(default_factory=list)  # rule 4: (steps per chunk, last steps stored) per option
    chunk_peak: list = field(default_factory=list)  # bytes one chunk keeps while it is recomputed
    offered: tuple | None = None  # (chunks, chunk_peak, options) before a cap dropped any (the pass)


@dataclass
class Model:
    """A graph as the planners see it, plus what maps their plans back onto it."""

    dag: Dag
    units: list
    vals: dict  # the dim values the figures are for
    inexact: list = field(default_factory=list)  # ops whose footprint is an estimate (none today)

    @property
    def full(self) -> int:
        """Bytes kept for backward with nothing recomputed."""
        return dag_memory(self.dag, [])[0]


def unit_key(node) -> str:
    sc = node.scope
    if not sc:
        return node.id
    if sc[0].kind == "list" and len(sc) > 1:
        return f"{sc[0].name}.{sc[1].name}"
    return sc[0].name


def node_time(node, ins: list, vals: dict, profile: dict | None) -> float:
    """Forward seconds of one node: measured, or the roofline estimate (rule 3)."""
    if profile and node.id in profile:
        entry = profile[node.id]
        return float(entry[0] if isinstance(entry, (tuple, list)) else entry.get("fwd", 0.0))
    if node.body is not None:
        steps = int(_steps(node, ins, vals))
        return steps * sum(node_time(b, node.body.input_types(b.id), vals, profile)
                           for b in node.body.topo() if b.op != "input")
    c = node.opdef.cost(node.attrs, ins, node.outputs)
    flops = int(resolve(c.flops, vals)) if c.flops is not None else 0
    moved = sum(t.nbytes(vals) for t in node.outputs) + sum(t.nbytes(vals) for t in ins)
    return flops / FLOPS + moved / BANDWIDTH


def build(graph, vals: dict, profile: dict | None = None) -> Model:
    """The model of entry graph `graph` at dim values `vals` (rules 1-3)."""
    saved = saved_values(graph, vals)
    order: list = []
    units: dict = {}
    unit_of: dict = {}
    for n in graph.topo():
        if n.op == "input":
            continue
        key = unit_key(n)
        if key not in units:
            units[key] = Unit(key, [])
            order.append(key)
            index = len(order) - 1
        else:
            index = order.index(key) if key != order[-1] else len(order) - 1
        units[key].nodes.append(n)
        unit_of[n.id] = index
    ulist = [units[k] for k in order]
    info: dict = {}  # storage root -> [bytes, producer unit, consumer units, saver units]

    def value(ref):
        r = saved.root.get(ref, ref)
        if r not in info:
            node = graph.node(r[0])
            producer = -1 if node.op == "input" else unit_of[r[0]]
            info[r] = [saved.nbytes(r), producer, set(), set()]
        return info[r]

    for u, unit in enumerate(ulist):
        for n in unit.nodes:
            ins = graph.input_types(n.id)
            unit.compute += node_time(n, ins, vals, profile)
            for ref in graph.inputs_of(n.id):
                v = value(ref)
                if v[1] != u:
                    v[2].add(u)
            if n.body is not None and saved.active.get(n.id):
                unit.extra += graph_cost(n.body, vals, None, 1, int(_steps(n, ins, vals))).saved_bytes
            if n.id not in saved.keeps:
                continue
            unit.extra += saved.extra[n.id]
            for base in saved.keeps[n.id]:
                value(base)[3].add(u)
    values = [Value(b, p, tuple(sorted(c)), tuple(sorted(s)))
              for b, p, c, s in (info[r] for r in sorted(info, key=lambda r: (info[r][1], r)))]
    if any(v.producer >= 0 and v.consumers and v.consumers[0] < v.producer for v in values):
        raise ValueError("the graph's units are not in dependency order")  # codegen could not call them so either
    options = [scan_options(graph, unit, vals, saved) for unit in ulist]
    dag = Dag([u.compute for u in ulist], [u.extra for u in ulist], values, options)
    return Model(dag, ulist, dict(vals))


def recomputable_scan(node) -> bool:
    """A scan whose steps the torch target can checkpoint in chunks (rule 4): run step by step (not
    fused into one nn.LSTM / nn.GRU kernel) and without buffers a recomputation would update twice."""
    if node.op != "scan" or node.body is None or node.fused is not None or node.attrs.steps is not None:
        return False
    return not any(p.buffer for b in node.body.nodes() for p in b.params.values())


def _chunk_sizes(steps: int) -> list:
    """Each k that is the fewest steps per chunk making ceil(steps / k) chunks (O(sqrt(steps)) of them)."""
    root = math.isqrt(steps)
    ks = {-(-steps // count) for count in range(1, root + 2)} | set(range(1, root + 2))
    return sorted(k for k in ks if 1 <= k <= steps and -(-steps // -(-steps // k)) == k)


def scan_options(graph, unit: Unit, vals: dict, saved) -> list:
    """Rule 4's options of a unit that is one recomputable scan: (bytes kept, cost, keeps its inputs,
    keeps its outputs) per (steps per chunk, last steps stored), filling `unit.chunks` and
    `unit.chunk_peak`."""
    if len(unit.nodes) != 1 or not recomputable_scan(unit.nodes[0]) or not saved.active.get(unit.nodes[0].id):
        return []
    n = unit.nodes[0]
    ins = graph.input_types(n.id)
    steps = int(_steps(n, ins, vals))
    if steps < 2:
        return []
    a = n.attrs
    state = sum(ins[a.inputs.index(c)].nbytes(vals) for c in a.carry)
    per_step = graph_cost(n.body, vals, None, 1, 1).saved_bytes  # graph_cost is linear in the steps
    # A stored step keeps its slice of an `over` input, but the chunks keep the whole input already.
    body_saved = saved_values(n.body, vals)
    kept = {body_saved.root.get(r, r) for refs in body_saved.keeps.values() for r in refs}
    slices = sum(n.body.node(f"{n.id}.{name}").outputs[0].nbytes(vals) for name, role in zip(a.inputs, a.roles)
                 if role == "over" and (f"{n.id}.{name}", 0) in kept)
    step_cost = unit.compute / steps
    stored = [0] if a.reverse else sorted({steps * i // STORED_LEVELS for i in range(STORED_LEVELS)})
    options = []
    for last in stored:
        rest = steps - last
        for k in _chunk_sizes(rest):
            count = -(-rest // k)
            unit.chunks.append((k, last))
            unit.chunk_peak.append(k * per_step)
            kept_bytes = (count - 1) * state + last * (per_step - slices)
            options.append((kept_bytes, rest * step_cost + count * CHECKPOINT_CALL, True, False))
    return options
