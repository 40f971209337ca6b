"""Rematerialization planners, as pure functions over cost vectors (no IR, no torch).

The memory they plan for is what backward keeps: the bytes of the tensors saved for backward at
the end of the forward pass. A plan splits the work, in a fixed topological order, into contiguous
segments and checkpoints some of them: a checkpointed segment keeps only its inputs and runs its
forward a second time in backward, when its gradients are needed. Its cost is that recomputation
(the segment's forward time); its saving is everything its nodes would have kept. While a segment
is recomputed its own saves exist again, so each checkpointed segment's own saves must also fit a
cap (by default the budget itself): backward's peak then stays within about twice the budget.

Two models, one per policy family:

* `Chain`: n stages in a row, cut where exactly one tensor passes from one stage to the next (the
  graph's articulation points). `plan_chain` is the exact dynamic program over it (Griewank's
  revolve and Beaumont et al. with heterogeneous costs, here for the bytes kept for backward):
  fronts of (bytes kept, recompute cost) Pareto-optimal partial plans, swept left to right.
  `min_feasible_budget` is the smallest budget any plan meets. `plan_sqrt` is Chen et al. (2016):
  ceil(sqrt(n)) equal segments, the last one not checkpointed, as `checkpoint_sequential` does.
* `Dag`: units in a topological order with the tensors between them (who makes each, who reads
  it, who saves it). `plan_dag` is a Checkmate-style MILP solved by HiGHS (`scipy.optimize.milp`)
  for graphs without articulation points to cut at; it takes a time limit and the chain plan as an
  incumbent (scipy's interface accepts no starting point, so the incumbent's cost bounds the
  objective and is the answer whenever the solver does not find a better plan in time).

`Chain.of(dag)` derives the chain from a DAG; `dag_memory` evaluates any plan on a DAG exactly, so
every planner's figure can be checked against one definition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# -- the chain model --------------------------------------------------------------------------


@dataclass
class Chain:
    """n stages in a row.

    `compute[k]`: what recomputing stage k costs (seconds, or any unit the caller likes: FLOPs).
    `saved[k]`: bytes stage k keeps for backward inside itself when it is not checkpointed (its
    own tensors and extras; not the tensors entering or leaving it).
    `boundary[k]` (n + 1 entries): bytes of the tensor entering stage k; `boundary[n]` is what
    leaves the last stage.
    `keeps_input[k]` / `keeps_output[k]`: whether stage k, stored, keeps the tensor entering /
    leaving it (a convolution keeps its input, a ReLU its output); a tensor two stages keep counts once.
    `options[k]`: other ways to run stage k besides stored or checkpointed, as (bytes kept, cost,
    keeps_input, keeps_output) tuples (a scan checkpointing its own steps in chunks).
    `width[k]`: how many of the underlying units stage k groups (for mapping plans back).
    """

    compute: list
    saved: list
    boundary: list = None
    keeps_input: list = None
    keeps_output: list = None
    options: list = None
    width: list = None

    def __post_init__(self):
        n = len(self.compute)
        if len(self.saved) != n:
            raise ValueError(f"compute has {n} stages but saved has {len(self.saved)}")
        self.boundary = list(self.boundary) if self.boundary is not None else [0] * (n + 1)
        if len(self.boundary) != n + 1:
            raise ValueError(f"boundary needs n + 1 = {n + 1} entries, got {len(self.boundary)}")
        self.keeps_input = list(self.keeps_input) if self.keeps_input is not None else [False] * n
        self.keeps_output = list(self.keeps_output) if self.keeps_output is not None else [False] * n
        self.options = [list(o) for o in self.options] if self.options is not None else [[] for _ in range(n)]
        self.width = list(self.width) if self.width is not None else [1] * n
        if any(c < 0 for c in self.compute) or any(s < 0 for s in self.saved) or any(b < 0 for b in self.boundary):
            raise ValueError("costs and bytes must be >= 0")

    def __len__(self) -> int:
        return len(self.compute)

    # -- what a plan keeps ------------------------------------------------------------------
    def internal(self, start: int, stop: int) -> int:
        """Bytes checkpointed segment [start, stop) keeps again while it is recomputed: its stages'
        own saves and the tensors made inside it that a stage keeps (its input is kept anyway)."""
        out = sum(self.saved[start:stop])
        for t in range(start + 1, stop):
            if self.keeps_output[t - 1] or self.keeps_input[t]:
                out += self.boundary[t]
        if self.keeps_output[stop - 1]:
            out += self.boundary[stop]
        return out


@dataclass
class ChainPlan:
    """A plan over a chain. `segments`: checkpointed [start, stop) stage ranges, in order;
    `choices`: {stage: index into chain.options[stage]} for stages run in one of their own ways;
    `recompute`: its cost (the sum of the checkpointed stages' compute, plus the options' own);
    `saved`: bytes kept for backward; `peak`: the largest segment's `internal` (0 without segments)."""

    recompute: float
    saved: int
    segments: list = field(default_factory=list)
    choices: dict = field(default_factory=dict)
    peak: int = 0

    def __iter__(self):  # `cost, segments = plan_chain(...)`
        return iter((self.recompute, self.segments))


