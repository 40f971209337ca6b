"""Pipeline partitioning: the algorithms behind the `partition_pipeline` and `split_stages` passes
and `nnspec plan`, on plain lists of numbers (no graph edits here; the passes record the result).

Positions. The nodes of the entry graph other than its inputs, in its topological order (the spec's
order, so a block instance's nodes stay together), are positions 0..n-1. Stage k holds positions
[c_k, c_{k+1}) for cuts 0 = c_0 < c_1 < ... < c_K = n; graph inputs belong to stage 0. In a
topological order every tensor crossing a cut flows forward, so every cut is valid. `crossing[p]`
is the bytes of the tensors produced before position p and read at or after it (graph inputs count
as produced before position 0, graph outputs as read at position n): a skip connection is carried
by every stage it passes over and counts at every cut it crosses.

Costs are integers, so every comparison below is exact: training FLOPs per microbatch (forward +
backward) from the cost model, or a profile's measured seconds in picoseconds.

`plan` chooses the cuts in two steps:
1. The slowest stage as fast as possible: minimise max_k cost(stage k).
   - Plain costs (a stage costs the sum of its nodes): bisection on the bound T, each T tested
     greedily (a stage grows while its sum stays <= T; with non-negative costs it needs the fewest
     stages). The optimum is one of the range sums and the bisection is over integers: exact.
   - With a per-stage memory cap or a remat budget, a stage costs its compute plus the recompute a
     `RematPlanner` needs for it to fit (infinite when nothing fits). Each stage plan is a chain
     DP of its own, so the search asks for few: bisection on T from the plain optimum up, each T
     tested by cutting every stage as long as it fits (a binary search per stage), to within 1e-4
     of the least T. That is exact when a stage's cost grows as it gains nodes (its compute does;
     so does its recompute, as its room shrinks and its saves grow). `exact=True` runs the min-max
     DP dp[k][j] = min_i max(dp[k-1][i], cost(i, j)) instead, exact for any stage cost, whose i loop
     stops once the stage's compute alone reaches the best value found (n^2 k / 2 stage plans at
     worst: minutes on resnet50, against seconds).
2. Among the partitions that reach that bound, the one sending the fewest bytes: a DP over the same
   states minimising the sum of crossing[c_k] over the cuts, then the number of block instances the
   cuts split (a cut between two blocks beats one inside a block that sends as much).

Memory of a stage (GPipe's schedule: every microbatch's forward runs before the backwards, so M
microbatches are in flight at once): parameter bytes x `param_copies` (weights, gradients and two
Adam moments: 4) + buffer bytes + M x the bytes kept per microbatch + the bytes live once while one
microbatch's segment is recomputed. `ChainPlanner` (compiler/remat's exact chain planner per stage)
is the default remat policy; anything with its `__call__` signature can stand in.
"""
from __future__ import annotations

import bisect
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

INF = float("inf")
PARAM_COPIES = 4  # fp32 weights, their gradients and Adam's two moments
DEFAULT_FLOPS_PER_S = 100e12  # the device rate `nnspec plan` turns FLOPs into seconds with (--device-flops)
PS = 10 ** 12  # profile seconds are costed in picoseconds, as integers


# -- per-position figures ----------------------------------------------------------------------
@dataclass
class Figures:
    """Everything the planner knows about positions 0..n-1 (one microbatch, at `dims`)."""

    ids: list  # node ids, by position
    cost: list  # training cost per microbatch (int): fwd + bwd FLOPs, or profile picoseconds
    fwd: list  # the forward part of `cost` (what a recompute costs again)
    flops: list  # forward FLOPs
    params: list  # trainable parameter elements the node owns (a tied parameter belongs to its owner)
    param_bytes: list  # bytes of those
    buffer_bytes: list  # bytes of the node's buffers (batch-norm statistics)
    act: list  # bytes of the node's outputs
    saved: list  # bytes the node keeps for backward
    crossing: list  # n + 1 entries: bytes crossing each position (see the module docstring)
    splits: list  # n + 1 entries: block instances a cut at each position would split
    ties: list = field(default_factory=list)  # (position, owner position or -1, elements, bytes) per tied parameter
    unit: str = "flops"  # "flops" | "ps" (profile picoseconds)
    saved_estimated: bool = False  # some saved bytes are the node's input bytes (no figure from its op)
    dims: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)  # what the figures assumed, for the report
    # Which storages each position keeps for backward and reads (compiler/cost.saved_values): the
    # exact bytes a stage keeps with a given recompute (`kept_bytes`); empty for bare cost vectors.
    keeps: list = field(default_factory=list)  # per position: storage roots it keeps when stored
    reads: list = field(default_factory=list)  # per position: storage roots of its inputs
    extra: list = field(default_factory=list)  # per position: bytes it keeps besides storages
    root_bytes: dict = field(default_factory=dict)  # storage root -> bytes

    @property
    def n(self) -> int:
        return len(self.ids)


class Prefix:
    """Prefix sums of a list: `s(i, j)` is the sum of positions i..j-1."""

    def __init__(self, values):
        self.c = [0] + list(itertools.accumulate(values))

    def s(self, i: int, j: int):
        return self.c[j] - self.c[i]


