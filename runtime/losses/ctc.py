"""Connectionist temporal classification (Graves et al. 2006, "Connectionist Temporal
Classification: Labelling Unsegmented Sequence Data with Recurrent Neural Networks").

    loss_b = -log sum_{alignments a, B(a) = targets_b} prod_t p(a_t | x_b, t)

where B removes repeats then blanks. The forward-backward sum is torch's `ctc_loss`; this unit
adds the batch-first, named-input interface and the checks.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from .base import Loss, LossOptions, as_float, register


class CTCOptions(LossOptions):
    blank: Annotated[int, Field(ge=0)] = 0
    # per_target: each sequence's loss divided by its target length, then the batch mean (torch's
    # "mean"); per_sequence: the plain batch mean of sequence losses.
    normalise: Literal["per_target", "per_sequence"] = "per_target"
    zero_infinity: bool = False  # impossible alignments (input too short) give 0 instead of inf


@register
class CTC(Loss):
    """CTC loss. Reads `logits` (batch, time, classes) (log-softmax is applied here), `targets`
    (batch, max_target_len) padded class ids, `input_lengths` (batch,), `target_lengths` (batch,).
    `mean` reduction: see `normalise`; `sum`: the sum of sequence losses. Logs `nll_per_sequence`."""

    name = "ctc"
    Options = CTCOptions
    reads = ("logits", "targets", "input_lengths", "target_lengths")

    def compute(self, inputs):
        o = self.options
        logits, targets = as_float(inputs["logits"]), inputs["targets"]
        in_len, tg_len = inputs["input_lengths"], inputs["target_lengths"]
        if logits.dim() != 3 or targets.dim() != 2 or targets.shape[0] != logits.shape[0]:
            raise self.fail(f"expected logits (batch, time, classes) and targets (batch, max_target_len), "
                            f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
        batch, time, classes = logits.shape
        for key, t in (("targets", targets), ("input_lengths", in_len), ("target_lengths", tg_len)):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise self.fail(f"{key} must be integers, got {t.dtype}")
        if in_len.shape != (batch,) or tg_len.shape != (batch,):
            raise self.fail(f"input_lengths and target_lengths must be ({batch},)")
        if o.blank >= classes:
            raise self.fail(f"blank {o.blank} is not a class (there are {classes})")
        if bool(((in_len < 0) | (in_len > time)).any()) or bool(((tg_len < 0) | (tg_len > targets.shape[1])).any()):
            raise self.fail("a length is negative or longer than its padded tensor")
        used = torch.arange(targets.shape[1], device=targets.device) < tg_len.unsqueeze(1)
        real = targets[used]
        if bool(((real < 0) | (real >= classes) | (real == o.blank)).any()):
            raise self.fail(f"a target is outside [0, {classes}) or is the blank {o.blank}")
        logp = torch.log_softmax(logits, dim=-1).transpose(0, 1)  # torch wants (time, batch, classes)
        per = torch.nn.functional.ctc_loss(logp, targets.long(), in_len.long(), tg_len.long(), blank=o.blank,
                                           reduction="none", zero_infinity=o.zero_infinity)
        seq_mean = per.sum() / max(batch, 1)
        if o.reduction == "sum":
            return per.sum(), {"nll_per_sequence": seq_mean}
        if o.normalise == "per_target":
            per = per / tg_len.clamp(min=1).to(per.dtype)
        return per.sum() / max(batch, 1), {"nll_per_sequence": seq_mean}
