"""Generated lines as pieces, so that classes can be compared with their constants set aside.

The torch generator keeps each line of a class as a tuple of pieces rather than as text:

  * `str`    code text: one token with the whitespace before it (`" bn3"`, `" +"`),
  * `Const`  a literal written by an op or by the generator (`64`, `-1`, `1e-05`, `'same'`, `False`),
  * `Call`   a constructor call whose keyword arguments may sit at a default (then they are left out),
  * `Items`  the modules of an `nn.Sequential` / `nn.ModuleList`, one piece tuple each,
  * `Child`  the constructor call of a child instance's class, filled in once that class is known.

Two renderings with equal `key`s differ only in constants, which is what lets block instances
share one parameterised class (targets/torch/share.py). Op constructor lines of known torch modules
are *completed*: `nn.Conv2d(64, 64, 3, padding=1)` also carries `stride=1`, `dilation=1`, ... as
keywords at their defaults, so it lines up with `nn.Conv2d(128, 128, 3, stride=2, padding=1)`; a
keyword still at its default when the class is written is left out again. `TORCH_DEFAULTS` holds
those defaults (tests/test_codegen.py checks them against torch's signatures).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache



class _No:
    """The default of an argument that has none (and the value of a slot written as an expression)."""

    def __repr__(self) -> str:
        return "NO"


NO = _No()

# Keyword defaults of the module constructors ops emit, in signature order. Only these are
# completed; a constructor with another keyword is kept as the op wrote it.
_CONV = (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1), ("bias", True))
_NORM = (("eps", 1e-05), ("momentum", 0.1), ("affine", True), ("track_running_stats", True))
_RNN = (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False))
TORCH_DEFAULTS = {
    "nn.Conv1d": _CONV, "nn.Conv2d": _CONV,
    "nn.Linear": (("bias", True),),
    "nn.BatchNorm1d": _NORM, "nn.BatchNorm2d": _NORM, "nn.BatchNorm3d": _NORM,
    "nn.LayerNorm": (("eps", 1e-05), ("elementwise_affine", True), ("bias", True)),
    "nn.RMSNorm": (("eps", None), ("elementwise_affine", True)),
    "nn.GroupNorm": (("eps", 1e-05), ("affine", True)),
    "nn.LocalResponseNorm": (("alpha", 0.0001), ("beta", 0.75), ("k", 1.0)),
    "nn.Embedding": (("padding_idx", None),),
    "nn.LSTM": _RNN, "nn.GRU": _RNN,
    "nn.LSTMCell": (("bias", True),), "nn.GRUCell": (("bias", True),),
    "nn.RNNCell": (("bias", True), ("nonlinearity", "tanh")),
    # helper classes of the ops' snippets (compiler/ops/attention.py, positional.py)
    "MultiHeadAttention": (("bias", True), ("dropout", 0.0), ("causal", False)),
    "PositionalEncoding": (("max_len", 5000), ("learned", False), ("dropout", 0.0)),
}


@dataclass(frozen=True)
class Const:
    text: str  # as written (`-1`, `1e-05`, `'same'`)
    value: object  # its Python value


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple  # ((keyword or "", pieces, default or NO), ...): a keyword at its default is left out


@dataclass(frozen=True)
class Items:
    head: str  # "nn.Sequential" | "nn.ModuleList"
    items: tuple  # one piece tuple per module


@dataclass(frozen=True)
class Child:
    uid: int  # the unit (share.Unit) whose constructor call goes here


def same(a, b) -> bool:
    """Equal values of the same type: 1, 1.0 and True are three different constants."""
    return type(a) is type(b) and a == b


# -- text to pieces ------------------------------------------------------------------------------
_TOKEN = re.compile(r"""(?P<ws>\s+)|(?P<str>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|(?P<name>[A-Za-z_]\w*)"""
                    r"""|(?P<num>0[xXoObB][0-9a-fA-F_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?j?)"""
                    r"""|(?P<op>.)""", re.S)
_LITERAL_NAMES = {"True": True, "False": False, "None": None}
# After these a `-` is a sign, not a subtraction: `view(n, -1)`, `x[-1]`, `return -1`.
_SIGN_AFTER = {None, "(", "[", "{", ",", "=", ":", "return", "if", "else", "and", "or", "not", "in", "*", "/", "+", "-"}


@lru_cache(maxsize=1 << 16)
def lex(text: str) -> tuple:
    """`text` (one line of generated code) as pieces; constants become `Const`s. Lines repeat across
    instances of a block, hence the cache."""
    out: list = []
    ws, prev, sign = "", None, False  # whitespace before the next token, the previous token, a sign `-` just seen
    for m in _TOKEN.finditer(text):
        kind, tok = m.lastgroup, m.group()
        if kind == "ws":
            ws += tok
            continue
        if kind == "str" and not ws and prev is not None and prev[-1:].isalpha():
            kind = "op"  # a prefixed string (f'...', r'...'): code, not a constant to replace
        if kind in ("num", "str") or (kind == "name" and tok in _LITERAL_NAMES):
            if sign and kind == "num":  # the sign joins the number: `-1` is one constant
                minus = out.pop()
                tok, ws = "-" + ws + tok, minus[:-1]
            if ws:
                out.append(ws)
            out.append(Const(tok, _LITERAL_NAMES[tok] if kind == "name" else ast.literal_eval(tok)))
            ws, prev, sign = "", tok, False
            continue
        sign = tok == "-" and prev in _SIGN_AFTER
        out.append(ws + tok)
        ws, prev = "", tok
    if ws:
        out.append(ws)
    return tuple(out)


def _split_args(inner: str) -> list[str] | None:
    """Top-level comma-separated arguments of a call's argument text (None when unbalanced)."""
    parts, depth, start = [], 0, 0
    for m in _TOKEN.finditer(inner):
        tok = m.group()
        if m.lastgroup == "op":
            depth += tok in "([{"
            depth -= tok in ")]}"
            if depth < 0:
                return None
            if tok == "," and depth == 0:
                parts.append(inner[start:m.start()])
                start = m.end()
    if depth:
        return None
    parts.append(inner[start:])
    return [p.strip() for p in parts] if inner.strip() else []


_CALL = re.compile(r"([A-Za-z_][\w.]*)\((.*)\)\Z", re.S)
_KW = re.compile(r"([A-Za-z_]\w*)=(?!=)(.*)\Z", re.S)


@lru_cache(maxsize=1 << 14)
def ctor(text: str) -> tuple:
    """A constructor expression an op wrote (`nn.Conv2d(64, 64, 3, padding=1)`) as pieces: a `Call`
    completed with the defaults of TORCH_DEFAULTS when its keywords allow, else plain `lex` pieces."""
    m = _CALL.match(text)
    args = _split_args(m.group(2)) if m else None
    if args is None or any(not a for a in args):
        return lex(text)
    func = m.group(1)
    pos, kws = [], {}
    for a in args:
        k = _KW.match(a)
        if k:
            kws[k.group(1)] = k.group(2).strip()
        elif kws:
            return lex(text)  # a positional after a keyword (never written by an op)
        else:
            pos.append(a)
    table = dict(TORCH_DEFAULTS.get(func, ()))
    order = [k for k, _ in TORCH_DEFAULTS.get(func, ())]
    if not pos or not set(kws) <= set(table) or [k for k in order if k in kws] != list(kws):
        table, order = {}, list(kws)  # unknown keywords, or in another order: keep them as written
    out = [("", lex(a), NO) for a in pos]
    for k in order:
        value = lex(kws[k]) if k in kws else (Const(repr(table[k]), table[k]),)
        out.append((k, value, table.get(k, NO)))
    return (Call(func, tuple(out)),)


# -- pieces to keys and text ---------------------------------------------------------------------
@lru_cache(maxsize=1 << 16)
def key(pieces: tuple) -> tuple:
    """What two renderings must share to become one class: everything but the constants' values."""
    out = []
    for p in pieces:
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, Const):
            out.append(0)  # an int never equals a str piece
        elif isinstance(p, Call):
            out.append(("call", p.func, tuple((k, key(v), repr(d)) for k, v, d in p.args)))
        elif isinstance(p, Items):
            out.append(("items", p.head, tuple(key(i) for i in p.items)))
        else:
            raise TypeError(f"unresolved piece {p!r}")
    return tuple(out)


def consts(pieces: tuple, out: list) -> list:
    """The `Const`s of `pieces` in rendering order, appended to `out`."""
    for p in pieces:
        if type(p) is str:
            continue
        if isinstance(p, Const):
            out.append(p)
        elif isinstance(p, Call):
            for _, v, _ in p.args:
                consts(v, out)
        elif isinstance(p, Items):
            for i in p.items:
                consts(i, out)
    return out


def substitute(pieces: tuple, children: dict) -> tuple:
    """`pieces` with each `Child` replaced by `children[uid]` (a `Call`)."""
    if all(type(p) is str or type(p) is Const for p in pieces):
        return pieces  # most lines: nothing to fill in
    out = []
    for p in pieces:
        if isinstance(p, Child):
            out.append(children[p.uid])
        elif isinstance(p, Call):
            out.append(Call(p.func, tuple((k, substitute(v, children), d) for k, v, d in p.args)))
        elif isinstance(p, Items):
            out.append(Items(p.head, tuple(substitute(i, children) for i in p.items)))
        else:
            out.append(p)
    return tuple(out)


def child_uids(pieces: tuple, out: list) -> list:
    for p in pieces:
        if isinstance(p, Child):
            out.append(p.uid)
        elif isinstance(p, Call):
            for _, v, _ in p.args:
                child_uids(v, out)
        elif isinstance(p, Items):
            for i in p.items:
                child_uids(i, out)
    return out


MAX_LINE = 100  # characters, indentation included; longer module lists are written one per line


def render(pieces: tuple, slots, names: dict | None = None, width: int = 0) -> str:
    """Text of `pieces`. `slots` yields, per `Const` in order, a `(text, value)` pair: the value is
    the constant's when it is written literally, else NO (an expression such as `planes * 4`).
    `names` renames variables (`downsample` -> `x`); `width` is what precedes `pieces` on the line
    (indentation and target), for the choice of one line or several."""
    out = []
    for p in pieces:
        if isinstance(p, str):
            out.append(p if not names or p.strip() not in names else p[:len(p) - len(p.lstrip())] + names[p.strip()])
        elif isinstance(p, Const):
            out.append(next(slots)[0])
        elif isinstance(p, Call):
            args = []
            for k, v, d in p.args:
                if d is not NO and len(v) == 1 and isinstance(v[0], Const):
                    text, value = next(slots)
                    if value is not NO and same(value, d):
                        continue  # left at its default
                else:
                    text = render(v, slots, names)
                args.append(f"{k}={text}" if k else text)
            out.append(f"{p.func}({', '.join(args)})")
        elif isinstance(p, Items):
            out.append(_items(p, [render(i, slots, names) for i in p.items], width + len("".join(out))))
    return "".join(out)


def _items(p: Items, mods: list[str], width: int) -> str:
    """`nn.Sequential(A(), *[B() for _ in range(3)])`: a run of three or more equal modules is written
    as a comprehension; one entry per line when the line would be long."""
    parts, k = [], 0
    while k < len(mods):
        run = 1
        while k + run < len(mods) and mods[k + run] == mods[k]:
            run += 1
        parts += [f"*[{mods[k]} for _ in range({run})]"] if run >= 3 else mods[k:k + run]
        k += run
    seq = p.head != "nn.ModuleList"  # nn.Sequential takes the modules, nn.ModuleList one list of them
    if len(parts) == 1 and parts[0].startswith("*["):  # all equal: the comprehension alone
        return f"{p.head}({parts[0]})" if seq else f"{p.head}({parts[0][1:]})"
    opening, closing = (f"{p.head}(", ")") if seq else (f"{p.head}([", "])")
    one = opening + ", ".join(parts) + closing
    if width + len(one) <= MAX_LINE or len(parts) < 2:
        return one
    return "\n".join([opening] + [f"    {x}," for x in parts] + [closing])


def module_names(lines: list[str]) -> set:
    """Names read as `name.attr` in lines of generated code (`torch.relu` -> torch); strings and
    comments skipped. The file imports `torch`, `F` and `math` only when a line reads them."""
    out: set = set()
    for line in lines:
        prev = None  # (kind, text) of the previous token
        before = None  # the token before that
        for m in _TOKEN.finditer(line):
            kind, tok = m.lastgroup, m.group()
            if kind == "ws":
                continue
            if tok == "#":
                break
            if tok == "." and prev and prev[0] == "name" and before != ".":
                out.add(prev[1])
            before, prev = prev[1] if prev else None, (kind, tok)
    return out
