"""How the torch code generator (and the reference interpreter) reads fuse_ops' marks
(compiler/passes/fusion_rules.py).

  fold_bn(bn)       the conv/linear is written with a bias; the module it belongs to is eval-only
  folded_into(x)    the batch norm has no module and no line: its value is its input's
  lstm | gru | rnn  the scan's cell class stays (so do the state-dict keys), and instead of the Python
                    loop the cell runs over the whole sequence in the fused kernel nn.LSTM / nn.GRU /
                    nn.RNN use (`run_cell_over_time`: torch.lstm & co. with the cell's own parameters)
  constant          a constant subgraph without weights is computed once in __init__ (a FixedTensor:
                    moved by .to(), not in the state dict); lines only it read are left out
  table             nothing to do: torch's PositionalEncoding builds its table once already

An eval-only module (`--fuse inference`) still loads the unfused training weights: its root class
lists its folds in `batch_norm_folds` and registers `fold_batch_norms` as a load_state_dict pre-hook,
which folds each batch norm's statistics and affine into the layer before it as a training state
dict loads (a state dict without them, the module's own, loads as it is). State-dict keys stay the
spec's node ids. `training_state` says what such a module's weights file holds, for the checked load.
"""
from __future__ import annotations

from nnspec.compiler.errors import LoweringError
from nnspec.compiler.ir.graph import Node
from nnspec.compiler.ops.base import TorchCode
from nnspec.compiler.ops.construct import FIXED_TENSOR
from nnspec.compiler.passes.fusion_rules import (CONSTANT, CONSTANT_SOURCES, FOLD_BN, FOLDED, SEQUENCES, constant_cone,
                                                 describe_scan, mark)

FOLD_SNIPPET = '''
def fold_batch_norms(module, state, prefix, *args):
    """load_state_dict pre-hook of an eval-only module: each (layer, batch norm, eps, layer has a bias,
    batch norm is affine) of `module.batch_norm_folds` whose batch norm is in `state` (a training state
    dict) is folded into the layer: weight * s per output channel, bias (bias - mean) * s + beta, with
    s = gamma / sqrt(var + eps)."""
    for layer, bn, eps, has_bias, affine in module.batch_norm_folds:
        w_key, b_key, stats = prefix + layer + ".weight", prefix + layer + ".bias", prefix + bn + "."
        if stats + "running_var" not in state:
            continue  # nothing to fold: the module's own (folded) state dict
        w = state[w_key]
        var, mean = state.pop(stats + "running_var").double(), state.pop(stats + "running_mean").double()
        state.pop(stats + "num_batches_tracked")
        gamma, beta = (state.pop(stats + "weight").double(), state.pop(stats + "bias").double()) if affine else (1.0, 0.0)
        s = torch.rsqrt(var + eps) * gamma
        bias = state[b_key].double() if has_bias else torch.zeros_like(mean)
        state[w_key] = (w.double() * s.reshape([-1] + [1] * (w.dim() - 1))).to(w.dtype)
        state[b_key] = ((bias - mean) * s + beta).to(w.dtype)
'''

RECURRENT_SNIPPET = '''
def run_cell_over_time(cell, x, h, c=None, batch_first=True, reverse=False):
    """Run `cell` (nn.LSTMCell, nn.GRUCell or nn.RNNCell) over the time axis of x in the one fused kernel
    nn.LSTM / nn.GRU / nn.RNN run, on the cell's own parameters (gradients reach them); h and c are
    [N, hidden]. Returns (h, c, y) for an LSTM cell, else (h, y), as a scan returns them: the final
    state, then y, which stacks the state of every step."""
    weights = [cell.weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if cell.bias else [])
    axis = 1 if batch_first else 0
    if reverse:
        x = x.flip(axis)
    args = (weights, cell.bias, 1, 0.0, cell.training, False, batch_first)
    if isinstance(cell, nn.LSTMCell):
        y, h, c = torch.lstm(x, (h.unsqueeze(0), c.unsqueeze(0)), *args)
    elif isinstance(cell, nn.GRUCell):
        y, h = torch.gru(x, h.unsqueeze(0), *args)
    else:
        y, h = (torch.rnn_tanh if cell.nonlinearity == "tanh" else torch.rnn_relu)(x, h.unsqueeze(0), *args)
    y = y.flip(axis) if reverse else y
    return (h[0], y) if c is None else (h[0], c[0], y)
'''

