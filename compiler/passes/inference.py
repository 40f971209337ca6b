"""Shape inference over a graph: each node typed from its inputs by its op's `infer`, the checks that
go with it (sizes within compiler/limits.py, `init:` naming real parameters, index ranges), and
`infer_now`, which types one value on demand while a spec is still being expanded.

The `infer_shapes` pass (compiler/passes/core.py) runs `_infer_graph` over every graph; the expander
(compiler/passes/expand.py) calls `infer_now` when an expression reads a shape (`${channels(x)}`).
"""
from __future__ import annotations

from ..errors import NnspecError, ShapeError, SpecError, quote
from ..ir.graph import Graph
from ..limits import MAX_COLLECTED_ERRORS, MAX_DIM, MAX_TENSOR_ELEMENTS


class OpBug(NnspecError):
    """An op's own code failed on input it should have refused with a ShapeError: a bug in that op."""

    kind = "internal error"
    exit_code = 70


def _infer_graph(g: Graph, errors: list) -> None:
    failed: set = set()
    # Instances of a repeated block see the same attributes and input types over and over: infer
    # each combination once. (infer and params depend on nothing else; scan is not memoised.)
    memo: dict = {}
    for n in g.topo():
        if len(errors) >= MAX_COLLECTED_ERRORS:
            return
        if n.op == "input":
            if not n.outputs:  # scan body inputs are typed by their scan
                failed.add(n.id)
            else:
                _check_sizes(n.outputs, {})
            continue
        srcs = g.inputs_of(n.id)
        if any(s in failed for s, _ in srcs):
            failed.add(n.id)
            continue
        ins = n.in_types = [g.node(s).outputs[p] for s, p in srcs]
        op = n.opdef
        try:
            if hasattr(op, "infer_node"):
                n.outputs = op.infer_node(n, ins, lambda body: _infer_body(body, errors))
                n.params = op.params(n.attrs, ins)
            else:
                key = _memo_key(n, ins)
                hit = memo.get(key)
                if hit is None:
                    hit = memo[key] = list(op.infer(n.attrs, ins)), op.params(n.attrs, ins)
                    _check_sizes(hit[0], hit[1])
                n.outputs = list(hit[0])
                n.params = dict(hit[1])  # ParamSpecs are immutable: shared between equal nodes
            if not n.out_names or len(n.out_names) != len(n.outputs):
                names = op.outputs(n.attrs)
                n.out_names = names if len(names) == len(n.outputs) else [f"out{i}" for i in range(len(n.outputs))]
            if n.body is not None:
                _check_sizes(n.outputs, n.params)
            if n.init:
                _check_init(n)
        except ShapeError as e:
            ins_txt = ", ".join(f"{s}: {t}" for (s, _), t in zip(srcs, ins))
            errors.append(ShapeError(f"{n.op} '{n.id}': {e.message}", e.loc or n.loc, expected=e.expected,
                                     hint=e.hint or (f"inputs are {ins_txt}" if ins_txt else None), chain=n.chain))
            failed.add(n.id)
        except NnspecError as e:
            e.loc = e.loc or n.loc
            e.chain = e.chain or n.chain
            errors.append(e)
            failed.add(n.id)
        except (ArithmeticError, TypeError, ValueError, IndexError, KeyError, AttributeError, RecursionError) as e:
            # Not the user's fault, but still their spec's node: say where, and that the op is to blame.
            errors.append(OpBug(f"op '{n.op}' failed on node '{n.id}' ({type(e).__name__}: {quote(str(e))}); this is a "
                                f"bug in the op's shape inference, please report it with this spec", n.loc, chain=n.chain))
            failed.add(n.id)


def _memo_key(n, ins):
    # By the attribute object's identity: stamped block instances share theirs (passes/templates.py),
    # and every Attrs object lives as long as the program, so an id is never reused meanwhile.
    return (n.op, id(n.attrs), tuple(ins))


def infer_now(g: Graph, ref: tuple):
    """The type of output `ref` = (node, port) of `g`, inferring it and the untyped nodes it depends
    on (used while expanding, where expressions read shapes: `${channels(x)}`)."""
    # Post-order walk over the untyped ancestors: a node is placed only once all its untyped
    # inputs are (a diamond, two readers of one untyped node, must not place it after a reader).
    order, state, stack = [], {}, [(ref[0], False)]
    while stack:
        nid, expanded = stack.pop()
        if expanded:
            state[nid] = "done"
            if not g.node(nid).outputs:
                order.append(nid)
            continue
        if state.get(nid) == "done":
            continue
        if state.get(nid) == "visiting":  # reached again below itself
            raise ShapeError(f"'{nid}' depends on its own output")
        state[nid] = "visiting"
        stack.append((nid, True))
        stack.extend((s, False) for s, _ in g.inputs_of(nid) if not g.node(s).outputs and state.get(s) != "done")
    for nid in order:
        n = g.node(nid)
        if n.op == "input" or n.body is not None:
            raise ShapeError(f"the type of '{nid}' is known only after expansion ({'a scan' if n.body else 'a scan step input'})")
        ins = [g.node(s).outputs[p] for s, p in g.inputs_of(nid)]
        n.outputs = list(n.opdef.infer(n.attrs, ins))
    return g.node(ref[0]).outputs[ref[1]]


