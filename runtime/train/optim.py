"""The validated optimizer and clipping settings of a `train:` section as real torch objects.

`build_optimizer(cfg, params)` returns the torch.optim optimizer the section names, with its
hyper-parameters and the section's `weight_decay` (decoupled for adamw, L2 for the others, as
torch defines them); `clip_gradients(cfg, params)` clips by global norm or by value with
torch.nn.utils' own functions, or does nothing when the section has no `clip`.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .config import SGD, Adadelta, Adam, Adamax, AdamW, RMSprop, TrainSpec


def build_optimizer(cfg: TrainSpec, params: Iterable) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over `params` (tensors or param-group dicts, as torch.optim takes)."""
    o, wd = cfg.optimizer, cfg.weight_decay
    if isinstance(o, SGD):
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, dampening=o.dampening,
                               nesterov=o.nesterov, weight_decay=wd)
    if isinstance(o, AdamW):
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, amsgrad=o.amsgrad, weight_decay=wd)
    if isinstance(o, Adam):
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps, amsgrad=o.amsgrad, weight_decay=wd)
    if isinstance(o, RMSprop):
        return torch.optim.RMSprop(params, lr=o.lr, alpha=o.alpha, eps=o.eps, momentum=o.momentum,
                                   centered=o.centered, weight_decay=wd)
    if isinstance(o, Adadelta):
        return torch.optim.Adadelta(params, lr=o.lr, rho=o.rho, eps=o.eps, weight_decay=wd)
    if isinstance(o, Adamax):
        return torch.optim.Adamax(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=wd)
    raise AssertionError(f"no torch optimizer for {type(o).__name__}")  # the union is closed


def clip_gradients(cfg: TrainSpec, params: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """Clip the gradients of `params` in place as `cfg.clip` says. Returns the total gradient norm
    before clipping when clipping by norm (worth logging), None otherwise."""
    c = cfg.clip
    if c is None:
        return None
    params = [p for p in params if p.grad is not None]
    if c.norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm=c.norm, norm_type=c.norm_type)
    torch.nn.utils.clip_grad_value_(params, clip_value=c.value)
    return None