def evaluate(chain: Chain, segments: list, choices: dict | None = None) -> ChainPlan:
    """The bytes kept and the recompute cost of checkpointing `segments` ([start, stop) ranges,
    disjoint, in order) of `chain`, other stages stored (or run as `choices` says)."""
    choices = dict(choices or {})
    n = len(chain)
    seg_of = [None] * n
    for i, (a, b) in enumerate(segments):
        if not 0 <= a < b <= n:
            raise ValueError(f"segment {(a, b)} is not a range of the {n} stages")
        for k in range(a, b):
            if seg_of[k] is not None:
                raise ValueError(f"segments overlap at stage {k}")
            seg_of[k] = i
    mem, cost, peak = 0, 0.0, 0
    ki, ko = [], []
    for k in range(n):
        if seg_of[k] is not None:
            ki.append(False)
            ko.append(False)
            cost += chain.compute[k]
            continue
        if k in choices:
            m, c, i_, o_ = chain.options[k][choices[k]]
            mem += m
            cost += c
            ki.append(bool(i_))
            ko.append(bool(o_))
        else:
            mem += chain.saved[k]
            ki.append(chain.keeps_input[k])
            ko.append(chain.keeps_output[k])
    for t in range(n + 1):
        kept = (t > 0 and ko[t - 1]) or (t < n and ki[t])
        starts = t < n and seg_of[t] is not None and (t == 0 or seg_of[t - 1] != seg_of[t])
        if kept or starts:
            mem += chain.boundary[t]
    for a, b in segments:
        peak = max(peak, chain.internal(a, b))
    return ChainPlan(cost, mem, list(segments), choices, peak)


# -- Pareto fronts ------------------------------------------------------------------------------
# A front is a list of entries (bytes, cost, parent, action), bytes ascending and cost strictly
# descending: every entry is the cheapest plan for its bytes. `parent` is the entry it extends
# (None at the start), `action` what was appended, so the plan is read back along the parents.


def _union(a: list, b: list) -> list:
    if not a:
        return b
    if not b:
        return a
    merged = sorted(a + b, key=lambda e: (e[0], e[1]))
    out = []
    best = math.inf
    for e in merged:
        if e[1] < best:
            out.append(e)
            best = e[1]
    return out


def _shift(front: list, dm: int, dc: float, action, limit: float) -> list:
    """Each entry extended by `action`, adding dm bytes and dc cost; entries over `limit` dropped."""
    return [(m + dm, c + dc, e, action) for e in front for m, c in ((e[0], e[1]),) if m + dm <= limit]


class _Window:
    """A queue of fronts with their union at hand, as two stacks: push on the back, pop the front,
    each front joins O(1) unions overall (the classic sliding-window aggregate)."""

    def __init__(self):
        self.back: list = []  # [(index, front)]
        self.back_union: list = []
        self.front: list = []  # [(index, union of this and everything pushed after it, up to the back)]

    def push(self, index: int, front: list) -> None:
        self.back.append((index, front))
        self.back_union = _union(self.back_union, front)

    def drop_before(self, lo: int) -> None:
        while True:
            if not self.front:
                if not self.back:
                    return
                acc: list = []
                for index, fr in reversed(self.back):
                    acc = _union(acc, fr)
                    self.front.append((index, acc))
                self.back, self.back_union = [], []
            if self.front[-1][0] >= lo:
                return
            self.front.pop()

    def union(self) -> list:
        return _union(self.front[-1][1] if self.front else [], self.back_union)


