"""The `${...}` expression sandbox: the documented language works, everything else -- Python
attributes, jinja filters/tests/globals, resource bombs, deep nesting -- is a short, fast ExprError."""
from __future__ import annotations

import textwrap
import time
import tracemalloc
from contextlib import contextmanager

import pytest

from nnspec.compiler import load
from nnspec.compiler.errors import NnspecError
from nnspec.compiler.spec import expr as expr_module
from nnspec.compiler.spec.expr import ExprError, eval_expr, evaluate, has_expr

NAMES = {
    "x": 3, "f": 2.5, "flag": False, "s": "hello", "L": [1, 2, 3], "t": (4, 5),
    "cfg": {"lr": 0.1, "opt": {"betas": [0.9, 0.99]}, "depth": 2},
    "widths": [64, 128, 256, 512], "layers": [2, 2, 2, 2], "exp": 4, "i": 1,
    "stride": 2, "inplanes": 64, "planes": 64,
}
BIG_STR = {"a": "x" * 60_000}


def ok(expr: str, names: dict | None = None):
    return eval_expr(expr, NAMES if names is None else names)


def refused(expr: str, message: str, names: dict | None = None) -> str:
    with pytest.raises(ExprError) as ei:
        eval_expr(expr, NAMES if names is None else names)
    text = str(ei.value)
    assert message in text, text
    assert len(text) < 600, len(text)  # never an unbounded value in a message
    return text


@contextmanager
def cheap(seconds: float = 5.0, megabytes: float | None = 50):
    """The block must finish in `seconds` and (unless megabytes is None) allocate at most
    `megabytes` at its peak. tracemalloc slows deep recursion a lot, hence the opt-out."""
    if megabytes is not None:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if megabytes is not None else 0
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    if megabytes is not None:
        assert peak < megabytes * 2**20, f"peak {peak / 2**20:.1f} MB"


def bomb(expr: str, message: str, names: dict | None = None, megabytes: float | None = 50) -> str:
    with cheap(megabytes=megabytes):
        return refused(expr, message, names)


# -- the documented language ---------------------------------------------------------------------

@pytest.mark.parametrize("expr, value", [
    ("1 + 2 * 3", 7), ("7 - 10", -3), ("7 / 2", 3.5), ("7 // 2", 3), ("-7 // 2", -4), ("7 % 3", 1),
    ("-7 % 3", 2), ("2 ** 10", 1024), ("2 ** 255", 2**255), ("2 ** -1", 0.5), ("(-2) ** 3", -8),
    ("f * 2", 5.0), ("-x", -3), ("+x", 3), ("(x + 1) * 2", 8), ("4 * x", 12), ("1.5 ** 2", 2.25),
])
def test_arithmetic(expr, value):
    assert ok(expr) == value
    assert type(ok(expr)) is type(value)


@pytest.mark.parametrize("expr, value", [
    ("x == 3", True), ("x != 3", False), ("x < 4", True), ("x <= 3", True), ("x > 3", False),
    ("x >= 4", False), ("1 < x < 4", True), ("'ll' in s", True), ("5 not in L", True), ("[1, 2] < [1, 3]", True),
    ("x > 2 and s == 'hello'", True), ("flag or 'fallback'", "fallback"), ("not x", False), ("not flag", True),
])
def test_comparisons_and_logic(expr, value):
    assert ok(expr) == value


@pytest.mark.parametrize("expr, value", [
    ("'big' if x > 2 else 'small'", "big"), ("7 if flag else 3", 3),
    ("widths[0 if i == 0 else 1] * exp", 512),
    ("'downsample' if stride != 1 or inplanes != planes * 4 else 'x'", "downsample"),
    ("len(layers) > 3", True),
])
def test_conditionals_and_spec_idioms(expr, value):
    assert ok(expr) == value


@pytest.mark.parametrize("expr, value", [
    ("L[0]", 1), ("L[-1]", 3), ("L[1:]", [2, 3]), ("L[:2]", [1, 2]), ("L[::-1]", [3, 2, 1]),
    ("s[1:3]", "el"), ("s[0]", "h"), ("t[1]", 5), ("t[:1]", (4,)), ("L[x - 2]", 2),
])
def test_indexing_and_slicing(expr, value):
    assert ok(expr) == value


@pytest.mark.parametrize("expr, value", [
    ("cfg.lr", 0.1), ("cfg['lr']", 0.1), ("cfg.opt.betas[1]", 0.99), ("cfg['opt']['betas'][0]", 0.9),
    ("cfg.opt['betas']", [0.9, 0.99]), ("cfg.depth * 2", 4),
])
def test_dict_key_access(expr, value):
    assert ok(expr) == value


