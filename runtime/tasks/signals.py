"""Synthetic spectrogram-like sequences for CTC (Graves et al. 2006) and graph property regression
on generated graphs (for message passing networks, Gilmer et al. 2017).

CTC: each label `c` (1..classes; 0 is the blank) sounds for a few frames as a Gaussian bump over
the feature bins centred on bin (c - 0.5) * features / classes, with silent gaps between symbols
and additive Gaussian noise; frames past `input_len` and labels past `label_len` are zero.

Graphs: Erdos-Renyi graphs of `min_nodes..max_nodes` nodes (zero-padded to max_nodes, `node_mask`
marks the real ones); node features are [1, degree / max_nodes]; the regression targets are the
edge count, the triangle count and the number of connected components, computed exactly.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from .base import Slot, Task, TaskOptions, register


class CtcOptions(TaskOptions):
    classes: int = Field(10, ge=1, le=256)
    features: int = Field(32, ge=1, le=512)  # feature bins per frame
    min_labels: int = Field(1, ge=1, le=128)
    max_labels: int = Field(8, ge=1, le=128)
    min_frames: int = Field(2, ge=1, le=32)  # frames per symbol
    max_frames: int = Field(5, ge=1, le=32)
    max_gap: int = Field(2, ge=0, le=32)  # silent frames before each symbol and at the end
    noise: float = Field(0.1, ge=0.0, le=10.0)
    width: float = Field(1.0, gt=0.0, le=64.0)  # the bump's standard deviation, in bins

    @model_validator(mode="after")
    def _ordered(self):
        for lo, hi in (("min_labels", "max_labels"), ("min_frames", "max_frames")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) is larger than {hi} ({getattr(self, hi)})")
        return self


@register("ctc_spectrogram")
class CtcSpectrogram(Task):
    """Frames `x` (N, T, features) with lengths `input_len`; labels `labels` padded with the blank 0,
    lengths `label_len`. T = max_labels * (max_frames + max(max_gap, 1)) + max_gap: equal
    neighbours are always parted by a silent frame, so every example has a CTC alignment."""

    Options = CtcOptions
    metric = "label_error_rate"
    metric_doc = "edit distance of the decoded labels to the targets over the targets' total length"

    def steps(self) -> int:
        o = self.options
        return o.max_labels * (o.max_frames + max(o.max_gap, 1)) + o.max_gap

    def feeds(self):
        return {"x": Slot("float32", ("N", self.steps(), self.options.features)),
                "input_len": Slot("int64", ("N",))}

    def reads(self):
        o = self.options
        return {"labels": Slot("int64", ("N", o.max_labels), high=o.classes + 1), "label_len": Slot("int64", ("N",))}

    def templates(self) -> np.ndarray:
        """(classes + 1, features): row c is label c's spectrum, row 0 (the blank) silence."""
        o = self.options
        bins = np.arange(o.features) + 0.5
        centre = (np.arange(1, o.classes + 1) - 0.5) * o.features / o.classes
        t = np.exp(-0.5 * ((bins[None, :] - centre[:, None]) / o.width) ** 2)
        return np.vstack([np.zeros((1, o.features)), t]).astype(np.float32)

    def make(self, rng, b):
        o = self.options
        T, tpl = self.steps(), self.templates()
        frame_label = np.zeros((b, T), np.int64)
        labels = np.zeros((b, o.max_labels), np.int64)
        label_len = rng.integers(o.min_labels, o.max_labels + 1, size=b)
        input_len = np.zeros(b, np.int64)
        for i in range(b):
            L = int(label_len[i])
            labels[i, :L] = rng.integers(1, o.classes + 1, size=L)
            durations = rng.integers(o.min_frames, o.max_frames + 1, size=L)
            # a gap of at least one frame between equal neighbours keeps the alignment CTC-legal
            gaps = rng.integers(0, o.max_gap + 1, size=L + 1)
            inner, same = gaps[1:L], labels[i, 1:L] == labels[i, :L - 1]
            inner[same] = np.maximum(inner[same], 1)
            t = 0
            for k in range(L):
                t += int(gaps[k])
                frame_label[i, t:t + durations[k]] = labels[i, k]
                t += int(durations[k])
            input_len[i] = t + int(gaps[L])
        x = tpl[frame_label]
        if o.noise > 0:
            x = x + rng.normal(0.0, o.noise, size=x.shape).astype(np.float32)
        x[np.arange(T)[None, :] >= input_len[:, None]] = 0.0
        return {"x": x.astype(np.float32), "input_len": input_len, "labels": labels, "label_len": label_len}


class GraphOptions(TaskOptions):
    min_nodes: int = Field(5, ge=1, le=128)
    max_nodes: int = Field(20, ge=1, le=128)
    edge_prob: float = Field(0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) is larger than max_nodes ({self.max_nodes})")
        return self


def components(adj: np.ndarray, n: int) -> int:
    """Connected components among the first `n` nodes of a 0/1 adjacency matrix."""
    seen, count = np.zeros(n, bool), 0
    for s in range(n):
        if seen[s]:
            continue
        count += 1
        stack = [s]
        seen[s] = True
        while stack:
            v = stack.pop()
            for w in np.flatnonzero(adj[v, :n] & ~seen):
                seen[w] = True
                stack.append(int(w))
    return count


@register("graph_properties")
class GraphProperties(Task):
    """Node features `nodes` (N, max_nodes, 2), adjacency `adj` (N, max_nodes, max_nodes, symmetric,
    no self loops), `node_mask`; targets `target` (N, 3): edges, triangles, connected components."""

    Options = GraphOptions
    metric = "mean_absolute_error"
    metric_doc = "mean absolute error of the three predicted properties, averaged over them"

    def feeds(self):
        M = self.options.max_nodes
        return {"nodes": Slot("float32", ("N", M, 2)), "adj": Slot("float32", ("N", M, M)),
                "node_mask": Slot("float32", ("N", M))}

    def reads(self):
        return {"target": Slot("float32", ("N", 3))}

    def make(self, rng, b):
        o = self.options
        M = o.max_nodes
        n = rng.integers(o.min_nodes, o.max_nodes + 1, size=b)
        upper = np.triu(rng.random((b, M, M)) < o.edge_prob, k=1)
        real = np.arange(M)[None, :] < n[:, None]
        upper &= real[:, :, None] & real[:, None, :]
        adj = upper | upper.transpose(0, 2, 1)
        a = adj.astype(np.int64)
        deg = a.sum(-1)
        triangles = np.einsum("bij,bjk,bki->b", a, a, a) // 6
        comps = np.array([components(adj[i], int(n[i])) for i in range(b)])
        nodes = np.stack([real, deg / M], axis=-1).astype(np.float32)
        target = np.stack([deg.sum(-1) // 2, triangles, comps], axis=-1).astype(np.float32)
        return {"nodes": nodes, "adj": adj.astype(np.float32), "node_mask": real.astype(np.float32),
                "target": target}
