"""`${...}` expressions in specs, evaluated in a locked-down jinja2 sandbox (never Python `eval`).

A string that is exactly `${expr}` evaluates to the expression's native value (int, list, bool, ...);
a string with `${expr}` inside other text is interpolated into a string. Names come from the
spec's `params`, a block's `args` and, inside a `repeat`, the index `i`.

Specs are untrusted, so the language is an allow-list, not "jinja minus the dangerous bits":

* Syntax: constants, names, list and tuple literals, `x[i]`, `x[a:b:c]`, `cfg.key`, the arithmetic
  operators `+ - * / // % **`, unary `- + not`, comparisons (`== != < <= > >= in not in`),
  `and`/`or`, `a if c else b` (the `else` is required) and calls of the functions
  `min max len range int float abs sum round bool str list` with positional arguments only.
  Everything else -- filters (`x|upper`), tests (`x is defined`), `~`, dict literals, keyword or
  `*`/`**` arguments, calling anything but those functions, the name `self` -- is refused when
  the expression is compiled, with an ExprError naming what is not allowed.
* Values are plain data: None, bool, int, float, str, list, tuple, dict. No attribute of any Python
  object is reachable: `a.b` only looks up the key `b` of a dict; `x[k]` indexes a str/list/tuple
  with an int or slice, or a dict with a key.
* Bounds, checked before or as a value is built (so a bomb fails fast instead of allocating):
  strings and lists hold at most `_MAX_SEQ` elements (nested containers count all their elements
  and the characters of their strings); integers have at most `_MAX_INT_BITS` bits (`**` is
  estimated from the operands before it is computed); float overflow is an error; `range`,
  repetition, concatenation, `list()`, `str()`, `int()`/`float()` of text, `round`'s digits and
  interpolated text are bounded; `%` is arithmetic only (no string formatting); `sum` adds numbers
  only. The final value of every expression is checked against the same bounds.
* Size and nesting of the expression: at most `_MAX_EXPR_CHARS` characters, `_MAX_BRACKETS`
  nested brackets (checked on the tokens, before jinja's recursive parser runs), `_MAX_DEPTH`
  levels and `_MAX_NODES` nodes in the syntax tree; values nest at most `_MAX_DEPTH` deep. Deeper
  is "expression nests too deeply" -- an ExprError, never a RecursionError. Each distinct
  expression is parsed and checked once (the outcome, error or code, is cached).
* Any other exception while evaluating (MemoryError aside) becomes an ExprError.
* Determinism: jinja's filters, tests and globals (`lipsum`, `cycler`, `joiner`, `namespace`,
  `dict`, the `random` filter, ...) are all removed, so nothing random or time-dependent exists.
* Messages are short: a quoted expression or value is cut to `_MAX_SHOWN` characters.
"""
from __future__ import annotations

import re
from functools import lru_cache

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator
from jinja2.environment import TemplateExpression
from jinja2.exceptions import TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import expr_lists
from .expr_values import (_BINOPS, _FUNCTION_IDS, _FUNCTIONS, _MAX_DEPTH, _MAX_INT_BITS, _MAX_SEQ, _NESTS, _UNOPS,
                          ExprError, _a, _checked, _defined, _kind, _plain, _short, _show, _str)

# no "}" inside: "${a}_${b}" is two expressions, not one "a}_${b"
_EXPR = re.compile(r"\$\{([^}\n]*)\}")
_MAX_BRACKETS = 32  # each bracket costs the recursive jinja parser ~14 Python frames
_MAX_NODES = 200  # real expressions have < 20; bounds the work one expression can do
_MAX_EXPR_CHARS = 10_000  # jinja's lexer is slow (~2 s per MB); real expressions are < 100




# -- the environment --------------------------------------------------------------------------------

