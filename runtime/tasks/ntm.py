"""The Neural Turing Machine's toy problems (Graves et al. 2014): copy, repeat copy, associative recall.

Every sequence is a run of random bit vectors; extra input channels carry the delimiters. All
examples of one batch share one length (drawn per batch), so a batch is a rectangular array, and
`mask` marks the time steps whose targets the loss reads (the answer phase). The metric is the
paper's: bit errors per sequence, thresholding the outputs at 0.5 on masked steps.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from .base import Slot, Task, TaskError, TaskOptions, register

BITS = "bit_errors_per_sequence"
BITS_DOC = "wrong bits (outputs thresholded at 0.5) on the masked steps, averaged over sequences"


class _Lengths(TaskOptions):
    @model_validator(mode="after")
    def _ordered(self):
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) is larger than max_len ({self.max_len})")
        return self


class CopyOptions(_Lengths):
    width: int = Field(8, ge=1, le=64)  # bits per vector (the paper's 8)
    min_len: int = Field(1, ge=1, le=256)
    max_len: int = Field(20, ge=1, le=256)  # the paper trains on lengths 1..20


@register("copy")
class Copy(Task):
    """Input: L random vectors, then a delimiter step (channel `width`); target: the same L vectors,
    on the L steps after the delimiter. T = 2 * max_len + 1; shorter sequences are zero-padded."""

    Options = CopyOptions
    metric, metric_doc = BITS, BITS_DOC

    def steps(self) -> int:
        return 2 * self.options.max_len + 1

    def feeds(self):
        return {"x": Slot("float32", ("N", self.steps(), self.options.width + 1))}

    def reads(self):
        return {"y": Slot("float32", ("N", self.steps(), self.options.width)),
                "mask": Slot("float32", ("N", self.steps()))}

    def make(self, rng, n):
        o = self.options
        L = int(rng.integers(o.min_len, o.max_len + 1))
        seq = rng.integers(0, 2, size=(n, L, o.width)).astype(np.float32)
        x = np.zeros((n, self.steps(), o.width + 1), np.float32)
        y = np.zeros((n, self.steps(), o.width), np.float32)
        mask = np.zeros((n, self.steps()), np.float32)
        x[:, :L, :o.width] = seq
        x[:, L, o.width] = 1.0
        y[:, L + 1:2 * L + 1] = seq
        mask[:, L + 1:2 * L + 1] = 1.0
        return {"x": x, "y": y, "mask": mask}


class RepeatCopyOptions(_Lengths):
    width: int = Field(8, ge=1, le=64)
    min_len: int = Field(1, ge=1, le=64)
    max_len: int = Field(10, ge=1, le=64)  # the paper: lengths 1..10
    min_repeats: int = Field(1, ge=1, le=64)
    max_repeats: int = Field(10, ge=1, le=64)  # and 1..10 repeats

    @model_validator(mode="after")
    def _repeats(self):
        if self.min_repeats > self.max_repeats:
            raise ValueError(f"min_repeats ({self.min_repeats}) is larger than max_repeats ({self.max_repeats})")
        return self


@register("repeat_copy")
class RepeatCopy(Task):
    """Input: L vectors, a delimiter step (channel `width`), then a step whose channel `width + 1`
    holds the repeat count R scaled by 1 / max_repeats (the paper normalises it); target: the vectors
    R times over, then an end marker in channel `width`."""

    Options = RepeatCopyOptions
    metric, metric_doc = BITS, BITS_DOC

    def steps(self) -> int:
        o = self.options
        return o.max_len + 2 + o.max_len * o.max_repeats + 1

    def feeds(self):
        return {"x": Slot("float32", ("N", self.steps(), self.options.width + 2))}

    def reads(self):  # the repeat counts too, for error curves per count
        T, w = self.steps(), self.options.width
        return {"y": Slot("float32", ("N", T, w + 1)), "mask": Slot("float32", ("N", T)),
                "repeats": Slot("int64", ("N",))}

    def make(self, rng, n):
        o = self.options
        L = int(rng.integers(o.min_len, o.max_len + 1))
        R = rng.integers(o.min_repeats, o.max_repeats + 1, size=n)
        seq = rng.integers(0, 2, size=(n, L, o.width)).astype(np.float32)
        T, w = self.steps(), o.width
        x = np.zeros((n, T, w + 2), np.float32)
        y = np.zeros((n, T, w + 1), np.float32)
        mask = np.zeros((n, T), np.float32)
        x[:, :L, :w] = seq
        x[:, L, w] = 1.0
        x[:, L + 1, w + 1] = R / o.max_repeats
        start = L + 2
        for b in range(n):  # repeat counts differ per example
            r = int(R[b])
            y[b, start:start + r * L, :w] = np.tile(seq[b], (r, 1))
            y[b, start + r * L, w] = 1.0
            mask[b, start:start + r * L + 1] = 1.0
        return {"x": x, "y": y, "mask": mask, "repeats": R.astype(np.int64)}


class RecallOptions(TaskOptions):
    width: int = Field(6, ge=1, le=20)  # bits per vector (the paper's 6)
    item_len: int = Field(3, ge=1, le=8)  # vectors per item (the paper's 3)
    min_items: int = Field(2, ge=2, le=64)
    max_items: int = Field(6, ge=2, le=64)  # the paper trains on 2..6 items

    @model_validator(mode="after")
    def _sizes(self):
        if self.min_items > self.max_items:
            raise ValueError(f"min_items ({self.min_items}) is larger than max_items ({self.max_items})")
        if self.width * self.item_len > 60:
            raise ValueError(f"width * item_len is {self.width * self.item_len}; at most 60 bits per item")
        if self.max_items > 2 ** (self.width * self.item_len):
            raise ValueError(f"max_items ({self.max_items}) exceeds the {2 ** (self.width * self.item_len)} distinct "
                             "items of that width and item_len")
        return self


@register("associative_recall")
class AssociativeRecall(Task):
    """Input: K distinct items (each `item_len` vectors), each opened by a delimiter step in channel
    `width`; then a query item between two delimiter steps in channel `width + 1`. Target: the item
    that followed the query in the list, on the `item_len` steps after the second delimiter.
    `answer` holds the index of that item in the list (for checks and per-position metrics)."""

    Options = RecallOptions
    metric, metric_doc = BITS, BITS_DOC

    def steps(self) -> int:
        o = self.options
        return o.max_items * (o.item_len + 1) + o.item_len + 2 + o.item_len

    def feeds(self):
        return {"x": Slot("float32", ("N", self.steps(), self.options.width + 2))}

    def reads(self):
        T = self.steps()
        return {"y": Slot("float32", ("N", T, self.options.width)), "mask": Slot("float32", ("N", T)),
                "answer": Slot("int64", ("N",))}

    def make(self, rng, n):
        o = self.options
        w, il, T = o.width, o.item_len, self.steps()
        K = int(rng.integers(o.min_items, o.max_items + 1))
        nbits = w * il
        x = np.zeros((n, T, w + 2), np.float32)
        y = np.zeros((n, T, w), np.float32)
        mask = np.zeros((n, T), np.float32)
        answer = np.zeros(n, np.int64)
        shifts = np.arange(nbits, dtype=np.uint64)
        for b in range(n):
            codes = rng.choice(2 ** nbits, size=K, replace=False).astype(np.uint64)  # distinct items
            items = ((codes[:, None] >> shifts) & np.uint64(1)).astype(np.float32).reshape(K, il, w)
            for k in range(K):
                t = k * (il + 1)
                x[b, t, w] = 1.0
                x[b, t + 1:t + 1 + il, :w] = items[k]
            q = int(rng.integers(0, K - 1))
            t = K * (il + 1)
            x[b, t, w + 1] = 1.0
            x[b, t + 1:t + 1 + il, :w] = items[q]
            x[b, t + 1 + il, w + 1] = 1.0
            a = t + 2 + il
            y[b, a:a + il] = items[q + 1]
            mask[b, a:a + il] = 1.0
            answer[b] = q + 1
        return {"x": x, "y": y, "mask": mask, "answer": answer}


def bit_errors_per_sequence(outputs: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """The NTM metric: bits wrong after thresholding `outputs` (probabilities) at 0.5, on masked steps."""
    if outputs.shape != y.shape or mask.shape != y.shape[:2]:
        raise TaskError(f"outputs {outputs.shape}, targets {y.shape} and mask {mask.shape} do not fit")
    wrong = ((outputs > 0.5) != (y > 0.5)) & (mask[..., None] > 0)
    return float(wrong.sum(axis=(1, 2)).mean())