# Helper code the generated file gets when a mark needs it (plain torch, like the ops' snippets).
SNIPPETS = {"fold_batch_norms": FOLD_SNIPPET, "run_cell_over_time": RECURRENT_SNIPPET, "FixedTensor": FIXED_TENSOR}
EVAL_ONLY = "Eval-only (nnspec --fuse inference): see the module docstring."  # the root class's note
# What the module docstring says each inference rule did, by rule name (counted from the fusion report).
_DONE = {"fold_batch_norm": ("batch norm folded into the convolution or linear layer before it",
                             "batch norms folded into the convolution or linear layer before them"),
         "drop_dropout": ("dropout removed", "dropouts removed"),
         "fold_constants": ("constant computed once in __init__", "constants computed once in __init__")}


def eval_only_note(program) -> str:
    """The module docstring's paragraph for an eval-only module: what was folded, and how to train."""
    import textwrap

    fired = program.results["fuse_ops"].summary["fired"]
    done = []
    for rule, (one, many) in _DONE.items():
        k = sum(1 for f in fired if f["rule"] == rule)
        if k:
            done.append(f"{k} {one if k == 1 else many}")
    what = f" ({'; '.join(done)})" if done else ""
    text = (f"Eval-only (nnspec --fuse inference): it computes the eval-mode function only{what}. "
            "load_state_dict takes the training state dict (weights.safetensors) and folds it as it loads. "
            "Compile with --fuse safe to train.")
    return textwrap.fill(text, 100)


def passes_through(node: Node) -> bool:
    """The node has no module and no line of its own: its output is its (first) input."""
    return mark(node)[0] == FOLDED


def to_torch(node: Node, ins: list, m: str, ident=None, folded: dict | None = None) -> TorchCode | None:
    """The marked node's code (what replaces its op's `to_torch`), or None for its op's own. `folded`:
    the code generator's constants computed in __init__ (`constants`); without it (the interpreter)
    a folded constant is computed from its inputs like any node."""
    kind, _ = mark(node)
    if kind == CONSTANT and folded and node.id in folded:
        return TorchCode(expr=f"{m}()", init=f"FixedTensor({folded[node.id]})", helpers=("FixedTensor",))
    if kind == FOLD_BN:  # the folded layer has a bias even where the training one had none
        return node.opdef.to_torch(node.attrs.model_copy(update={"bias": True}), ins, m, node)
    if kind == FOLDED:
        return TorchCode(expr=ins[0])
    if kind in SEQUENCES.values():
        return _sequence(node, ins, m, ident)
    return None


def _sequence(node: Node, ins: list, m: str, ident) -> TorchCode:
    d, why = describe_scan(node)
    if d is None:
        raise LoweringError(f"scan '{node.id}' is marked {node.fused!r} but cannot run as one kernel: {why}",
                            node.loc)
    local = d["cell"].local
    args = [f"{m}.{ident(local) if ident else local}", ins[d["x"]], ins[d["h"]]]
    if d["c"] is not None:
        args.append(ins[d["c"]])
    if not d["batch_first"]:
        args.append("batch_first=False")
    if d["reverse"]:
        args.append("reverse=True")
    call = f"run_cell_over_time({', '.join(args)})"
    kernel = ["h", "c", "y"] if d["kind"] == "lstm" else ["h", "y"]
    outs = d["outputs"]
    if [k for k in kernel if k in outs] == outs:  # the call binds the node's outputs itself, in order
        lhs = ", ".join(f"${k}" if k in outs else "_" for k in kernel)
        return TorchCode(expr=", ".join(f"${o}" for o in outs), stmts=[f"{lhs} = {call}"], temps=tuple(outs),
                         helpers=("run_cell_over_time",))
    return TorchCode(expr=", ".join(f"${o}" for o in outs), stmts=[f"{', '.join('$' + k for k in kernel)} = {call}"],
                     temps=tuple(kernel), helpers=("run_cell_over_time",))


class _NotInline(Exception):
    """A node of a constant subgraph torch cannot compute in __init__ (weights, several outputs, loops)."""


