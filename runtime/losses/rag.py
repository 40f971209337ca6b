"""Retrieval-augmented generation's marginal likelihoods (Lewis et al. 2020, "Retrieval-Augmented
Generation for Knowledge-Intensive NLP Tasks", section 2.1). The generator reads the input x with
each of the k retrieved documents z; the retriever's scores give p(z | x) = softmax_z(score(x, z)).

    RAG-sequence:  p(y | x) = sum_z p(z | x) prod_t p(y_t | x, z, y_<t)
    RAG-token:     p(y | x) = prod_t sum_z p(z | x) p(y_t | x, z, y_<t)

Both read `logits` (N, k, T, vocab), the generator's next-token logits per document, `doc_scores`
(N, k) and `targets` (N, T) (ignore_index marks padding, which counts as probability 1). The loss
is -log p(y | x), mean over examples; the gradient reaches the retriever through p(z | x).
"""
from __future__ import annotations

import torch

from .base import Loss, LossOptions, as_float, register


class RAGOptions(LossOptions):
    ignore_index: int = -100


def _parts(loss: Loss, inputs):
    """(log p(z | x) (N, k), log p(y_t | x, z, y_<t) (N, k, T) with padding at 0, valid (N, T))."""
    logits, scores, targets = as_float(inputs["logits"]), as_float(inputs["doc_scores"]), inputs["targets"]
    if logits.dim() != 4 or scores.shape != logits.shape[:2] or targets.shape != (logits.shape[0], logits.shape[2]):
        raise loss.fail(f"expected logits (N, k, T, vocab), doc_scores (N, k) and targets (N, T), got "
                        f"{tuple(logits.shape)}, {tuple(scores.shape)} and {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise loss.fail(f"targets must be integer token ids, got {targets.dtype}")
    valid = targets != loss.options.ignore_index
    if bool(((targets[valid] < 0) | (targets[valid] >= logits.shape[-1])).any()):
        raise loss.fail(f"a target is outside [0, {logits.shape[-1]}) and is not ignore_index")
    safe = torch.where(valid, targets, torch.zeros_like(targets)).long()
    logp = torch.log_softmax(logits, dim=-1)
    idx = safe[:, None, :, None].expand(-1, logits.shape[1], -1, 1)
    tok = logp.gather(-1, idx).squeeze(-1) * valid[:, None, :]
    return torch.log_softmax(scores, dim=1), tok, valid


@register
class RAGSequence(Loss):
    """-log sum_z p(z | x) prod_t p(y_t | x, z, y_<t), mean over examples. Logs `doc_entropy`
    (nats of p(z | x)) and `nll_per_token`."""

    name = "rag_sequence"
    Options = RAGOptions
    reads = ("logits", "doc_scores", "targets")

    def compute(self, inputs):
        log_pz, tok, valid = _parts(self, inputs)
        per = -torch.logsumexp(log_pz + tok.sum(-1), dim=1)
        n = per.shape[0]
        return self.reduce(per.sum(), n), {"doc_entropy": -(log_pz.exp() * log_pz).sum(1).mean(),
                                           "nll_per_token": per.sum() / valid.sum().clamp(min=1)}


@register
class RAGToken(Loss):
    """-sum_t log sum_z p(z | x) p(y_t | x, z, y_<t), mean over examples. Logs `doc_entropy` and
    `nll_per_token`."""

    name = "rag_token"
    Options = RAGOptions
    reads = ("logits", "doc_scores", "targets")

    def compute(self, inputs):
        log_pz, tok, valid = _parts(self, inputs)
        marg = torch.logsumexp(log_pz[:, :, None] + tok, dim=1) * valid  # (N, T)
        per = -marg.sum(-1)
        n = per.shape[0]
        return self.reduce(per.sum(), n), {"doc_entropy": -(log_pz.exp() * log_pz).sum(1).mean(),
                                           "nll_per_token": per.sum() / valid.sum().clamp(min=1)}
