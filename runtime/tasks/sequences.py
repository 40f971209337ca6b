"""Sequence tasks for attention stacks: `set_average`, for the transformer encoder (x f32[N, T,
d_model] in, y of the same shape out).

Why it needs attention: every position's target is the normalised mean of the whole sequence, a
function of all T inputs, while a position-wise network (an MLP applied to each x[t] alone) sees
one of them. Its best guess from x[t] is E[target | x[t]], which leaves a mean squared error of
about 1 - 1/T per element (x[t] is one of T independent summands of the mean); self-attention with
uniform weights computes the mean exactly, so a model that attends can drive the error to 0.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import Slot, Task, TaskOptions, register

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default


class SetAverageOptions(TaskOptions):
    d_model: int = Field(512, ge=1, le=4096)  # the transformer spec's width (base: 512)
    seq_len: int = Field(16, ge=1, le=4096)
    # Standardise each target over its d_model features, as the post-norm encoder's last
    # LayerNorm does to its output; false: the plain mean, scaled by sqrt(seq_len) to unit variance.
    normalise: bool = True


@register("set_average")
class SetAverage(Task):
    """`x` f32[N, seq_len, d_model] of independent standard normals; `targets` of the same shape,
    every position holding the mean of x over the sequence, standardised over its features (mean 0,
    variance 1, LayerNorm without affine) or scaled by sqrt(seq_len). The target is the same at every
    position and unchanged by permuting the sequence: a set function. Fresh examples every step."""

    Options = SetAverageOptions
    metric = "mean_squared_error"
    metric_doc = ("mean over every element of (y - targets)^2 on the validation batches; 1.0 is predicting 0, "
                  "about 1 - 1/seq_len the best a position-wise network can do")

    def feeds(self):
        o = self.options
        return {"x": Slot("float32", ("N", o.seq_len, o.d_model))}

    def reads(self):
        o = self.options
        return {"targets": Slot("float32", ("N", o.seq_len, o.d_model))}

    def make(self, rng, b):
        o = self.options
        x = rng.standard_normal((b, o.seq_len, o.d_model))
        m = x.mean(axis=1, keepdims=True)  # f64: the targets are computed exactly, then rounded once
        if o.normalise:
            m = (m - m.mean(axis=2, keepdims=True)) / np.sqrt(m.var(axis=2, keepdims=True) + LAYER_NORM_EPS)
        else:
            m = m * np.sqrt(o.seq_len)
        targets = np.broadcast_to(m, x.shape)
        return {"x": x.astype(np.float32), "targets": np.ascontiguousarray(targets, dtype=np.float32)}
