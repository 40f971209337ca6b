"""`nnspec verify`: run every available target on the same generated inputs and compare with torch eager.

The parity table has one row per (target, output): max absolute error, max relative error and a
verdict. An element passes when |got - want| <= tolerance * (1 + |want|) (absolute near zero,
relative for large values). When a target breaks the tolerance, the first diverging node is found by
comparing every intermediate value in topological order: torch values come from evaluating the IR
node by node with each op's own torch lowering bound to the generated module's submodules (so
weights are the module's), onnxruntime values from the same ONNX model with every node output
exposed as an extra graph output. Node ids are shared by both, so the report names the spec node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}


@dataclass
class ParityRow:
    target: str
    output: str
    max_abs: float
    max_rel: float
    ok: bool
    shape_ok: bool = True


@dataclass
class Divergence:
    target: str
    node: str  # IR node id of the first diverging value
    op: str
    port: int
    max_abs: float
    last_agreeing: str | None  # the last node compared before it that still agreed
    loc: object = None

    def render(self) -> str:
        where = f" ({self.loc})" if self.loc else ""
        after = f", after '{self.last_agreeing}' still agreed" if self.last_agreeing else ""
        return (f"{self.target}: first diverging node '{self.node}' ({self.op}, output {self.port}){where}: "
                f"max abs error {self.max_abs:.3g}{after}")


@dataclass
class VerifyReport:
    tolerance: float
    rows: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)  # target -> why it did not run
    divergences: list = field(default_factory=list)
    dims: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def render(self) -> str:
        w = max([len(r.output) for r in self.rows] + [6])
        lines = [f"{'target':<8} {'output':<{w}} {'max abs':>10} {'max rel':>10}  verdict"]
        for r in self.rows:
            verdict = "ok" if r.ok else ("SHAPE MISMATCH" if not r.shape_ok else "FAIL")
            lines.append(f"{r.target:<8} {r.output:<{w}} {r.max_abs:>10.3g} {r.max_rel:>10.3g}  {verdict}")
        for t, why in sorted(self.skipped.items()):
            lines.append(f"{t:<8} skipped: {why}")
        for d in self.divergences:
            lines.append(d.render())
        dims = ", ".join(f"{k}={v}" for k, v in sorted(self.dims.items()))
        lines.append(f"{'PASS' if self.ok else 'FAIL'} at tolerance {self.tolerance:g} (|err| <= tol*(1+|ref|))"
                     + (f", dims {dims}" if dims else ""))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"ok": self.ok, "tolerance": self.tolerance, "dims": self.dims, "skipped": self.skipped,
                "rows": [vars(r) for r in self.rows],
                "divergences": [{**vars(d), "loc": str(d.loc) if d.loc else None} for d in self.divergences]}


def compare(got, want, tolerance: float) -> tuple[float, float, bool, bool]:
    """(max abs error, max rel error, within tolerance, shapes equal)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return float("inf"), float("inf"), False, False
    if want.size == 0:
        return 0.0, 0.0, True, True
    if not np.issubdtype(want.dtype, np.floating):
        bad = int(np.count_nonzero(got != want))
        return float(bad), float(bad), bad == 0, True
    g, w = got.astype(np.float64), want.astype(np.float64)
    err = np.abs(g - w)
    finite = np.isfinite(w) & np.isfinite(g)
    same_nonfinite = (~np.isfinite(w)) & (g == w) | (np.isnan(w) & np.isnan(g))
    err = np.where(finite, err, np.where(same_nonfinite, 0.0, np.inf))
    rel = err / np.maximum(np.abs(w), 1e-12)
    ok = bool(np.all(err <= tolerance * (1.0 + np.abs(np.where(np.isfinite(w), w, 0.0)))))
    return float(err.max()), float(np.where(err == 0, 0.0, rel).max()), ok, True


# -- torch values of every IR node ----------------------------------------------------------------
def _submodule(module, node_id: str):
    from nnspec.targets.torch.codegen import ident
    path = ".".join(p if p.isdigit() else ident(p) for p in node_id.split("."))
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def torch_values(program, module, inputs: dict, graph: str = "forward") -> dict:
    """{(node id, port): np.ndarray} for every node of `graph`, evaluated with the ops' torch lowerings
    and the generated module's submodules (eval mode, no grad)."""
    import math

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    g = program.graphs[graph]
    module.eval()
    base_ns = {"torch": torch, "nn": nn, "F": F, "math": math}
    for n in g.topo():  # helper snippets (classes/functions) the ops' expressions may call
        for snippet in getattr(n.opdef, "torch_snippets", {}).values():
            exec(snippet, base_ns)  # nnspec's own op code, not spec text
    vals = {}
    with torch.inference_mode():
        for n in g.topo():
            if n.op == "input":
                vals[(n.id, 0)] = torch.as_tensor(inputs[n.attrs.name])
                continue
            ins = [vals[ref] for ref in g.inputs_of(n.id)]
            names = [f"_nnspec_in{i}" for i in range(len(ins))]
            ns = dict(base_ns, _nnspec_m=_submodule(module, n.id), **dict(zip(names, ins)))
            code = n.opdef.to_torch(n.attrs, names, "_nnspec_m", n)
            code = code.with_temps({t: f"_nnspec_t_{t}" for t in code.temps})
            if code.stmts:  # e.g. a scan's loop over its cell
                exec("\n".join(code.stmts), ns)
            res = eval(code.expr, ns)  # the op's own generated code over bound inputs
            res = res if isinstance(res, (tuple, list)) else (res,)
            for i, r in enumerate(res):
                vals[(n.id, i)] = r
    return {k: v.detach().cpu().numpy() for k, v in vals.items() if hasattr(v, "detach")}


