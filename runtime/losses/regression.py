"""Regression losses: mean squared error and mean absolute error, mean over elements."""
from __future__ import annotations

import torch

from .base import Loss, as_float, register


class _Elementwise(Loss):
    reads = ("predictions", "targets")

    def _pair(self, inputs):
        x, y = as_float(inputs["predictions"]), inputs["targets"]
        if x.shape != y.shape or not y.dtype.is_floating_point:
            raise self.fail(f"expected float targets shaped like predictions {tuple(x.shape)}, "
                            f"got {y.dtype} {tuple(y.shape)}")
        return x, y.to(x.dtype)


@register
class MSE(_Elementwise):
    """Mean squared error: loss = mean (predictions - targets)^2. Logs `rmse`."""

    name = "mse"

    def compute(self, inputs):
        x, y = self._pair(inputs)
        sq = (x - y).square()
        mean = sq.sum() / max(sq.numel(), 1)
        return self.reduce(sq.sum(), sq.numel()), {"rmse": mean.sqrt()}


@register
class MAE(_Elementwise):
    """Mean absolute error: loss = mean |predictions - targets|. Logs `max_abs_error`."""

    name = "mae"

    def compute(self, inputs):
        x, y = self._pair(inputs)
        ab = (x - y).abs()
        worst = ab.max() if ab.numel() else ab.new_zeros(())
        return self.reduce(ab.sum(), ab.numel()), {"max_abs_error": worst}
