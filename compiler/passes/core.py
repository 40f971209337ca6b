"""The core passes every pipeline starts with: expand, infer_shapes, resolve_ties, eliminate_dead_code."""
from __future__ import annotations

from ..errors import NnspecError, ShapeError, SpecError, SpecErrors
from ..ir.graph import Graph
from .expand import expand as _expand
from .manager import Program, register_pass


@register_pass("expand")
def expand(program: Program, ctx) -> dict:
    """Spec -> graphs: evaluate expressions, inline blocks and repeats, build scan bodies."""
    program.graphs = _expand(program.spec)
    return {"nodes": sum(len(g) for g in program.graphs.values())}


def _infer_graph(g: Graph, errors: list) -> None:
    failed: set = set()
    for n in g.topo():
        if n.op == "input":
            if not n.outputs:  # scan body inputs are typed by their scan
                failed.add(n.id)
            continue
        srcs = g.inputs_of(n.id)
        if any(s in failed for s, _ in srcs):
            failed.add(n.id)
            continue
        ins = [g.node(s).outputs[p] for s, p in srcs]
        op = n.opdef
        try:
            if hasattr(op, "infer_node"):
                n.outputs = op.infer_node(n, ins, lambda body: _infer_body(body, errors))
            else:
                n.outputs = list(op.infer(n.attrs, ins))
            n.params = op.params(n.attrs, ins)
            if not n.out_names or len(n.out_names) != len(n.outputs):
                n.out_names = op.outputs(n.attrs) if len(op.outputs(n.attrs)) == len(n.outputs) else \
                    [f"out{i}" for i in range(len(n.outputs))]
        except ShapeError as e:
            ins_txt = ", ".join(f"{s}: {t}" for (s, _), t in zip(srcs, ins))
            errors.append(ShapeError(f"{n.op} '{n.id}': {e.message}", n.loc, expected=e.expected,
                                     hint=e.hint or (f"inputs are {ins_txt}" if ins_txt else None), chain=n.chain))
            failed.add(n.id)
        except NnspecError as e:
            e.loc = e.loc or n.loc
            e.chain = e.chain or n.chain
            errors.append(e)
            failed.add(n.id)


class _BodyFailed(ShapeError):
    pass


def _infer_body(body: Graph, errors: list) -> None:
    before = len(errors)
    _infer_graph(body, errors)
    if len(errors) > before:
        raise _BodyFailed("its body has errors (reported above)")


@register_pass("infer_shapes", requires=("expand",))
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
    return {}


@register_pass("resolve_ties", requires=("infer_shapes",))
def resolve_ties(program: Program, ctx) -> dict:
    """Resolve `tie: {param: node.param}` and `share: node` to the owning parameter.

    1. `share: other` ties every parameter to `other`'s parameter of the same name.
    2. Chains (a -> b -> c) resolve to the final owner; shapes must be equal.
    """
    by_id = {n.id: n for n in program.all_nodes()}
    count = 0

    def owner(nid: str, pname: str, seen: tuple):
        n = by_id[nid]
        tgt = n.ties.get(pname)
        if tgt is None or (nid, pname) in seen:
            return nid, pname
        tid, _, tp = tgt.rpartition(".")
        return owner(tid, tp, seen + ((nid, pname),))

    for n in list(by_id.values()):
        if not n.ties:
            continue
        if "*" in n.ties:
            tid = n.ties.pop("*")
            if tid not in by_id:
                raise SpecError(f"'{n.id}' shares params with unknown node '{tid}'", n.loc, chain=n.chain,
                                expected="the id of a node with parameters, e.g. encoder.embed")
            n.ties.update({p: f"{tid}.{p}" for p in n.params})
        for pname, target in list(n.ties.items()):
            tid, _, tp = target.rpartition(".")
            if pname not in n.params:
                raise SpecError(f"'{n.id}' ties '{pname}' but its op {n.op} has no such parameter", n.loc,
                                chain=n.chain, expected=f"one of: {', '.join(n.params) or '(none)'}")
            if tid not in by_id or tp not in by_id[tid].params:
                have = ", ".join(f"{tid}.{p}" for p in by_id[tid].params) if tid in by_id else None
                raise SpecError(f"'{n.id}' ties to unknown parameter '{target}'", n.loc, chain=n.chain,
                                expected=f"one of: {have}" if have else "node_id.param_name of an existing node")
            oid, op_ = owner(tid, tp, ((n.id, pname),))
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
        stack.extend(s for s, _ in g.inputs_of(nid))
    removed = []
    for n in reversed(g.topo()):
        if n.id not in live:
            g.remove(n.id)
            removed.append(n.id)
        elif n.body is not None:
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