# -- onnxruntime values of every IR node ----------------------------------------------------------
def onnx_value_names(program, weights: dict, for_trt: bool = False, graph: str = "forward") -> dict:
    """{(node id, port): ONNX value name} of the top-level graph: the names of the model
    `to_onnx_model` builds for the same program (the ONNX target's own lowering walk)."""
    from nnspec.targets.onnx.lower import lower_values

    return lower_values(program, graph, weights, for_trt)[1]


def expose_values(model, names: list):
    """A copy of `model` whose graph also outputs each value in `names` (typed from value_info)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output} | {i.name for i in m.graph.input}
    typed = {vi.name: vi for vi in m.graph.value_info}
    for nm in names:
        if nm in have:
            continue
        if nm in typed:
            m.graph.output.append(typed[nm])
        else:
            m.graph.output.append(onnx.helper.ValueInfoProto(name=nm))
        have.add(nm)
    return m


def onnx_values(model, value_names: dict, inputs: dict, threads: int = 1) -> dict:
    """{(node id, port): np.ndarray} from onnxruntime with every mapped value exposed."""
    from nnspec.targets.onnx.runner import ort_session

    produced = {o for nd in model.graph.node for o in nd.output} | {i.name for i in model.graph.input}
    wanted = {k: v for k, v in value_names.items() if v in produced}
    m = expose_values(model, sorted(set(wanted.values())))
    sess = ort_session(m, threads=threads)
    outs = [o.name for o in sess.get_outputs()]
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    got = dict(zip(outs, sess.run(outs, feed)))
    return {k: got[v] for k, v in wanted.items() if v in got}


def first_divergence(program, ref: dict, got: dict, tolerance: float, target: str, graph: str = "forward"):
    """The first node (topological order) whose output differs beyond `tolerance`, or None."""
    g = program.graphs[graph]
    last_ok = None
    for n in g.topo():
        if n.op == "input":
            continue
        compared = False
        for port in range(len(n.outputs)):
            key = (n.id, port)
            if key not in ref or key not in got:
                continue
            compared = True
            err, _, ok, _ = compare(got[key], ref[key], tolerance)
            if not ok:
                return Divergence(target, n.id, n.op, port, err, last_ok, n.loc)
        if compared:
            last_ok = n.id
    return None


# -- the command -----------------------------------------------------------------------------------
def verify(program, targets=None, tolerance: float | None = None, seed: int = 0, dims: dict | None = None,
           onnx_model=None, module=None, graph: str = "forward", threads: int = 1) -> VerifyReport:
    """Run torch eager (the reference) and every available target in `targets` (default: onnx, and
    trt where a GPU can run it) on the same generated inputs; returns the parity report. `report.ok`
    is False (`report.exit_code` 1) on a tolerance break, with the first diverging node named.

    onnx_model: an ONNX model to check instead of lowering the program (e.g. a compiled artifact's).
    """
    import torch

    from nnspec.targets.torch.build import build_module

    from .runners import OrtRunner, module_weights, runnable_targets, runner_for, symbol_values

    targets = list(targets) if targets else ["onnx", "trt"]
    targets = [t for t in targets if t != "torch"]
    tol = DEFAULT_TOLERANCE["fp32"] if tolerance is None else float(tolerance)
    module = module if module is not None else build_module(program, seed)
    module.eval()
    from .runners import generate_inputs, torch_runner
    inputs = generate_inputs(program, dims, seed, graph)
    report = VerifyReport(tol, dims=symbol_values(program, dims, graph))
    ref_runner = torch_runner(program, module, graph=graph)
    with torch.inference_mode():
        want = ref_runner.run(inputs)
    weights = module_weights(module)
    why_not = runnable_targets(targets)
    for t in targets:
        if why_not.get(t):
            report.skipped[t] = why_not[t]
            continue
        if t == "onnx":
            if onnx_model is None:
                from nnspec.targets.onnx.export import to_onnx_model
                onnx_model = to_onnx_model(program, weights, seed, graph=graph)
            runner = OrtRunner(onnx_model, threads=threads)
        else:
            try:
                runner = runner_for(program, t, module=module, seed=seed, dims=dims)
            except Exception as e:  # a target that cannot build is reported, not fatal to the others
                report.skipped[t] = getattr(e, "message", str(e)).splitlines()[0]
                continue
        got = runner.run(inputs)
        broke = False
        for name, w in want.items():
            err, rel, ok, shape_ok = compare(got.get(name, np.empty(0)), w, tol)
            report.rows.append(ParityRow(t, name, err, rel, ok, shape_ok))
            broke |= not ok
        if broke and t == "onnx":
            ref_vals = torch_values(program, module, inputs, graph)
            names = onnx_value_names(program, weights, False, graph)
            got_vals = onnx_values(onnx_model, names, inputs, threads)
            d = first_divergence(program, ref_vals, got_vals, tol, t, graph)
            if d is not None:
                report.divergences.append(d)
    return report
