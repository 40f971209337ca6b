"""Validation metrics: the figure each task reports, accumulated exactly over its validation batches.

A metric reads the tensors the loss reads (after the loss's `map`), so `accuracy` sees `logits` and
`targets` whatever the spec calls its output. Each metric sums a numerator and a count over the
batches and finishes once (perplexity is exp of the mean cross-entropy over all tokens, not the
mean of per-batch perplexities). A task whose metric needs decoding this trainer does not do yet
reports its loss only, and the run's summary says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Metric:
    """`update(inputs) -> (sum, count)` for one batch; `finish(mean)` turns the mean into the figure."""

    reads: tuple[str, ...]
    update: Callable[[Mapping[str, torch.Tensor]], tuple[float, int]]
    finish: Callable[[float], float] = lambda mean: mean
    better: str = "higher"


def _token_ce(inputs) -> tuple[float, int]:
    logits, targets = inputs["logits"].float(), inputs["targets"]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return float(ce), targets.numel()


def _accuracy(inputs) -> tuple[float, int]:
    pred = inputs["logits"].argmax(-1)
    targets = inputs["targets"]
    return float((pred == targets).sum()), targets.numel()


def _squared_error(inputs) -> tuple[float, int]:
    diff = inputs["predictions"].float() - inputs["targets"].float()
    return float((diff * diff).sum()), diff.numel()


def _absolute_error(inputs) -> tuple[float, int]:
    diff = inputs["predictions"].float() - inputs["targets"].float()
    return float(diff.abs().sum()), diff.numel()


METRICS: dict[str, Metric] = {
    "bits_per_char": Metric(("logits", "targets"), _token_ce, lambda m: m / LN2, "lower"),
    "perplexity": Metric(("logits", "targets"), _token_ce, lambda m: math.exp(min(m, 700.0)), "lower"),
    "accuracy": Metric(("logits", "targets"), _accuracy),
    "mean_squared_error": Metric(("predictions", "targets"), _squared_error, better="lower"),
    "mean_absolute_error": Metric(("predictions", "targets"), _absolute_error, better="lower"),
}


class Accumulator:
    """Sums of the requested metrics (those whose reads are present) and of the loss over batches."""

    def __init__(self, names):
        self.names = [n for n in names if n in METRICS]
        self.sums = {n: 0.0 for n in self.names}
        self.counts = {n: 0 for n in self.names}
        self.loss_sum, self.batches = 0.0, 0

    def add(self, loss: float, inputs: Mapping[str, torch.Tensor]) -> None:
        self.loss_sum += loss
        self.batches += 1
        for n in self.names:
            if all(k in inputs for k in METRICS[n].reads):
                s, c = METRICS[n].update(inputs)
                self.sums[n] += s
                self.counts[n] += c

    def result(self) -> dict[str, float]:
        out = {"loss": self.loss_sum / max(self.batches, 1)}
        for n in self.names:
            if self.counts[n]:
                out[n] = METRICS[n].finish(self.sums[n] / self.counts[n])
        return out


__all__ = ["METRICS", "Accumulator", "Metric"]
