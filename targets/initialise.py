"""Initial weights drawn from the IR with numpy: the same seed gives the same weights in every target.

Each parameter's initialiser is on the IR (`ParamSpec.init`, the op's reference default, replaced by
the spec's `init_defaults` and the node's `init:`); `initial_weights(program, seed)` draws every
parameter and buffer from it. Each one gets its own random stream, seeded by (seed, crc32 of its
state-dict key), so a parameter's values do not depend on how many others come before it, and
adding a layer does not reshuffle the rest. The formulas follow torch.nn.init (fans as
`_calculate_fan_in_and_fan_out` computes them). No torch import: `nnspec compile --target onnx`
needs only numpy for its weights.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from nnspec.compiler.errors import LoweringError
from nnspec.compiler.init import Init

MAX_TRUNC_ROUNDS = 64  # rejection rounds for trunc_normal (each keeps ~95% of draws at +-2 std)


def fans(shape: tuple) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight, as torch computes them: [out, in, *receptive field]."""
    if len(shape) < 2:
        raise LoweringError(f"fan-based initialisers need a weight of rank >= 2, got shape {list(shape)}",
                            expected="xavier/kaiming/orthogonal only on matrices and convolution kernels")
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _trunc_normal(rng, shape, mean, std, a, b):
    out = rng.normal(mean, std, size=shape)
    for _ in range(MAX_TRUNC_ROUNDS):
        bad = (out < a) | (out > b)
        if not bad.any():
            return out
        out[bad] = rng.normal(mean, std, size=int(bad.sum()))
    return np.clip(out, a, b)


def _identity(shape):
    out = np.zeros(shape)
    if len(shape) == 2:
        np.fill_diagonal(out, 1.0)  # nn.init.eye_
        return out
    if len(shape) < 3:
        raise LoweringError(f"identity initialiser on shape {list(shape)}", expected="a matrix or a convolution kernel")
    centre = tuple(k // 2 for k in shape[2:])  # nn.init.dirac_: a delta at each kernel's centre
    for i in range(min(shape[0], shape[1])):
        out[(i, i) + centre] = 1.0
    return out


def _group_identity(rng, shape, groups, std, f):
    """Yu & Koltun's identity across widths (compiler/init.py): N(0, std^2) everywhere, then the
    centre tap of each (out b, in a) pair in the same group set to groups / out."""
    if len(shape) < 2:
        raise LoweringError(f"group_identity initialiser on shape {list(shape)}",
                            expected="a matrix or a convolution kernel")
    out = rng.standard_normal(size=shape, dtype=f) * f(std)
    c_out, c_in, g = shape[0], shape[1], int(groups)
    same = (np.arange(c_out)[:, None] * g // c_out) == (np.arange(c_in)[None, :] * g // c_in)
    centre = tuple(k // 2 for k in shape[2:])
    out[(slice(None), slice(None)) + centre][same] = g / c_out
    return out


def _orthogonal(rng, shape, gain):
    rows, cols = shape[0], math.prod(shape[1:])
    flat = rng.normal(0.0, 1.0, size=(rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return gain * q.reshape(shape)


def draw(init: Init, shape: tuple, dtype: str, rng: np.random.Generator) -> np.ndarray:
    """An array of `shape` drawn from `init` (torch.nn.init's definitions)."""
    k = init.kwargs
    name = init.name
    # float32 parameters are drawn in float32 (twice as fast as drawing doubles and casting)
    f = np.float32 if dtype == "float32" else np.float64

    def normal(mean, std):
        return rng.standard_normal(size=shape, dtype=f) * f(std) + f(mean)

    def uniform(a, b):
        return rng.random(size=shape, dtype=f) * f(b - a) + f(a)

    if name == "zeros":
        out = np.zeros(shape)
    elif name == "ones":
        out = np.ones(shape)
    elif name == "constant":
        out = np.full(shape, k["value"])
    elif name == "normal":
        out = normal(k["mean"], k["std"])
    elif name == "uniform":
        out = uniform(k["a"], k["b"])
    elif name == "trunc_normal":
        out = _trunc_normal(rng, shape, k["mean"], k["std"], k["a"], k["b"])
    elif name == "identity":
        out = _identity(shape)
    elif name == "group_identity":
        out = _group_identity(rng, shape, k["groups"], k["std"], f)
    elif name in ("xavier_uniform", "xavier_normal"):
        fan_in, fan_out = fans(shape)
        std = k["gain"] * math.sqrt(2.0 / (fan_in + fan_out))
        out = uniform(-std * math.sqrt(3.0), std * math.sqrt(3.0)) if name == "xavier_uniform" else normal(0.0, std)
    elif name == "kaiming_normal":  # mode='fan_out', nonlinearity='relu', as torchvision's convs
        out = normal(0.0, math.sqrt(2.0) / math.sqrt(fans(shape)[1]))
    elif name == "kaiming_uniform":  # a = sqrt(5), mode='fan_in': torch's default for weights
        bound = math.sqrt(2.0 / 6.0) * math.sqrt(3.0 / fans(shape)[0])
        out = uniform(-bound, bound)
    elif name == "orthogonal":
        out = _orthogonal(rng, shape, k["gain"])
    else:
        raise LoweringError(f"no numpy form for initialiser '{name}'")
    if init.zero_row is not None:
        out[init.zero_row] = 0.0
    return np.asarray(out, dtype=np.dtype(dtype))


def stream(seed: int, key: str) -> np.random.Generator:
    """The random stream of one parameter: a function of the seed and the parameter's name only."""
    return np.random.default_rng([seed % 2**63, zlib.crc32(key.encode())])


def initial_weights(program, seed: int = 0) -> dict:
    """{state-dict key: array} of every parameter and buffer a target stores (tied ones excepted:
    they are their owner's), drawn from the IR's initialisers."""
    out = {}
    for node in program.all_nodes():
        for pname, spec in node.params.items():
            if pname in node.ties:
                continue
            init = node.init.get(pname) or spec.init
            if init is None:
                raise LoweringError(f"{node.op} '{node.id}' declares no initialiser for '{pname}'",
                                    expected="every op's params() to give each ParamSpec an init (a bug in the op)")
            key = f"{node.id}.{pname}"
            out[key] = draw(init, tuple(spec.shape), spec.dtype, stream(seed, key))
    return out