def plan_chain(compute, saved, budget: float, *, boundary=None, keeps_input=None, keeps_output=None,
               options=None, cap: float | None = None) -> ChainPlan:
    """The plan of least recompute cost whose kept bytes fit `budget` and whose checkpointed
    segments' own saves each fit `cap` (default: the budget), over the chain the arguments describe
    (`Chain`'s fields; `compute` may also be a `Chain`, the other vectors then unused).

    Exact: it is the optimum over every way of checkpointing contiguous segments (and of running
    stages in their `options`); ties go to fewer bytes. Raises `Infeasible` (with the smallest
    feasible budget) when no plan fits. `cost, segments = plan_chain(...)` unpacks.
    """
    chain = compute if isinstance(compute, Chain) else Chain(compute, saved, boundary, keeps_input, keeps_output,
                                                             options)
    plan = _dp(chain, budget, budget if cap is None else cap)
    if plan is None:
        raise Infeasible(budget, min_feasible_budget(chain, cap_follows=cap is None, cap=cap))
    return plan


class Infeasible(ValueError):
    """No plan meets the budget; `smallest` is the smallest budget one does meet."""

    def __init__(self, budget, smallest):
        super().__init__(f"no plan keeps at most {budget} bytes; the smallest feasible budget is {smallest}")
        self.budget, self.smallest = budget, smallest


def _dp(chain: Chain, budget: float, cap: float, minimise_bytes: bool = False) -> ChainPlan | None:
    """The sweep. States after stage k-1: 'S0' / 'S1' (stored, not keeping / keeping the tensor it
    hands on), 'C' (the end of a checkpointed segment). With `minimise_bytes` the fronts collapse to
    their fewest-bytes entry (feasibility only)."""
    n = len(chain)
    b, ki, ko = chain.boundary, chain.keeps_input, chain.keeps_output
    prefix = [0.0]
    for c in chain.compute:
        prefix.append(prefix[-1] + c)
    # internal(start, stop) with prefix sums: stages' saves, inner boundaries kept, the last output.
    saved_prefix = [0]
    for s in chain.saved:
        saved_prefix.append(saved_prefix[-1] + s)
    inner = [0] * (n + 1)  # inner[t]: boundary t kept inside a segment spanning it
    for t in range(1, n):
        inner[t] = b[t] if (ko[t - 1] or ki[t]) else 0
    inner_prefix = [0]
    for t in range(1, n + 1):
        inner_prefix.append(inner_prefix[-1] + inner[t - 1])  # inner_prefix[t] = sum(inner[0:t])

    def internal(start: int, stop: int) -> int:
        return (saved_prefix[stop] - saved_prefix[start]) + (inner_prefix[stop] - inner_prefix[start + 1]) + \
            (b[stop] if ko[stop - 1] else 0)

    def trim(front: list) -> list:
        return front[:1] if minimise_bytes and front else front

    fronts: dict = {"S0": [(0, 0.0, None, None)], "S1": [], "C": []}
    window = _Window()
    lo = 0
    for k in range(n):
        # Checkpointed segments may start at k: their input, boundary k, is kept.
        g = _shift(_union(_union(fronts["S0"], fronts["S1"]), fronts["C"]), b[k], -prefix[k], ("ck", k), budget)
        window.push(k, trim(g))
        nxt = {"S0": [], "S1": [], "C": []}
        # Stage k stored (or in one of its own ways).
        ways = [(chain.saved[k], 0.0, ki[k], ko[k], None)] + [(m, c, i_, o_, j) for j, (m, c, i_, o_) in
                                                             enumerate(chain.options[k])]
        for m, c, i_, o_, j in ways:
            for state, front in fronts.items():
                kept = b[k] if (i_ or state == "S1") else 0
                moved = _shift(front, m + kept, c, ("store", k, j), budget)
                key = "S1" if o_ else "S0"
                nxt[key] = trim(_union(nxt[key], moved))
        # Stage k the last of a checkpointed segment [start, k + 1): start >= lo, own saves within cap.
        while lo <= k and internal(lo, k + 1) > cap:
            lo += 1
        if lo <= k:
            window.drop_before(lo)
            nxt["C"] = trim([(e[0], e[1] + prefix[k + 1], e, ("end", k + 1)) for e in window.union()])
        fronts = nxt
    final = []
    for state, front in fronts.items():
        kept = b[n] if state == "S1" else 0
        final = _union(final, _shift(front, kept, 0.0, ("final",), budget))
    if not final:
        return None
    # Least cost, then fewest bytes: the front's last entry (cost descends as bytes ascend), or,
    # for feasibility, its first.
    best = final[0] if minimise_bytes else final[-1]
    segments, choices = _read_back(best)
    plan = evaluate(chain, segments, choices)
    return plan


