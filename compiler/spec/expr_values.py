"""Bounded values for `${...}` expressions: the operators, functions and checks that
compiler/spec/expr.py's sandbox calls instead of Python's own.

Every value an expression builds is plain data (None, bool, int, float, str, list, tuple, dict)
and bounded before or as it is built: strings and lists at most `_MAX_SEQ` elements (nested
containers count all their elements and the characters of their strings), integers at most
`_MAX_INT_BITS` bits (`**` estimated from its operands first), `%` arithmetic only, `sum` of
numbers only. A bound that is hit is an ExprError, never a large allocation.
"""
from __future__ import annotations

import reprlib
from itertools import chain

from jinja2 import Undefined

_MAX_SEQ = 100_000  # elements of a str / list (nested: all elements and characters together)
_MAX_INT_BITS = 256
_MAX_DEPTH = 64  # levels of the syntax tree, and of nested values
_MAX_NUMBER_TEXT = 300  # characters of a string given to int() / float()
_MAX_ROUND_DIGITS = 100
_MAX_SHOWN = 200  # characters of an expression or value quoted in a message

_NESTS = "expression nests too deeply"
_VALUE_TYPES = (type(None), bool, int, float, str, list, tuple, dict)
_CONTAINERS = (str, list, tuple, dict)


class ExprError(Exception):
    """An expression failed; the caller attaches the location."""


