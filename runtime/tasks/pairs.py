"""Preference pairs for DPO (Rafailov et al. 2023) and synthetic passages for retrieval.

Preference pairs: a prompt of random symbols, a separator, then a response; the chosen response
is the prompt reversed, the rejected one the same with 1..max_corrupt positions changed to other
symbols. Both run through the same language model, so the task feeds one `ids` batch of 2N rows:
rows 0..N-1 chosen, rows N..2N-1 rejected (row i's pair is row i + N); `targets` are the next
tokens and `response_mask` marks the response tokens whose log-probabilities DPO sums.

Retrieval: K passages of random words (ids 1..vocab, 0 pads) and a query that is a span of the
positive passage; a span that also occurs in another passage is redrawn there, so `target`
(the positive's index) is the only right answer.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from .base import Slot, Task, TaskError, TaskOptions, register

SEP = 1  # the prompt / response separator; symbols are 2 .. symbols + 1 (0 pads)


class PreferenceOptions(TaskOptions):
    symbols: int = Field(16, ge=2, le=10000)
    prompt_len: int = Field(8, ge=1, le=512)
    max_corrupt: int = Field(2, ge=1, le=512)

    @model_validator(mode="after")
    def _fits(self):
        if self.max_corrupt > self.prompt_len:
            raise ValueError(f"max_corrupt ({self.max_corrupt}) is larger than prompt_len ({self.prompt_len})")
        return self


@register("preference_pairs")
class PreferencePairs(Task):
    """`ids` (2N, T), T = 2 * prompt_len (prompt, separator, response without its last token):
    chosen rows, then rejected rows; `targets` the next tokens; `response_mask` the target positions
    that are response tokens."""

    Options = PreferenceOptions
    metric = "preference_accuracy"
    metric_doc = "fraction of pairs whose DPO implicit reward (policy minus reference log-ratio) favours the chosen"

    def steps(self) -> int:
        return 2 * self.options.prompt_len

    def feeds(self):
        return {"ids": Slot("int64", ("2N", self.steps()), high=self.options.symbols + 2)}

    def reads(self):
        T = self.steps()
        return {"targets": Slot("int64", ("2N", T), high=self.options.symbols + 2),
                "response_mask": Slot("float32", ("2N", T))}

    def elements(self, batch_size):
        return 2 * super().elements(batch_size)

    def make(self, rng, b):
        o = self.options
        L = o.prompt_len
        prompt = rng.integers(2, o.symbols + 2, size=(b, L))
        chosen = prompt[:, ::-1]
        rejected = chosen.copy()
        k = rng.integers(1, o.max_corrupt + 1, size=b)
        for i in range(b):
            at = rng.choice(L, size=int(k[i]), replace=False)
            shift = rng.integers(1, o.symbols, size=len(at))  # never back to the same symbol
            rejected[i, at] = (rejected[i, at] - 2 + shift) % o.symbols + 2
        sep = np.full((b, 1), SEP)
        seqs = np.concatenate([np.concatenate([prompt, sep, chosen], 1),
                               np.concatenate([prompt, sep, rejected], 1)]).astype(np.int64)
        mask = np.zeros((2 * b, 2 * L), np.float32)
        mask[:, L:] = 1.0  # targets at positions L.. are the response tokens
        return {"ids": seqs[:, :-1], "targets": seqs[:, 1:], "response_mask": mask}


class RetrievalOptions(TaskOptions):
    vocab: int = Field(1000, ge=16, le=100000)
    passages: int = Field(8, ge=2, le=256)  # candidates per query
    passage_len: int = Field(32, ge=2, le=1024)
    query_len: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _fits(self):
        if self.query_len > self.passage_len:
            raise ValueError(f"query_len ({self.query_len}) is longer than passage_len ({self.passage_len})")
        # expected chance matches of the query in a distractor: at most one half, so redraws end soon
        if self.passage_len > 0.5 * float(self.vocab) ** self.query_len:
            raise ValueError(f"a query of {self.query_len} words from {self.vocab} would occur by chance in most "
                             f"passages of {self.passage_len} words; use a larger vocab or query_len")
        return self


def _contains(passage: np.ndarray, span: np.ndarray) -> bool:
    n = len(span)
    windows = np.lib.stride_tricks.sliding_window_view(passage, n)
    return bool((windows == span).all(axis=1).any())


@register("retrieval")
class Retrieval(Task):
    """`query` (N, query_len) and `passages` (N, K, passage_len); `target` the positive's index;
    `in_batch_target` the positive's index among all N * K passages of the batch (i * K + target),
    for models that score every question against every passage in the batch (DPR's in-batch
    negatives: the other questions' passages are negatives too)."""

    Options = RetrievalOptions
    metric = "recall_at_1"
    metric_doc = "fraction of queries whose highest-scoring passage is the positive"
    tries = 100  # redraws of one distractor passage before giving up

    def feeds(self):
        o = self.options
        return {"query": Slot("int64", ("N", o.query_len), high=o.vocab + 1),
                "passages": Slot("int64", ("N", o.passages, o.passage_len), high=o.vocab + 1)}

    def reads(self):
        return {"target": Slot("int64", ("N",), high=self.options.passages),
                "in_batch_target": Slot("int64", ("N",))}

    def make(self, rng, b):
        o = self.options
        passages = rng.integers(1, o.vocab + 1, size=(b, o.passages, o.passage_len))
        target = rng.integers(0, o.passages, size=b)
        start = rng.integers(0, o.passage_len - o.query_len + 1, size=b)
        query = np.stack([passages[i, target[i], start[i]:start[i] + o.query_len] for i in range(b)])
        for i in range(b):
            for k in range(o.passages):
                tries = 0
                while k != target[i] and _contains(passages[i, k], query[i]):
                    tries += 1
                    if tries > self.tries:
                        raise TaskError("could not draw distractor passages free of the query; use a larger vocab "
                                        "or a longer query_len")
                    passages[i, k] = rng.integers(1, o.vocab + 1, size=o.passage_len)
        return {"query": query.astype(np.int64), "passages": passages.astype(np.int64),
                "target": target.astype(np.int64),
                "in_batch_target": (np.arange(b) * o.passages + target).astype(np.int64)}