class _CodeGenerator(CodeGenerator):
    """jinja's code generator with two holes closed.

    Slices normally bypass `environment.getitem` (`obj[a:b]` is emitted as Python); here they go
    through `environment.getslice`. List and tuple literals are passed to `environment.literal`,
    so `[a, a, a]` is bounded like every other value that is built.
    """

    def visit_Getitem(self, node, frame):
        if not isinstance(node.arg, nodes.Slice):
            return super().visit_Getitem(node, frame)
        self.write("environment.getslice(")
        self.visit(node.node, frame)
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            self.write(", ")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write(")")

    def visit_List(self, node, frame):
        self.write("environment.literal(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Tuple(self, node, frame):
        self.write("environment.literal(")
        super().visit_Tuple(node, frame)
        self.write(")")


class _Env(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(_BINOPS)  # `and`/`or` are not: they only pick an operand
    intercepted_unops = frozenset(_UNOPS)

    def __init__(self):
        # optimized=False: jinja's optimizer would fold constant sub-expressions at compile time,
        # outside of these hooks.
        super().__init__(undefined=StrictUndefined, optimized=False, autoescape=False)
        self.filters.clear()
        self.tests.clear()
        self.globals.clear()  # lipsum, cycler, joiner, namespace, dict, range
        self.globals.update(_FUNCTIONS)

    def call_binop(self, context, operator, left, right):
        _plain(left, right)
        return _BINOPS[operator](left, right)

    def call_unop(self, context, operator, arg):
        _plain(arg)
        return _UNOPS[operator](arg)

    def getattr(self, obj, attribute):
        _plain(obj)
        if type(obj) is not dict:
            raise ExprError(f"'.{_short(attribute)}' is not allowed: '.' only reads a key of a dict, "
                            f"and {_a(obj)} has no keys")
        return self._key(obj, attribute)

    def getitem(self, obj, argument):
        _plain(obj, argument)
        if type(obj) is dict:
            return self._key(obj, argument)
        if type(obj) not in (str, list, tuple):
            raise ExprError(f"{_a(obj)} cannot be indexed")
        if type(argument) not in (bool, int):
            raise ExprError(f"{_a(obj)} index must be an integer, not {_a(argument)}")
        try:
            return obj[argument]
        except IndexError:
            raise ExprError(f"index {_show(argument)} is out of range for {_a(obj)} "
                            f"of length {len(obj)}") from None

    def getslice(self, obj, start, stop, step):
        _plain(obj, start, stop, step)
        if type(obj) not in (str, list, tuple):
            raise ExprError(f"{_a(obj)} cannot be sliced")
        if any(type(p) not in (type(None), bool, int) for p in (start, stop, step)):
            raise ExprError("slice bounds must be integers")
        return obj[start:stop:step]  # a slice is never longer than what it slices

    @staticmethod
    def _key(obj: dict, key):
        try:
            return obj[key]
        except KeyError:
            keys = _short(", ".join(map(str, obj)))
            raise ExprError(f"no key {_show(key)} in this dict (keys: {keys or 'none'})") from None
        except TypeError:  # unhashable
            raise ExprError(f"a dict key cannot be {_a(key)}") from None

    def literal(self, seq):
        _plain(*seq)  # `[nope]` must fail on the undefined name, not carry it along
        return _checked(seq)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        # The syntax check admits only our function names as callees; a param can still shadow one.
        if id(__obj) not in _FUNCTION_IDS:
            _defined(__obj)
            raise ExprError(f"only the functions {', '.join(_FUNCTIONS)} can be called "
                            f"(is a param shadowing one?)")
        if kwargs:
            raise ExprError("keyword arguments are not allowed")
        _plain(*args)
        return _checked(__obj(*args))


_ENV = _Env()


# -- the syntax allow-list ------------------------------------------------------------------------

_ALLOWED_NODES = frozenset([
    nodes.Const, nodes.Name, nodes.List, nodes.Tuple, nodes.Getitem, nodes.Slice, nodes.Getattr,
    nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Pow,
    nodes.Neg, nodes.Pos, nodes.Not, nodes.Compare, nodes.Operand, nodes.And, nodes.Or,
    nodes.CondExpr, nodes.Call,
])
_REFUSED = {
    nodes.Filter: "filters ('x|name') are not part of the expression language",
    nodes.Test: "tests ('x is name') are not part of the expression language",
    nodes.Concat: "'~' string concatenation is not part of the expression language (use '+')",
    nodes.Dict: "dict literals are not part of the expression language",
}


def _check_const(node: nodes.Const) -> None:
    v = node.value
    if type(v) not in (type(None), bool, int, float, str):
        raise ExprError(f"constants of type {_kind(v)} are not allowed")
    if type(v) is int and v.bit_length() > _MAX_INT_BITS:
        raise ExprError(f"integer constant is too large (more than {_MAX_INT_BITS} bits)")
    if type(v) is str and len(v) > _MAX_SEQ:
        raise ExprError(f"string constant is longer than {_MAX_SEQ} characters")


def _check_name(node: nodes.Name) -> None:
    if node.ctx != "load":
        raise ExprError(f"cannot assign to '{_short(node.name)}'")
    if node.name == "self":  # jinja binds it to a TemplateReference, whatever the params say
        raise ExprError("'self' cannot be used in expressions")


def _check_call(node: nodes.Call) -> None:
    if isinstance(node.node, nodes.Getattr):
        raise ExprError(f"method calls ('.{_short(node.node.attr)}(...)') are not part of the expression language")
    if not isinstance(node.node, nodes.Name) or node.node.name not in _FUNCTIONS:
        what = f"'{_short(node.node.name)}'" if isinstance(node.node, nodes.Name) else "this"
        raise ExprError(f"{what} is not a function of the expression language "
                        f"(functions: {', '.join(_FUNCTIONS)})")
    if node.kwargs:
        raise ExprError("keyword arguments are not allowed (pass arguments by position)")
    if node.dyn_args is not None or node.dyn_kwargs is not None:
        raise ExprError("'*args' and '**kwargs' are not allowed")


def _check_condexpr(node: nodes.CondExpr) -> None:
    if node.expr2 is None:
        raise ExprError("'a if c' needs an 'else' part")


_NODE_CHECKS = {nodes.Const: _check_const, nodes.Name: _check_name, nodes.Call: _check_call,
                nodes.CondExpr: _check_condexpr}


def _check_tree(root: nodes.Node) -> None:
    """Refuse every node type not in the allow-list; bound the tree's depth and size."""
    count = 0

    def visit(node: nodes.Node, depth: int) -> None:
        nonlocal count
        count += 1
        if depth > _MAX_DEPTH:
            raise ExprError(f"{_NESTS} (more than {_MAX_DEPTH} levels)")
        if count > _MAX_NODES:
            raise ExprError(f"expression is too long (more than {_MAX_NODES} operations)")
        kind = type(node)
        if kind not in _ALLOWED_NODES:
            raise ExprError(_REFUSED.get(kind, f"'{kind.__name__}' is not part of the expression language"))
        check = _NODE_CHECKS.get(kind)
        if check:
            check(node)
        for child in node.iter_child_nodes():
            visit(child, depth + 1)

    visit(root, 1)


def _check_brackets(expr: str) -> None:
    """Bound bracket nesting on the tokens, before jinja's recursive-descent parser sees them."""
    depth = 0
    for token in _ENV.lexer.tokenize(expr, state="variable"):  # iterative; raises on bad syntax
        if token.type in ("lparen", "lbracket", "lbrace"):
            depth += 1
            if depth > _MAX_BRACKETS:
                raise ExprError(f"{_NESTS} (more than {_MAX_BRACKETS} nested brackets)")
        elif token.type in ("rparen", "rbracket", "rbrace"):
            depth -= 1


# -- compiling and evaluating ---------------------------------------------------------------------

def _in(expr: str, msg: str) -> ExprError:
    return ExprError(f"in '{_short(expr)}': {msg}")


def _parse(expr: str) -> nodes.Expr:
    if len(expr) > _MAX_EXPR_CHARS:
        raise _in(expr, f"expression is longer than {_MAX_EXPR_CHARS} characters")
    try:
        _check_brackets(expr)
        parser = Parser(_ENV, expr, state="variable")
        tree = parser.parse_expression()
        if not parser.stream.eos:
            raise TemplateSyntaxError("unexpected text after the expression", parser.stream.current.lineno)
    except TemplateSyntaxError as e:
        raise ExprError(f"cannot parse expression '{_short(expr)}': {_short(e.message or str(e))}") from None
    except RecursionError:  # e.g. thousands of unary minus signs
        raise _in(expr, _NESTS) from None
    except ExprError as e:
        raise _in(expr, str(e)) from None
    return tree


@lru_cache(maxsize=4096)
def _compiled(expr: str) -> TemplateExpression | str:
    """The compiled expression, or the message saying why it is refused.

    Errors are cached too (as text: an exception would keep its traceback's frames alive), so a bad
    expression in a block repeated 10_000 times is parsed once.
    """
    try:
        return _compile(expr)
    except ExprError as e:
        return str(e)


def _compile(expr: str) -> TemplateExpression:
    tree = _parse(expr)
    try:
        _check_tree(tree)
    except ExprError as e:
        raise _in(expr, str(e)) from None
    # what jinja's compile_expression does, with our already-checked tree
    tree.set_environment(_ENV)
    body = [nodes.Assign(nodes.Name("result", "store"), tree, lineno=1)]
    try:
        template = _ENV.from_string(nodes.Template(body, lineno=1))
    except RecursionError:
        raise _in(expr, _NESTS) from None
    except (TemplateError, SyntaxError) as e:
        raise _in(expr, _short(str(e))) from None
    return TemplateExpression(template, undefined_to_none=False)


def has_expr(value) -> bool:
    return isinstance(value, str) and "${" in value


@lru_cache(maxsize=4096)
def _names_in_text(text: str) -> frozenset | None:
    found: set = set()
    for m in _EXPR.finditer(text):
        names = _expr_names(m.group(1).strip())
        if names is None:
            return None
        found |= names
    return frozenset(found)


def _expr_names(expr: str) -> set | None:
    """Names one expression reads (a comprehension's loop variable is its own, not read)."""
    try:
        lists = expr_lists.plan(expr)
        tree = _parse(lists.text)
    except ExprError:
        return None
    found = {n.name for n in [tree, *tree.find_all(nodes.Name)] if isinstance(n, nodes.Name)}
    found -= {part.placeholder for part in lists.parts} | set(_FUNCTIONS)  # callees are not values read
    for part in lists.parts:
        pieces = [_expr_names(x) for x in (part.iterable, part.item, part.condition or "0")]
        if None in pieces:
            return None
        found |= pieces[0] | ((pieces[1] | pieces[2]) - {part.var})
    return found


def names_in(value) -> set | None:
    """The names the `${...}` expressions inside `value` (nested lists and dicts too) read, or None
    when one of them does not compile (its evaluation will report the error)."""
    found: set = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "${" in v:
                names = _names_in_text(v)
                if names is None:
                    return None
                found |= names
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
            stack.extend(k for k in v if isinstance(k, str))
    return found


def eval_expr(expr: str, names: dict):
    expr = expr.strip()
    try:
        lists = expr_lists.plan(expr)
    except ExprError as e:
        raise _in(expr, str(e)) from None
    if lists.parts:  # list comprehensions, built first and bound to placeholder names
        scope = dict(names)
        for part in lists.parts:
            scope[part.placeholder] = expr_lists.build(part, names, eval_expr)
        expr, names = lists.text, scope
    run = _compiled(expr)
    if isinstance(run, str):
        raise ExprError(run)
    try:
        return _checked(run(**names))
    except ExprError as e:
        raise _in(expr, str(e)) from None
    except UndefinedError as e:
        known = _short(", ".join(sorted(map(str, names)))) or "none"
        raise ExprError(f"{_short(e.message or str(e))} (known names: {known})") from None
    except RecursionError:
        raise _in(expr, _NESTS) from None
    except MemoryError:
        raise
    except TemplateError as e:
        raise _in(expr, _short(e.message or str(e))) from None
    except Exception as e:  # noqa: BLE001 -- a spec must get an ExprError, never a traceback
        raise _in(expr, f"{type(e).__name__}: {_short(str(e))}") from None


def _interpolate(text: str, names: dict) -> str:
    """`text` with each `${expr}` replaced by its value's str().

    What the expressions insert is bounded in total: "${a}${a}${a}..." must not multiply a long
    value by the number of times it is written (the text around them is already in the file).
    """
    parts, inserted, pos = [], 0, 0
    for m in _EXPR.finditer(text):
        value = eval_expr(m.group(1), names)
        try:
            piece = _str(value)
        except ExprError as e:
            raise _in(m.group(1), str(e)) from None
        inserted += len(piece)
        if inserted > _MAX_SEQ:
            raise ExprError(f"the ${{...}} in this text insert more than {_MAX_SEQ} characters")
        parts += [text[pos:m.start()], piece]
        pos = m.end()
    parts.append(text[pos:])
    return "".join(parts)


def evaluate(value, names: dict):
    """Evaluate every `${...}` inside `value` (recursively through lists and dicts)."""
    if isinstance(value, str):
        if "${" not in value:
            return value
        m = _EXPR.fullmatch(value.strip())
        if m:
            return eval_expr(m.group(1), names)
        return _interpolate(value, names)
    if isinstance(value, list):
        return [evaluate(v, names) for v in value]
    if isinstance(value, dict):
        return {k: evaluate(v, names) for k, v in value.items()}
    return value