def constants(graph, ident) -> tuple[dict, set]:
    """({node id: the expression computing it} for each folded constant torch computes once, in
    __init__, as a FixedTensor; the ids of the nodes whose forward lines that makes unneeded).

    Only constant subgraphs without weights are computed in __init__ (a value of weights would go stale
    when a state dict loads): sources are constants and fixed aranges, and the expression inlines each
    node's own torch code, reading the sources' FixedTensor modules (built on earlier lines)."""
    folded = {}
    for n in graph.topo():
        if mark(n)[0] != CONSTANT:
            continue
        try:
            folded[n.id] = _inline(graph, (n.id, 0), ident, top=True)
        except _NotInline:
            continue
    if not folded:
        return {}, set()
    cone = set()
    for nid in folded:
        c = constant_cone(graph, graph.node(nid))
        cone.update(c)
        cone.update(s for x in c for s, _ in graph.inputs_of(x))
    cone -= set(folded)
    skip: set = set()
    outputs = {nid for nid, _ in graph.outputs.values()}
    for n in reversed(graph.topo()):  # readers first: skipped when every reader is skipped or folded
        readers = {dst for dst, _, _ in graph.users(n.id)}
        if n.id in cone and n.id not in outputs and readers and readers <= (skip | set(folded)):
            skip.add(n.id)
    return folded, skip


def _inline(graph, ref: tuple, ident, top: bool = False) -> str:
    nid, port = ref
    n = graph.node(nid)
    if port != 0 or len(n.outputs) != 1 or n.body is not None:
        raise _NotInline
    ins = [_inline(graph, r, ident) for r in graph.inputs_of(nid)]
    code = n.opdef.to_torch(n.attrs, ins, f"self.{ident(n.local) if ident else n.local}", n)
    if code.stmts:
        raise _NotInline
    if code.init is not None:  # a module: only the fixed sources (FixedTensor), built before this line
        if n.op not in CONSTANT_SOURCES or n.params or top:
            raise _NotInline
        return code.expr
    return code.expr if top else f"({code.expr})"


def folds(program) -> list[tuple]:
    """(layer id, batch norm id, eps, the layer has a bias, the batch norm is affine) of every batch
    norm folded, in graph order."""
    out = []
    by_id = {n.id: n for n in program.all_nodes()}
    for n in program.all_nodes():
        kind, bn = mark(n)
        if kind == FOLD_BN:
            out.append((n.id, bn, by_id[bn].attrs.eps, bool(n.attrs.bias), bool(by_id[bn].attrs.affine)))
    return out


def eval_only(program) -> bool:
    """The program was fused for inference: its module computes the eval-mode function only."""
    res = program.results.get("fuse_ops")
    return res is not None and res.summary.get("mode") == "inference"


def root_lines(program) -> list[str]:
    """Statements for the root module's __init__: the fold table and the pre-hook that reads it."""
    table = folds(program)
    if not table:
        return []
    entries = "".join(f"\n    {entry!r}," for entry in table)
    return [f"self.batch_norm_folds = ({entries}\n)",
            "self.register_load_state_dict_pre_hook(fold_batch_norms)"]


def helpers_for(program) -> dict:
    """Snippets the root lines need (the nodes' own come with their TorchCode)."""
    return {"fold_batch_norms": FOLD_SNIPPET} if folds(program) else {}


def training_state(module) -> dict | None:
    """{key: (shape, dtype)} of the training state dict an eval-only module loads (its own state dict
    with each fold undone: the batch norm's entries back, a bias the layer did not have gone), or None
    for a module without folds."""
    table = getattr(module, "batch_norm_folds", None)
    if not table:
        return None
    state = module.state_dict()
    out = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()}
    for layer, bn, _, has_bias, affine in table:
        w = state[layer + ".weight"]
        shape, dtype = (w.shape[0],), str(w.dtype).replace("torch.", "")
        if not has_bias:
            out.pop(layer + ".bias", None)
        for p in (("weight", "bias") if affine else ()) + ("running_mean", "running_var"):
            out[f"{bn}.{p}"] = (shape, dtype)
        out[f"{bn}.num_batches_tracked"] = ((), "int64")
    return out


__all__ = ["SNIPPETS", "EVAL_ONLY", "eval_only_note", "passes_through", "to_torch", "constants", "folds", "eval_only", "root_lines",
           "helpers_for", "training_state"]
