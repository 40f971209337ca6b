"""List comprehensions in `${...}` expressions: `[int(c * width_mult) for c in channels if c > 16]`.

jinja2's expression grammar has no comprehensions, so they are taken apart before it sees the
expression: each outermost `[ITEM for NAME in ITERABLE (if CONDITION)?]` is replaced by a fresh
name bound to the list it builds, and ITEM, ITERABLE and CONDITION are themselves expressions
evaluated by the sandbox (a comprehension inside ITEM is handled the same way, per element).
The scan respects quotes and bracket nesting, so `'for'` inside a string or `[a, b]` is left alone.

Bounds: one `for` per comprehension (nest comprehensions instead), NAME a plain identifier, and a
budget of `MAX_STEPS` element evaluations for one top-level expression, nested loops included,
so `[[a for a in range(99999)] for b in range(99999)]` stops early instead of running for hours.
"""
from __future__ import annotations

import contextvars
import keyword
import re
from dataclasses import dataclass
from functools import lru_cache

from .expr_values import _MAX_SEQ, ExprError, _short

MAX_STEPS = _MAX_SEQ
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_steps: contextvars.ContextVar = contextvars.ContextVar("nnspec_comprehension_steps", default=None)


@dataclass(frozen=True)
class Comprehension:
    placeholder: str  # the name that stands for the built list in the rewritten expression
    item: str
    var: str
    iterable: str
    condition: str | None


@dataclass(frozen=True)
class Plan:
    text: str  # the expression with each comprehension replaced by its placeholder
    parts: tuple  # Comprehension, in order


def _scan(expr: str):
    """(index, char, depth) for every character outside string literals; depth counts open brackets."""
    depth, i, quote = 0, 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        else:
            if c in "([{":
                depth += 1
            yield i, c, depth
            if c in ")]}":
                depth -= 1
        i += 1


def _words_at_depth(text: str, depth: int) -> list:
    """(start, word) of the keywords `for`, `in`, `if` standing at bracket depth `depth` of `text`."""
    found = []
    for i, c, d in _scan(text):
        if d == depth and c.isalpha() and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = _WORD.match(text, i)
            if m and m.group() in ("for", "in", "if") and c in "fi":
                found.append((i, m.group()))
    return found


@lru_cache(maxsize=4096)
def plan(expr: str) -> Plan:
    """The comprehensions of `expr` (outermost only), taken out of it."""
    if "for" not in expr:
        return Plan(expr, ())
    opens, spans = [], []
    for i, c, d in _scan(expr):
        if c == "[":
            opens.append(i)
        elif c == "]" and opens:
            start = opens.pop()
            if not opens:  # an outermost bracket pair
                spans.append((start, i))
    parts, out, last = [], [], 0
    for start, end in spans:
        inner = expr[start + 1:end]
        words = _words_at_depth(inner, 0)
        fors = [i for i, w in words if w == "for"]
        if not fors:
            continue  # a plain list literal
        if len(fors) > 1:
            raise ExprError("one `for` per list comprehension: nest them instead, [[... for b in y] for a in x]")
        f = fors[0]
        ins = [i for i, w in words if w == "in" and i > f]
        if not ins:
            raise ExprError("a list comprehension needs `for NAME in ITERABLE`")
        var = inner[f + 3:ins[0]].strip()
        if not _WORD.fullmatch(var) or keyword.iskeyword(var) or var.startswith("__"):
            raise ExprError(f"the loop variable of a list comprehension must be a name, not {_short(repr(var))}")
        ifs = [i for i, w in words if w == "if" and i > ins[0]]
        iterable = inner[ins[0] + 2:ifs[0] if ifs else len(inner)].strip()
        condition = inner[ifs[0] + 2:].strip() if ifs else None
        item = inner[:f].strip()
        if not item or not iterable or condition == "":
            raise ExprError("a list comprehension is [ITEM for NAME in ITERABLE] or [ITEM for NAME in ITERABLE if COND]")
        ph = f"_nnspec_list{len(parts)}"
        parts.append(Comprehension(ph, item, var, iterable, condition))
        out += [expr[last:start], ph]
        last = end + 1
    out.append(expr[last:])
    return Plan("".join(out), tuple(parts))


def build(c: Comprehension, names: dict, evaluate) -> list:
    """The list comprehension `c` builds, with `evaluate(expr, names)` for its pieces."""
    budget = _steps.get()
    token = _steps.set([MAX_STEPS]) if budget is None else None
    budget = _steps.get()
    try:
        seq = evaluate(c.iterable, names)
        if not isinstance(seq, (list, tuple, str)):
            raise ExprError(f"a list comprehension iterates over a list, tuple or string, not {type(seq).__name__}")
        out = []
        for element in seq:
            budget[0] -= 1
            if budget[0] < 0:
                raise ExprError(f"list comprehensions in one expression evaluate more than {MAX_STEPS} elements")
            scope = {**names, c.var: element}
            if c.condition is None or evaluate(c.condition, scope):
                out.append(evaluate(c.item, scope))
        return out
    finally:
        if token is not None:
            _steps.reset(token)