# -- messages -------------------------------------------------------------------------------------

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def _short(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _show(value) -> str:
    """A bounded repr: reprlib never builds the full text of a big value."""
    return _short(_REPR.repr(value))


def _kind(value) -> str:
    return type(value).__name__


def _a(value) -> str:
    """'an int', 'a list': the value's type for a message."""
    name = _kind(value)
    return ("an " if name[0] in "aeiou" else "a ") + name


# -- values ---------------------------------------------------------------------------------------

def _defined(*values) -> None:
    """Raise jinja's own 'x is undefined' error for a missing name (reported with the known names)."""
    for v in values:
        if isinstance(v, Undefined):
            v._fail_with_undefined_error()


def _plain(*values) -> None:
    """Only plain data flows through expressions (no template references, no Python objects)."""
    _defined(*values)
    for v in values:
        if type(v) not in _VALUE_TYPES:
            raise ExprError(f"values of type {_kind(v)} are not allowed in expressions")


def _size(value, limit: int = _MAX_SEQ) -> int:
    """Elements of `value`, nested containers included, strings counting their characters.

    Walks iteratively and stops as soon as the count passes `limit` (returning limit + 1), so a list
    repeating one big list a million times costs `limit` steps, not a million walks of it.
    """
    total = 0
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        total += len(v) if type(v) in _CONTAINERS else 0
        if total > limit:
            return limit + 1
        if type(v) in (list, tuple, dict):
            if depth >= _MAX_DEPTH:
                raise ExprError(f"value nests too deeply (more than {_MAX_DEPTH} levels)")
            items = chain(v, v.values()) if type(v) is dict else v
            # only containers can add to the count; len(v) <= limit bounds what is pushed
            stack.extend((x, depth + 1) for x in items if type(x) in _CONTAINERS)
    return total


def _check_int(n):
    if type(n) is int and n.bit_length() > _MAX_INT_BITS:
        raise ExprError(f"integer result is too large (more than {_MAX_INT_BITS} bits)")
    return n


def _checked(value):
    """The bound every value built by the language (and every final result) must satisfy."""
    _plain(value)
    _check_int(value)
    if type(value) in _CONTAINERS and _size(value) > _MAX_SEQ:
        raise ExprError(f"result is too large (more than {_MAX_SEQ} elements)")
    return value


def _repr_len(value, limit: int) -> int:
    """An upper bound of len(repr(value)), stopping past `limit` (then returns limit + 1)."""
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t in (list, tuple, dict):
            # brackets, a trailing comma for 1-tuples, ", " between items and ": " in dicts
            total += 3 + 2 * len(v) * (2 if t is dict else 1)
            if total > limit:
                return limit + 1
            stack.extend(chain(v, v.values()) if t is dict else v)
        elif t is str:
            if total + len(v) + 2 > limit:  # repr(v) is at least this long: skip building it
                return limit + 1
            total += len(repr(v))
        else:  # None, bool, float, int (Python refuses ints of more than 4300 digits)
            total += len(repr(v))
        if total > limit:
            return limit + 1
    return total


# -- the functions ----------------------------------------------------------------------------------

def _range(*args):
    r = range(*args)
    try:
        n = len(r)
    except OverflowError:
        n = _MAX_SEQ + 1
    if n > _MAX_SEQ:
        raise ExprError(f"range() of more than {_MAX_SEQ} elements is too large")
    return list(r)


def _sum(values, *start):
    if type(values) not in (list, tuple):
        raise ExprError(f"sum() needs a list of numbers, not {_a(values)}")
    # adding lists or strings with sum() is quadratic; only numbers are summed
    if not all(type(x) in (bool, int, float) for x in chain(values, start)):
        raise ExprError("sum() adds numbers only")
    return sum(values, *start)


def _str(value=""):
    if type(value) is str:
        return value
    if _repr_len(value, _MAX_SEQ) > _MAX_SEQ:
        raise ExprError(f"str() of this value would be longer than {_MAX_SEQ} characters")
    return str(value)


def _number_text(value, what: str):
    if type(value) is str and len(value) > _MAX_NUMBER_TEXT:
        raise ExprError(f"{what}() of a string longer than {_MAX_NUMBER_TEXT} characters")


def _int(value=0, *base):
    _number_text(value, "int")
    return int(value, *base)  # the result's size is checked like every call's


def _float(value=0.0):
    _number_text(value, "float")
    return float(value)


def _round(value, *ndigits):
    # round(5, -10**9) would compute 10**(10**9)
    if ndigits and ndigits[0] is not None and (type(ndigits[0]) is not int or abs(ndigits[0]) > _MAX_ROUND_DIGITS):
        raise ExprError(f"round() takes at most {_MAX_ROUND_DIGITS} digits")
    return round(value, *ndigits)


def _list(value=()):
    if type(value) not in _CONTAINERS:
        raise ExprError(f"list() needs a string, list or dict, not {_a(value)}")
    if len(value) > _MAX_SEQ:
        raise ExprError(f"list() of more than {_MAX_SEQ} elements is too large")
    return list(value)


def _channels(value):
    """channels(x): axis 1 of a tensor's shape (the expander gives tensors as {shape, dtype, rank})."""
    if type(value) is not dict or type(value.get("shape")) is not list or len(value["shape"]) < 2:
        raise ExprError(f"channels() takes a tensor of rank >= 2 (a node or input name), not {_a(value)}")
    return value["shape"][1]


_FUNCTIONS = {"min": min, "max": max, "len": len, "range": _range, "int": _int, "float": _float, "abs": abs,
              "sum": _sum, "round": _round, "bool": bool, "str": _str, "list": _list, "channels": _channels}
_FUNCTION_IDS = frozenset(id(f) for f in _FUNCTIONS.values())  # identity: a param may shadow a name


# -- the operators ----------------------------------------------------------------------------------

def _numbers(op: str, *values) -> None:
    for v in values:
        if type(v) not in (bool, int, float):
            raise ExprError(f"'{op}' needs numbers, not {_a(v)}")


def _add(a, b):
    if type(a) is type(b) and type(a) in (str, list, tuple):
        if _size(a) + _size(b) > _MAX_SEQ:  # checked before the copy is made
            raise ExprError(f"'+' result is too large (more than {_MAX_SEQ} elements)")
        return a + b
    if type(a) in (str, list, tuple) or type(b) in (str, list, tuple):
        raise ExprError(f"'+' cannot join {_a(a)} and {_a(b)}")
    _numbers("+", a, b)
    return _check_int(a + b)


def _sub(a, b):
    _numbers("-", a, b)
    return _check_int(a - b)


def _repeat(seq, n):
    if type(n) not in (bool, int):
        raise ExprError(f"{_a(seq)} can only be repeated an integer number of times")
    if n <= 0 or not seq:
        return seq[:0]
    if _size(seq, _MAX_SEQ // n) * n > _MAX_SEQ:  # checked before anything is built
        raise ExprError(f"repeating {_a(seq)} {_show(n)} times is too large (more than {_MAX_SEQ} elements)")
    return seq * n


def _mul(a, b):
    if type(a) in (str, list, tuple):
        return _repeat(a, b)
    if type(b) in (str, list, tuple):
        return _repeat(b, a)
    _numbers("*", a, b)
    if type(a) is not float and type(b) is not float and a.bit_length() + b.bit_length() - 1 > _MAX_INT_BITS:
        raise ExprError(f"integer result is too large (more than {_MAX_INT_BITS} bits)")
    return _check_int(a * b)


def _div(a, b):
    _numbers("/", a, b)
    return a / b


def _floordiv(a, b):
    _numbers("//", a, b)
    return _check_int(a // b)


def _mod(a, b):
    if type(a) is str:
        raise ExprError("'%' string formatting is not part of the expression language")
    _numbers("%", a, b)
    return _check_int(a % b)


def _pow(base, exp):
    _numbers("**", base, exp)
    if type(base) is not float and type(exp) is not float and exp > 0 and abs(base) > 1:
        # |base| >= 2**(b-1), so the result has at least (b-1)*exp + 1 bits: refuse before computing.
        # When this passes the exact result has at most ~2 * _MAX_INT_BITS bits, cheap to compute.
        if (abs(base).bit_length() - 1) * exp + 1 > _MAX_INT_BITS:
            raise ExprError(f"exponent {_show(exp)} is too large (the result has more than {_MAX_INT_BITS} bits)")
    out = base ** exp  # a float overflow raises OverflowError
    if type(out) is complex:
        raise ExprError("'**' of a negative number to a fractional power is not a real number")
    return _check_int(out)


_BINOPS = {"+": _add, "-": _sub, "*": _mul, "/": _div, "//": _floordiv, "%": _mod, "**": _pow}


def _neg(x):
    _numbers("-", x)
    return -x


def _pos(x):
    _numbers("+", x)
    return +x


# jinja calls the `not` operator "not " (with the space) in intercepted_unops
_UNOPS = {"-": _neg, "+": _pos, "not ": lambda x: not x}