def test_a_dict_key_named_like_a_method_is_a_key():
    assert ok("cfg.items", {"cfg": {"items": 7}}) == 7


@pytest.mark.parametrize("expr, value", [
    ("[1, x, 'a']", [1, 3, "a"]), ("[]", []), ("[[1, 2], [3]]", [[1, 2], [3]]), ("(1, 2)", (1, 2)),
    ("[x] * 3", [3, 3, 3]), ("L + [4]", [1, 2, 3, 4]), ("'ab' * 2", "abab"), ("s + '!'", "hello!"),
])
def test_list_and_tuple_literals(expr, value):
    assert ok(expr) == value


@pytest.mark.parametrize("expr, value", [
    ("min(L)", 1), ("min(3, 1, 2)", 1), ("max(L)", 3), ("max(2, 5)", 5), ("len(s)", 5), ("len(L)", 3),
    ("len(cfg)", 3), ("range(3)", [0, 1, 2]), ("range(1, 7, 2)", [1, 3, 5]), ("int('42')", 42),
    ("int(2.9)", 2), ("int('ff', 16)", 255), ("float('2.5')", 2.5), ("float(3)", 3.0), ("abs(-3)", 3),
    ("abs(-2.5)", 2.5), ("sum(L)", 6), ("sum([0.5, 1])", 1.5), ("sum(L, 10)", 16), ("round(2.567, 2)", 2.57),
    ("round(2.5)", 2), ("bool(0)", False), ("bool(L)", True), ("str(3)", "3"), ("str(L)", "[1, 2, 3]"),
    ("list(s)", ["h", "e", "l", "l", "o"]), ("list(t)", [4, 5]), ("list()", []),
])
def test_each_function(expr, value):
    assert ok(expr) == value


def test_evaluate_interpolates_and_keeps_native_values():
    assert evaluate("layer${i}", {"i": 2}) == "layer2"
    assert evaluate("${a}_${b}", {"a": 1, "b": "x"}) == "1_x"
    assert evaluate("${i}", {"i": 2}) == 2
    assert evaluate(["${i + 1}", {"k": "${[i] * 2}"}, 5, "plain"], {"i": 2}) == [3, {"k": [2, 2]}, 5, "plain"]
    assert evaluate(" ${i * 2} ", {"i": 2}) == 4
    assert has_expr("a${b}") and not has_expr("ab") and not has_expr(3)


def test_bounds_are_inclusive():
    assert len(ok("'x' * 100000", {})) == 100_000
    assert len(ok("range(100000)", {})) == 100_000
    assert ok("2 ** 255 + (2 ** 255 - 1)", {}) == 2**256 - 1


# -- resource bombs --------------------------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "s.replace('l', 'L')", "a.replace('x', 'y' * 1000)", "'x'.center(10**9)", "'{:>999999999}'.format(1)",
    "','.join(L)", "L.extend(L)", "s.__class__.__mro__[1].__subclasses__()",
])
def test_method_calls_are_refused(expr):
    bomb(expr, "method calls", {**NAMES, **BIG_STR})


@pytest.mark.parametrize("expr", ["'%999999999d' % 1", "'%s' % s", "'%-99999999s' % 'x'"])
def test_percent_formatting_is_refused(expr):
    bomb(expr, "'%' string formatting is not part of the expression language")


def test_power_is_bounded_before_it_is_computed():
    bomb("((2**64)**64)**64", "exponent 64 is too large")
    bomb("2 ** 100000", "exponent 100000 is too large")
    bomb("2 ** 256", "more than 256 bits")
    bomb("10 ** (10 ** 18)", "exponent")
    bomb("10.0 ** 400", "OverflowError")
    bomb("1.0000001 ** (2 ** 200)", "OverflowError")
    bomb("(-8) ** 0.5", "not a real number")
    assert ok("1 ** (10 ** 50)", {}) == 1


def test_integer_results_are_bounded():
    bomb("(2 ** 200) * (2 ** 200)", "more than 256 bits")
    bomb("2 ** 255 + 2 ** 255", "more than 256 bits")
    bomb("int(1e300)", "more than 256 bits")
    bomb("round(1e300)", "more than 256 bits")


def test_sum_adds_numbers_only():
    bomb("sum([[1], [2]])", "sum() adds numbers only")
    bomb("sum(['a', 'b'])", "sum() adds numbers only")
    bomb("sum(M, [])", "sum() adds numbers only", {"M": [[0] * 100] * 1000})
    bomb("sum(s)", "sum() needs a list of numbers")