# -- the remat policy of a stage -----------------------------------------------------------------
@dataclass(frozen=True)
class Remat:
    """A stage's recompute plan: `extra` cost per microbatch (its forward run again), bytes `kept`
    per microbatch in flight, bytes `peak` live once (one microbatch's recomputed segment), and the
    recomputed position ranges."""

    extra: int = 0
    kept: int = 0
    peak: int = 0
    segments: tuple = ()  # ((lo, hi), ...): positions recomputed in the backward

    def memory(self, microbatches: int) -> int:
        return microbatches * self.kept + self.peak


# (i, j, activation byte budget of stage [i, j)) -> the cheapest Remat that fits, or None
RematPlanner = Callable[[int, int, float], Optional[Remat]]


class ChainPlanner:
    """The default remat policy: compiler/remat's exact chain planner (policies.plan_chain) over the
    stage's positions.

    Stage [i, j) is a chain of its positions: position p recomputes for `fwd[p]`, keeps `saved[p]`
    for backward, and a checkpointed segment starting at p keeps `crossing[p]` (every tensor
    crossing p, skips included, so the figure is an upper bound on a DAG). With M microbatches in
    flight the stage holds M x (bytes kept) + the largest recomputed segment's own saves (live once,
    while that microbatch's backward runs it again), which must fit the stage's room R. plan_chain
    takes the per-microbatch budget and the segment cap separately, so each split of R into
    M x budget + cap from `SPLITS` is asked (cap = f x R) and the least recompute wins (ties: less
    memory); keeping everything is tried first and needs no planning.

    The chain is a model: on a DAG, and where the cost model charges a tensor two nodes keep to the
    first of them (a ReLU's output a convolution also keeps), it can miss or double a tensor. So each
    candidate's bytes kept and recompute peak are then counted exactly (`kept_bytes`, storage by
    storage, the segments' inputs included) when the figures carry storages, and the fit is checked
    on those: the plan reports what torch keeps.
    """

    SPLITS = (None, 0.5, 0.25, 0.1)  # cap as a fraction of the room; None: cap = budget = R / (M + 1)

    def __init__(self, fig: Figures, microbatches: int):
        self.fig, self.m = fig, microbatches
        self.S = StageSaved(fig)
        self.memo: dict = {}

    def kept(self, i: int, j: int, segments) -> tuple:
        """(bytes kept per microbatch, largest segment's own saves) of stage [i, j) recomputing
        `segments`, from `kept_bytes` when the figures carry storages, else None."""
        if not self.fig.keeps:
            return None
        return kept_bytes(self.fig, i, j, segments), max((kept_bytes(self.fig, a, b, ()) for a, b in segments), default=0)

    def __call__(self, i: int, j: int, budget: float) -> Optional[Remat]:
        key = (i, j, budget)
        if key not in self.memo:
            self.memo[key] = self._plan(i, j, budget)
        return self.memo[key]

    def _plan(self, i: int, j: int, room: float) -> Optional[Remat]:
        from .remat.policies import Infeasible, plan_chain

        m, fig = self.m, self.fig
        if m * self.S.s(i, j) <= room:
            return Remat(0, self.S.s(i, j), 0, ())
        if room == INF:
            return Remat(0, self.S.s(i, j), 0, ())
        best = None
        for f in self.SPLITS:
            cap = room / (m + 1) if f is None else room * f
            per = (room - cap) / m
            try:
                p = plan_chain(fig.fwd[i:j], fig.saved[i:j], per, boundary=fig.crossing[i:j + 1], cap=cap)
            except Infeasible:
                continue
            segs = tuple((i + a, i + b) for a, b in p.segments)
            # plan_chain's chain model approximates a DAG stage (every crossing tensor as one
            # boundary); what the stage keeps with these segments is counted exactly when it can be
            exact = self.kept(i, j, segs)
            kept, peak = exact if exact is not None else (int(p.saved), int(p.peak))
            r = Remat(int(round(p.recompute)), kept, peak, segs)
            if r.memory(m) <= room and (best is None or (r.extra, r.memory(m)) < (best.extra, best.memory(m))):
                best = r
        return best


# -- the plan ------------------------------------------------------------------------------------
@dataclass
class Plan:
    cuts: list  # K + 1 positions, 0 first and n last
    bound: int  # the slowest stage's cost (recompute included)
    remat: list  # per stage: its Remat (Remat() when it keeps everything)
    memory: list  # per stage: bytes (params + activations), or None when not modelled
    lower_bound: int  # max(largest node, ceil(total / K)): no partition does better


@dataclass
class Budget:
    """What a stage must fit: a memory cap in bytes, and/or a fraction of its own activations."""

    cap: Optional[float] = None  # bytes per stage (params, their gradients and optimizer state included)
    fraction: Optional[float] = None  # of the stage's keep-everything activation bytes (--remat-budget)
    microbatches: int = 1
    param_copies: int = PARAM_COPIES
    activation_cap: Optional[float] = None  # bytes of activations per stage (--remat-budget 200MB)

    @property
    def active(self) -> bool:
        return self.cap is not None or self.fraction is not None or self.activation_cap is not None


