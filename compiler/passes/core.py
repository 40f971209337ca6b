"""The core passes every pipeline starts with: expand, infer_shapes, resolve_ties, eliminate_dead_code."""
from __future__ import annotations

from ..errors import ShapeError, SpecError, SpecErrors
from ..ir.graph import Graph
from ..limits import MAX_PARAMS
from .expand import expand as _expand
from .inference import _BodyFailed, _check_index_ranges, _infer_graph, apply_init_defaults
from .manager import PassContext, PassResult, Program, register_pass


@register_pass("expand")
def expand(program: Program, ctx: PassContext) -> PassResult:
    """Spec -> graphs: evaluate expressions, inline blocks and repeats, build scan bodies."""
    program.graphs = _expand(program.spec)
    # Every node is new. `added` counts scan bodies too, `nodes` the entry graphs only. (The walk
    # computes the topological orders infer_shapes reads next; they stay cached, so it costs nothing.)
    added = sum(len(g) for g in program.all_graphs())
    top = sum(len(g) for g in program.graphs.values())
    return PassResult(added=added, summary={"nodes": top, "graphs": list(program.graphs)})


@register_pass("infer_shapes", requires=("expand",), changes=("types", "params"))
def infer_shapes(program: Program, ctx: PassContext) -> PassResult:
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
    apply_init_defaults(program)
    owners = {n.id: n for n in program.all_nodes() if n.params}  # a node shared by entry graphs, once
    total = sum(p.numel() for n in owners.values() for k, p in n.params.items() if k not in n.ties)
    if total > MAX_PARAMS:
        raise ShapeError(f"the program has {total:,} parameters and buffers", program.spec.loc(("nodes",), key=True),
                         expected=f"at most {MAX_PARAMS:,}")
    # Types and parameter shapes are filled in, not changed: nothing counts as rewritten.
    return PassResult(summary={"params": total})


@register_pass("resolve_ties", requires=("infer_shapes",), changes=("params",))
def resolve_ties(program: Program, ctx: PassContext) -> PassResult:
    """Resolve `tie: {param: node.param}` and `share: node` to the owning parameter.

    1. `share: other` ties every parameter to `other`'s parameter of the same name.
    2. Chains (a -> b -> c) resolve to the final owner; shapes must be equal.
    """
    by_id = {n.id: n for n in program.all_nodes()}
    count = 0
    tied_nodes = set()

    def split(target: str) -> tuple[str, str]:
        """`layer.0.attn.out_proj.weight` -> (`layer.0.attn`, `out_proj.weight`): the longest node
        id that has the rest as a parameter (ops with torch submodules have dotted parameter names)."""
        parts = target.split(".")
        for k in range(len(parts) - 1, 0, -1):
            nid, pname = ".".join(parts[:k]), ".".join(parts[k:])
            if nid in by_id and pname in by_id[nid].params:
                return nid, pname
        return target.rpartition(".")[0], target.rpartition(".")[2]

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
            nid, pname = split(tgt)

    for n in by_id.values():  # `share:` first, so chains can pass through sharing nodes
        if "*" in n.ties:
            tid = n.ties.pop("*")
            if tid not in by_id:
                raise SpecError(f"'{n.id}' shares params with unknown node '{tid}'", n.loc, chain=n.chain,
                                expected="the id of a node with parameters, e.g. encoder.embed")
            n.ties.update({p: f"{tid}.{p}" for p in n.params})
    for n in by_id.values():
        for pname, target in list(n.ties.items()):
            tid, tp = split(target)
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
            tied_nodes.add(n.id)
    return PassResult(rewritten=len(tied_nodes), summary={"ties": count})


def owner_of(target: str, ids) -> str:
    """The node of a tie target `node.param.path`: its longest prefix that is a node id (parameter
    names of ops with torch submodules are dotted themselves, `out_proj.weight`)."""
    parts = target.split(".")
    for k in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:k]) in ids:
            return ".".join(parts[:k])
    return target.rpartition(".")[0]


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
    if removed:  # a block instance's outputs that nothing reads are no longer among its outputs
        gone = set(removed)
        for inst in g.instances.values():
            live_outs = [(nm, r) for nm, r in zip(inst.out_names, inst.out_refs) if r[0] not in gone]
            inst.out_names, inst.out_refs = [nm for nm, _ in live_outs], [r for _, r in live_outs]
    for n in g.nodes():
        if n.body is not None:
            removed += _dce(n.body, keep)
    return removed


@register_pass("eliminate_dead_code", requires=("expand",))
def eliminate_dead_code(program: Program, ctx: PassContext) -> PassResult:
    """Remove nodes no graph output depends on (nodes whose parameters others tie to are kept)."""
    ids = {n.id for n in program.all_nodes()}
    keep = {owner_of(t, ids) for n in program.all_nodes() for t in n.ties.values()}
    # A scan in one entry graph whose step block is a block instance of the same id in another (the
    # transformer's greedy loop over forward's target side) calls that instance's module: the
    # instance keeps every node the loop's body has, read in its own graph or not.
    keep |= {b.id for g in program.graphs.values() for n in g.nodes() if n.op == "scan" and n.body is not None
             for b in n.body.nodes() if b.op != "input"}  # body node ids carry the scan's prefix
    removed = []
    for g in program.graphs.values():
        removed += _dce(g, keep)
    return PassResult(removed=len(removed), summary={"removed": sorted(removed)})
