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
                ins = [vals[ref] for ref in g.inputs_of(n.id)]
                names = [f"_nnspec_in{i}" for i in range(len(ins))]
                ns = dict(base, _nnspec_m=_submodule(module, n.id), **dict(zip(names, ins)))
                code = n.opdef.to_torch(n.attrs, names, "_nnspec_m", n)
                code = code.with_temps({t: f"_nnspec_t_{t}" for t in code.temps})
                if code.stmts:  # e.g. a scan's loop over its cell
                    exec("\n".join(code.stmts), ns)
                res = eval(code.expr, ns)  # the op's own generated code over bound inputs
                res = res if isinstance(res, (tuple, list)) else (res,)
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


__all__ = ["evaluate", "evaluate_outputs"]