class StageSaved:
    """`s(i, j)`: bytes stage [i, j) keeps for backward per microbatch keeping everything: counted
    storage by storage (`kept_bytes`) when the figures carry storages (a tensor the cost model
    charges to a node of an earlier stage, as a received input a linear layer keeps, counts here
    too), else the sum of the positions' `saved`."""

    def __init__(self, fig: Figures):
        self.fig, self.prefix, self.memo = fig, Prefix(fig.saved), {}

    def s(self, i: int, j: int) -> int:
        if not self.fig.keeps:
            return self.prefix.s(i, j)
        if (i, j) not in self.memo:
            self.memo[(i, j)] = kept_bytes(self.fig, i, j, ())
        return self.memo[(i, j)]


def kept_bytes(fig: Figures, i: int, j: int, segments) -> int:
    """Bytes stage [i, j) keeps for backward per microbatch when it recomputes `segments` (position
    ranges): every storage a position outside them keeps, each segment's inputs from before it (what
    torch.utils.checkpoint holds to run it again), and the stored positions' extra bytes; a storage
    kept twice counts once, as saved_tensors_hooks sees it."""
    inside = [False] * (j - i)
    roots: set = set()
    for a, b in segments:
        made = set()
        for p in range(a, b):
            inside[p - i] = True
            made.add(fig.ids[p])
        for p in range(a, b):
            roots.update(r for r in fig.reads[p] if r[0] not in made)
    extra = 0
    for p in range(i, j):
        if not inside[p - i]:
            roots.update(fig.keeps[p])
            extra += fig.extra[p]
    return extra + sum(fig.root_bytes.get(r, 0) for r in roots)


