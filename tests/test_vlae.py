"""vlae (Chen et al. 2017, "Variational Lossy Autoencoder"): the masked convolution and MADE ops, the
spec's parameter count from closed forms, a hand-written torch VLAE with the same weights, and the
signature (the PixelCNN decoder leaves the code less to carry than a factorised one)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nnspec.compiler as nc
from nnspec.compiler.cost import cost_report
from nnspec.targets.onnx.runner import parity
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

SPEC = "vlae"


# -- closed forms ---------------------------------------------------------------------------------
def made_params(d: int, h: int) -> int:
    """A MADE d -> h -> h -> d: three dense layers with biases; the masks zero weights but remove
    none (each mask is a constant multiplied in, the weight matrix keeps its full shape)."""
    return (d * h + h) + (h * h + h) + (h * d + d)


def af_prior_params(d: int = 64, h: int = 640, steps: int = 4) -> int:
    """The AF prior: `steps` mean-only flow steps, one MADE each (a mean-only step has no scale net)."""
    return steps * made_params(d, h)


def conv_params(cin: int, cout: int, k: int) -> int:
    return cout * cin * k * k + cout


def vlae_params(p: dict) -> int:
    """The whole spec from its sizes: encoder (two convolutions, the second to a 4x4 grid of 64, and
    the mu / logvar heads on its 1024 features), the AF prior, the decoder (the code to a
    channels x 8 x 8 map, the type A layer on the image for the PixelCNN, a 3x3 layer, a 1x1 to one logit)."""
    d, c, k, s = p["latent"], p["channels"], p["kernel"], p["size"]
    enc = conv_params(1, 32, 3) + conv_params(32, 64, 3)
    feat = 64 * ((s + 1) // 2) ** 2
    heads = 2 * (feat * d + d)
    dec = (d * c * s * s + c * s * s) + conv_params(c, c, k) + conv_params(c, 1, 1)
    if p["decoder"] == "pixelcnn":
        dec += conv_params(1, c, k)
    return enc + heads + af_prior_params(d, p["made_hidden"], p["flow_steps"]) + dec


def test_af_prior_is_1971456():
    assert af_prior_params() == 1_971_456
    program = nc.load(SPEC)
    prior = sum(int(np.prod(v.shape)) for k, v in build_module(program).state_dict().items() if k.startswith("prior."))
    assert prior == af_prior_params(program.spec.params["latent"], program.spec.params["made_hidden"],
                                    program.spec.params["flow_steps"])


@pytest.mark.parametrize("preset", ["vlae", "factorised"])
def test_param_count_from_closed_form(preset):
    program = nc.load(SPEC, preset)
    module = build_module(program)
    assert cost_report(program).params == vlae_params(program.spec.params)
    assert sum(p.numel() for p in module.parameters()) == vlae_params(program.spec.params)
    assert not any("mask" in k for k in module.state_dict())  # the masks are constants, not state


# -- the ops ----------------------------------------------------------------------------------------
def _single(node: dict, inputs: dict, spec_from_nodes):
    program = spec_from_nodes(inputs, {"n": node}, {"out": "n"})
    return program, build_module(program, seed=0)


@pytest.mark.parametrize("mask", ["A", "B"])
def test_masked_conv2d_sees_only_earlier_pixels(mask, spec_from_nodes):
    """d out[p] / d x[q] is zero for every q after p in raster order, and for q = p itself with type
    A; with B, q = p matters. Two stacked layers (A then B) keep the property."""
    _, m = _single({"op": "masked_conv2d", "in": "x", "out": 4, "kernel": 3, "padding": 1, "mask": mask},
                   {"x": ["N", 2, 5, 6]}, spec_from_nodes)
    x = torch.randn(1, 2, 5, 6, requires_grad=True)
    H, W = 5, 6
    for p in range(H * W):
        r, c = divmod(p, W)
        (g,) = torch.autograd.grad(m(x)[0, :, r, c].sum(), x)
        dep = g.abs().sum(1)[0].flatten()  # [H*W]
        assert torch.all(dep[p + 1:] == 0), (mask, p)
        if mask == "A":
            assert dep[p] == 0
        else:
            assert dep[p] > 0
        if p > 0:
            assert dep[:p].sum() > 0 or c == 0 and r == 0


def test_masked_conv2d_onnx_and_torch_equal_a_masked_nn_conv(spec_from_nodes):
    program, m = _single({"op": "masked_conv2d", "in": "x", "out": 3, "kernel": 5, "padding": 2, "mask": "A"},
                         {"x": ["N", 2, 6, 6]}, spec_from_nodes)
    x = torch.randn(2, 2, 6, 6)
    mask = torch.ones(5, 5)
    mask[2, 2:] = 0
    mask[3:] = 0
    ref = F.conv2d(x, m.n.weight * mask, m.n.bias, padding=2)
    torch.testing.assert_close(m(x), ref, atol=1e-6, rtol=0)
    for dims in ({"N": 1}, {"N": 3}):
        errs = parity(program, dims, module=m)
        assert max(errs.values()) <= 1e-4, errs


def test_masked_linear_is_autoregressive(spec_from_nodes):
    """A MADE of masked_linear layers: output k depends on inputs before k in the order only (and
    reversed with `reverse`)."""
    for reverse in (False, True):
        nodes = {
            "a": {"op": "masked_linear", "in": "z", "out": 12, "order": 5, "data_in": True, "reverse": reverse},
            "r": {"op": "relu"},
            "b": {"op": "masked_linear", "out": 12, "order": 5},
            "r2": {"op": "relu"},
            "n": {"op": "masked_linear", "out": 5, "order": 5, "data_out": True, "reverse": reverse},
        }
        program = spec_from_nodes({"z": ["N", 5]}, nodes, {"out": "n"})
        m = build_module(program, seed=1)
        z = torch.randn(1, 5)
        J = torch.autograd.functional.jacobian(lambda v: m(v)[0], z)[:, 0]  # [out 5, in 5]
        order = list(range(5))[::-1] if reverse else list(range(5))  # position of each unit in the order
        rank = {u: i for i, u in enumerate(order)}
        for k in range(5):
            for j in range(5):
                if rank[j] >= rank[k]:
                    assert J[k, j] == 0, (reverse, k, j)
        assert (J != 0).sum() > 0
        for dims in ({"N": 1}, {"N": 3}):
            assert max(parity(program, dims, module=m).values()) <= 1e-4


# -- a hand-written VLAE --------------------------------------------------------------------------
def pixel_mask(k: int, kind: str) -> torch.Tensor:
    mask = torch.ones(k, k)
    mask[k // 2, k // 2 + (kind == "B"):] = 0
    mask[k // 2 + 1:] = 0
    return mask


def made_masks(d: int, h: int, reverse: bool) -> list[torch.Tensor]:
    """Germain et al.'s masks with data degrees 1..d (d..1 reversed) and hidden degrees j % (d-1) + 1."""
    data = torch.arange(d, 0, -1) if reverse else torch.arange(1, d + 1)
    hidden = torch.arange(h) % (d - 1) + 1
    return [(hidden[:, None] >= data[None]).float(), (hidden[:, None] >= hidden[None]).float(),
            (data[:, None] > hidden[None]).float()]


