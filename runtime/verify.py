"""`nnspec verify`: run every available target on the same generated inputs and compare with torch eager.

The parity table has one row per (target, output): max absolute error, max relative error and a
verdict. An element passes when |got - want| <= tolerance * (1 + |want|) (absolute near zero,
relative for large values). When a target breaks the tolerance, the first diverging node is found by
comparing every intermediate value in topological order: torch values come from the reference
interpreter (`targets/torch/interpret.py`: the IR evaluated node by node with each op's own torch
lowering, bound to the generated module's submodules, so weights are the module's), the target's
from its registry entry's `node_values` (onnx: the same ONNX model with every node output exposed
as an extra graph output). Node ids are shared by both, so the report names the spec node. Which
targets exist, and how each one runs, is the target registry's (`nnspec.targets.registry`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nnspec.targets.inputs import symbol_values
# Every IR value by torch (the reference interpreter) and by onnxruntime: the targets' own modules
# compute them; re-exported under verify's historical names.
from nnspec.targets.onnx.runner import expose_values, onnx_value_names, onnx_values  # noqa: F401
from nnspec.targets.torch.interpret import evaluate as torch_values

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
def default_targets() -> list[str]:
    """Every registered target but the reference (torch eager): the ones that cannot run here are skipped."""
    from nnspec.targets import registry
    return [t for t in registry.names() if t != registry.REFERENCE]


def target_program(program, target: str, fuse: str | None = None):
    """`program`'s spec compiled with `target`'s pass pipeline, fuse_ops in mode `fuse` (None: the
    target's default), as `nnspec compile --target T --fuse F` would compile it."""
    from .compile import program_for

    return program_for(program, target, fuse)


def fused_changes(program) -> bool:
    """fuse_ops rewrote or marked something in `program` (its torch module is not the reference's)."""
    res = program.results.get("fuse_ops")
    return res is not None and bool(res.summary.get("fired"))


def fused_module(program, module):
    """`program`'s generated module holding `module`'s weights (a training state dict: an eval-only
    module folds its batch norms as it loads)."""
    from nnspec.targets.torch.build import build_module

    fused = build_module(program, seed=None)
    fused.load_state_dict(module.state_dict(), strict=True)
    return fused.eval()


def verify(program, targets=None, tolerance: float | None = None, seed: int = 0, dims: dict | None = None,
           onnx_model=None, module=None, graph: str = "forward", threads: int = 1,
           fuse: str | None = None) -> VerifyReport:
    """Run torch eager (the reference) and every available target in `targets` (default: every other
    registered target) on the same generated inputs; returns the parity report. `report.ok` is False
    (`report.exit_code` 1) on a tolerance break, with the first diverging node named where the target
    can show its intermediate values (onnx).

    Each target runs `program`'s spec as compiled for it (its pipeline, fuse_ops in mode `fuse` or the
    target's default) with the reference module's (unfused) weights; `program` itself is the reference.
    Torch is compared too when fusion changed its module (`--fuse inference`: the eval-only module).
    onnx_model: an ONNX model to check instead of lowering the program (e.g. a compiled artifact's).
    """
    import torch

    from nnspec.targets import registry
    from nnspec.targets.base import RunOptions
    from nnspec.targets.torch.build import build_module

    from .runners import generate_inputs, runnable_targets, torch_runner

    default = not targets
    asked = list(targets) if targets else default_targets()
    programs = {t: target_program(program, t, fuse) for t in dict.fromkeys(asked + [registry.REFERENCE])}
    # torch eager is the reference; its own fused module is a target of its own when fusion changed it
    targets = [t for t in asked if t != registry.REFERENCE or fused_changes(programs[t])]
    if default and fused_changes(programs[registry.REFERENCE]):
        targets.insert(0, registry.REFERENCE)
    tol = DEFAULT_TOLERANCE["fp32"] if tolerance is None else float(tolerance)
    module = module if module is not None else build_module(program, seed)
    module.eval()
    inputs = generate_inputs(program, dims, seed, graph)
    report = VerifyReport(tol, dims=symbol_values(program, dims, graph))
    with torch.inference_mode():
        want = torch_runner(program, module, graph=graph).run(inputs)
    why_not = runnable_targets(targets)
    for t in targets:
        if why_not.get(t):
            report.skipped[t] = why_not[t]
            continue
        entry = registry.get(t)
        opts = RunOptions(seed=seed, threads=threads, graph=graph, dims=dims,
                          model=onnx_model if t == "onnx" else None)
        prog_t = programs[t]
        try:
            runner = entry.runner(prog_t, fused_module(prog_t, module) if t == registry.REFERENCE else module, opts)
        except Exception as e:
            if not entry.build_may_fail:  # nnspec's own lowering failed: an error to show, not a skip
                raise
            # e.g. a TensorRT build this GPU refuses: reported, not fatal to the other targets
            report.skipped[t] = getattr(e, "message", str(e)).splitlines()[0]
            continue
        got = runner.run(inputs)
        broke = False
        for name, w in want.items():
            err, rel, ok, shape_ok = compare(got.get(name, np.empty(0)), w, tol)
            report.rows.append(ParityRow(t, name, err, rel, ok, shape_ok))
            broke |= not ok
        if broke and entry.node_values is not None:
            ref_vals = torch_values(program, module, inputs, graph)
            got_vals = entry.node_values(prog_t, module, runner, inputs, opts)
            # a layer with a batch norm folded in computes the normalised value: not comparable
            folded = {n.id for n in prog_t.all_nodes() if (n.fused or "").startswith("fold_bn(")}
            got_vals = {k: v for k, v in got_vals.items() if k[0] not in folded}
            d = first_divergence(program, ref_vals, got_vals, tol, t, graph)
            if d is not None:
                report.divergences.append(d)
    return report
