"""Token classification losses: cross-entropy, sequence CE, pointer CE, multi-token CE, binary CE.

All categorical ones share `token_ce`: per-position negative log-likelihood with optional label
smoothing, positions whose target is `ignore_index` contribute nothing. When every position is
ignored the loss is 0 (with zero gradients), not nan, and accuracy is 0.
"""
from __future__ import annotations

import math
from typing import Annotated, Optional

import torch
from pydantic import Field, model_validator

from .base import Loss, LossOptions, as_float, register

LN2 = math.log(2.0)


def token_ce(loss: Loss, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
             smoothing: float = 0.0, mask: Optional[torch.Tensor] = None):
    """(sum of per-position losses, number of counted positions, number correct, sum of plain NLL).

    logits (..., C), targets (...) integer class ids. `mask` (..., C) marks the classes that exist
    (pointer CE: the valid input positions); smoothing spreads over the existing classes only.
    """
    logits = as_float(logits)
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise loss.fail(f"targets must be integer class ids, got {targets.dtype}")
    if logits.dim() < 1 or logits.shape[:-1] != targets.shape:
        raise loss.fail(f"logits {tuple(logits.shape)} do not fit targets {tuple(targets.shape)}: "
                        "expected logits (..., classes) and targets (...)")
    classes = logits.shape[-1]
    valid = targets != ignore_index
    if bool(((targets[valid] < 0) | (targets[valid] >= classes)).any()):
        raise loss.fail(f"a target is outside [0, {classes}) and is not ignore_index {ignore_index}")
    if mask is not None:
        # A finite fill keeps fully masked rows (padding steps) finite, so their zero gradient is not nan.
        logits = logits.masked_fill(~mask, -1e30)
    safe = torch.where(valid, targets, torch.zeros_like(targets)).long()
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    if mask is not None and bool((valid & ~mask.gather(-1, safe.unsqueeze(-1)).squeeze(-1)).any()):
        raise loss.fail("a target points at a masked position")
    per = nll
    if smoothing:
        if mask is None:
            uniform = -logp.mean(-1)
        else:
            uniform = -(logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        per = (1.0 - smoothing) * nll + smoothing * uniform
    w = valid.to(per.dtype)
    correct = ((logits.argmax(-1) == targets) & valid).sum()
    return (per * w).sum(), int(valid.sum()), correct, (nll * w).sum()


class CEOptions(LossOptions):
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    ignore_index: int = -100


@register
class CrossEntropy(Loss):
    """Categorical cross-entropy, mean over non-ignored positions.

        loss_i = (1 - eps) * -log p(y_i | x_i) + eps * mean_c -log p(c | x_i),  p = softmax(logits)

    Label smoothing eps as in Szegedy et al. 2016, "Rethinking the Inception Architecture".
    Reads `logits` (..., classes) and `targets` (...) integer ids. Logs `accuracy`.
    """

    name = "cross_entropy"
    Options = CEOptions
    reads = ("logits", "targets")

    def compute(self, inputs):
        o = self.options
        total, n, correct, _ = token_ce(self, inputs["logits"], inputs["targets"], o.ignore_index, o.label_smoothing)
        return self.reduce(total, n), {"accuracy": correct.float() / max(n, 1)}


class SequenceCEOptions(CEOptions):
    shift: bool = False  # True: logits[:, t] predicts targets[:, t + 1] (targets are the input tokens)


@register
class SequenceCE(Loss):
    """Sequence (language-model) cross-entropy, mean over non-ignored tokens of the whole batch.

    Reads `logits` (batch, time, vocab) and `targets` (batch, time). With `shift`, position t is
    scored on token t + 1 (next-token prediction from the input sequence itself). Logs
    `bits_per_token` (plain NLL / ln 2, without smoothing) and `accuracy`.
    """

    name = "sequence_ce"
    Options = SequenceCEOptions
    reads = ("logits", "targets")

    def compute(self, inputs):
        o = self.options
        logits, targets = inputs["logits"], inputs["targets"]
        if logits.dim() != 3 or targets.dim() != 2:
            raise self.fail(f"expected logits (batch, time, vocab) and targets (batch, time), got "
                            f"{tuple(logits.shape)} and {tuple(targets.shape)}")
        if o.shift:
            logits, targets = logits[:, :-1], targets[:, 1:]
        total, n, correct, nll = token_ce(self, logits, targets, o.ignore_index, o.label_smoothing)
        return self.reduce(total, n), {"bits_per_token": nll / max(n, 1) / LN2,
                                       "accuracy": correct.float() / max(n, 1)}


class PointerOptions(LossOptions):
    ignore_index: int = -100


@register
class PointerCE(Loss):
    """Pointer-network cross-entropy (Vinyals et al. 2015, "Pointer Networks").

    Each output step scores the input positions; the target is the index of the input it points at:
        loss_{b,t} = -log softmax_j(pointer_logits[b, t, j] over j with input_mask[b, j])[targets[b, t]]
    Reads `pointer_logits` (batch, out_steps, in_steps) and `targets` (batch, out_steps); optional
    `input_mask` (batch, in_steps) bool, True for real (non-padding) inputs. Mean over non-ignored
    steps. Logs `accuracy`.
    """

    name = "pointer_ce"
    Options = PointerOptions
    reads = ("pointer_logits", "targets")
    optional = ("input_mask",)

    def compute(self, inputs):
        logits, targets = inputs["pointer_logits"], inputs["targets"]
        if logits.dim() != 3:
            raise self.fail(f"expected pointer_logits (batch, out_steps, in_steps), got {tuple(logits.shape)}")
        mask = inputs.get("input_mask")
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape != (logits.shape[0], logits.shape[2]):
                raise self.fail(f"input_mask must be bool (batch, in_steps) = {(logits.shape[0], logits.shape[2])}, "
                                f"got {mask.dtype} {tuple(mask.shape)}")
            mask = mask.unsqueeze(1).expand_as(logits)
        total, n, correct, _ = token_ce(self, logits, targets, self.options.ignore_index, mask=mask)
        return self.reduce(total, n), {"accuracy": correct.float() / max(n, 1)}


class MultiTokenOptions(LossOptions):
    ignore_index: int = -100
    head_weights: Optional[list[Annotated[float, Field(ge=0.0)]]] = None  # default: plain mean over heads

    @model_validator(mode="after")
    def _some_weight(self):
        if self.head_weights is not None and (not self.head_weights or sum(self.head_weights) <= 0):
            raise ValueError("head_weights must be non-empty with a positive sum")
        return self


@register
class MultiTokenCE(Loss):
    """Multi-token prediction (Gloeckle et al. 2024, "Better & Faster Large Language Models via
    Multi-token Prediction"): head k predicts the token k steps after head 0's target.

        loss = sum_k w_k CE_k / sum_k w_k,  CE_k = mean_{b,t} -log p_k(targets[b, t + k] | x_{<=t})

    Reads `head_logits` (heads, batch, time, vocab) and `targets` (batch, time): head 0's targets
    (already the next tokens); positions t + k past the end are not scored. Each head's CE is a
    mean over its own scored tokens (`sum` reduction: sums instead). Logs `ce_head<k>` per head and
    `bits_per_token` of head 0.
    """

    name = "multi_token"
    Options = MultiTokenOptions
    reads = ("head_logits", "targets")

    def compute(self, inputs):
        o = self.options
        logits, targets = inputs["head_logits"], inputs["targets"]
        if logits.dim() != 4 or targets.dim() != 2 or logits.shape[1:3] != targets.shape:
            raise self.fail(f"expected head_logits (heads, batch, time, vocab) and targets (batch, time), got "
                            f"{tuple(logits.shape)} and {tuple(targets.shape)}")
        heads, time = logits.shape[0], logits.shape[2]
        weights = o.head_weights or [1.0] * heads
        if len(weights) != heads:
            raise self.fail(f"head_weights has {len(weights)} entries for {heads} heads")
        terms, metrics = [], {}
        for k in range(heads):
            total, n, _, nll = token_ce(self, logits[k, :, :time - k], targets[:, k:], o.ignore_index)
            terms.append(weights[k] * self.reduce(total, n))
            metrics[f"ce_head{k}"] = nll / max(n, 1)
        metrics["bits_per_token"] = metrics["ce_head0"] / LN2
        return torch.stack(terms).sum() / sum(weights), metrics


class BinaryCEOptions(LossOptions):
    pos_weight: Annotated[float, Field(gt=0.0)] = 1.0


@register
class BinaryCE(Loss):
    """Binary cross-entropy on logits, mean over elements:

        loss = -(w * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x))),  w = pos_weight

    Reads `logits` and `targets` (same shape, float in [0, 1]; soft targets allowed). Logs
    `accuracy` (x > 0 against y > 0.5).
    """

    name = "binary_ce"
    Options = BinaryCEOptions
    reads = ("logits", "targets")

    def compute(self, inputs):
        x, y = as_float(inputs["logits"]), inputs["targets"]
        if x.shape != y.shape or not y.dtype.is_floating_point:
            raise self.fail(f"expected float targets shaped like logits {tuple(x.shape)}, "
                            f"got {y.dtype} {tuple(y.shape)}")
        if bool(((y < 0) | (y > 1)).any()):
            raise self.fail("targets must lie in [0, 1]")
        y = y.to(x.dtype)
        # log sigmoid(x) and log(1 - sigmoid(x)) = log sigmoid(-x), both stable for large |x|.
        per = -(self.options.pos_weight * y * torch.nn.functional.logsigmoid(x)
                + (1 - y) * torch.nn.functional.logsigmoid(-x))
        acc = ((x > 0) == (y > 0.5)).float().mean() if x.numel() else x.new_zeros(())
        return self.reduce(per.sum(), per.numel()), {"accuracy": acc}
