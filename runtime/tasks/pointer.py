"""Pointer Networks' and Order Matters' problems with exact labels: sort, planar convex hull, TSP.

Labels are pointer index sequences into the input. They are computed in float64 from the float32
values the batch holds, so they are exact for the data the model sees:
- sort (Vinyals, Bengio, Kudlur 2016): the indices of the numbers in ascending order (stable);
- convex hull (Vinyals, Fortunato, Jaitly 2015): Andrew's monotone chain; the paper's order, the
  hull vertices counter-clockwise starting from the lowest index; padded with -1 (an ignore index)
  to n steps, `hull_len` holding each hull's length;
- TSP: the optimal tour by Held-Karp dynamic programming (exact; n is bounded to keep it cheap),
  starting at city 0 and, of its two directions, the one whose second city has the lower index.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import Slot, Task, TaskOptions, register

SEQ_ACC = "sequence_accuracy"
SEQ_ACC_DOC = "fraction of examples whose whole predicted index sequence equals the label"


class SortOptions(TaskOptions):
    n: int = Field(10, ge=2, le=1024)  # numbers to sort (the paper uses 5..15)
    points: bool = False  # feed the numbers as 1-d points `points` (N, n, 1) instead of `x` (N, n)
    teacher_forcing: bool = False  # also feed the label as `targets`: a pointer decoder's previous picks


def _teacher(feeds: dict, options) -> dict:
    """`feeds` plus, with teacher_forcing, the label slot fed to the model as `targets`: a pointer
    decoder trained by teacher forcing reads the previous step's true pick from it."""
    if options.teacher_forcing:
        feeds["targets"] = Slot("int64", ("N", options.n))
    return feeds


@register("sort")
class Sort(Task):
    """Input `x`: n numbers uniform in [0, 1) (with `points`: `points` (N, n, 1)); label `order`: the
    argsort (ascending, stable), also fed as `targets` with `teacher_forcing`."""

    Options = SortOptions
    metric, metric_doc = SEQ_ACC, SEQ_ACC_DOC

    def feeds(self):
        o = self.options
        x = Slot("float32", ("N", o.n, 1)) if o.points else Slot("float32", ("N", o.n))
        return _teacher({"points" if o.points else "x": x}, o)

    def reads(self):
        return {"order": Slot("int64", ("N", self.options.n))}

    def make(self, rng, b):
        x = rng.random((b, self.options.n), dtype=np.float32)
        order = np.argsort(x, axis=1, kind="stable").astype(np.int64)
        out = {"points": x[:, :, None]} if self.options.points else {"x": x}
        out["order"] = order
        if self.options.teacher_forcing:
            out["targets"] = order.copy()
        return out


class HullOptions(TaskOptions):
    n: int = Field(10, ge=3, le=1000)  # points (the paper: 5..50 in training, up to 500 at test)
    teacher_forcing: bool = False  # also feed the label as `targets` (-1 after the hull's end)


def convex_hull(points: np.ndarray) -> list[int]:
    """Indices of the strict convex hull of `points` (k, 2), counter-clockwise from the lowest index.

    Andrew's monotone chain; collinear points on an edge are not vertices, and a repeated point is
    its lowest index."""
    p = points.astype(np.float64)
    first: dict[tuple, int] = {}  # a repeated point counts once, as its lowest index
    for i in range(len(p)):
        first.setdefault((p[i, 0], p[i, 1]), i)
    idx = sorted(first.values(), key=lambda i: (p[i, 0], p[i, 1]))

    def cross(o, a, c):
        return (p[a, 0] - p[o, 0]) * (p[c, 1] - p[o, 1]) - (p[a, 1] - p[o, 1]) * (p[c, 0] - p[o, 0])

    def chain(order):
        out: list[int] = []
        for i in order:
            while len(out) >= 2 and cross(out[-2], out[-1], i) <= 0:
                out.pop()
            out.append(i)
        return out

    lower, upper = chain(idx), chain(idx[::-1])
    hull = lower[:-1] + upper[:-1] if len(idx) > 1 else idx  # counter-clockwise
    start = hull.index(min(hull))
    return hull[start:] + hull[:start]


@register("convex_hull")
class ConvexHull(Task):
    """Input `points`: n points uniform in the unit square; label `hull`: the hull vertices'
    indices (counter-clockwise from the lowest index), -1 after the end; `hull_len` its length."""

    Options = HullOptions
    metric, metric_doc = SEQ_ACC, SEQ_ACC_DOC

    def feeds(self):
        return _teacher({"points": Slot("float32", ("N", self.options.n, 2))}, self.options)

    def reads(self):
        return {"hull": Slot("int64", ("N", self.options.n)), "hull_len": Slot("int64", ("N",))}

    def make(self, rng, b):
        n = self.options.n
        pts = rng.random((b, n, 2), dtype=np.float32)
        hull = np.full((b, n), -1, np.int64)
        lens = np.zeros(b, np.int64)
        for i in range(b):
            h = convex_hull(pts[i])
            hull[i, :len(h)] = h
            lens[i] = len(h)
        out = {"points": pts, "hull": hull, "hull_len": lens}
        if self.options.teacher_forcing:
            out["targets"] = hull.copy()
        return out