def _check_sizes(outputs: list, params: dict) -> None:
    """Concrete dims, per-tensor element counts and parameter shapes stay within compiler/limits.py."""
    for t in outputs:
        numel = 1
        for d in t.shape:
            if isinstance(d, int):
                if not 0 <= d <= MAX_DIM:
                    raise ShapeError(f"dim {d:,} of {t} is out of range", expected=f"dims from 0 to {MAX_DIM:,}")
                numel *= d
        if numel > MAX_TENSOR_ELEMENTS:
            raise ShapeError(f"{t} has {numel:,} elements", expected=f"at most {MAX_TENSOR_ELEMENTS:,} per tensor")
    for pname, p in params.items():
        if any(not isinstance(d, int) or not 0 <= d <= MAX_DIM for d in p.shape) or p.numel() > MAX_TENSOR_ELEMENTS:
            raise ShapeError(f"parameter '{pname}' has shape {list(p.shape)}",
                             expected=f"concrete dims up to {MAX_DIM:,} and at most {MAX_TENSOR_ELEMENTS:,} elements")


def apply_init_defaults(program) -> None:
    """The spec's `init_defaults` onto every node of those ops (a node's own `init:` wins); a default
    naming a parameter no node of its op has is an error."""
    defaults = program.spec.init_defaults
    if not defaults:
        return
    seen = {op: set() for op in defaults}
    for n in program.all_nodes():
        for pname, init in defaults.get(n.op, {}).items():
            if pname in n.params:
                n.init.setdefault(pname, init)
                seen[n.op].add(pname)
    for op, params in defaults.items():
        missing = sorted(set(params) - seen[op])
        used = any(n.op == op for n in program.all_nodes())
        if missing and used:
            have = sorted({p for n in program.all_nodes() if n.op == op for p in n.params})
            raise SpecError(f"init_defaults of '{op}' names parameter(s) {', '.join(missing)}, which no {op} node has",
                            program.spec.loc(("init_defaults", op), key=True), expected=f"one of: {', '.join(have)}")


def _check_init(n) -> None:
    """Every `init:` entry names a parameter of the node's op."""
    for pname in n.init:
        if pname not in n.params or n.params[pname].buffer:
            have = ", ".join(k for k, p in n.params.items() if not p.buffer) or "none"
            raise SpecError(f"init names parameter '{pname}', but {n.op} '{n.id}' has no such parameter",
                            n.init_loc or n.loc, chain=n.chain, expected=f"one of its parameters: {have}")


def _check_index_ranges(g: Graph) -> None:
    """A declared input `range: [low, high)` that feeds an index stays inside what it indexes:
    `range: [0, 1000]` into an embedding of 256 rows would make every generated input fail."""
    for n in g.inputs():
        rng = n.attrs.range
        if not rng or not n.outputs:
            continue
        lo, hi = rng
        for dst, slot, _ in g.users(n.id):
            user = g.node(dst)
            size = user.opdef.index_bounds(user.attrs, g.input_types(dst)).get(slot)
            if size is None:
                continue
            if isinstance(hi, str) and isinstance(size, int):  # [0, V]: V may grow to its declared max
                hi_max = (g.symbols.get(hi) or {}).get("max")
                too_wide = hi_max is None or hi_max > size
            elif isinstance(size, str):  # a symbolic size: [0, V] into V, or a number below V's min
                too_wide = hi != size and not (isinstance(hi, (int, float)) and
                                               hi <= (g.symbols.get(size) or {}).get("min", 1))
            else:
                too_wide = hi > size
            if too_wide or (isinstance(lo, (int, float)) and lo < 0):
                raise SpecError(f"input '{n.id}' has range [{lo}, {hi}) but indexes {user.op} '{user.id}', which has "
                                f"{size} entries", n.loc, expected=f"a range inside [0, {size}), e.g. range: [0, {size}]")


class _BodyFailed(ShapeError):
    pass


def _infer_body(body: Graph, errors: list) -> None:
    before = len(errors)
    _infer_graph(body, errors)
    if len(errors) > before:
        raise _BodyFailed("its body has errors (reported above)")


