"""Learning-rate schedules of a `train:` section as torch LambdaLR schedulers.

Each schedule is a multiplier f(k) on the optimizer's lr, where k counts the scheduler's `step()`
calls so far (after every optimizer step, or every epoch, as the schedule's `interval` says). The
multiplier is a closure over plain numbers, so the scheduler's state_dict holds only numbers
(last_epoch, base_lrs, ...): it saves and loads with `torch.load(weights_only=True)` and a resumed
run continues the same sequence.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .config import Constant, Cosine, Exponential, InverseSqrt, Schedule, StepDecay, TrainSpec


def multiplier(schedule: Schedule, base_lr: float) -> Callable[[int], float]:
    """f(k): the factor on `base_lr` after k scheduler steps."""
    s = schedule
    if isinstance(s, Constant):
        return lambda k: 1.0
    if isinstance(s, StepDecay):
        gamma, size, after = s.gamma, s.step_size, s.after
        return lambda k: gamma ** (max(0, k - after) // size)
    if isinstance(s, Exponential):
        gamma = s.gamma
        return lambda k: gamma ** k
    if isinstance(s, InverseSqrt):
        c, w = s.factor, s.warmup

        def inverse_sqrt(k: int) -> float:
            step = k + 1  # the paper counts steps from 1: the first update already warms up
            return c * min(step ** -0.5, step * w ** -1.5)
        return inverse_sqrt
    if isinstance(s, Cosine):
        total, warmup, floor = s.total, s.warmup, s.min_lr / base_lr

        def cosine(k: int) -> float:
            if k < warmup:
                return (k + 1) / warmup
            if k >= total:
                return floor
            t = (k - warmup) / (total - warmup)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
        return cosine
    raise AssertionError(f"no multiplier for {type(s).__name__}")  # the union is closed


def build_schedule(cfg: TrainSpec, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over every param group of `optimizer`, following `cfg.schedule`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier(cfg.schedule, cfg.optimizer.lr))