class MADE(nn.Module):
    def __init__(self, d, h, reverse):
        super().__init__()
        self.made1, self.made2, self.shift = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, d)
        self.masks = made_masks(d, h, reverse)

    def forward(self, z):
        a = F.relu(F.linear(z, self.made1.weight * self.masks[0], self.made1.bias))
        a = F.relu(F.linear(a, self.made2.weight * self.masks[1], self.made2.bias))
        return z - F.linear(a, self.shift.weight * self.masks[2], self.shift.bias)


class VLAE(nn.Module):
    def __init__(self, d=64, h=640, steps=4, c=64, k=3, size=8):
        super().__init__()
        self.c, self.k, self.size = c, k, size
        self.enc1, self.enc2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, stride=2, padding=1)
        feat = 64 * ((size + 1) // 2) ** 2
        self.mu, self.logvar = nn.Linear(feat, d), nn.Linear(feat, d)
        self.prior = nn.ModuleList(MADE(d, h, i % 2 == 1) for i in range(steps))
        self.dec_z = nn.Linear(d, c * size * size)
        self.pix_a, self.pix_b = nn.Conv2d(1, c, k, padding=k // 2), nn.Conv2d(c, c, k, padding=k // 2)
        self.logits = nn.Conv2d(c, 1, 1)

    def forward(self, image):
        e = F.relu(self.enc2(F.relu(self.enc1(image)))).flatten(1)
        mu, logvar = self.mu(e), self.logvar(e)
        z = mu  # eval: the posterior mean
        u = z
        for step in self.prior:
            u = step(u)
        h = self.dec_z(z).reshape(-1, self.c, self.size, self.size)
        h = h + F.conv2d(image, self.pix_a.weight * pixel_mask(self.k, "A"), self.pix_a.bias, padding=self.k // 2)
        h = F.conv2d(F.relu(h), self.pix_b.weight * pixel_mask(self.k, "B"), self.pix_b.bias, padding=self.k // 2)
        return self.logits(F.relu(h)), mu, logvar, z, u


def test_matches_hand_written_vlae():
    program = nc.load(SPEC)
    ours = build_module(program, seed=0).eval()
    ref = VLAE().eval()
    assert sum(p.numel() for p in ref.parameters()) == vlae_params(program.spec.params)
    ref.load_state_dict(ours.state_dict())  # the same names, strict
    x = (torch.rand(3, 1, 8, 8) > 0.5).float()
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_elbo_flow_prior_kl_is_the_sampled_gaussian_kl():
    """With an identity flow (prior_noise = z) the loss's one-sample KL averages to the closed-form
    KL(q || N(0, I)) of the plain ELBO; with a shifted flow u = z - 1 it is the KL against N(1, I)."""
    from nnspec.runtime.losses.variational import ELBO
    torch.manual_seed(0)
    mu, logvar = torch.randn(4000, 3), torch.randn(4000, 3) * 0.5
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    x = torch.zeros(4000, 2)
    loss = ELBO(likelihood="bernoulli")
    base = {"reconstruction": torch.zeros(4000, 2), "inputs": x, "mu": mu, "logvar": logvar}
    _, exact = loss(base)
    _, sampled = loss({**base, "z": z, "prior_noise": z})
    assert abs(float(sampled["kl"]) - float(exact["kl"])) < 0.05 * float(exact["kl"])
    _, shifted = loss({**base, "z": z, "prior_noise": z - 1.0})
    want = float((0.5 * ((mu - 1).square() + logvar.exp() - 1 - logvar)).sum(1).mean())
    assert abs(float(shifted["kl"]) - want) < 0.05 * want
    with pytest.raises(Exception, match="needs the posterior sample"):
        loss({**base, "prior_noise": z})


# -- signature ------------------------------------------------------------------------------------
def _train(tmp_path, preset, steps, extra=()):
    from nnspec.runtime.cli import main as nnspec
    out = tmp_path / preset
    args = ["train", SPEC, "--preset", preset, "--steps", str(steps), "--out", str(out), "--threads", "1",
            "--no-progress", *extra]
    assert nnspec(args) == 0
    return out


def _load(run_dir, preset, sets):
    """The trained module (weights of the run's last checkpoint)."""
    from safetensors.torch import load_file
    from nnspec.compiler.spec.load import parse_overrides
    program = nc.load(SPEC, preset, parse_overrides(list(sets)))
    module = build_module(program, seed=0)
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    weights = [p for p in last.iterdir() if p.suffix == ".safetensors" and "optim" not in p.name]
    module.load_state_dict(load_file(str(weights[0])))
    return module


def elbo_terms(module, images: torch.Tensor, samples: int = 8) -> tuple[float, float]:
    """(ELBO, KL) per image, nats, averaged over `samples` posterior samples (train mode: sampled z)."""
    from nnspec.runtime.losses.variational import ELBO
    loss = ELBO(likelihood="bernoulli")
    module.train()
    elbo = kl = 0.0
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(samples):
            r, mu, logvar, z, u = module(images)
            _, m = loss({"reconstruction": r, "inputs": images, "mu": mu, "logvar": logvar, "z": z, "prior_noise": u})
            elbo += float(m["elbo"]) / samples
            kl += float(m["kl"]) / samples
    return elbo, kl


def validation_images(size: int = 8) -> torch.Tensor:
    from nnspec.runtime.tasks.base import make_task
    task = make_task("digits", {"image_size": size, "channels": 1, "binarise": True})
    return torch.from_numpy(np.concatenate([b["image"] for b in task.eval_batches(512)]))


SMALL = ("channels=16", "made_hidden=128")  # the default suite's variant: a smaller decoder and MADE


def signature(tmp_path, steps: int, sets=SMALL):
    """(ELBO, KL) on the validation digits of the VLAE and of the factorised-decoder VAE, trained alike."""
    extra = [a for s in sets for a in ("--set", s)]
    result = {}
    for preset in ("vlae", "factorised"):
        run = _train(tmp_path, preset, steps, extra)
        module = _load(run, preset, sets)
        result[preset] = elbo_terms(module, validation_images())
    return result


@pytest.mark.slow
def test_signature_lossy_code(tmp_path):
    """The paper's claim: with a PixelCNN decoder of small receptive field the code carries less (lower
    KL) than with a factorised decoder, at an equal or better ELBO."""
    r = signature(tmp_path, 600)
    print("vlae (elbo, kl):", r["vlae"], "factorised (elbo, kl):", r["factorised"])
    (elbo_v, kl_v), (elbo_f, kl_f) = r["vlae"], r["factorised"]
    assert kl_v < kl_f, r
    assert elbo_v >= elbo_f - 0.5, r
