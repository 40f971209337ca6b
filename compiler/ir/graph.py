"""The graph IR: typed nodes in a networkx `MultiDiGraph`, behind a small API passes use.

A `Node` is one op application: its op name, concrete attributes, output types, parameters, the
spec location it came from and the block scope it lives in. Edges run from producer to consumer
and carry `slot` (which input of the consumer) and `port` (which output of the producer), so a
node's inputs are ordered. Graph inputs are nodes of op `input`; graph outputs are a name ->
(node, port) mapping. A `scan` node holds its body as a nested `Graph`.

Passes use only this API (never `nx.*` directly): `topo()`, `inputs_of`, `users`, `add`,
`connect`, `replace_all_uses`, `remove`, `rewrite`. Iteration orders are deterministic: ties in
the topological order break by insertion order.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import networkx as nx

from ..errors import Frame, Location, PassError
from .dims import TensorType
from .params import ParamSpec  # noqa: F401  (part of the IR API)


@dataclass(frozen=True)
class Scope:
    """One level of block nesting: `name` is the attribute name (`layer1`, or `0` inside a repeat)."""

    name: str
    block: str  # block name, or "" for the list that holds a repeat
    kind: str = "block"  # "block" | "list"


@dataclass
class Instance:
    """A block instance: its block, its input names and the values bound to them, and its outputs.

    Code generation turns each instance into a submodule whose forward takes `in_names`.
    """

    block: str
    in_names: list
    in_refs: list  # [(node_id, port)] bound to in_names
    out_names: list
    out_refs: list  # [(node_id, port)] the instance returns
    args: dict = field(default_factory=dict)  # evaluated args (the spec's params included; `i` in a repeat)


@dataclass(eq=False, slots=True)
class Node:
    id: str
    op: str
    attrs: object = None  # the op's validated Attrs model
    outputs: list = field(default_factory=list)  # list[TensorType]; filled by infer_shapes
    in_types: list = field(default_factory=list)  # list[TensorType] of the inputs; filled by infer_shapes
    out_names: list = field(default_factory=list)  # names of the outputs (for `node.name` references)
    params: dict = field(default_factory=dict)  # name -> ParamSpec; filled by infer_shapes
    ties: dict = field(default_factory=dict)  # own param name -> "node_id.param" it shares storage with
    init: dict = field(default_factory=dict)  # param name -> nnspec.compiler.init.Init requested by the spec
    init_loc: Location | None = None  # where `init:` was written (errors about unknown parameters)
    loc: Location | None = None
    chain: list = field(default_factory=list)  # list[Frame]: block instantiations that produced it
    scope: tuple = ()  # tuple[Scope]
    body: "Graph | None" = None  # scan body
    # Facts later passes exchange (pipeline stage, rematerialisation, fusion group); `marks` holds
    # other decisions by name (the checkpoint segment a recomputed node belongs to), shown in dumps.
    stage: int | None = None
    remat: bool = False
    fused: str | None = None
    marks: dict = field(default_factory=dict)
    index: int = 0

    @property
    def local(self) -> str:
        return self.id.rsplit(".", 1)[-1]

    @property
    def opdef(self):
        ops = _OPS or _load_ops()
        op = ops.get(self.op)
        if op is None:
            from ..ops import get_op
            return get_op(self.op)  # raises the unknown-op error
        return op


_OPS: dict = {}


def _load_ops() -> dict:
    # The op registry, imported on first use: the ops depend on the IR's types, not on its graph.
    from ..ops import registry
    _OPS.update(registry())
    return _OPS


class Graph:
    def __init__(self, name: str = "forward"):
        self.name = name
        self._g = nx.MultiDiGraph()
        self.outputs: dict[str, tuple[str, int]] = {}
        self.symbols: dict[str, dict] = {}  # dim symbol -> {min, opt, max}
        self.instances: dict[str, Instance] = {}  # "layer1.0" -> block instance
        # Pipeline stages (compiler/partition.StageIO: nodes, tensors received and sent), recorded
        # by the split_stages pass from the nodes' `stage` marks; empty unless it ran with stages.
        self.stages: list = []
        self._counter = itertools.count()
        # What passes read most, kept beside the networkx graph (whose views are slow to walk on
        # 100k-node graphs): nodes by id, the node list, the topological order, and each node's
        # input edges. The edge lists grow with `connect`; an edit that removes edges drops the
        # lists it touches, which are then rebuilt from networkx when next read.
        self._by_id: dict[str, Node] = {}
        self._nodes: list[Node] | None = None
        self._topo: list[Node] | None = None
        self._ins: dict[str, list] = {}  # node id -> [(slot, producer, port)] sorted by slot
        self._ordered = True  # every edge runs from a lower to a higher insertion index

    def _changed(self, *node_ids: str) -> None:
        self._topo = None
        for nid in node_ids:
            self._ins.pop(nid, None)

    # -- construction -------------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        if node.id in self._by_id:
            raise PassError(f"duplicate node id '{node.id}'", node.loc)
        node.index = next(self._counter)
        self._g.add_node(node.id, node=node)
        self._by_id[node.id] = node
        self._ins[node.id] = []
        self._topo = self._nodes = None
        return node

    def connect(self, src: str, port: int, dst: str, slot: int) -> None:
        self._g.add_edge(src, dst, key=slot, slot=slot, port=port)
        self._topo = None
        if self._ordered and self._by_id[src].index >= self._by_id[dst].index:
            self._ordered = False
        edges = self._ins.get(dst)
        if edges is not None:
            if not edges or edges[-1][0] < slot:
                edges.append((slot, src, port))  # the usual case: slots connected in order
            else:
                del self._ins[dst]

    def set_inputs(self, node_id: str, sources: list[tuple[str, int]]) -> None:
        for src, _, key in list(self._g.in_edges(node_id, keys=True)):
            self._g.remove_edge(src, node_id, key)
        for slot, (src, port) in enumerate(sources):
            self.connect(src, port, node_id, slot)
        self._changed(node_id)

    # -- queries ------------------------------------------------------------------------------
    def __contains__(self, node_id: str) -> bool:
        return node_id in self._by_id

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def node(self, node_id: str) -> Node:
        return self._by_id[node_id]

    def nodes(self) -> list[Node]:
        if self._nodes is None:
            self._nodes = sorted(self._by_id.values(), key=lambda n: n.index)
        return list(self._nodes)

    def inputs(self) -> list[Node]:
        return [n for n in self.nodes() if n.op == "input"]

    def in_edges(self, node_id: str) -> list:
        """[(slot, producer, port)] of `node_id`, sorted by slot (do not modify the list)."""
        edges = self._ins.get(node_id)
        if edges is None:
            edges = self._ins[node_id] = sorted((d["slot"], src, d["port"]) for src, keyed in
                                                self._g.pred[node_id].items() for d in keyed.values())
        return edges

    def inputs_of(self, node_id: str) -> list[tuple[str, int]]:
        """(producer id, port) for each input slot, in slot order."""
        return [(src, port) for _, src, port in self.in_edges(node_id)]

    def slots_of(self, node_id: str) -> list[int]:
        """The input slots of `node_id` that have an edge, sorted (contiguous from 0 in a valid graph)."""
        return [slot for slot, _, _ in self.in_edges(node_id)]

    def input_types(self, node_id: str) -> list[TensorType]:
        return [self.node(src).outputs[port] for src, port in self.inputs_of(node_id)]

    def users(self, node_id: str) -> list[tuple[str, int, int]]:
        """(consumer id, slot, port) for every use of `node_id`'s outputs."""
        out = [(dst, d["slot"], d["port"]) for _, dst, d in self._g.out_edges(node_id, data=True)]
        return sorted(out, key=lambda u: (self.node(u[0]).index, u[1]))

    def topo(self) -> list[Node]:
        """Nodes in topological order, ties broken by insertion order (deterministic)."""
        if self._topo is None:
            if self._ordered:
                self._topo = self.nodes()  # built in order, as expand does: insertion order is topological
            else:
                order = nx.lexicographical_topological_sort(self._g, key=lambda nid: self.node(nid).index)
                self._topo = [self.node(n) for n in order]
        return self._topo

    def output_type(self, name: str) -> TensorType:
        nid, port = self.outputs[name]
        return self.node(nid).outputs[port]

    # -- rewriting ----------------------------------------------------------------------------
    def replace_all_uses(self, old: tuple[str, int], new: tuple[str, int]) -> None:
        """Make every consumer of output `old` read `new` instead (graph outputs included)."""
        src, port = old
        for dst, slot, p in self.users(src):
            if p == port:
                self._g.remove_edge(src, dst, slot)
                self._changed(dst)
                self.connect(new[0], new[1], dst, slot)
        for name, ref in self.outputs.items():
            if ref == old:
                self.outputs[name] = new
        for inst in self.instances.values():
            inst.out_refs = [new if r == old else r for r in inst.out_refs]
            inst.in_refs = [new if r == old else r for r in inst.in_refs]
        self._changed()

    def remove(self, node_id: str) -> None:
        if any(True for _ in self._g.out_edges(node_id)):
            raise PassError(f"cannot remove '{node_id}': it still has users")
        self._g.remove_node(node_id)
        del self._by_id[node_id]
        self._nodes = None
        self._changed(node_id)

    def rewrite(self, old_ids: list[str], new_nodes: list[Node], wiring: dict, outputs: dict) -> None:
        """Replace the subgraph `old_ids` by `new_nodes`.

        `wiring[new_id]` lists the (producer, port) inputs of each new node; `outputs` maps each old
        (id, port) used outside the subgraph to the new (id, port) that replaces it.
        """
        for n in new_nodes:
            self.add(n)
            n.index = min(self.node(o).index for o in old_ids) if old_ids else n.index
        self._ordered = False  # the new nodes took the old ones' place in the order: sort again
        for nid, srcs in wiring.items():
            self.set_inputs(nid, srcs)
        for old, new in outputs.items():
            self.replace_all_uses(old, new)
        for oid in sorted(old_ids, key=lambda i: -self.node(i).index):
            for src, _, key in list(self._g.in_edges(oid, keys=True)):
                self._g.remove_edge(src, oid, key)
        for oid in old_ids:
            self._g.remove_node(oid)
            del self._by_id[oid]
        self._nodes = None
        self._changed(*old_ids, *(n.id for n in new_nodes))

    def used_ids(self) -> set[str]:
        return set(self._g.nodes)

    # -- text ---------------------------------------------------------------------------------
    def line(self, node: Node) -> str:
        """One stable text line per node, used by goldens, `--dump-after` and error messages."""
        args = ", ".join(f"%{s}" + (f":{p}" if p else "") for s, p in self.inputs_of(node.id))
        shown = node.attrs.model_dump(exclude_defaults=True) if hasattr(node.attrs, "model_dump") else dict(node.attrs)
        attrs = " {" + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()) + "}" if shown else ""
        types = ", ".join(str(t) for t in node.outputs) or "?"
        marks = "".join(f" @{k}={v}" for k, v in (("stage", node.stage), ("fused", node.fused)) if v is not None)
        marks += " @remat" if node.remat else ""
        marks += "".join(f" @{k}={_fmt(v)}" for k, v in sorted(node.marks.items()))
        where = f"  # {node.loc}" if node.loc else ""
        return f"%{node.id} = {node.op}({args}){attrs} : {types}{marks}{where}"

    def dump(self, indent: str = "") -> str:
        lines = [f"{indent}graph {self.name}:"]
        for n in self.topo():
            lines.append(indent + "  " + self.line(n))
            if n.body is not None:
                lines.append(n.body.dump(indent + "    "))
        outs = ", ".join(f"{k}=%{v[0]}" + (f":{v[1]}" if v[1] else "") for k, v in self.outputs.items())
        lines.extend(f"{indent}  {s.text()}" for s in self.stages)
        lines.append(f"{indent}  return {outs}")
        return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


__all__ = ["Graph", "Node", "ParamSpec", "Scope", "Frame"]
