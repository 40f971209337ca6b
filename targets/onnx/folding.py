"""How the ONNX lowering reads fuse_ops' marks (compiler/passes/fusion_rules.py): folded weights and
constants are computed here, at lowering time, from the training weights the lowering is given.

  fold_bn(bn)       the conv/linear's own lowering, fed folded initializers: weight * s per output
                    channel and (bias - mean) * s + beta, s = gamma / sqrt(var + eps), in float64
  folded_into(x)    the batch norm is its input (no ONNX node)
  lstm | gru | rnn  the scan becomes one ONNX LSTM / GRU / RNN over the time-major sequence, its
                    weights the cell's, gate rows reordered to ONNX's order at lowering time
  constant          the subgraph is lowered into a model of its own, run with onnx's reference
                    evaluator, and its value stored as an initializer; nodes only it read are skipped
  table             positional_encoding adds a slice of a [rows, D] initializer instead of computing
                    sines from the run-time length

`lowering(node)` is the walker's hook: a replacement for the op's `to_onnx` / `to_trt`, or None.
Only the builder it is handed is called, so this module imports neither builder.py nor lower.py.
"""
from __future__ import annotations

import math

from nnspec.compiler.errors import LoweringError
from nnspec.compiler.passes.fusion_rules import (CONSTANT, FOLD_BN, FOLDED, SEQUENCES, TABLE, constant_cone,
                                                 describe_scan, mark, table_rows)


def lowering(node):
    """The function lowering a marked node, `(a, ins, b, node) -> [names]`, or None (the op's own)."""
    kind, _ = mark(node)
    if kind is None:
        return None
    return {FOLD_BN: _folded_layer, FOLDED: _pass_through, CONSTANT: _constant, TABLE: _table}.get(
        kind, _sequence if kind in SEQUENCES.values() else None)


def skipped(graph) -> set:
    """Ids of the nodes no ONNX node is needed for: those only folded constants read."""
    frontier = [n for n in graph.topo() if mark(n)[0] == CONSTANT]
    if not frontier:
        return set()
    cone = set()
    for n in frontier:
        cone.update(constant_cone(graph, n))
        cone.update(s for c in constant_cone(graph, n) for s, _ in graph.inputs_of(c))
    cone -= {n.id for n in frontier}
    out = set()
    # reverse topological order: a node is skipped when every reader is skipped or a folded constant
    folded = {n.id for n in frontier}
    for n in reversed(graph.topo()):
        if n.id not in cone or n.op == "input":
            continue
        readers = {dst for dst, _, _ in graph.users(n.id)}
        outs = any(nid == n.id for nid, _ in graph.outputs.values())
        if not outs and readers and readers <= (out | folded):
            out.add(n.id)
    return out


# -- batch norm folding ---------------------------------------------------------------------------
def folded_weights(b, layer, bn) -> tuple:
    """(weight, bias) of `layer` with batch norm `bn` folded in, as numpy arrays of the layer's dtype."""
    import numpy as np

    w = b.weight(layer, "weight")
    var = b.weight(bn, "running_var").astype(np.float64)
    mean = b.weight(bn, "running_mean").astype(np.float64)
    gamma = b.weight(bn, "weight").astype(np.float64) if bn.attrs.affine else np.ones_like(var)
    beta = b.weight(bn, "bias").astype(np.float64) if bn.attrs.affine else np.zeros_like(var)
    s = gamma / np.sqrt(var + bn.attrs.eps)
    bias = b.weight(layer, "bias").astype(np.float64) if layer.attrs.bias else np.zeros_like(var)
    w2 = w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))
    return w2.astype(w.dtype), ((bias - mean) * s + beta).astype(w.dtype)


class _FoldedParams:
    """The builder, except that the layer's weight and bias are the folded initializers."""

    def __init__(self, b, params: dict):
        self._b, self._params = b, params

    def param(self, node, pname):
        return self._params[pname]

    def __getattr__(self, name):
        return getattr(self._b, name)


def _folded_layer(a, ins, b, node):
    bn = _find(b.graph, mark(node)[1], node)
    w, bias = folded_weights(b, node, bn)
    params = {"weight": b.initializer(f"{node.id}.weight_folded", w),
              "bias": b.initializer(f"{node.id}.bias_folded", bias)}
    return node.opdef.to_onnx(a.model_copy(update={"bias": True}), ins, _FoldedParams(b, params), node)


def _pass_through(a, ins, b, node):
    return [ins[0]]


def _find(graph, nid: str, near):
    if nid is None or nid not in graph:
        raise LoweringError(f"'{near.id}' is marked {near.fused!r}, but '{nid}' is not in its graph",
                            expected="marks written by fuse_ops on this very graph")
    return graph.node(nid)


