"""The Graph API keeps its caches (nodes by id, input edges, topological order) equal to what the
networkx graph underneath says, through every kind of edit a pass makes."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.compiler.ir.dims import TensorType
from nnspec.compiler.ir.graph import Graph, Node


def _truth(g: Graph, nid: str) -> list:
    """Input edges of `nid` read straight from networkx, sorted by slot."""
    return sorted((d["slot"], src, d["port"]) for src, _, d in g._g.in_edges(nid, data=True))


def _check(g: Graph) -> None:
    ids = sorted(g._g.nodes)
    assert sorted(n.id for n in g.nodes()) == ids
    for nid in ids:
        assert g.in_edges(nid) == _truth(g, nid)
        assert g.inputs_of(nid) == [(s, p) for _, s, p in _truth(g, nid)]
    order = [n.id for n in g.topo()]
    pos = {nid: i for i, nid in enumerate(order)}
    assert sorted(order) == ids
    for nid in ids:
        assert all(pos[src] < pos[nid] for _, src, _ in _truth(g, nid))


def _node(nid: str) -> Node:
    return Node(nid, "relu", outputs=[TensorType((1,))], out_names=["out"])


EDITS = st.lists(st.tuples(st.sampled_from(["add", "replace_uses", "set_inputs", "rewrite", "remove_dead"]),
                           st.integers(0, 1000), st.integers(0, 1000)), max_size=25)


@settings(max_examples=150, deadline=None)
@given(EDITS)
def test_caches_follow_every_edit(edits):
    g = Graph()
    g.add(_node("x"))
    count = 0
    for kind, a, b in edits:
        nodes = [n.id for n in g.topo()]
        if kind == "add":
            count += 1
            nid = f"n{count}"
            g.add(_node(nid))
            srcs = [nodes[a % len(nodes)], nodes[b % len(nodes)]]
            for slot, src in enumerate(srcs[: 1 + a % 2]):
                g.connect(src, 0, nid, slot)
        elif kind == "replace_uses" and len(nodes) > 1:
            old, new = nodes[a % len(nodes)], nodes[b % len(nodes)]
            # only towards an earlier node, so the graph stays acyclic
            if nodes.index(new) < nodes.index(old):
                g.replace_all_uses((old, 0), (new, 0))
        elif kind == "set_inputs" and len(nodes) > 1:
            i = 1 + a % (len(nodes) - 1)
            earlier = nodes[:i]
            g.set_inputs(nodes[i], [(earlier[b % len(earlier)], 0), (earlier[(a + b) % len(earlier)], 0)][: 1 + b % 2])
        elif kind == "rewrite" and len(nodes) > 1:
            i = 1 + a % (len(nodes) - 1)
            old = nodes[i]
            count += 1
            new = _node(f"n{count}")
            g.rewrite([old], [new], {new.id: g.inputs_of(old)}, {(old, 0): (new.id, 0)})
        elif kind == "remove_dead":
            for n in reversed(g.topo()):
                if n.id != "x" and not g.users(n.id) and (a + b) % 3 == 0:
                    g.remove(n.id)
                    break
        _check(g)