def _read_back(entry) -> tuple[list, dict]:
    segments, choices = [], {}
    end = None
    e = entry
    while e is not None and e[3] is not None:
        action = e[3]
        if action[0] == "end":
            end = action[1]
        elif action[0] == "ck":
            segments.append((action[1], end))
        elif action[0] == "store" and action[2] is not None:
            choices[action[1]] = action[2]
        e = e[2]
    return segments[::-1], choices


def min_feasible_budget(chain_or_compute, saved=None, *, boundary=None, keeps_input=None, keeps_output=None,
                        options=None, cap_follows: bool = True, cap: float | None = None) -> int:
    """The smallest budget some plan meets: the least B with a plan keeping at most B bytes whose
    checkpointed segments' own saves fit the cap (B itself when `cap_follows`, else `cap`)."""
    chain = chain_or_compute if isinstance(chain_or_compute, Chain) else Chain(
        chain_or_compute, saved, boundary, keeps_input, keeps_output, options)
    total = sum(chain.saved) + sum(chain.boundary) + sum(m for opts in chain.options for m, *_ in opts)

    def feasible(bud: int) -> bool:
        return _dp(chain, bud, bud if cap_follows else (cap if cap is not None else bud), minimise_bytes=True) is not None

    lo, hi = 0, max(1, int(total))  # storing everything keeps at most `total`: always feasible
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def plan_sqrt(chain: Chain) -> ChainPlan:
    """Chen et al. (2016), as `torch.utils.checkpoint.checkpoint_sequential(functions, segments)`
    with segments = ceil(sqrt(n)): equal runs of n // segments stages, every run but the last
    checkpointed (the last one's saves are needed first in backward anyway)."""
    n = len(chain)
    if n < 2:
        return evaluate(chain, [])
    k = math.ceil(math.sqrt(n))
    size = n // k
    segments = [(s, s + size) for s in range(0, size * (k - 1), size)]
    return evaluate(chain, segments)


# -- the DAG model ----------------------------------------------------------------------------------


@dataclass
class Value:
    """A tensor between units: its bytes, the unit that makes it (-1: a graph input), the units that
    read it and the units that keep it for backward when stored."""

    bytes: int
    producer: int
    consumers: tuple = ()
    savers: tuple = ()


@dataclass
class Dag:
    """Units in a topological order (checkpointed segments are contiguous runs of it): each one's
    recompute cost and the bytes it keeps that belong to no `Value` (its internal tensors and
    extras), and the values. `options[u]`: other ways to run unit u, as (bytes kept, cost,
    keeps its inputs, keeps its outputs)."""

    compute: list
    extra: list
    values: list
    options: list = None

    def __post_init__(self):
        if self.options is None:
            self.options = [[] for _ in self.compute]

    def __len__(self) -> int:
        return len(self.compute)


