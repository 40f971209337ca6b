"""The graph walker: lower every node of an IR graph, in topological order, through its op class.

`lower_graph` fills a Builder with one graph's nodes (ops' `to_onnx`, or `to_trt` when the builder
is for TensorRT) and maps every IR value to its ONNX name; `lower_subgraph` is what
`Builder.subgraph` does for a scan body. Both only call the builder they are given, so this module
does not import `builder.py` (which imports it): the entry-model assembly on top is `lower.py`.
Failures raise `LoweringError` naming the IR node being lowered.
"""
from __future__ import annotations

from pathlib import PurePath

from nnspec.compiler.errors import LoweringError

from . import folding
from .common import value_info


def lower_graph(b, graph, values: dict) -> dict:
    """Lower every non-input node of `graph` into `b`; `values` maps (node id, port) -> value name
    (pre-filled for the graph's inputs) and is returned completed."""
    b.graph = graph
    skip = folding.skipped(graph)  # nodes only fuse_ops' folded constants read
    for n in graph.topo():
        if n.op == "input" or n.id in skip:
            continue
        # (a folded constant reads skipped nodes: its lowering computes them itself)
        ins = ["" if ref[0] in skip else values[ref] for ref in graph.inputs_of(n.id)]
        op = n.opdef
        first = len(b.nodes)
        try:
            # a node fuse_ops marked lowers its marked form (targets/onnx/folding.py)
            fn = folding.lowering(n) or (op.to_trt if b.for_trt else op.to_onnx)
            outs = fn(n.attrs, ins, b.at(n), n)
        except NotImplementedError as e:
            raise _at(LoweringError(f"{n.op} '{n.id}' cannot be lowered to ONNX: {e}",
                                    expected=f"op {n.op} to implement to_onnx"), n) from None
        except LoweringError as e:
            if not e.message.startswith(f"{n.op} '{n.id}'"):
                e.message = f"{n.op} '{n.id}': {e.message}"
                e.args = (e.message,)
            raise _at(e, n) from None
        b.graph = graph  # a nested subgraph lowering may have pointed it elsewhere
        where = _where(n)
        for nd in b.nodes[first:]:
            nd.doc_string = where
        outs = [outs] if isinstance(outs, str) else list(outs)
        if len(outs) != len(n.outputs):
            raise _at(LoweringError(f"{n.op} '{n.id}' lowered to {len(outs)} ONNX values",
                                    expected=f"{len(n.outputs)} (one per IR output)"), n)
        for i, name in enumerate(outs):
            values[(n.id, i)] = name
    return values


def _where(node) -> str:
    """The spec position a node came from, as `file.yaml:line` (file name only: artifacts must not
    depend on where the spec lives)."""
    if node.loc is None:
        return f"{node.op} {node.id}"
    return f"{node.op} {node.id} ({PurePath(node.loc.file).name}:{node.loc.line})"


def _at(e: LoweringError, node) -> LoweringError:
    e.loc = e.loc or node.loc
    e.chain = e.chain or list(node.chain)
    return e


def value_infos(b, graph, values: dict, skip: set) -> list:
    """Declared types of the IR values this graph's nodes produced (lets strict inference check them)."""
    produced = {o for nd in b.nodes for o in nd.output}
    out, seen = [], set(skip)
    for n in graph.topo():
        if n.op == "input":
            continue
        for i, t in enumerate(n.outputs):
            name = values.get((n.id, i))  # None: a node only folded constants read (not lowered)
            if name in produced and name not in seen:
                seen.add(name)
                out.append(value_info(name, t))
    return out


def lower_subgraph(b, graph, input_types: dict, outer_names: dict, outputs: list | None):
    """The `Builder.subgraph` implementation: a body graph as an `onnx.GraphProto`."""
    from onnx import helper

    sub = b.child(graph)
    values, inputs = {}, []
    for nid, t in input_types.items():
        name = sub.unique(nid)
        values[(nid, 0)] = name
        inputs.append(value_info(name, t))
    for nid, outer in outer_names.items():
        values[(nid, 0)] = outer
    missing = [n.id for n in graph.inputs() if (n.id, 0) not in values]
    if missing:
        raise LoweringError(f"subgraph '{graph.name}' inputs {', '.join(missing)} are not bound",
                            expected="every body input in input_types or outer_names")
    saved = b.node
    lower_graph(sub, graph, values)
    b.node = saved
    outs = []
    for oname in (outputs if outputs is not None else list(graph.outputs)):
        src = values[graph.outputs[oname]]
        name = sub.unique(f"{graph.name}.{oname}")
        sub.nodes.append(helper.make_node("Identity", [src], [name], name=name))
        outs.append(value_info(name, graph.output_type(oname)))
    vi = value_infos(sub, graph, values, {v.name for v in inputs})
    return helper.make_graph(sub.nodes, graph.name, inputs, outs, value_info=vi)


__all__ = ["lower_graph", "lower_subgraph", "value_infos"]
