"""Training losses as small named units: `LOSSES[name]` is a `Loss` class with a pydantic
`Options` model, the tensor names it `reads`, and `compute` returning (scalar loss, metrics).

`make_loss({"name": "cross_entropy", "label_smoothing": 0.1})` builds one from a `train: {loss:}`
value; `check_reads(loss, names)` tells a trainer, before training, whether a spec's outputs and
its batch give the loss what it reads. Importing this package imports torch (only training code
does). The families: classification (cross_entropy, sequence_ce, pointer_ce, multi_token,
binary_ce), regression (mse, mae), ctc, variational (elbo, description_length), preference (dpo),
contrastive (in_batch_contrastive).
"""
from __future__ import annotations

from . import classification, contrastive, ctc, preference, rag, regression, variational  # noqa: F401  (they register)
from .base import LOSSES, Loss, LossError, LossOptions, check_reads, make_loss

__all__ = ["LOSSES", "Loss", "LossError", "LossOptions", "check_reads", "make_loss"]
