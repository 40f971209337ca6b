"""`${...}` expressions in specs, evaluated in jinja2's sandbox (never Python `eval`).

A string that is exactly `${expr}` evaluates to the expression's native value (int, list, bool, ...);
a string with `${expr}` inside other text is interpolated into a string. Names come from the
spec's `params`, a block's `args` and, inside a `repeat`, the index `i`. Arithmetic that could blow
up memory or time (`**` with huge exponents, repeating a string a billion times) is refused.
"""
from __future__ import annotations

import operator
import re
from functools import lru_cache

from jinja2 import StrictUndefined
from jinja2.exceptions import TemplateError
from jinja2.sandbox import SandboxedEnvironment

_EXPR = re.compile(r"\$\{(.*?)\}")
_MAX_SEQ = 100_000
_MAX_INT_BITS = 256


class ExprError(Exception):
    """An expression failed; the caller attaches the location."""


class _Env(SandboxedEnvironment):
    intercepted_binops = frozenset(["**", "*"])

    def call_binop(self, context, op, left, right):
        if op == "**":
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise ExprError(f"exponent {right} is too large (at most 64)")
            return left ** right
        if op == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and n * max(1, len(seq)) > _MAX_SEQ:
                    raise ExprError(f"repeating a sequence {n} times is too large")
            out = operator.mul(left, right)
            if isinstance(out, int) and out.bit_length() > _MAX_INT_BITS:
                raise ExprError("integer result too large")
            return out
        return super().call_binop(context, op, left, right)


def _safe_range(*args):
    r = range(*args)
    if len(r) > _MAX_SEQ:
        raise ExprError(f"range of {len(r)} elements is too large")
    return list(r)


_ENV = _Env(undefined=StrictUndefined)
_ENV.globals.update(min=min, max=max, len=len, int=int, float=float, abs=abs, sum=sum, range=_safe_range,
                    round=round, bool=bool, str=str, list=list)


@lru_cache(maxsize=4096)
def _compiled(expr: str):
    try:
        return _ENV.compile_expression(expr, undefined_to_none=False)
    except TemplateError as e:
        raise ExprError(f"cannot parse expression '{expr}': {e.message}") from None


def has_expr(value) -> bool:
    return isinstance(value, str) and "${" in value


def eval_expr(expr: str, names: dict):
    try:
        out = _compiled(expr.strip())(**names)
    except ExprError:
        raise
    except TemplateError as e:
        msg = e.message or str(e)
        if "is undefined" in msg:
            raise ExprError(f"{msg} (known names: {', '.join(sorted(names)) or 'none'})") from None
        raise ExprError(f"in '{expr}': {msg}") from None
    except (ArithmeticError, TypeError, ValueError, IndexError, KeyError) as e:
        raise ExprError(f"in '{expr}': {type(e).__name__}: {e}") from None
    if hasattr(out, "__html__") or type(out).__name__ == "StrictUndefined":
        raise ExprError(f"'{expr}' is undefined")
    return out


def evaluate(value, names: dict):
    """Evaluate every `${...}` inside `value` (recursively through lists and dicts)."""
    if isinstance(value, str):
        if "${" not in value:
            return value
        m = _EXPR.fullmatch(value.strip())
        if m:
            return eval_expr(m.group(1), names)
        return _EXPR.sub(lambda mm: str(eval_expr(mm.group(1), names)), value)
    if isinstance(value, list):
        return [evaluate(v, names) for v in value]
    if isinstance(value, dict):
        return {k: evaluate(v, names) for k, v in value.items()}
    return value
