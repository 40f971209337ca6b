"""Induction sequences, for multi-token prediction (Gloeckle et al. 2024, section 4.1: induction).

Each example is a random segment of `segment` tokens followed by the same segment again. The
first copy is unpredictable (every token uniform over the vocabulary); in the second, the token
after position t is the one that followed the previous occurrence of the token at t, which a model
can only find by attending back to that occurrence and reading its successor: an induction head.
A model without one is left at log(vocab) nats on every target; one with it predicts the repeated
part exactly, so the next-token cross-entropy falls to about segment / (2 segment - 1) log(vocab).

`ids` are the 2 segment - 1 first tokens, `targets` the 2 segment - 1 next ones; the induction
targets are `targets[:, segment:]` (the repeat after its first token, which follows nothing seen).
Tokens within a segment are distinct when `distinct` is set (vocab >= segment), so every token's
previous occurrence is unique and the copy is unambiguous.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from .base import Slot, Task, TaskOptions, register


class InductionOptions(TaskOptions):
    vocab: int = Field(16, ge=2, le=65536)
    segment: int = Field(16, ge=2, le=2048)
    distinct: bool = True

    @model_validator(mode="after")
    def _fits(self):
        if self.distinct and self.segment > self.vocab:
            raise ValueError(f"segment ({self.segment}) of distinct tokens needs vocab >= segment (got {self.vocab})")
        return self


def induction_positions(segment: int) -> slice:
    """Where in `targets` (length 2 segment - 1) the target is a copy predictable from the first half."""
    return slice(segment, 2 * segment - 1)


@register("induction")
class Induction(Task):
    """`ids` int64[N, 2 segment - 1] and `targets` (the next tokens) of a random segment and its repeat."""

    Options = InductionOptions
    metric = "induction_accuracy"
    metric_doc = ("fraction of the repeated half's targets (targets[:, segment:]) that the next-token head's "
                  "argmax gets right; 1/vocab by chance")

    def _len(self):
        return 2 * self.options.segment - 1

    def feeds(self):
        return {"ids": Slot("int64", ("N", self._len()), high=self.options.vocab)}

    def reads(self):
        # induction_mask marks the targets a copy predicts (induction_positions): the metric's positions
        return {"targets": Slot("int64", ("N", self._len()), high=self.options.vocab),
                "induction_mask": Slot("float32", ("N", self._len()))}

    def make(self, rng, b):
        o = self.options
        if o.distinct:
            seg = np.argsort(rng.random((b, o.vocab)), axis=1)[:, :o.segment]
        else:
            seg = rng.integers(0, o.vocab, size=(b, o.segment))
        x = np.concatenate([seg, seg], axis=1).astype(np.int64)
        mask = np.zeros((b, self._len()), np.float32)
        mask[:, induction_positions(o.segment)] = 1.0
        return {"ids": np.ascontiguousarray(x[:, :-1]), "targets": np.ascontiguousarray(x[:, 1:]),
                "induction_mask": mask}