@pytest.mark.parametrize("expr, message", [
    ("lipsum()", "'lipsum' is not a function"), ("lipsum", "'lipsum' is undefined"),
    ("cycler(1, 2)", "'cycler' is not a function"), ("joiner()", "'joiner' is not a function"),
    ("namespace()", "'namespace' is not a function"), ("dict(a=1)", "'dict' is not a function"),
    ("random", "'random' is undefined"), ("L|random", "filters"), ("range(10)|random", "filters"),
    ("self", "'self' cannot be used"),
])
def test_jinja_globals_and_randomness_are_gone(expr, message):
    bomb(expr, message)


def test_environment_has_only_the_documented_functions():
    env = expr_module._ENV
    assert set(env.globals) == {"min", "max", "len", "range", "int", "float", "abs", "sum", "round", "bool",
                                "str", "list", "channels"}
    assert not env.filters and not env.tests


def test_range_is_bounded():
    bomb("range(10**9)", "range() of more than 100000 elements")
    bomb("range(2**200)", "range() of more than 100000 elements")


@pytest.mark.parametrize("expr", ["'x' * 10**9", "10**9 * 'x'", "[0] * 10**9", "(1,) * 10**9", "'ab' * 50001"])
def test_repetition_is_bounded_before_building(expr):
    bomb(expr, "too large")


def test_repetition_of_nested_lists_counts_every_element():
    bomb("[L] * 100000", "repeating a list 100000 times is too large")
    bomb("[[0] * 1000] * 1000", "too large")


def test_concatenation_doubling_is_bounded():
    bomb("a + a", "'+' result is too large", BIG_STR)
    bomb("b + b", "'+' result is too large", {"b": list(range(60_000))})
    bomb("[b] + [b]", "'+' result is too large", {"b": list(range(60_000))})


def test_list_literals_are_bounded():
    bomb("[b, b]", "result is too large", {"b": list(range(60_000))})


def test_final_result_is_bounded():
    bomb("b", "result is too large", {"b": list(range(200_000))})
    with cheap():
        with pytest.raises(ExprError, match="result is too large"):
            evaluate("${b}", {"b": [list(range(1000))] * 1000})


def test_str_is_bounded():
    bomb("str(M)", "str() of this value would be longer than 100000 characters", {"M": [[0] * 100] * 1000})
    bomb("str(p)", "would be longer", {"p": ["x" * 60_000, "x" * 60_000]})
    assert len(ok("str([a])", BIG_STR)) == 60_004


def test_int_and_float_of_huge_strings():
    bomb("int(a)", "int() of a string longer than 300 characters", {"a": "9" * 60_000})
    bomb("float(a)", "float() of a string longer than 300 characters", {"a": "9" * 60_000})
    bomb("int('9' * 100)", "more than 256 bits")
    bomb("int('x')", "ValueError")


def test_round_digits_are_bounded():
    bomb("round(5, -10**9)", "round() takes at most 100 digits")


def test_interpolated_text_is_bounded():
    with cheap():
        with pytest.raises(ExprError, match="insert more than 100000 characters"):
            evaluate("${a}-${a}", BIG_STR)
        with pytest.raises(ExprError, match="insert more than 100000 characters"):
            evaluate("${s}" * 200, {"s": "abcdef" * 1000})
    # text around the expressions is not what is bounded
    assert evaluate("${x}" + "-" * 200_000, {"x": 1}) == "1" + "-" * 200_000
    assert evaluate("${ not closed" + "-" * 200_000, {}) == "${ not closed" + "-" * 200_000


def test_list_of_a_huge_string_is_bounded():
    bomb("list(a)", "list() of more than 100000 elements", {"a": "x" * 200_000})


# -- nesting ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "(" * 300 + "1" + ")" * 300, "(" * 3000 + "1" + ")" * 3000, "[" * 300 + "]" * 300,
    "-" * 3000 + "1", "not " * 2000 + "1", "+".join(["1"] * 100), "len(" * 100 + "L" + ")" * 100,
    "1 if x else " * 300 + "2",
])
def test_deep_nesting_is_a_clean_error(expr):
    bomb(expr, "expression nests too deeply", megabytes=None)


