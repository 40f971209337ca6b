"""Preference loss: direct preference optimisation (Rafailov et al. 2023, "Direct Preference
Optimization: Your Language Model is Secretly a Reward Model").

    r_c = beta * (policy_chosen - reference_chosen),  r_r = beta * (policy_rejected - reference_rejected)
    loss = -(1 - eps) * log sigmoid(r_c - r_r) - eps * log sigmoid(r_r - r_c)

with sequence log-probabilities summed over each response's tokens; eps > 0 is conservative DPO
(labels flipped with probability eps). The reference model is frozen: its log-probs are detached
here, so no gradient reaches it even if the caller forgot `torch.no_grad()`.

Two forms: `dpo` reads the four sequence log-probabilities a caller computed; `dpo_lm` reads a
language model's `logits` on a batch of chosen rows followed by their rejected rows (the layout of
the `preference_pairs` task) and the frozen reference's `reference_logits`, which `nnspec train`
provides from a copy of the weights the run starts from, and sums each response's token
log-probabilities under `response_mask` itself.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from .base import Loss, LossOptions, as_float, register


class DPOOptions(LossOptions):
    beta: Annotated[float, Field(gt=0.0)] = 0.1
    label_smoothing: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.0


@register
class DPO(Loss):
    """DPO loss, mean over preference pairs. Reads `policy_chosen_logps`, `policy_rejected_logps`,
    `reference_chosen_logps`, `reference_rejected_logps`, each (pairs,). Logs `reward_accuracy`
    (r_c > r_r), `chosen_reward`, `rejected_reward`, `margin` (batch means)."""

    name = "dpo"
    Options = DPOOptions
    reads = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")

    def compute(self, inputs):
        o = self.options
        pc, pr, rc, rr = (as_float(inputs[k]) for k in self.reads)
        if not (pc.dim() == 1 and pc.shape == pr.shape == rc.shape == rr.shape):
            raise self.fail("the four log-prob tensors must all be (pairs,), got "
                            + ", ".join(str(tuple(t.shape)) for t in (pc, pr, rc, rr)))
        return dpo(self, pc, pr, rc, rr)


def dpo(loss: Loss, pc, pr, rc, rr):
    """(loss, metrics) of the four (pairs,) sequence log-prob tensors under `loss`'s options."""
    o = loss.options
    chosen = o.beta * (pc - rc.detach())
    rejected = o.beta * (pr - rr.detach())
    margin = chosen - rejected
    logsig = torch.nn.functional.logsigmoid
    per = -(1.0 - o.label_smoothing) * logsig(margin) - o.label_smoothing * logsig(-margin)
    n = max(per.numel(), 1)
    return loss.reduce(per.sum(), per.numel()), {
        "reward_accuracy": (margin > 0).float().sum() / n, "chosen_reward": chosen.sum() / n,
        "rejected_reward": rejected.sum() / n, "margin": margin.sum() / n}


def sequence_logps(logits, targets, mask):
    """Sum over positions of log p(target) where `mask` is set: (rows, T, V), (rows, T), (rows, T) -> (rows,)."""
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return (logp * mask.to(logp.dtype)).sum(-1)


@register
class LanguageModelDPO(Loss):
    """DPO of a language model: `logits` (2N, T, V) of N chosen rows then their N rejected rows,
    `targets` (2N, T) the next tokens, `response_mask` (2N, T) the response positions, and
    `reference_logits` (2N, T, V) of the frozen reference. Logs as `dpo`."""

    name = "dpo_lm"
    Options = DPOOptions
    reads = ("logits", "targets", "response_mask", "reference_logits")
    reference = True

    def compute(self, inputs):
        logits, targets, mask, ref = (inputs[k] for k in self.reads)
        rows = logits.shape[0]
        if logits.dim() != 3 or ref.shape != logits.shape or targets.shape != logits.shape[:2] \
                or mask.shape != targets.shape or rows % 2:
            raise self.fail("expected logits and reference_logits (2N, T, V), targets and response_mask (2N, T), "
                            f"got {tuple(logits.shape)}, {tuple(ref.shape)}, {tuple(targets.shape)}, "
                            f"{tuple(mask.shape)}")
        n = rows // 2
        policy = sequence_logps(logits, targets, mask)
        with torch.no_grad():
            reference = sequence_logps(ref, targets, mask)
        return dpo(self, policy[:n], policy[n:], reference[:n], reference[n:])
