"""The core passes every pipeline starts with: expand, infer_shapes, resolve_ties, eliminate_dead_code."""
from __future__ import annotations

from ..errors import NnspecError, ShapeError, SpecError, SpecErrors, quote
from ..ir.graph import Graph
from ..limits import MAX_COLLECTED_ERRORS, MAX_DIM, MAX_PARAMS, MAX_TENSOR_ELEMENTS
from .expand import expand as _expand
from .manager import Program, register_pass


@register_pass("expand")
def expand(program: Program, ctx) -> dict:
    """Spec -> graphs: evaluate expressions, inline blocks and repeats, build scan bodies."""
    program.graphs = _expand(program.spec)
    return {"nodes": sum(len(g) for g in program.graphs.values())}


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


@register_pass("infer_shapes", requires=("expand",), changes=("types", "params"))
def infer_shapes(program: Program, ctx) -> dict:
    """Infer every node's output types and parameter shapes, in topological order.

    1. Each op's `infer` receives its input types and returns output types, or raises ShapeError,
       reported at the node's spec location with its block-instantiation chain.
    2. Nodes downstream of a failed node are skipped (one mistake, one message).
    3. A scan types its body from its inputs, then checks carried state keeps its type.
    """
    errors: list = []
    for g in program.graphs.values():
        _infer_graph(g, errors)
    errors = [e for e in errors if not isinstance(e, _BodyFailed)]
    if errors:
        raise errors[0] if len(errors) == 1 else SpecErrors(errors)
    for g in program.graphs.values():
        _check_index_ranges(g)
    total = sum(p.numel() for n in program.all_nodes() for k, p in n.params.items() if k not in n.ties)
    if total > MAX_PARAMS:
        raise ShapeError(f"the program has {total:,} parameters and buffers", program.spec.loc(("nodes",), key=True),
                         expected=f"at most {MAX_PARAMS:,}")
    return {}


@register_pass("resolve_ties", requires=("infer_shapes",), changes=("params",))
def resolve_ties(program: Program, ctx) -> dict:
    """Resolve `tie: {param: node.param}` and `share: node` to the owning parameter.

    1. `share: other` ties every parameter to `other`'s parameter of the same name.
    2. Chains (a -> b -> c) resolve to the final owner; shapes must be equal.
    """
    by_id = {n.id: n for n in program.all_nodes()}
    count = 0

    def owner(n, nid: str, pname: str, seen: set):
        # Iterative: a chain of thousands of ties must not exhaust the Python stack.
        while True:
            if (nid, pname) in seen:
                raise SpecError(f"the ties of '{n.id}' form a cycle through '{nid}.{pname}'", n.loc, chain=n.chain,
                                expected="ties that end at a parameter which is not tied itself")
            if nid not in by_id or pname not in by_id[nid].params:
                raise SpecError(f"'{n.id}' ties, through a chain of ties, to unknown parameter '{nid}.{pname}'", n.loc,
                                chain=n.chain, expected="node_id.param_name of an existing node")
            tgt = by_id[nid].ties.get(pname)
            if tgt is None:
                return nid, pname
            seen.add((nid, pname))
            nid, _, pname = tgt.rpartition(".")

    for n in by_id.values():  # `share:` first, so chains can pass through sharing nodes
        if "*" in n.ties:
            tid = n.ties.pop("*")
            if tid not in by_id:
                raise SpecError(f"'{n.id}' shares params with unknown node '{tid}'", n.loc, chain=n.chain,
                                expected="the id of a node with parameters, e.g. encoder.embed")
            n.ties.update({p: f"{tid}.{p}" for p in n.params})
    for n in by_id.values():
        for pname, target in list(n.ties.items()):
            tid, _, tp = target.rpartition(".")
            if pname not in n.params:
                raise SpecError(f"'{n.id}' ties '{pname}' but its op {n.op} has no such parameter", n.loc,
                                chain=n.chain, expected=f"one of: {', '.join(n.params) or '(none)'}")
            if tid not in by_id or tp not in by_id[tid].params:
                have = ", ".join(f"{tid}.{p}" for p in by_id[tid].params) if tid in by_id else None
                raise SpecError(f"'{n.id}' ties to unknown parameter '{target}'", n.loc, chain=n.chain,
                                expected=f"one of: {have}" if have else "node_id.param_name of an existing node")
            oid, op_ = owner(n, tid, tp, {(n.id, pname)})
            mine, theirs = n.params[pname].shape, by_id[oid].params[op_].shape
            if tuple(mine) != tuple(theirs):
                raise SpecError(f"'{n.id}.{pname}' {list(mine)} cannot share storage with '{oid}.{op_}' {list(theirs)}",
                                n.loc, chain=n.chain, expected="parameters of equal shape")
            n.ties[pname] = f"{oid}.{op_}"
            count += 1
    return {"ties": count}


def _dce(g: Graph, keep: set) -> list:
    live = set()
    stack = [nid for nid, _ in g.outputs.values()] + [n.id for n in g.nodes() if n.id in keep or n.op == "input"]
    while stack:
        nid = stack.pop()
        if nid in live:
            continue
        live.add(nid)
        stack.extend(src for _, src, _ in g.in_edges(nid))
    removed = []
    if len(live) < len(g):
        for n in reversed(g.topo()):
            if n.id not in live:
                g.remove(n.id)
                removed.append(n.id)
    for n in g.nodes():
        if n.body is not None:
            removed += _dce(n.body, keep)
    return removed


@register_pass("eliminate_dead_code", requires=("expand",))
def eliminate_dead_code(program: Program, ctx) -> dict:
    """Remove nodes no graph output depends on (nodes whose parameters others tie to are kept)."""
    keep = {t.rpartition(".")[0] for n in program.all_nodes() for t in n.ties.values()}
    removed = []
    for g in program.graphs.values():
        removed += _dce(g, keep)
    return {"removed": sorted(removed)}