def lower_bound(costs: list, k: int) -> int:
    """max(largest node, ceil(total / k)): what the slowest of k contiguous stages costs at least."""
    total = sum(costs)
    return max(max(costs, default=0), -(-total // k))


def stage_param_bytes(fig: Figures, P: Prefix, B: Prefix, i: int, j: int, copies: int) -> int:
    """Bytes a stage holds for its parameters: owned ones x `copies`, buffers once, and a copy of
    every tied parameter whose owner is in another stage."""
    tied = sum(b for t, o, _, b in fig.ties if i <= t < j and not i <= o < j)
    return copies * (P.s(i, j) + tied) + B.s(i, j)


def plan(fig: Figures, k: int, budget: Budget | None = None, planner: RematPlanner | None = None,
         exact: bool = False) -> Plan:
    """The partition of positions 0..n-1 into `k` stages described in the module docstring (with a
    budget: the bisection of step 1, or with `exact` the min-max DP)."""
    n = fig.n
    if not 1 <= k <= n:
        raise ValueError(f"cannot cut {n} nodes into {k} stages")
    budget = budget or Budget()
    C = Prefix(fig.cost)
    if not budget.active:
        bound = _bisect_bound(C.c, k)
        cuts = _fewest_bytes(fig, k, bound, C.s)
        S = StageSaved(fig)
        return Plan(cuts, bound, [Remat(0, S.s(a, b)) for a, b in zip(cuts, cuts[1:])], [None] * k,
                    lower_bound(fig.cost, k))
    planner = planner or ChainPlanner(fig, budget.microbatches)
    P, B, S = Prefix(fig.param_bytes), Prefix(fig.buffer_bytes), StageSaved(fig)
    memo: dict = {}

    def choice(i: int, j: int):
        if (i, j) not in memo:
            room = INF
            if budget.cap is not None:
                room = budget.cap - stage_param_bytes(fig, P, B, i, j, budget.param_copies)
            if budget.fraction is not None:
                room = min(room, budget.fraction * budget.microbatches * S.s(i, j))
            if budget.activation_cap is not None:
                room = min(room, budget.activation_cap)
            r = planner(i, j, room) if room >= 0 else None
            memo[(i, j)] = (INF, None) if r is None else (C.s(i, j) + r.extra, r)
        return memo[(i, j)]

    def cost(i: int, j: int):
        return choice(i, j)[0]

    if exact:
        bound = _dp_bound(n, k, cost, C.s)
    else:
        bound = _bisect_general(n, k, cost, C, _bisect_bound(C.c, k))
    if bound == INF:
        raise NoFit(_no_fit_message(fig, k, budget, P, B, S))
    try:
        cuts = _fewest_bytes(fig, k, bound, C.s, cost, monotone=not exact)
    except _NoPartition:
        # A stage cost that does not shrink as its start moves right (a --remat-budget fraction
        # gives a longer stage more room): the longest-first split that met the bound, which may
        # send more bytes than needed, rather than a stage plan for every (start, end).
        cuts = _fits(n, k, bound, cost, C)
        if len(cuts) < k + 1:  # fewer stages than asked: split the longest ones
            cuts = _fill(cuts, k)
            bound = max(cost(a, b) for a, b in zip(cuts, cuts[1:]))
            if bound == INF:
                raise NoFit(_no_fit_message(fig, k, budget, P, B, S))
    remats = [choice(a, b)[1] for a, b in zip(cuts, cuts[1:])]
    mem = [stage_param_bytes(fig, P, B, a, b, budget.param_copies) + r.memory(budget.microbatches)
           for (a, b), r in zip(zip(cuts, cuts[1:]), remats)]
    return Plan(cuts, bound, remats, mem, lower_bound(fig.cost, k))


def _fill(cuts: list, k: int) -> list:
    """`cuts` with stages split in two, the one of most positions first, until there are k."""
    cuts = list(cuts)
    while len(cuts) < k + 1:
        s = max(range(len(cuts) - 1), key=lambda i: cuts[i + 1] - cuts[i])
        cuts.insert(s + 1, (cuts[s] + cuts[s + 1]) // 2)
    return cuts


class _NoPartition(AssertionError):
    """The second step found no partition within the first step's bound (with plain costs: a bug)."""


class NoFit(ValueError):
    """No partition fits the memory cap, whatever each stage recomputes."""


def _no_fit_message(fig, k, budget, P, B, S) -> str:
    total_params = stage_param_bytes(fig, P, B, 0, fig.n, budget.param_copies)
    if budget.cap is None and budget.fraction is None:
        return (f"no partition into {k} stages keeps at most {_human(budget.activation_cap or 0)}B of activations per "
                f"stage, whatever each stage recomputes (a recomputed stage still keeps its input for every microbatch)")
    if budget.cap is None:
        return (f"no partition into {k} stages keeps at most {budget.fraction:g} of each stage's activations, "
                f"whatever each stage recomputes (a recomputed stage still keeps its input for every microbatch)")
    return (f"no partition into {k} stages fits {_human(budget.cap or 0)}B per stage: the parameters alone "
            f"(x{budget.param_copies} for gradients and optimizer state) take {_human(total_params)}B in all, "
            f"{_human(total_params / k)}B per stage on average, and the largest node keeps "
            f"{_human(max(fig.saved, default=0))}B for backward per microbatch")


def _bisect_bound(c: list, k: int) -> int:
    """The least T such that positions split into at most k stages of cost <= T (c: prefix sums)."""
    costs = [b - a for a, b in zip(c, c[1:])]
    lo, hi = lower_bound(costs, k) - 1, c[-1]  # lo: infeasible (below the lower bound), hi: one stage
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _greedy_stages(c, mid) <= k:
            hi = mid
        else:
            lo = mid
    return max(hi, 0)


def _greedy_stages(c: list, t: int) -> int:
    """Stages the greedy split needs when no stage may cost more than t (n + 1 when a node alone does)."""
    n, i, stages = len(c) - 1, 0, 0
    while i < n:
        j = bisect.bisect_right(c, c[i] + t, lo=i + 1) - 1
        if j <= i:
            return n + 1
        i, stages = j, stages + 1
    return stages


def _longest(i: int, n: int, t: float, cost, C: Prefix) -> int:
    """The largest j with cost(i, j) <= t (i when none), for a cost that grows with j: a binary
    search below the last j whose compute alone fits."""
    lo = i  # cost(i, lo) <= t holds (vacuously for lo = i)
    hi = bisect.bisect_right(C.c, C.c[i] + t, lo=i + 1) - 1  # compute(i, hi) <= t < compute(i, hi + 1)
    hi = min(hi, n)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        c = cost(i, mid)
        if c <= t and c != INF:  # an infinite cost (nothing fits) never fits, not even t = INF
            lo = mid
        else:
            hi = mid - 1
    return lo


def _fits(n: int, k: int, t: float, cost, C: Prefix) -> list | None:
    """The cuts of a split into at most k stages of cost <= t, each stage as long as it fits, or
    None (optimal when cost(i, j) grows with j and shrinks with i, as a stage's compute and
    recompute do)."""
    i, cuts = 0, [0]
    for _ in range(k):
        j = _longest(i, n, t, cost, C)
        if j == i:
            return None
        i = j
        cuts.append(i)
        if i == n:
            return cuts
    return None


def _bisect_general(n: int, k: int, cost, C: Prefix, floor: int, rel: float = 1e-4) -> float:
    """The least T (within `rel` of it) such that the positions split into k stages of cost <= T,
    for a stage cost that includes recompute; `floor` is the plain optimum (recompute only adds).
    Each T costs about k log n stage plans instead of the DP's n^2 k / 2."""
    if _fits(n, k, floor, cost, C):
        return floor
    if not _fits(n, k, INF, cost, C):
        return INF  # some stage has no plan that fits, however the cuts go
    hi = floor * 2 + 1
    while not _fits(n, k, hi, cost, C):
        hi *= 2
    lo = floor  # does not fit
    while hi - lo > max(1, int(hi * rel)):
        mid = (lo + hi) // 2
        if _fits(n, k, mid, cost, C):
            hi = mid
        else:
            lo = mid
    return hi


def _dp_bound(n: int, k: int, cost, compute) -> float:
    """min over partitions of the slowest stage, for any stage cost (`compute(i, j)`: a lower bound of
    cost(i, j) that does not shrink as i decreases)."""
    prev = [0] + [INF] * n
    for s in range(1, k + 1):
        cur = [INF] * (n + 1)
        for j in range(s, n - (k - s) + 1):
            best = INF
            for i in range(j - 1, s - 2, -1):
                if compute(i, j) >= best:
                    break
                if prev[i] >= best:
                    continue
                v = max(prev[i], cost(i, j))
                if v < best:
                    best = v
            cur[j] = best
        prev = cur
    return prev[n]


def _fewest_bytes(fig: Figures, k: int, bound, compute, cost=None, monotone: bool = False) -> list:
    """The cuts of a partition whose stages all cost <= `bound`, sending the fewest bytes (then
    splitting the fewest block instances): a DP over (stage, end) whose starts i are those with
    cost(i, j) <= bound. With plain costs (`cost` None: a stage costs `compute`), or with `monotone`
    (a stage's cost, recompute included, taken to shrink as its start moves right), those starts
    form a window that slides as j grows, and a monotone deque gives each minimum in O(1)."""
    n = fig.n
    weight = [(fig.crossing[p], fig.splits[p]) for p in range(n + 1)]
    big = (INF, INF)
    prev = [(0, 0)] + [big] * n
    back = []
    for s in range(1, k + 1):
        cur, arg = [big] * (n + 1), [-1] * (n + 1)
        lo_i = s - 1
        window: deque = deque()  # (value, start), values increasing front to back
        for j in range(s, n - (k - s) + 1):
            if cost is None or monotone:
                fits = compute if cost is None else cost
                i = j - 1
                if prev[i] != big:
                    v = _add(prev[i], weight[i]) if s > 1 else prev[i]
                    while window and window[-1][0] > v:  # equal values keep the earlier start in front
                        window.pop()
                    window.append((v, i))
                while lo_i < j and fits(lo_i, j) > bound:
                    lo_i += 1
                while window and window[0][1] < lo_i:
                    window.popleft()
                if window:
                    cur[j], arg[j] = window[0]
                continue
            best, at = big, -1
            for i in range(j - 1, s - 2, -1):
                if compute(i, j) > bound:
                    break
                if prev[i] == big or cost(i, j) > bound:
                    continue
                v = _add(prev[i], weight[i]) if s > 1 else prev[i]
                if v <= best:  # i descends: on a tie the earlier start wins, as with the deque
                    best, at = v, i
            cur[j], arg[j] = best, at
        back.append(arg)
        prev = cur
    if prev[n] == big:
        raise _NoPartition("no partition reaches the bound the first step found")
    cuts, j = [n], n
    for s in range(k, 0, -1):
        j = back[s - 1][j]
        cuts.append(j)
    return cuts[::-1]


def _add(a: tuple, b: tuple) -> tuple:
    return (a[0] + b[0], a[1] + b[1])


# -- brute force, for tests ----------------------------------------------------------------------
def brute_force(n: int, k: int, cost) -> tuple:
    """(slowest stage, cuts) over every partition of n positions into k stages: the reference the
    planner is tested against on small chains."""
    best = (INF, None)
    for inner in itertools.combinations(range(1, n), k - 1):
        cuts = [0, *inner, n]
        worst = max(cost(a, b) for a, b in zip(cuts, cuts[1:]))
        if worst < best[0]:
            best = (worst, cuts)
    return best


# -- stage boundaries of a marked graph ------------------------------------------------------------
@dataclass(frozen=True)
class StageIO:
    """One pipeline stage of a graph whose nodes carry `stage` marks: the nodes it runs (first and
    last in topological order), the tensors it receives and the tensors it sends on. A tensor is
    `(node id, port)`; stage 0 receives the graph inputs, the last stage returns the graph outputs."""

    index: int
    first: str
    last: str
    nodes: int
    inputs: tuple  # ((node, port), ...)
    outputs: tuple  # ((node, port), ...): the next stage's inputs; the graph outputs for the last stage

    def text(self) -> str:
        def refs(rs):
            return ", ".join(f"%{nid}" + (f":{p}" if p else "") for nid, p in rs)
        return f"stage {self.index}: %{self.first} .. %{self.last} ({self.nodes} nodes) ({refs(self.inputs)}) -> ({refs(self.outputs)})"

    def to_json(self) -> dict:
        return {"index": self.index, "first": self.first, "last": self.last, "nodes": self.nodes,
                "inputs": [list(r) for r in self.inputs], "outputs": [list(r) for r in self.outputs]}


class BadStages(ValueError):
    """Stage marks that do not form a pipeline: a message, and the node it is about."""

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node


def stage_boundaries(graph) -> list:
    """The StageIO of every stage of `graph` from its nodes' `stage` marks; BadStages when the marks
    leave a node out, skip a stage or send a tensor backwards."""
    order = graph.topo()
    marked = [n for n in order if n.op != "input"]
    if not marked:
        return []
    for n in marked:
        if n.stage is None or n.stage < 0:
            raise BadStages(f"node '{n.id}' has no pipeline stage", n.id)
    k = max(n.stage for n in marked) + 1
    count = [0] * k
    first: list = [None] * k
    last: list = [None] * k
    for n in marked:
        count[n.stage] += 1
        first[n.stage] = first[n.stage] or n.id
        last[n.stage] = n.id
    empty = [s for s in range(k) if not count[s]]
    if empty:
        raise BadStages(f"stage {empty[0]} of {k} holds no node")
    stage = {n.id: (0 if n.op == "input" else n.stage) for n in order}
    reach: dict = {}  # (node, port) -> the last stage that reads it
    for n in marked:
        for src, port in graph.inputs_of(n.id):
            if stage[src] > stage[n.id]:
                raise BadStages(f"'{n.id}' (stage {stage[n.id]}) reads '{src}' of a later stage ({stage[src]})", n.id)
            reach[(src, port)] = max(reach.get((src, port), 0), stage[n.id])
    for ref in graph.outputs.values():
        reach[ref] = k - 1
    index = {n.id: i for i, n in enumerate(order)}
    refs = sorted(reach, key=lambda r: (index[r[0]], r[1]))
    ins = [n for n in order if n.op == "input"]
    out = []
    for s in range(k):
        if s == 0:
            inputs = tuple((n.id, 0) for n in ins)
        else:
            inputs = tuple(r for r in refs if stage[r[0]] < s <= reach[r])
        if s == k - 1:
            outputs = tuple(graph.outputs.values())
        else:
            outputs = tuple(r for r in refs if stage[r[0]] <= s < reach[r])
        out.append(StageIO(s, first[s], last[s], count[s], inputs, outputs))
    return out


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


# -- figures of a graph --------------------------------------------------------------------------
def positions(graph) -> list:
    """The nodes a partition orders: every non-input node of `graph`, in topological order."""
    return [n for n in graph.topo() if n.op != "input"]


def instance_keys(node) -> list:
    """Keys of the block instances enclosing `node`, outermost first (`layer1.0`, `layer1.0.downsample`);
    a repeat's list level (`layer1`) holds instances but is not one."""
    names, out = [], []
    for s in node.scope:
        names.append(s.name)
        if s.kind == "block":
            out.append(".".join(names))
    return out


def figures(program, graph: str = "forward", dims: dict | None = None, profile: dict | None = None) -> Figures:
    """Per-position figures of entry `graph` for one microbatch at `dims` (default: N=1 and each
    symbol's opt, as `nnspec inspect`): the cost model's FLOPs and bytes, or `profile`'s measured
    seconds ({node id: {"fwd": s, "bwd": s}}) for the cost."""
    from .cost import cost_report
    from .ir.dims import DTYPE_BYTES
    from .passes.core import owner_of

    g = program.graphs[graph]
    rep = cost_report(program, graph, dims)
    vals = rep.dims
    rows = {r.id: r for r in rep.rows if r.depth == 0}
    seq = positions(g)
    pos = {n.id: i for i, n in enumerate(seq)}
    n = len(seq)
    ids = {x.id for x in program.all_nodes()}
    fig = Figures([x.id for x in seq], [], [], [], [], [], [], [], [], [0] * (n + 1), [0] * (n + 1), dims=dict(vals))
    estimated = 0
    bwd_guessed = 0
    for p, node in enumerate(seq):
        ins = g.input_types(node.id)
        row = rows.get(node.id)
        f = int(row.flops) if row is not None else 0
        # The cost model's rows carry backward FLOPs and saved bytes (a value several nodes keep is
        # charged to the first); a row without them falls back to 2x the forward and the input bytes.
        bwd = getattr(row, "bwd_flops", None)
        saved = getattr(row, "saved_bytes", None)
        if bwd is None:
            bwd, bwd_guessed = 2 * f, bwd_guessed + (f > 0)
        if saved is None:
            saved, estimated = sum(t.nbytes(vals) for t in ins), estimated + 1
        bwd, saved = int(bwd), int(saved)
        own = [(k, q) for k, q in node.params.items() if k not in node.ties]
        fig.flops.append(f)
        fig.cost.append(f + bwd)
        fig.fwd.append(f)
        fig.params.append(sum(q.numel() for _, q in own if not q.buffer))
        fig.param_bytes.append(sum(q.numel() * DTYPE_BYTES.get(q.dtype, 4) for _, q in own if not q.buffer))
        fig.buffer_bytes.append(sum(q.numel() * DTYPE_BYTES.get(q.dtype, 4) for _, q in own if q.buffer))
        fig.act.append(sum(t.nbytes(vals) for t in node.outputs))
        fig.saved.append(int(saved))
        for k, target in sorted(node.ties.items()):
            q = node.params[k]
            fig.ties.append((p, pos.get(owner_of(target, ids), -1), q.numel(), q.numel() * DTYPE_BYTES.get(q.dtype, 4)))
    # Bytes crossing each position: a tensor made at a (inputs: -1) and last read at b crosses a+1..b.
    diff = [0] * (n + 2)
    last: dict = {}
    for node in seq:
        for src, port in g.inputs_of(node.id):
            last[(src, port)] = max(last.get((src, port), -1), pos[node.id])
    for ref in g.outputs.values():
        last[ref] = n
    for (src, port), b in last.items():
        a = pos.get(src, -1)
        nbytes = g.node(src).outputs[port].nbytes(vals)
        diff[a + 1] += nbytes
        diff[b + 1] -= nbytes
    fig.crossing = list(itertools.accumulate(diff[:n + 1]))
    # Block instances a cut at each position splits: one spanning positions f..l is split by f+1..l.
    span: dict = {}
    for p, node in enumerate(seq):
        for key in instance_keys(node):
            f0, _ = span.get(key, (p, p))
            span[key] = (f0, p)
    diff = [0] * (n + 2)
    for f0, l0 in span.values():
        diff[f0 + 1] += 1
        diff[l0 + 1] -= 1
    fig.splits = list(itertools.accumulate(diff[:n + 1]))
    _storages(fig, g, seq, vals)
    if estimated:
        fig.saved_estimated = True
        fig.notes.append(f"{estimated} of {n} nodes have no saved-bytes figure from their op: their input bytes stand in")
    if bwd_guessed:
        fig.notes.append(f"{bwd_guessed} nodes have no backward FLOPs figure: twice the forward stands in")
    if profile is not None:
        _apply_profile(fig, profile)
    return fig


def _storages(fig: Figures, g, seq: list, vals: dict) -> None:
    """Fill `keeps`, `reads`, `extra` and `root_bytes` from compiler/cost.saved_values (the one place
    ops' saved fields become values); a scan's body saves are its extra bytes, as compiler/remat
    models them. Module state (parameters, buffers, constants) is never a storage here."""
    from .cost import _steps, graph_cost, saved_values

    sv = saved_values(g, vals)
    for node in seq:
        keeps = tuple(sv.keeps.get(node.id, ()))
        extra = sv.extra.get(node.id, 0) if node.id in sv.keeps else 0
        if node.body is not None and sv.active.get(node.id):
            extra += graph_cost(node.body, vals, None, 1, int(_steps(node, g.input_types(node.id), vals))).saved_bytes
        reads = tuple(dict.fromkeys(sv.root.get(r, r) for r in g.inputs_of(node.id)))
        fig.keeps.append(keeps)
        fig.reads.append(reads)
        fig.extra.append(int(extra))
        for r in keeps + reads:
            fig.root_bytes.setdefault(r, sv.nbytes(r))


def _apply_profile(fig: Figures, profile: dict) -> None:
    """Costs from measured seconds (picoseconds, as integers). A node the profile lacks gets the
    profile's own seconds per FLOP times its FLOPs (zero when it has none)."""
    def times(entry) -> tuple:  # {"fwd": s, "bwd": s}, or (fwd, bwd) as compiler/cost.profile_costs gives
        return (float(entry["fwd"]), float(entry["bwd"])) if isinstance(entry, dict) else tuple(map(float, entry))

    have = [p for p, nid in enumerate(fig.ids) if nid in profile]
    flops = sum(fig.cost[p] for p in have)
    secs = sum(sum(times(profile[fig.ids[p]])) for p in have)
    rate = secs / flops if flops else 0.0
    missing = 0
    for p, nid in enumerate(fig.ids):
        if nid in profile:
            fwd, bwd = times(profile[nid])
        else:
            missing += 1
            fwd, bwd = fig.fwd[p] * rate, (fig.cost[p] - fig.fwd[p]) * rate
        fig.fwd[p] = round(fwd * PS)
        fig.cost[p] = round((fwd + bwd) * PS)
    fig.unit = "ps"
    if missing:
        fig.notes.append(f"{missing} of {fig.n} nodes are not in the profile: its seconds per FLOP times their FLOPs "
                         "stand in")


# -- a spec's own stages -------------------------------------------------------------------------
def stages_from_names(ids: list, stages: list) -> tuple[list, list]:
    """Assign positions (node ids in order) to the stages a spec lists by block or node-id prefix
    (`[[conv1, layer1], [layer2]]`): -> (stage per position, problems). Each problem is
    (message, (stage, entry) it is about or None, expected); the assignment is valid when there are none.
    1. every name matches a node: the node itself or the nodes under it (`layer1` -> `layer1.0.conv1`);
    2. no node is matched twice;
    3. every node is matched;
    4. in topological order the stages follow each other: 0, then 1, ... (each contiguous)."""
    where: dict = {}
    problems: list = []
    for k, names in enumerate(stages):
        for e, name in enumerate(names):
            if name in where:
                problems.append((f"'{name}' is listed twice (also in stage {where[name][0]})", (k, e),
                                 "each block or node in one stage"))
            else:
                where[name] = (k, e)
    assigned: list = [None] * len(ids)
    by: list = [None] * len(ids)
    hits = {name: 0 for name in where}
    for p, nid in enumerate(ids):
        parts = nid.split(".")
        for d in range(1, len(parts) + 1):
            name = ".".join(parts[:d])
            if name not in where:
                continue
            hits[name] += 1
            if by[p] is not None:
                problems.append((f"node '{nid}' is in both '{by[p]}' (stage {assigned[p]}) and '{name}' (stage "
                                 f"{where[name][0]})", where[name], "each node in one stage"))
                continue
            assigned[p], by[p] = where[name][0], name
    tops = sorted({i.split(".")[0] for i in ids}, key=lambda t: next(p for p, i in enumerate(ids) if i.split(".")[0] == t))
    for name, count in hits.items():
        if not count:
            problems.append((f"no node is named '{name}' or lies under it", where[name],
                             "block or node names of the graph, e.g. " + ", ".join(tops[:8])))
    left = [ids[p] for p in range(len(ids)) if assigned[p] is None]
    if left:
        problems.append((f"{len(left)} node(s) are in no stage: " + ", ".join(left[:5]) + (", ..." if len(left) > 5 else ""),
                         None, "every node in one stage"))
    if not problems:
        for p in range(1, len(ids)):
            if assigned[p] < assigned[p - 1]:
                problems.append((f"'{ids[p]}' (stage {assigned[p]}, through '{by[p]}') comes after '{ids[p - 1]}' (stage "
                                 f"{assigned[p - 1]}) in topological order", where[by[p]],
                                 "stages in topological order, each a contiguous run of nodes"))
                break
    return assigned, problems


def cuts_of(assigned: list, k: int) -> list:
    """Cut positions of a valid stage-per-position list."""
    cuts = [0]
    for s in range(1, k):
        cuts.append(assigned.index(s))
    return cuts + [len(assigned)]


# -- the report ----------------------------------------------------------------------------------
def report(fig: Figures, pl: Plan, microbatches: int, budget: Budget | None, flops_per_s: float,
           program=None) -> dict:
    """The JSON-ready summary of a plan, per stage and in total: what `nnspec plan` prints."""
    k = len(pl.cuts) - 1
    C, F, A, S = Prefix(fig.cost), Prefix(fig.fwd), Prefix(fig.act), StageSaved(fig)
    Pn, Pb, Bb, fl = Prefix(fig.params), Prefix(fig.param_bytes), Prefix(fig.buffer_bytes), Prefix(fig.flops)
    sec = (1 / PS) if fig.unit == "ps" else 1 / flops_per_s
    copies = budget.param_copies if budget else PARAM_COPIES
    rows = []
    for s, (a, b) in enumerate(zip(pl.cuts, pl.cuts[1:])):
        r = pl.remat[s] or Remat(0, S.s(a, b))
        tied = sum(e for t, o, e, _ in fig.ties if a <= t < b and not a <= o < b)
        cost = C.s(a, b) + r.extra
        rows.append({
            "index": s, "first": fig.ids[a], "last": fig.ids[b - 1], "nodes": b - a,
            "params": Pn.s(a, b) + tied, "tied_copies": tied, "flops": fl.s(a, b), "cost": cost,
            "time_s": cost * sec, "recompute_s": r.extra * sec,
            "activation_bytes": A.s(a, b), "saved_bytes": microbatches * S.s(a, b),
            "saved_bytes_remat": r.memory(microbatches) if r.segments else None,
            "remat": [[fig.ids[lo], fig.ids[hi - 1]] for lo, hi in r.segments],
            # per microbatch: what its backward keeps with the stage's remat, and what a recompute adds once
            "kept_bytes_per_microbatch": r.kept, "recompute_peak_bytes": r.peak,
            "param_state_bytes": stage_param_bytes(fig, Pb, Bb, a, b, copies),
            "memory_bytes": pl.memory[s] if pl.memory[s] is not None else
            stage_param_bytes(fig, Pb, Bb, a, b, copies) + r.memory(microbatches),
            "recv_bytes": fig.crossing[a], "send_bytes": fig.crossing[b] if b < fig.n else 0,
        })
    total = sum(fig.cost)
    mean = sum(r["cost"] for r in rows) / k
    plain_mean = total / k
    worst = max(r["cost"] for r in rows)
    lb = pl.lower_bound
    return {
        "stages": rows,
        "totals": {"nodes": fig.n, "params": sum(fig.params), "flops": sum(fig.flops), "cost": sum(r["cost"] for r in rows),
                   "time_s": sum(r["time_s"] for r in rows), "activation_bytes": sum(fig.act),
                   "saved_bytes": microbatches * sum(fig.saved),
                   "boundary_bytes": sum(r["send_bytes"] for r in rows)},
        "balance": worst / mean if mean else 1.0,
        "lower_bound": {"cost": lb, "time_s": lb * sec, "balance": lb / plain_mean if plain_mean else 1.0},
        "bubble": (k - 1) / (microbatches + k - 1),
        "microbatches": microbatches, "cost_unit": "picoseconds" if fig.unit == "ps" else "training FLOPs",
        "seconds_per_unit": sec, "step_time_s": (microbatches + k - 1) * worst * sec,
        "dims": fig.dims, "notes": list(fig.notes),
    }