def dag_memory(dag: Dag, segments: list, choices: dict | None = None) -> tuple[int, float, int]:
    """(bytes kept, recompute cost, largest segment's own saves) of checkpointing `segments`
    ([start, stop) unit ranges) on `dag`, every other unit stored (or run as `choices` says)."""
    choices = choices or {}
    seg = [None] * len(dag)
    for i, (a, b) in enumerate(segments):
        for u in range(a, b):
            seg[u] = i
    mem, cost = 0, 0.0
    for u in range(len(dag)):
        if seg[u] is not None:
            cost += dag.compute[u]
        elif u in choices:
            m, c, _, _ = dag.options[u][choices[u]]
            mem += m
            cost += c
        else:
            mem += dag.extra[u]
    own = {i: sum(dag.extra[u] for u in range(a, b)) for i, (a, b) in enumerate(segments)}
    for v in dag.values:
        kept = False
        for s in v.savers:
            if seg[s] is None:
                if s in choices:
                    _, _, keeps_in, keeps_out = dag.options[s][choices[s]]
                    kept |= bool(keeps_out if s == v.producer else keeps_in)
                else:
                    kept = True
        for c in v.consumers:
            if seg[c] is not None and (v.producer < 0 or seg[v.producer] != seg[c]):
                kept = True
            if seg[c] is None and c in choices and dag.options[c][choices[c]][2]:
                kept = True
        p = v.producer  # an option keeping its outputs keeps them whether or not the stored unit would
        if p >= 0 and seg[p] is None and p in choices and dag.options[p][choices[p]][3]:
            kept = True
        if kept:
            mem += v.bytes
        if v.producer >= 0 and seg[v.producer] is not None:
            i = seg[v.producer]
            if any(seg[s] == i for s in v.savers):
                own[i] += v.bytes
    return mem, cost, max(own.values(), default=0)


def chain_of(dag: Dag) -> tuple[Chain, list]:
    """The chain of `dag`'s stages: runs of units between the points where exactly one value made by
    a unit is live (the articulation points a checkpoint can cut at), and read by the next stage
    only. Returns (chain, [(first unit, stop)] per stage). Values read only inside one stage are
    folded into its `saved`; graph inputs all enter the first stage."""
    m = len(dag)
    live = [[] for _ in range(m + 1)]  # live[t]: values crossing the cut before unit t
    for i, v in enumerate(dag.values):
        for t in range(v.producer + 1, max(v.consumers, default=v.producer) + 1):
            if t >= 1:
                live[t].append(i)
    cuts = [t for t in range(1, m) if len(live[t]) == 1 and dag.values[live[t][0]].producer >= 0]
    while True:  # a value read two stages on would need two boundaries: drop the cuts it crosses
        bounds = [0] + cuts + [m]
        stage_of = [0] * m
        for s_, (a_, b_) in enumerate(zip(bounds, bounds[1:])):
            for u in range(a_, b_):
                stage_of[u] = s_
        bad = set()
        for v in dag.values:
            ps = stage_of[v.producer] if v.producer >= 0 else -1
            far = max((stage_of[c] for c in v.consumers), default=ps)
            if far > ps + 1:
                bad |= {bounds[s_] for s_ in range(ps + 2, far + 1)}
        if not bad:
            break
        cuts = [t for t in cuts if t not in bad]
    stages = list(zip(bounds, bounds[1:]))
    n = len(stages)
    compute = [sum(dag.compute[a_:b_]) for a_, b_ in stages]
    saved = [sum(dag.extra[a_:b_]) for a_, b_ in stages]
    boundary = [0] * (n + 1)
    ki, ko = [False] * n, [False] * n
    for v in dag.values:
        ps = stage_of[v.producer] if v.producer >= 0 else -1
        readers = {stage_of[c] for c in v.consumers}
        savers = {stage_of[s_] for s_ in v.savers}
        if v.producer >= 0 and readers <= {ps}:
            if savers:
                saved[ps] += v.bytes  # made, read and kept inside one stage
            continue
        t = ps + 1  # the value enters stage t (the chain's input when it is a graph input)
        boundary[t] += v.bytes
        if ps >= 0 and ps in savers:
            ko[ps] = True
        if t in savers:
            ki[t] = True
    options = [list(dag.options[a_]) if b_ - a_ == 1 else [] for a_, b_ in stages]
    return Chain(compute, saved, boundary, ki, ko, options, [b_ - a_ for a_, b_ in stages]), stages


