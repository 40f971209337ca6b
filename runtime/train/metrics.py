"""Validation metrics: the figure each task reports, accumulated exactly over its validation batches.

A metric reads the tensors the loss reads (after the loss's `map`), so `accuracy` sees `logits` and
`targets` whatever the spec calls its output. Each metric sums a numerator and a count over the
batches and finishes once (perplexity is exp of the mean cross-entropy over all tokens, not the
mean of per-batch perplexities). Sequence metrics decode greedily from what the model outputs in
one forward pass: `sequence_accuracy` is the teacher-forced exact match (every position's argmax,
given the true prefix, equals its target), `label_error_rate` the greedy CTC decoding (best class per
frame, repeats merged, blanks dropped) against the labels. A task whose metric this trainer does not
compute (a free-running decoder's, a tour length) reports its loss only, and the summary says so.
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
    one_of: tuple[str, ...] = ()  # besides `reads`, at least one of these (the scores it decodes)

    def applies(self, inputs: Mapping[str, torch.Tensor]) -> bool:
        return all(k in inputs for k in self.reads) and (not self.one_of or any(k in inputs for k in self.one_of))


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


def _scores(inputs) -> torch.Tensor:
    return inputs["pointer_logits"] if "pointer_logits" in inputs else inputs["logits"]


def _sequence_accuracy(inputs) -> tuple[float, int]:
    """Examples whose every position's argmax equals its target; negative targets (padding, the
    losses' ignore_index) match anything."""
    pred, targets = _scores(inputs).argmax(-1), inputs["targets"]
    ok = ((pred == targets) | (targets < 0)).reshape(targets.shape[0], -1).all(1)
    return float(ok.sum()), int(ok.numel())


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def ctc_greedy(logits: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path decoding: the top class of each of the first `lengths[b]` frames, repeats merged,
    blanks (class 0: the ctc loss's default and the tasks' convention) dropped."""
    out = []
    for row, n in zip(logits.argmax(-1).tolist(), lengths.tolist()):
        labels, last = [], None
        for k in row[:int(n)]:
            if k != last and k != blank:
                labels.append(k)
            last = k
        out.append(labels)
    return out


def _label_errors(inputs) -> tuple[float, int]:
    decoded = ctc_greedy(inputs["logits"], inputs["input_lengths"])
    targets, lengths = inputs["targets"].tolist(), inputs["target_lengths"].tolist()
    errors = sum(edit_distance(d, t[:int(n)]) for d, t, n in zip(decoded, targets, lengths))
    return float(errors), int(sum(lengths))


def _bit_errors(inputs) -> tuple[float, int]:
    """Bits wrong per sequence: logits above 0 (probability above 0.5) against targets above 0.5,
    on the steps `mask` marks (every step without one)."""
    x, y = inputs["logits"], inputs["targets"]
    wrong = (x > 0) != (y > 0.5)
    if "mask" in inputs:
        wrong = wrong & (inputs["mask"] > 0).reshape(inputs["mask"].shape + (1,) * (wrong.dim() - inputs["mask"].dim()))
    return float(wrong.sum()), int(wrong.shape[0])


def _preference(inputs) -> tuple[float, int]:
    """Pairs (chosen rows, then their rejected rows) whose DPO implicit reward favours the chosen:
    log pi(chosen) - log ref(chosen) > log pi(rejected) - log ref(rejected)."""
    from nnspec.runtime.losses.preference import sequence_logps
    args = inputs["targets"], inputs["response_mask"]
    ratio = sequence_logps(inputs["logits"], *args) - sequence_logps(inputs["reference_logits"], *args)
    n = ratio.shape[0] // 2
    return float((ratio[:n] > ratio[n:2 * n]).sum()), n


def _induction(inputs) -> tuple[float, int]:
    """Right argmaxes of the next-token scores (a multi-token model's head 0) where `induction_mask`
    is set: the repeated half of an induction sequence."""
    scores = inputs["head_logits"][0] if "head_logits" in inputs else inputs["logits"]
    mask = inputs["induction_mask"] > 0
    return float(((scores.argmax(-1) == inputs["targets"]) & mask).sum()), int(mask.sum())


METRICS: dict[str, Metric] = {
    "bits_per_char": Metric(("logits", "targets"), _token_ce, lambda m: m / LN2, "lower"),
    "perplexity": Metric(("logits", "targets"), _token_ce, lambda m: math.exp(min(m, 700.0)), "lower"),
    "accuracy": Metric(("logits", "targets"), _accuracy),
    "mean_squared_error": Metric(("predictions", "targets"), _squared_error, better="lower"),
    "mean_absolute_error": Metric(("predictions", "targets"), _absolute_error, better="lower"),
    "sequence_accuracy": Metric(("targets",), _sequence_accuracy, one_of=("pointer_logits", "logits")),
    "label_error_rate": Metric(("logits", "targets", "input_lengths", "target_lengths"), _label_errors,
                               better="lower"),
    "bit_errors_per_sequence": Metric(("logits", "targets"), _bit_errors, better="lower"),
    "preference_accuracy": Metric(("logits", "reference_logits", "targets", "response_mask"), _preference),
    "induction_accuracy": Metric(("targets", "induction_mask"), _induction, one_of=("head_logits", "logits")),
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
            if METRICS[n].applies(inputs):
                s, c = METRICS[n].update(inputs)
                self.sums[n] += s
                self.counts[n] += c

    def result(self) -> dict[str, float]:
        out = {"loss": self.loss_sum / max(self.batches, 1)}
        for n in self.names:
            if self.counts[n]:
                out[n] = METRICS[n].finish(self.sums[n] / self.counts[n])
        return out


__all__ = ["METRICS", "Accumulator", "Metric", "ctc_greedy", "edit_distance"]
