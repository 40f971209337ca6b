"""Parameter initialisation: the vocabulary of `init:`, each op's reference defaults, and the
spec's `init_defaults`, all checked at load time and recorded on the IR.

    init: {weight: identity, bias: zeros}
    init: {weight: {normal: {std: 0.02}}}

An initialiser is a name, or a one-entry mapping from a name to its arguments. Arguments are
numbers (never text: they reach generated code only as numbers), from each initialiser's own list;
missing ones take the defaults below. Targets render a parsed `Init`; nothing else about
initialisers lives outside this module.

Every parameter of the IR carries its initialiser (`ParamSpec.init`): the op's reference default
(what torch's module does: `fan_in_uniform` for nn.Linear and nn.Conv*d, N(0, 1) for
nn.Embedding, ones and zeros for norms), replaced by the spec's `init_defaults` for that op and
then by the node's own `init:`. The targets draw every parameter from it (numpy, seeded), so the
same seed gives the same weights in every target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import quote

# name -> (argument defaults, what it does)
INITIALISERS: dict[str, tuple[dict, str]] = {
    "zeros": ({}, "all zeros"),
    "ones": ({}, "all ones"),
    "identity": ({}, "the identity matrix (2-d), or a Dirac delta kernel (convolutions)"),
    "normal": ({"mean": 0.0, "std": 1.0}, "N(mean, std^2)"),
    "uniform": ({"a": -1.0, "b": 1.0}, "U(a, b)"),
    "constant": ({"value": 0.0}, "every element equal to value"),
    "xavier_uniform": ({"gain": 1.0}, "Glorot uniform"),
    "xavier_normal": ({"gain": 1.0}, "Glorot normal"),
    "kaiming_normal": ({}, "He normal, fan_out, for ReLU (torchvision's conv init)"),
    "kaiming_uniform": ({}, "He uniform with a = sqrt(5) (torch's default for linear and conv weights)"),
    "orthogonal": ({"gain": 1.0}, "a (semi-)orthogonal matrix"),
    "trunc_normal": ({"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0}, "N(mean, std^2) truncated to [a, b]"),
    # Yu & Koltun 2016, section 3: the identity across layers of different widths. With c_in
    # input and c_out output channels split into `groups` (the paper's C) equal runs, output
    # channel b reads input channel a at the kernel centre with weight groups / c_out when
    # floor(a * groups / c_in) == floor(b * groups / c_out); every other weight is N(0, std^2).
    "group_identity": ({"groups": 1.0, "std": 0.0},
                       "centre tap groups/out where input and output channel fall in the same of `groups` "
                       "groups, N(0, std^2) elsewhere (Yu & Koltun's identity across widths)"),
}
# Forms the ops' defaults use that a spec does not write: sinusoidal tables are computed, not drawn.
INTERNAL = {"sinusoidal": ({}, "the Transformer's fixed sines and cosines")}


@dataclass(frozen=True)
class Init:
    """A parsed initialiser: its name and every argument (defaults filled in), as floats.
    `zero_row` (nn.Embedding's padding_idx) is a row set to zero after drawing."""

    name: str
    args: tuple = ()  # ((arg, value), ...) in the vocabulary's order
    zero_row: int | None = None

    @property
    def kwargs(self) -> dict:
        return dict(self.args)


def _init(name: str, **args) -> Init:
    defaults = (INITIALISERS.get(name) or INTERNAL[name])[0]
    return Init(name, tuple({**defaults, **{k: float(v) for k, v in args.items()}}.items()))


ZEROS, ONES = _init("zeros"), _init("ones")


def normal(std: float = 1.0, mean: float = 0.0) -> Init:
    return _init("normal", mean=mean, std=std)


def uniform(bound: float) -> Init:
    return _init("uniform", a=-bound, b=bound)


def fan_in_uniform(fan_in: int) -> Init:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for nn.Linear and nn.Conv*d weights
    (kaiming_uniform with a = sqrt(5) works out to this bound) and their biases."""
    return uniform(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)


def xavier_uniform(gain: float = 1.0) -> Init:
    return _init("xavier_uniform", gain=gain)


def trunc_normal(std: float, mean: float = 0.0, a: float | None = None, b: float | None = None) -> Init:
    return _init("trunc_normal", mean=mean, std=std, a=-2.0 * std if a is None else a, b=2.0 * std if b is None else b)


SINUSOIDAL = _init("sinusoidal")


class InitError(ValueError):
    """A bad initialiser; `expected` says what would be accepted."""

    def __init__(self, message: str, expected: str):
        super().__init__(message)
        self.message, self.expected = message, expected


def parse_init(spec) -> Init:
    """`zeros` or `{normal: {std: 0.02}}` -> Init; raises InitError naming what is wrong."""
    names = ", ".join(INITIALISERS)
    if isinstance(spec, str):
        name, given = spec, {}
    elif isinstance(spec, dict) and len(spec) == 1:
        name, given = next(iter(spec.items()))
        given = {} if given is None else given
    else:
        raise InitError(f"bad initialiser {quote(spec)}", f"a name or {{name: {{arg: number}}}}; names: {names}")
    if not isinstance(name, str) or name not in INITIALISERS:
        raise InitError(f"unknown initialiser {quote(name)}", f"one of: {names}")
    defaults, _ = INITIALISERS[name]
    if not isinstance(given, dict):
        raise InitError(f"arguments of initialiser '{name}' are {quote(given)}",
                        f"a mapping of {', '.join(defaults) or 'no arguments'}")
    args = dict(defaults)
    for k, v in given.items():
        if k not in defaults:
            raise InitError(f"initialiser '{name}' has no argument {quote(k)}",
                            f"one of: {', '.join(defaults)}" if defaults else f"'{name}' takes no arguments")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InitError(f"argument '{k}' of initialiser '{name}' is {quote(v)}", "a finite number")
        args[k] = float(v)
    if name == "normal" and args["std"] < 0:
        raise InitError(f"normal std={args['std']}", "std >= 0")
    if name == "uniform" and args["a"] > args["b"]:
        raise InitError(f"uniform a={args['a']} > b={args['b']}", "a <= b")
    if name == "group_identity" and (args["groups"] < 1 or args["groups"] != int(args["groups"]) or args["std"] < 0):
        raise InitError(f"group_identity groups={args['groups']} std={args['std']}",
                        "an integer groups >= 1 and std >= 0")
    return Init(name, tuple(args.items()))