def _own_saves_limits(dag: Dag, cap: float) -> list:
    """For each unit i, the shortest run [i, stop) whose own saves (its units' extras and the values
    made in it that a unit in it keeps) exceed `cap`, or None when no run from i does."""
    m = len(dag)
    touching = [[] for _ in range(m)]  # per unit: (value index, role) for values it makes or keeps
    for vi, v in enumerate(dag.values):
        if v.producer >= 0:
            touching[v.producer].append(vi)
        for s_ in set(v.savers):
            if s_ != v.producer:
                touching[s_].append(vi)
    out = []
    for i in range(m):
        own, counted, stop = 0, set(), None
        for u in range(i, m):
            own += dag.extra[u]
            for vi in touching[u]:
                v = dag.values[vi]
                if vi in counted or not (i <= v.producer <= u):
                    continue
                if any(i <= s_ <= u for s_ in v.savers):
                    counted.add(vi)
                    own += v.bytes
            if own > cap:
                stop = u + 1
                break
        out.append(stop)
    return out


def plan_dag(dag: Dag, budget: float, cap: float | None = None, time_limit: float = 10.0,
             incumbent: tuple | None = None) -> tuple[list, dict, str]:
    """The least-recompute plan on `dag` within `budget` (and each segment's own saves within `cap`,
    default the budget) from HiGHS; `incumbent`: (segments, cost) of a known feasible plan (the
    chain's), which bounds the objective and is returned when HiGHS finds nothing better within
    `time_limit` seconds. Returns (segments, choices, status) with status 'optimal', 'time limit'
    or 'incumbent'. Raises `Infeasible` when no plan fits and there is no incumbent.

    Variables: x[u] (unit u recomputed), j[u] (u continues u-1's segment), s[v, r] (the reader r
    of value v is in v's producer's segment), k[v] (value v is kept). k[v] >= 1 - x[s] for each
    unit s that saves v; k[v] >= x[r] - s[v, r] for each reader r; s[v, r] <= x[producer] and
    <= j[t] for every unit t between producer and reader; sum(bytes * k) + sum(extra * (1 - x))
    <= budget; for each unit i, the shortest run from i whose own saves exceed the cap cannot be
    one segment. Minimise sum(compute * x). A unit with `options` (a scan checkpointing its steps
    in chunks) gets y[u, o] (u runs as option o; x[u] + sum_o y[u, o] <= 1): the option's bytes
    replace the unit's extra, it keeps a value it saves only as the option says (k[v] >= 1 - x[s] -
    the y[s, o] of options that do not keep it), an option keeping its inputs keeps every value it
    reads (k[v] >= y[r, o]), one keeping its outputs every value it makes (k[v] >= y[p, o]), and
    its cost joins the objective.
    """
    import time

    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    started = time.perf_counter()  # the time limit covers building the problem too

    cap = budget if cap is None else cap
    m = len(dag)
    if m == 0:
        return [], {}, "optimal"
    nx, nj = m, max(0, m - 1)
    pairs = [(vi, r) for vi, v in enumerate(dag.values) for r in sorted(set(v.consumers)) if r != v.producer]
    pair_index = {p: nx + nj + i for i, p in enumerate(pairs)}
    k0 = nx + nj + len(pairs)
    y0 = k0 + len(dag.values)
    ycols = {}  # (unit, option) -> column
    for u in range(m):
        for o in range(len(dag.options[u])):
            ycols[(u, o)] = y0 + len(ycols)
    nvar = y0 + len(ycols)
    rows, cols, data, lo, hi = [], [], [], [], []
    row = 0

    def add(terms: dict, lb: float, ub: float):
        nonlocal row
        for col, val in terms.items():
            rows.append(row)
            cols.append(col)
            data.append(val)
        lo.append(lb)
        hi.append(ub)
        row += 1

    inf = np.inf
    J = lambda u: nx + u - 1  # noqa: E731  j[u] for u >= 1
    for u in range(1, m):
        add({J(u): 1, u: -1}, -inf, 0)
        add({J(u): 1, u - 1: -1}, -inf, 0)
    for (vi, r), col in pair_index.items():
        v = dag.values[vi]
        if v.producer < 0 or r < v.producer:
            add({col: 1}, -inf, 0)
            continue
        add({col: 1, v.producer: -1}, -inf, 0)
        for t in range(v.producer + 1, r + 1):
            add({col: 1, J(t): -1}, -inf, 0)
    for u in range(m):
        if dag.options[u]:
            add({u: 1, **{ycols[(u, o)]: 1 for o in range(len(dag.options[u]))}}, -inf, 1)
    for vi, v in enumerate(dag.values):
        kc = k0 + vi
        for s in set(v.savers):
            slot = 3 if s == v.producer else 2  # the option's keeps_output / keeps_input
            drop = {ycols[(s, o)]: 1 for o, opt in enumerate(dag.options[s]) if not opt[slot]}
            add({kc: 1, s: 1, **drop}, 1, inf)  # k >= 1 - x[s] - y[s, options not keeping it]
        for r in set(v.consumers):
            if r == v.producer:
                continue
            add({kc: 1, r: -1, pair_index[(vi, r)]: 1}, 0, inf)  # k >= x[r] - s
            for o, opt in enumerate(dag.options[r]):
                if opt[2]:
                    add({kc: 1, ycols[(r, o)]: -1}, 0, inf)  # k >= y[r, o]: the option keeps its inputs
        if v.producer >= 0:
            for o, opt in enumerate(dag.options[v.producer]):
                if opt[3]:
                    add({kc: 1, ycols[(v.producer, o)]: -1}, 0, inf)  # k >= y[p, o]: it keeps its outputs
    scale = 1.0 / max(float(budget), 1.0)  # the memory row in budgets, for the solver's tolerances
    mem = {k0 + vi: v.bytes * scale for vi, v in enumerate(dag.values) if v.bytes}
    for u in range(m):
        if dag.extra[u]:
            mem[u] = -dag.extra[u] * scale
    for (u, o), col in ycols.items():
        mem[col] = (dag.options[u][o][0] - dag.extra[u]) * scale
    add(mem, -inf, (budget - sum(dag.extra)) * scale)
    # The cap: the shortest run from each unit whose own saves exceed it cannot be one segment.
    for i, stop in enumerate(_own_saves_limits(dag, cap)):
        if stop is None:
            continue
        if stop - 1 == i:
            add({i: 1}, -inf, 0)
        else:
            add({J(t): 1 for t in range(i + 1, stop)}, -inf, stop - i - 2)
    cost = np.zeros(nvar)
    cost[:m] = dag.compute
    for (u, o), col in ycols.items():
        cost[col] = dag.options[u][o][1]
    if incumbent is not None:
        add({c: float(cost[c]) for c in range(nvar) if cost[c]}, -inf, float(incumbent[1]) * (1 + 1e-9) + 1e-12)
    integrality = np.zeros(nvar)
    integrality[:nx + nj] = 1
    integrality[y0:] = 1
    A = coo_matrix((data, (rows, cols)), shape=(row, nvar)).tocsr()
    res = milp(cost, constraints=LinearConstraint(A, lo, hi), integrality=integrality, bounds=Bounds(0, 1),
               # HiGHS overruns its limit by a second or so finishing up: it gets 85% of what is left
               options={"time_limit": max(0.1, 0.85 * (float(time_limit) - (time.perf_counter() - started))),
                        "disp": False})
    if res.x is None:
        if incumbent is not None:
            return list(incumbent[0]), {}, "incumbent"
        raise Infeasible(budget, None)
    x = [round(res.x[u]) for u in range(m)]
    j = [0] + [round(res.x[J(u)]) for u in range(1, m)]
    segments = []
    for u in range(m):
        if x[u]:
            if segments and j[u] and segments[-1][1] == u:
                segments[-1] = (segments[-1][0], u + 1)
            else:
                segments.append((u, u + 1))
    choices = {u: o for (u, o), col in ycols.items() if round(res.x[col]) and not x[u]}
    status = "optimal" if res.status == 0 else "time limit"
    kept, cost_, peak = dag_memory(dag, segments, choices)
    if kept > budget or peak > cap:  # beyond the solver's tolerances: not a plan to hand on
        if incumbent is not None:
            return list(incumbent[0]), {}, "incumbent"
        raise Infeasible(budget, None)
    if incumbent is not None and cost_ > incumbent[1] * (1 + 1e-9):
        return list(incumbent[0]), {}, "incumbent"
    return segments, choices, status
