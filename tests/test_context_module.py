"""The context module of Yu & Koltun 2016 (specs/context_module.yaml): parameter counts from the
paper's Table 1 in closed form, the identity initialisation of section 3 (the `group_identity`
initialiser, numpy and torch forms), and the signature: one output pixel sees exactly a 67 x 67
window of the input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.compiler.errors import NnspecError
from nnspec.compiler.init import InitError, parse_init
from nnspec.targets.initialise import draw, initial_weights, stream
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

DILATIONS = [1, 1, 2, 4, 8, 16, 1]
LARGE = [2, 2, 4, 8, 16, 32, 32]  # Table 1: output channels of layers 1-7 in multiples of C


def basic_params(C: int) -> int:
    """Layers 1-7: 3x3 convolutions C -> C, 9C^2 weights and C biases each (63C^2 + 7C);
    layer 8: a 1x1 convolution C -> C, C^2 + C. Together 64C^2 + 8C."""
    return 64 * C * C + 8 * C


def large_params(C: int) -> int:
    """Widths c_0 = C (the input), c_1..c_7 = (2, 2, 4, 8, 16, 32, 32)C, c_8 = C. Layer i (1-7) has
    9 c_{i-1} c_i weights and c_i biases, layer 8 c_7 c_8 + c_8:
        weights 9C^2 (1*2 + 2*2 + 2*4 + 4*8 + 8*16 + 16*32 + 32*32) + 32C^2 = 9 * 1710 C^2 + 32C^2
              = 15422 C^2,
        biases  (2 + 2 + 4 + 8 + 16 + 32 + 32 + 1) C = 97C."""
    w = [1] + LARGE + [1]
    weights = 9 * sum(a * b for a, b in zip(w[:7], w[1:8])) * C * C + w[7] * w[8] * C * C
    assert weights == 15422 * C * C  # the expansion above, term by term
    return weights + sum(w[1:]) * C


@pytest.mark.parametrize("preset, C, count", [("basic", 21, basic_params), ("large", 21, large_params),
                                              ("basic", 5, basic_params), ("large", 3, large_params)])
def test_parameter_count_is_the_closed_form(preset, C, count):
    p = c.load("context_module", preset, {"classes": C})
    assert cost_report(p).params == count(C)
    convs = [n for n in p.forward.nodes() if n.op == "conv2d"]
    assert [n.attrs.dilation for n in convs] == DILATIONS + [1]
    assert [n.attrs.padding for n in convs] == DILATIONS + [0]  # padded by the dilation: size kept


def test_basic_counts_at_21_classes():
    assert cost_report(c.load("context_module", "basic")).params == basic_params(21) == 28_392
    assert cost_report(c.load("context_module", "large")).params == large_params(21) == 6_803_139


# -- the initialisation (section 3) ---------------------------------------------------------------
def _paper_kernel(c_out, c_in, k, C):
    """The paper's k^b(t, a) without the noise: C / c_out at t = 0 where
    floor(a C / c_in) == floor(b C / c_out), else 0 (written out loop by loop)."""
    w = np.zeros((c_out, c_in, k, k))
    for b in range(c_out):
        for a in range(c_in):
            if math.floor(a * C / c_in) == math.floor(b * C / c_out):
                w[b, a, k // 2, k // 2] = C / c_out
    return w


@pytest.mark.parametrize("c_out, c_in, k, C", [(42, 21, 3, 21), (21, 672, 1, 21), (7, 5, 3, 3), (4, 4, 3, 4)])
def test_group_identity_is_the_papers_kernel(c_out, c_in, k, C):
    init = parse_init({"group_identity": {"groups": C, "std": 0.0}})
    got = draw(init, (c_out, c_in, k, k), "float32", stream(0, "w"))
    assert np.array_equal(got, _paper_kernel(c_out, c_in, k, C).astype(np.float32))
    if c_out == c_in == C:  # the basic module: exactly the Dirac `identity` initialiser
        ident = draw(parse_init("identity"), (c_out, c_in, k, k), "float32", stream(0, "w"))
        assert np.array_equal(got, ident)


def test_group_identity_noise_is_n0_sigma_off_the_identity():
    init = parse_init({"group_identity": {"groups": 21, "std": 0.01}})
    got = draw(init, (84, 42, 3, 3), "float64", stream(0, "w"))
    mask = _paper_kernel(84, 42, 3, 21) != 0
    assert np.all(got[mask] == 21 / 84)
    assert abs(got[~mask].std() - 0.01) < 0.0005 and abs(got[~mask].mean()) < 0.0005


def test_group_identity_arguments_are_checked():
    for bad in ({"groups": 0}, {"groups": 2.5}, {"std": -1.0}):
        with pytest.raises(InitError):
            parse_init({"group_identity": bad})


@pytest.mark.parametrize("preset", ["basic", "large"])
def test_generated_torch_init_draws_what_numpy_draws(preset):
    """The generated module's own __init__ (the `group_identity_` helper in model.py) and the
    numpy draw agree: the same identity entries exactly, noise of the same spread elsewhere."""
    p = c.load("context_module", preset)
    torch.manual_seed(0)
    theirs = {k: v.double().numpy() for k, v in build_module(p, seed=None).state_dict().items()}
    ours = initial_weights(p, seed=0)
    std = 0.0 if preset == "basic" else 1e-4
    for key, arr in ours.items():
        ref = theirs[key]
        assert arr.shape == ref.shape, key
        if key.endswith("bias"):
            assert not arr.any() and not ref.any(), key
            continue
        c_out, c_in, k = arr.shape[0], arr.shape[1], arr.shape[2]
        mask = _paper_kernel(c_out, c_in, k, 21) != 0
        assert np.array_equal(arr[mask], ref[mask].astype(arr.dtype)), key
        if std == 0:
            assert not arr[~mask].any() and not ref[~mask].any(), key
        elif (~mask).sum() > 10_000:
            assert abs(arr[~mask].std() - std) < 0.05 * std and abs(ref[~mask].std() - std) < 0.05 * std, key


def _run(p, x, seed=0):
    m = build_module(p, seed=seed).eval()
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def test_basic_module_starts_as_the_identity():
    """Non-negative scores (what the ReLUs pass) come out unchanged: every layer copies channel a to
    channel a at the kernel centre, biases are zero."""
    x = np.random.default_rng(0).random((2, 21, 24, 20), dtype=np.float32)
    y = _run(c.load("context_module", "basic"), x)
    assert np.abs(y - x).max() < 1e-6
    assert np.abs(_run(c.load("context_module", "basic"), -x)).max() == 0.0  # and negatives truncate


def test_large_module_starts_close_to_the_identity():
    """Without noise the large module is the identity too: layer i holds C / c_i times each class
    map in each of its c_i / C copies, and the final 1x1 sums 32 copies of x / 32 back to x.

    With noise sigma the deviation is bounded from sigma. Layer i+1's noise on one output is a sum
    of 9 c_i products eps * h with h = (C / c_i) x, variance 9 sigma^2 C^2 / c_i E[x^2], against a
    signal (C / c_{i+1}) x: a relative variance 9 sigma^2 c_{i+1}^2 / c_i (c_i for the 1x1). Later
    layers average each group, which only shrinks it, so the relative RMS error of the output is at
    most sqrt(sum over layers) = 172.8 sigma at C = 21 (1.7% at the spec's sigma = 1e-4); the test
    allows 200 sigma and asks for some deviation (the noise is really there)."""
    x = np.random.default_rng(1).random((1, 21, 20, 20), dtype=np.float32)
    exact = _run(c.load("context_module", "large", {"init_std": 0.0}), x)
    assert np.abs(exact - x).max() < 1e-5
    sigma = 1e-4
    widths = [21] + [21 * w for w in LARGE] + [21]
    bound = math.sqrt(sum((9 if i < 7 else 1) * widths[i + 1] ** 2 / widths[i] for i in range(8))) * sigma
    assert 0.0172 < bound < 0.0173
    y = _run(c.load("context_module", "large"), x)
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2))
    assert 1e-4 * bound < rel < 200 * sigma, rel


# -- the signature: a 67 x 67 receptive field ----------------------------------------------------
def _support(p, size: int, seed: int = 0):
    """Where the gradient of output pixel (size // 2, size // 2), summed over classes, w.r.t. the
    input is non-zero, over every input channel. Weights are random positive (U(0.5, 1.5) / fan_in)
    and the input positive, so every ReLU passes and no path through the window cancels: the
    support is exactly the set of input pixels the output pixel depends on."""
    m = build_module(p, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in m.named_parameters():
            fan_in = math.prod(t.shape[1:]) if t.dim() > 1 else 1
            t.copy_((0.5 + torch.rand(t.shape, generator=g, dtype=t.dtype)) / fan_in)
    x = (0.5 + torch.rand(1, m.final.out_channels, size, size, generator=g)).requires_grad_()
    m(x)[0, :, size // 2, size // 2].sum().backward()
    return (x.grad[0].abs().sum(0) != 0).numpy()


@pytest.mark.parametrize("preset, classes", [("basic", 21), ("large", 4)])
def test_signature_receptive_field_67(preset, classes):
    """Receptive fields 3, 5, 9, 17, 33, 65, 67 (Table 1): the last layer's pixel sees 67 x 67.
    (The large module at C = 4: its widths are multiples of C, the receptive field is not.)"""
    size = 81
    nz = _support(c.load("context_module", preset, {"classes": classes}), size)
    rows, cols = np.nonzero(nz)
    assert nz.sum() == 67 * 67
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (40 - 33, 40 + 33, 40 - 33, 40 + 33)


def test_receptive_field_follows_the_dilations():
    """The same measurement tracks the dilations: with layer 6 dilated by 1 instead of 16, the
    field is 67 - 2 * 15 = 37 wide."""
    p = c.load("context_module", "basic", {"classes": 3, "dilations": [1, 1, 2, 4, 8, 1, 1]})
    nz = _support(p, 61)
    rows, cols = np.nonzero(nz)
    assert nz.sum() == 37 * 37 and rows.max() - rows.min() == 36 and cols.max() - cols.min() == 36


def test_bad_initialiser_argument_in_a_spec_is_an_error(tmp_path):
    spec = (c.load("context_module").spec.file)
    text = open(spec).read().replace('std: "${init_std}"', 'std: -1.0', 1)
    bad = tmp_path / "context_module.yaml"
    bad.write_text(text)
    with pytest.raises(NnspecError):
        c.load(str(bad))
