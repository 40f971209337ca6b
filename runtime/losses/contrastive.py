"""In-batch contrastive loss (Karpukhin et al. 2020, "Dense Passage Retrieval for Open-Domain
Question Answering"): every other passage in the batch is a negative for a query.

    S = sim(queries, passages) / temperature            (queries x passages)
    loss_i = -log softmax_j(S[i, j])[i]

Passage i is query i's positive; passages beyond the number of queries are extra (hard)
negatives shared by all queries. sim is the dot product (DPR) or cosine similarity.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from .base import Loss, LossOptions, as_float, register


class ContrastiveOptions(LossOptions):
    similarity: Literal["dot", "cosine"] = "dot"
    temperature: Annotated[float, Field(gt=0.0)] = 1.0


@register
class InBatchContrastive(Loss):
    """DPR in-batch negatives, mean over queries. Reads `query_embeddings` (queries, dim) and
    `passage_embeddings` (passages >= queries, dim). Logs `accuracy` (top-1 retrieval) and
    `positive_similarity` (mean sim of the positive pairs, before the temperature)."""

    name = "in_batch_contrastive"
    Options = ContrastiveOptions
    reads = ("query_embeddings", "passage_embeddings")

    def compute(self, inputs):
        o = self.options
        q, p = as_float(inputs["query_embeddings"]), as_float(inputs["passage_embeddings"])
        if q.dim() != 2 or p.dim() != 2 or q.shape[1] != p.shape[1] or p.shape[0] < q.shape[0]:
            raise self.fail(f"expected query_embeddings (queries, dim) and passage_embeddings (passages >= "
                            f"queries, dim), got {tuple(q.shape)} and {tuple(p.shape)}")
        if o.similarity == "cosine":
            q = torch.nn.functional.normalize(q, dim=1)
            p = torch.nn.functional.normalize(p, dim=1)
        sim = q @ p.T
        n = q.shape[0]
        logp = torch.log_softmax(sim / o.temperature, dim=1)
        idx = torch.arange(n, device=q.device)
        per = -logp[idx, idx]
        correct = (sim.argmax(1) == idx).float().sum() if n else sim.new_zeros(())
        return self.reduce(per.sum(), n), {"accuracy": correct / max(n, 1),
                                           "positive_similarity": sim[idx, idx].sum() / max(n, 1)}
