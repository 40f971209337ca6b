"""Ops that draw random numbers in training: dropout and the reparameterised gaussian sample.

Both are `train_dependent`: their inference form (ONNX, TensorRT, eval-mode torch) is
deterministic — dropout is the identity and gaussian_sample returns the mean.
"""
from __future__ import annotations

from pydantic import Field

from ..ir.dims import TensorType
from .base import Port, Attrs, Cost, NoAttrs, Op, Prob, TorchCode, expect, fmt_args, register, same_dim
from .linear import FLOAT_DTYPES


@register
class Dropout(Op):
    """Zero elements with probability p in training (scaling the rest by 1/(1-p)); identity in eval."""

    name = "dropout"
    in_ports = (Port("x"),)
    fusion = "elementwise"
    train_dependent = True

    class Attrs(Attrs):
        p: Prob = Field(0.5, description="probability of zeroing an element, in training")

    def infer(self, a, ins):
        expect(0.0 <= a.p <= 1.0, f"dropout p={a.p}", "a probability 0 <= p <= 1")
        return [ins[0]]

    def cost(self, a, ins, outs):
        # On CPU, dropout multiplies x by a scaled Bernoulli mask of x's shape and dtype and keeps the
        # mask; p=0 returns x itself, p=1 multiplies by a 0-d zero.
        x = ins[0]
        if a.p == 0:
            return Cost(views=((0, 0),))
        return Cost(saved_extra=Cost.nbytes(x.with_shape(() if a.p == 1 else x.shape)))

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"{m}({ins[0]})", init=f"nn.Dropout({fmt_args(a.p)})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Identity", [ins[0]])]


@register
class GaussianSample(Op):
    """(mu, logvar) -> mu + exp(logvar / 2) * eps with eps ~ N(0, 1) in training; mu in eval.

    The reparameterisation trick of VAEs (and of noisy-weight MDL layers): gradients flow to both
    mu and logvar through the sample.
    """

    name = "gaussian_sample"
    in_ports = (Port("mu"), Port("logvar", doc="same shape as mu"))
    arity = (2, 2)
    fusion = "elementwise"
    train_dependent = True
    Attrs = NoAttrs

    def infer(self, a, ins):
        mu, logvar = ins
        expect(mu.dtype in FLOAT_DTYPES and mu.dtype == logvar.dtype,
               f"mu and logvar have dtypes {mu.dtype} and {logvar.dtype}", "one floating-point dtype")
        expect(mu.rank == logvar.rank and all(same_dim(p, q) for p, q in zip(mu.shape, logvar.shape)),
               f"mu {mu} and logvar {logvar} differ in shape", "mu and logvar of one shape")
        return [TensorType(mu.shape, mu.dtype)]

    def cost(self, a, ins, outs):
        # mu + exp(logvar / 2) * eps keeps exp's result (its own gradient) and the noise eps
        return Cost(saved_extra=Cost.nbytes(ins[0], ins[0]))

    def to_torch(self, a, ins, m, node):
        mu, logvar = ins
        return TorchCode(expr=f"({mu} + torch.exp(0.5 * {logvar}) * torch.randn_like({mu}) if self.training else {mu})")

    def to_onnx(self, a, ins, b, node):
        return [b.op("Identity", [ins[0]])]
