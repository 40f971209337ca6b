"""Variational losses: the VAE evidence lower bound, and the description length of noisy weights.

Both pay for a diagonal Gaussian posterior N(mu, exp(logvar)) against a Gaussian prior with
`gaussian_kl`, elementwise:
    KL(N(mu, s^2) || N(0, p^2)) = log(p / s) + (s^2 + mu^2) / (2 p^2) - 1/2
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field

from .base import Loss, LossOptions, as_float, register
from .classification import token_ce


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, prior_std: float = 1.0) -> torch.Tensor:
    """Elementwise KL(N(mu, exp(logvar)) || N(0, prior_std^2)) in nats."""
    log_p = math.log(prior_std)
    return log_p - 0.5 * logvar + (logvar.exp() + mu.square()) / (2.0 * prior_std ** 2) - 0.5


class ELBOOptions(LossOptions):
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    beta: Annotated[float, Field(ge=0.0)] = 1.0  # beta-VAE (Higgins et al. 2017); 1 is the ELBO
    free_bits: Annotated[float, Field(ge=0.0)] = 0.0  # nats per latent dimension


@register
class ELBO(Loss):
    """Negative evidence lower bound of a VAE (Kingma & Welling 2014, "Auto-Encoding Variational
    Bayes"), with free bits (Kingma et al. 2016, "Improved Variational Inference with Inverse
    Autoregressive Flow"):

        loss = E_b[recon_b] + beta * sum_j max(free_bits, E_b[KL_bj])
        recon_b = -log p(inputs_b | reconstruction_b), summed over data dimensions
        KL_bj = 0.5 * (mu_bj^2 + exp(logvar_bj) - 1 - logvar_bj)

    The clamp is per latent dimension on its batch-mean KL, so a dimension the model leaves unused
    costs free_bits nats and gets no gradient pushing it to the prior. `bernoulli`: reconstruction
    is logits and inputs are in [0, 1]; `gaussian`: reconstruction is the mean of a unit-variance
    Gaussian (recon = 0.5 * (x - r)^2 + 0.5 * log 2 pi per dimension). Reads `reconstruction`,
    `inputs` (batch, ...), `mu`, `logvar` (batch, latent). `sum` reduction multiplies by the batch
    size. Logs `recon`, `kl` (unclamped, batch mean) and `elbo` = -(recon + kl).

    A learned prior (the autoregressive-flow prior of Chen et al. 2017, "Variational Lossy
    Autoencoder"): given `z`, the posterior sample, and `prior_noise`, u = f(z) of a volume-preserving
    flow f (mean-only autoregressive steps, log-determinant 0) with p(z) = N(u; 0, I), the KL is its
    one-sample estimate log q(z|x) - log p(z), per dimension
        KL_bj = 0.5 * (u_bj^2 - (z_bj - mu_bj)^2 / exp(logvar_bj) - logvar_bj).
    """

    name = "elbo"
    Options = ELBOOptions
    reads = ("reconstruction", "inputs", "mu", "logvar")
    optional = ("z", "prior_noise")

    def compute(self, inputs):
        o = self.options
        r, x = as_float(inputs["reconstruction"]), inputs["inputs"]
        mu, logvar = as_float(inputs["mu"]), as_float(inputs["logvar"])
        if r.shape != x.shape or r.dim() < 1 or not x.dtype.is_floating_point:
            raise self.fail(f"expected float inputs shaped like reconstruction {tuple(r.shape)}, "
                            f"got {x.dtype} {tuple(x.shape)}")
        if mu.shape != logvar.shape or mu.dim() != 2 or mu.shape[0] != r.shape[0]:
            raise self.fail(f"expected mu and logvar (batch, latent) with batch {r.shape[0]}, got "
                            f"{tuple(mu.shape)} and {tuple(logvar.shape)}")
        x = x.to(r.dtype)
        batch = r.shape[0]
        if o.likelihood == "bernoulli":
            if bool(((x < 0) | (x > 1)).any()):
                raise self.fail("bernoulli likelihood needs inputs in [0, 1]")
            per = -(x * torch.nn.functional.logsigmoid(r) + (1 - x) * torch.nn.functional.logsigmoid(-r))
        else:
            per = 0.5 * (x - r).square() + 0.5 * math.log(2 * math.pi)
        recon = per.reshape(batch, -1).sum(1).sum() / max(batch, 1)
        if "prior_noise" in inputs:
            if "z" not in inputs:
                raise self.fail("a flow prior's `prior_noise` needs the posterior sample `z` too")
            z, u = as_float(inputs["z"]), as_float(inputs["prior_noise"])
            if z.shape != mu.shape or u.shape != mu.shape:
                raise self.fail(f"expected z and prior_noise shaped like mu {tuple(mu.shape)}, got "
                                f"{tuple(z.shape)} and {tuple(u.shape)}")
            per_kl = 0.5 * (u.square() - (z - mu).square() * torch.exp(-logvar) - logvar)
        else:
            per_kl = gaussian_kl(mu, logvar)
        kl_dim = per_kl.sum(0) / max(batch, 1)  # (latent,) batch-mean KL per dimension
        kl = kl_dim.sum()
        paid = torch.clamp(kl_dim, min=o.free_bits).sum() if o.free_bits else kl
        loss = recon + o.beta * paid
        if o.reduction == "sum":
            loss = loss * batch
        return loss, {"recon": recon, "kl": kl, "elbo": -(recon + kl)}


class DescriptionLengthOptions(LossOptions):
    prior_std: Annotated[float, Field(gt=0.0)] = 1.0
    dataset_size: Annotated[int, Field(ge=1)] = 1  # the weight cost is paid once per dataset
    data: Literal["cross_entropy", "mse"] = "cross_entropy"
    ignore_index: int = -100


@register
class DescriptionLength(Loss):
    """Description length of a network with noisy weights (Hinton & van Camp 1993, "Keeping Neural
    Networks Simple by Minimizing the Description Length of the Weights"; Graves 2011, "Practical
    Variational Inference for Neural Networks"), per training example:

        loss = data_cost + KL(N(weight_mean, exp(2 weight_log_std)) || N(0, prior_std^2)) / dataset_size

    data_cost is the mean misfit of outputs computed with sampled weights: cross-entropy of
    `logits` against integer `targets`, or (`data: mse`) 0.5 * squared error of `logits` (the
    network outputs) against float `targets`. `sum` reduction: the mean times the count. Reads
    `logits`, `targets`, `weight_mean` and `weight_log_std` (the noisy weights flattened into one
    vector each, same shape). Logs `data`, `weights` (KL in nats, whole net)
    and `bits` (the total description length of the dataset in bits).
    """

    name = "description_length"
    Options = DescriptionLengthOptions
    reads = ("logits", "targets", "weight_mean", "weight_log_std")

    def compute(self, inputs):
        o = self.options
        logits, targets = as_float(inputs["logits"]), inputs["targets"]
        wm, wls = as_float(inputs["weight_mean"]), as_float(inputs["weight_log_std"])
        if wm.shape != wls.shape:
            raise self.fail(f"weight_mean {tuple(wm.shape)} and weight_log_std {tuple(wls.shape)} differ in shape")
        if o.data == "cross_entropy":
            total, n, _, _ = token_ce(self, logits, targets, o.ignore_index)
        else:
            if logits.shape != targets.shape or not targets.dtype.is_floating_point:
                raise self.fail(f"mse data cost needs float targets shaped like logits {tuple(logits.shape)}")
            sq = 0.5 * (logits - targets.to(logits.dtype)).square()
            total, n = sq.sum(), sq.numel()
        data = total / max(n, 1)
        weights = gaussian_kl(wm, 2.0 * wls, o.prior_std).sum()
        loss = data + weights / o.dataset_size
        if o.reduction == "sum":
            loss = total + weights / o.dataset_size * max(n, 1)
        bits = (data * o.dataset_size + weights) / math.log(2.0)
        return loss, {"data": data, "weights": weights, "bits": bits}