class TspOptions(TaskOptions):
    n: int = Field(5, ge=3, le=10)  # cities; Held-Karp is exact and cheap up to 10 (the paper: 5..10)


def held_karp(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal closed tours for a batch of distance matrices `d` (B, n, n): (tours (B, n), lengths (B,)).

    Tours start at city 0; of the two directions, the one with tour[1] < tour[-1]."""
    B, n, _ = d.shape
    m = n - 1  # cities 1..n-1 are bits 0..m-1
    full = (1 << m) - 1
    dp = np.full((B, 1 << m, m), np.inf)
    parent = np.full((B, 1 << m, m), -1, np.int64)
    for k in range(m):
        dp[:, 1 << k, k] = d[:, 0, k + 1]
    inner = d[:, 1:, 1:]  # (B, m, m): from city i+1 to j+1
    for mask in range(1, full + 1):
        if mask & (mask - 1) == 0:
            continue
        for j in range(m):
            if not mask >> j & 1:
                continue
            prev = mask ^ (1 << j)
            cand = dp[:, prev, :] + inner[:, :, j]  # ends not in prev are inf already
            best = np.argmin(cand, axis=1)
            dp[:, mask, j] = cand[np.arange(B), best]
            parent[:, mask, j] = best
    closing = dp[:, full, :] + d[:, 1:, 0]
    last = np.argmin(closing, axis=1)
    lengths = closing[np.arange(B), last]
    tours = np.zeros((B, n), np.int64)
    for b in range(B):
        mask, j, path = full, int(last[b]), []
        while j >= 0:
            path.append(j + 1)
            mask, j = mask ^ (1 << j), int(parent[b, mask, j])
        tour = [0] + path[::-1]
        if tour[1] > tour[-1]:
            tour = [0] + tour[1:][::-1]
        tours[b] = tour
    return tours, lengths


def distances(points: np.ndarray) -> np.ndarray:
    """Euclidean distance matrices (float64) of a batch of point sets (B, n, 2)."""
    p = points.astype(np.float64)
    return np.sqrt(((p[:, :, None, :] - p[:, None, :, :]) ** 2).sum(-1))


@register("tsp")
class Tsp(Task):
    """Input `points`: n cities uniform in the unit square; label `tour`: the optimal closed tour
    (from city 0, canonical direction); `tour_len` its length in float32."""

    Options = TspOptions
    metric = "tour_length_ratio"
    metric_doc = "mean length of the predicted tours over the optimal ones (1.0 is optimal)"

    def feeds(self):
        return {"points": Slot("float32", ("N", self.options.n, 2))}

    def reads(self):
        return {"tour": Slot("int64", ("N", self.options.n)), "tour_len": Slot("float32", ("N",))}

    def elements(self, batch_size):  # Held-Karp's tables, (B, 2^(n-1), n-1) twice
        n = self.options.n
        return super().elements(batch_size) + 2 * batch_size * (1 << (n - 1)) * (n - 1)

    def make(self, rng, b):
        pts = rng.random((b, self.options.n, 2), dtype=np.float32)
        tours, lengths = held_karp(distances(pts))
        return {"points": pts, "tour": tours, "tour_len": lengths.astype(np.float32)}


class FarthestOptions(TaskOptions):
    vectors: int = Field(8, ge=2, le=64)  # the RMC paper's 8
    dim: int = Field(16, ge=1, le=256)  # and 16


@register("nth_farthest")
class NthFarthest(Task):
    """Relational Memory Core's task (Santoro et al. 2018): K vectors uniform in [-1, 1)^dim; each
    input row is a vector, then one-hot of its label, of n and of m; the answer `target` is the label
    of the n-th farthest vector from vector m (n = 1 is the farthest; ties go to the lower label)."""

    Options = FarthestOptions
    metric = "accuracy"
    metric_doc = "fraction of examples whose predicted label equals the target"

    def feeds(self):
        o = self.options
        return {"x": Slot("float32", ("N", o.vectors, o.dim + 3 * o.vectors))}

    def reads(self):
        return {"target": Slot("int64", ("N",)), "nth": Slot("int64", ("N",)), "ref": Slot("int64", ("N",))}

    def make(self, rng, b):
        K, D = self.options.vectors, self.options.dim
        vecs = rng.uniform(-1.0, 1.0, size=(b, K, D)).astype(np.float32)
        nth = rng.integers(0, K, size=b)  # 0-based: 0 is the farthest
        ref = rng.integers(0, K, size=b)
        v = vecs.astype(np.float64)
        dist = np.sqrt(((v - v[np.arange(b), ref][:, None, :]) ** 2).sum(-1))  # (b, K)
        order = np.argsort(-dist, axis=1, kind="stable")
        target = order[np.arange(b), nth].astype(np.int64)
        eye = np.eye(K, dtype=np.float32)
        x = np.concatenate([vecs, np.broadcast_to(eye, (b, K, K)),
                            np.broadcast_to(eye[nth][:, None, :], (b, K, K)),
                            np.broadcast_to(eye[ref][:, None, :], (b, K, K))], axis=2)
        return {"x": np.ascontiguousarray(x), "target": target, "nth": nth.astype(np.int64),
                "ref": ref.astype(np.int64)}
