"""Preference loss: direct preference optimisation (Rafailov et al. 2023, "Direct Preference
Optimization: Your Language Model is Secretly a Reward Model").

    r_c = beta * (policy_chosen - reference_chosen),  r_r = beta * (policy_rejected - reference_rejected)
    loss = -(1 - eps) * log sigmoid(r_c - r_r) - eps * log sigmoid(r_r - r_c)

with sequence log-probabilities summed over each response's tokens; eps > 0 is conservative DPO
(labels flipped with probability eps). The reference model is frozen: its log-probs are detached
here, so no gradient reaches it even if the caller forgot `torch.no_grad()`.
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
        chosen = o.beta * (pc - rc.detach())
        rejected = o.beta * (pr - rr.detach())
        margin = chosen - rejected
        logsig = torch.nn.functional.logsigmoid
        per = -(1.0 - o.label_smoothing) * logsig(margin) - o.label_smoothing * logsig(-margin)
        n = max(per.numel(), 1)
        return self.reduce(per.sum(), per.numel()), {
            "reward_accuracy": (margin > 0).float().sum() / n, "chosen_reward": chosen.sum() / n,
            "rejected_reward": rejected.sum() / n, "margin": margin.sum() / n}