# -- scan of a recurrent cell -> one ONNX LSTM / GRU / RNN ---------------------------------------
def _sequence(a, ins, b, node):
    import numpy as np

    from nnspec.compiler.ops.recurrent import TORCH_TO_ONNX, _gate_rows

    d, why = describe_scan(node)
    if d is None:
        raise LoweringError(f"scan '{node.id}' is marked {node.fused!r} but cannot run as one: {why}")
    cell, kind = d["cell"], d["kind"]
    hidden = cell.attrs.hidden
    rows = _gate_rows(TORCH_TO_ONNX[kind], hidden) if kind in TORCH_TO_ONNX else list(range(hidden))

    def stacked(*pnames):
        return np.concatenate([b.weight(cell, p)[rows] for p in pnames])[None]

    w = b.initializer(f"{cell.id}.W", stacked("weight_ih"))
    r = b.initializer(f"{cell.id}.R", stacked("weight_hh"))
    bias = b.initializer(f"{cell.id}.B", stacked("bias_ih", "bias_hh")) if cell.attrs.bias else ""
    seq = b.op("Transpose", [ins[d["x"]]], perm=[1, 0, 2]) if d["batch_first"] else ins[d["x"]]  # time-major
    first = b.const([0])
    states = [b.op("Unsqueeze", [ins[d["h"]], first])]
    if kind == "lstm":
        states.append(b.op("Unsqueeze", [ins[d["c"]], first]))
    extra = {"linear_before_reset": 1} if kind == "gru" else {}  # torch applies r after W_hn h
    if kind == "rnn":
        extra = {"activations": ["Tanh" if cell.attrs.nonlinearity == "tanh" else "Relu"]}
    n_out = 3 if kind == "lstm" else 2
    outs = b.op(kind.upper(), [seq, w, r, bias, ""] + states, n_out=n_out, hidden_size=hidden,
                direction="reverse" if d["reverse"] else "forward", **extra)
    y = b.op("Squeeze", [outs[0], b.const([1])])  # [T, 1, N, H] -> [T, N, H]
    if d["batch_first"]:
        y = b.op("Transpose", [y], perm=[1, 0, 2])
    value = {"y": y, "h": b.op("Squeeze", [outs[1], first])}
    if kind == "lstm":
        value["c"] = b.op("Squeeze", [outs[2], first])
    return [value[o] for o in d["outputs"]]


# -- constants computed at lowering time -------------------------------------------------------------
def _constant(a, ins, b, node):
    """Lower the node's constant subgraph into a model of its own, evaluate it, keep the value."""
    import numpy as np
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    from .common import value_info

    graph = b.graph
    need = set(constant_cone(graph, node))
    need |= {s for c in list(need) for s, _ in graph.inputs_of(c)}
    sub = b.detached()
    values = {}
    for n in graph.topo():
        if n.id not in need:
            continue
        fn = (lowering(n) if n.id != node.id else None) or (n.opdef.to_trt if b.for_trt else n.opdef.to_onnx)
        outs = fn(n.attrs, [values[r] for r in graph.inputs_of(n.id)], sub.at(n), n)
        for i, name in enumerate([outs] if isinstance(outs, str) else list(outs)):
            values[(n.id, i)] = name
    out = values[(node.id, 0)]
    model = helper.make_model(
        helper.make_graph(sub.nodes, f"{node.id}.constant", [], [value_info(out, node.outputs[0])],
                          initializer=list(sub.initializers)),
        opset_imports=[helper.make_opsetid("", b.opset)])
    try:
        (value,) = ReferenceEvaluator(model).run(None, {})
    except Exception as e:  # the reference evaluator's own failure: say which node could not be folded
        raise LoweringError(f"cannot compute the constant '{node.id}' at lowering time: {type(e).__name__}: {e}",
                            hint="compile with --fuse safe to keep it computed at run time") from None
    return [b.op("Identity", [b.initializer(f"{node.id}.folded", np.asarray(value))])]


def _table(a, ins, b, node):
    """x + table[:T]: the sinusoidal table of positional_encoding (targets' formula: float32 sines and
    cosines of position * 10000^(-2i/D), interleaved) for the longest T declared, sliced at run time."""
    import numpy as np

    t = b.out_type(0)
    dim = t.shape[2]
    rows = table_rows(b.graph, node)
    position = np.arange(rows, dtype=np.float32)[:, None]
    inv_freq = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / dim))
    angles = (position * inv_freq).astype(np.float32)
    table = np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(rows, dim).astype(np.float32)
    name = b.initializer(f"{node.id}.table", table)
    if t.shape[1] != rows:
        name = b.op("Slice", [name, b.const([0]), b.dim(ins[0], 1), b.const([0])])
    return [b.op("Add", [ins[0], name])]


__all__ = ["lowering", "skipped", "folded_weights"]
