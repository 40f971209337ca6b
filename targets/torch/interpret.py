"""The torch reference interpreter: evaluate an IR graph node by node with each op's own torch lowering.

Every node runs the expression its op's `to_torch` generates, over the values of its inputs, with
its module attribute bound to the generated module's submodule of the same id (so the weights are
the module's, ties included). The result is every IR value, keyed `(node id, port)`:

    module = build_module(program)                    # or any module generated for the program
    vals = evaluate(program, module, inputs)          # {("stem", 0): tensor, ...}
    outs = evaluate_outputs(program, module, inputs)  # {"logits": np.ndarray}: equals module(...)

Because it walks the IR rather than the generated code, it evaluates a graph a pass has rewritten
with the weights of a module generated before the pass (a node keeps its id, so it finds its
submodule): pass tests compare a rewritten graph with the original module's forward this way, and
`nnspec verify` uses it to find the first node where a target diverges from torch.
"""
from __future__ import annotations

import math

from . import folding
from .codegen import ident


def _submodule(module, node_id: str):
    path = ".".join(p if p.isdigit() else ident(p) for p in node_id.split("."))
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None  # a functional op (relu, add): its code never reads the attribute


def _namespace(graph) -> dict:
    """Globals the ops' expressions see: what a generated model.py imports, plus the helper snippets
    (classes, functions) its ops declare, gathered from every graph nested in `graph`."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    ns = {"torch": torch, "nn": nn, "F": F, "math": math}
    for snippet in folding.SNIPPETS.values():  # what nodes fuse_ops marked call (run_cell_over_time)
        exec(snippet, ns)  # nnspec's own code, not spec text
    seen: set = set()
    stack = [graph]
    while stack:
        g = stack.pop()
        for n in g.topo():
            for name, snippet in getattr(n.opdef, "torch_snippets", {}).items():
                if name not in seen:
                    seen.add(name)
                    exec(snippet, ns)  # nnspec's own op code, not spec text
            if n.body is not None:
                stack.append(n.body)
    return ns


def node_function(graph, node, module, namespace: dict | None = None):
    """`f(*inputs) -> tuple of outputs`: `node` of `graph` as its op's torch lowering generates it,
    bound to `module`'s submodule of the same id, compiled once (what `evaluate` runs per node;
    `nnspec profile` times it). `namespace`: `_namespace(graph)`, shared between nodes when given."""
    base = namespace if namespace is not None else _namespace(graph)
    names = [f"_nnspec_in{i}" for i in range(len(graph.inputs_of(node.id)))]
    sub = _submodule(module, node.id)
    # A node fuse_ops marked runs its marked form; a folded batch norm still runs as itself in a
    # module generated before the pass (which has it, and an unfolded conv before it).
    marked = None if folding.passes_through(node) and sub is not None else \
        folding.to_torch(node, names, "_nnspec_m", ident)
    code = marked or node.opdef.to_torch(node.attrs, names, "_nnspec_m", node)
    code = code.with_temps({t: f"_nnspec_t_{t}" for t in code.temps})
    # the op's own generated code (attributes printed with repr), never spec text
    stmts = compile("\n".join(code.stmts), f"<nnspec:{node.id}>", "exec") if code.stmts else None
    expr = compile(code.expr, f"<nnspec:{node.id}>", "eval")

    def run(*ins):
        ns = dict(base, _nnspec_m=sub, **dict(zip(names, ins)))
        if stmts is not None:  # e.g. a scan's loop over its cell
            exec(stmts, ns)
        res = eval(expr, ns)
        return tuple(res) if isinstance(res, (tuple, list)) else (res,)

    return run


def evaluate(program, module, inputs: dict, graph: str = "forward", numpy: bool = True) -> dict:
    """{(node id, port): value} of every node of entry `graph` on `inputs` ({input name: array or
    tensor}), with `module`'s weights, in eval mode without autograd (the module's mode is restored).
    numpy=False keeps torch tensors. Non-tensor values (none today) are left out."""
    import torch

    g = program.graphs[graph]
    base = _namespace(g)
    vals = {}
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for n in g.topo():
                if n.op == "input":
                    vals[(n.id, 0)] = torch.as_tensor(inputs[n.attrs.name])
                    continue
                res = node_function(g, n, module, base)(*[vals[ref] for ref in g.inputs_of(n.id)])
                for i, r in enumerate(res):
                    vals[(n.id, i)] = r
    finally:
        module.train(was_training)
    tensors = {k: v for k, v in vals.items() if isinstance(v, torch.Tensor)}
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()} if numpy else tensors


def evaluate_outputs(program, module, inputs: dict, graph: str = "forward") -> dict:
    """{output name: np.ndarray} of entry `graph`, by the interpreter (what `module.<graph>(...)` returns)."""
    vals = evaluate(program, module, inputs, graph)
    return {name: vals[ref] for name, ref in program.graphs[graph].outputs.items()}


__all__ = ["evaluate", "evaluate_outputs", "node_function"]