def test_moderate_nesting_works():
    assert ok("(" * 30 + "1" + ")" * 30, {}) == 1
    assert ok("[" * 30 + "]" * 30, {}) == [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
    assert ok("+".join(["1"] * 60), {}) == 60


def test_deep_values_are_a_clean_error():
    deep: list = []
    for _ in range(200):
        deep = [deep]
    bomb("d", "value nests too deeply", {"d": deep})


def test_long_expressions_are_refused():
    bomb("1+" * 6000 + "1", "longer than 10000 characters")
    bomb(" + ".join("x" for _ in range(300)), "nests too deeply")
    bomb("[" + ", ".join(["x"] * 300) + "]", "more than 200 operations")


def test_refusals_are_parsed_once():
    # ~6000 characters refused after lexing and parsing (tens of ms): a bad expression inside a
    # block repeated thousands of times must not be parsed again for each instance
    expr = "[" + ", ".join(["x"] * 2000) + "]"
    refused(expr, "more than 200 operations")
    start = time.perf_counter()
    for _ in range(2000):
        with pytest.raises(ExprError, match="more than 200 operations"):
            eval_expr(expr, NAMES)
    assert time.perf_counter() - start < 5.0


# -- attributes and syntax outside the language ------------------------------------------------------

@pytest.mark.parametrize("expr, message", [
    ("x.__class__", "'.__class__' is not allowed"),
    ("().__class__.__base__", "'.__class__' is not allowed"),
    ("cfg.items", "no key 'items'"),
    ("cfg.__class__", "no key '__class__'"),
    ("''.join", "'.join' is not allowed"),
    ("[].extend", "'.extend' is not allowed"),
    ("(1).real", "'.real' is not allowed"),
    ("s.upper", "'.upper' is not allowed"),
    ("L.__len__()", "method calls"),
    ("cfg['__class__']", "no key '__class__'"),
    ("s['upper']", "index must be an integer"),
])
def test_attribute_escapes(expr, message):
    bomb(expr, message)


@pytest.mark.parametrize("expr, message", [
    ("x|upper", "filters ('x|name') are not part of the expression language"),
    ("L|join(',')", "filters ('x|name') are not part of the expression language"),
    ("x is defined", "tests ('x is name') are not part of the expression language"),
    ("x is not none", "tests ('x is name') are not part of the expression language"),
    ("s ~ s", "'~' string concatenation is not part of the expression language"),
    ("{'a': 1}", "dict literals are not part of the expression language"),
    ("min(L, key=x)", "keyword arguments are not allowed"),
    ("min(*L)", "'*args' and '**kwargs' are not allowed"),
    ("foo(1)", "'foo' is not a function of the expression language"),
    ("[min][0](1)", "this is not a function of the expression language"),
    ("x if x > 1", "needs an 'else'"),
    ("x +", "cannot parse expression"),
    ("1 }} {{ 2", "cannot parse expression"),
])
def test_syntax_outside_the_language(expr, message):
    refused(expr, message)


def test_a_param_shadowing_a_function_cannot_be_called():
    refused("len(s)", "only the functions", {"len": 3, "s": "ab"})


@pytest.mark.parametrize("expr, message", [
    ("L[10]", "index 10 is out of range"), ("s[1.5]", "index must be an integer, not a float"),
    ("x[0]", "an int cannot be indexed"), ("cfg[[1]]", "a dict key cannot be a list"),
    ("s - 1", "'-' needs numbers, not a str"), ("L + 1", "'+' cannot join a list and an int"),
    ("[1] % 2", "'%' needs numbers"), ("'a' * 1.5", "integer number of times"),
    ("1 / 0", "ZeroDivisionError"), ("range(0, 10, 0)", "ValueError"), ("min()", "TypeError"),
    ("nope + 1", "'nope' is undefined (known names:"), ("len(nope)", "'nope' is undefined"),
    ("[nope]", "'nope' is undefined"),
])
def test_runtime_errors_are_expr_errors(expr, message):
    refused(expr, message)


def test_messages_are_short():
    long_expr = "x + " + "'" + "y" * 5000 + "'"
    text = refused(long_expr, "...")
    assert len(text) < 500
    many = {f"p{k}": k for k in range(2000)}
    text = refused("nope", "known names", many)
    assert len(text) < 500 and text.endswith("...)")
    text = refused("cfg.nope", "no key", {"cfg": {f"k{k}": k for k in range(5000)}})
    assert len(text) < 500
    text = refused("cfg[a]", "no key", {"cfg": {}, **BIG_STR})
    assert len(text) < 500


# -- through a real spec file -------------------------------------------------------------------------

def test_a_bomb_in_a_spec_file_is_a_located_error(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(textwrap.dedent("""\
        nnspec: 1
        name: t
        params: {a: "${'x' * 10}", b: "${a.replace('x', 'y')}"}
        inputs: {x: {shape: [1, 4]}}
        nodes: {r: {op: relu, in: x}}
        outputs: {y: r}
        """))
    with pytest.raises(NnspecError) as ei:
        load(str(path))
    err = ei.value
    errs = getattr(err, "errors", None) or [err]
    assert errs[0].loc is not None
    rendered = err.render()
    assert "param 'b'" in rendered and "method calls ('.replace(...)')" in rendered, rendered
