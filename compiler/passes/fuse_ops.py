"""The `fuse_ops` pass: operator fusion rules, chosen by mode, with a report of what fused and why not.

The pass only records decisions on the IR; each target lowers them (targets/torch/folding.py,
targets/onnx/folding.py). A rule either rewrites the graph through the Graph API or marks nodes in
`Node.fused` (see compiler/passes/fusion_rules.py for the marks), and `check` declines a match with a
reason instead of raising, so "why didn't this fuse?" has an answer. The rules, by number (the mode
that runs each in brackets; `fusion_rules.rules()` is the order they are tried in at a node):

  1. fold_batch_norm (inference): batch_norm(conv2d(x)) -> conv2d'(x). The conv/linear is marked
     `fold_bn(bn)` and the batch norm `folded_into(conv)`; the folded weight and bias are computed
     from the training weights when lowered (ONNX initializers; torch: as the state dict loads).
  2. attention_from_primitives (safe): matmul(dropout(softmax(add(scale(matmul(q, swap(k))), mask))), v)
     -> attention(q, k, v, mask) {scale, dropout}, which torch runs as F.scaled_dot_product_attention.
     Scale, mask add and dropout are optional; the transposes specs write to make k^T are read through;
     a causal mask of constants (where(i >= j, 0, -big), -big * triu(ones, 1)) becomes {causal}.
  3. scan_to_sequence (safe): scan(x, h0, c0){body: lstm_cell(x_t, h, c)} -> one lstm kernel (gru_cell,
     rnn_cell alike); the scan is marked `lstm` and keeps its cell, so the state dict is unchanged.
  4. drop_dropout (inference): dropout(x) -> x; gaussian_sample(mu, logvar) -> mu.
  5. drop_identity (safe): identity(x), scale(x){factor=1}, a cast / reshape / transpose to what x
     already is -> x.
  6. fold_constants (safe): a subgraph of parameters and constants only (a causal mask, a folded
     scale) -> marked `constant` at its edge, computed once when lowered instead of every call (torch:
     in __init__, for subgraphs without weights only, so training sees current weights).
  7. constant_positional_table (inference): positional_encoding(x){sinusoidal} -> x + table[:T], the
     table a constant of the longest declared T (ONNX computes no sines per call).

Modes (`PassContext.options["fuse"]`, the CLI's `--fuse`): `none` runs no rule; `safe` the rules that
keep training semantics (outputs and gradients: 2, 3, 5, 6); `inference` all of them (eval mode only).
Without an option a target gets its registry default (`TARGET_DEFAULTS`: torch safe, the inference
targets inference), and no target at all gets `safe`. Dead producers left by a rewrite are removed.

The result's summary is the fusion report (`report_table` renders it): per rule the matches, how many
fused and how many were declined, every decline with its reason, and the rules the mode skips.
"""
from __future__ import annotations

from ..errors import PassError
from .core import _dce, owner_of
from .fusion_rules import _tied_ids, rules as all_rules
from .manager import PassContext, PassResult, Program, register_pass
from .rewrite import rewrite_program

MODES = ("none", "safe", "inference")
# The mode a target gets when the caller names none; the target registry (targets/registry.py) fills
# it in from its entries, since targets are listed there and nowhere in the compiler.
TARGET_DEFAULTS: dict[str, str] = {}


def mode_of(ctx: PassContext) -> str:
    """The fusion mode of a pipeline run: `options["fuse"]`, else the target's default, else safe."""
    mode = ctx.options.get("fuse")
    if mode is None:
        mode = TARGET_DEFAULTS.get(ctx.target or "", "safe")
    if mode not in MODES:
        raise PassError(f"fusion mode {mode!r} is not known", expected=f"one of: {', '.join(MODES)}")
    return mode


def rules_for(mode: str, program: Program | None = None) -> tuple[list, dict]:
    """(the rules `mode` runs, in priority order; {rule name: why it does not run})."""
    nodes = list(program.all_nodes()) if program is not None else []
    every = all_rules(_tied_ids(nodes))
    run = [r for r in every if mode in r.modes]
    skipped = {r.name: ("--fuse none" if mode == "none" else "inference only: it changes what training computes")
               for r in every if mode not in r.modes}
    return run, skipped


@register_pass("fuse_ops", requires=("infer_shapes",), changes=("structure", "types"))
def fuse_ops(program: Program, ctx: PassContext) -> PassResult:
    """Fuse operators by rules (see the module docstring): 1 fold_batch_norm, 2 attention_from_primitives,
    3 scan_to_sequence, 4 drop_dropout, 5 drop_identity, 6 fold_constants, 7 constant_positional_table.
    `--fuse none|safe|inference` picks the rules; the summary is the fusion report."""
    mode = mode_of(ctx)
    run, skipped = rules_for(mode, program)
    result = rewrite_program(program, run, ctx) if run else PassResult(summary={"fired": [], "declined": []})
    dead = []
    if result.added or result.removed:  # producers only the fused nodes read (a transpose of k, a scale)
        ids = {n.id for n in program.all_nodes()}
        keep = {owner_of(t, ids) for n in program.all_nodes() for t in n.ties.values()}
        for g in program.graphs.values():
            dead += _dce(g, keep)
    for d in result.summary.get("declined", []):
        ctx.note(f"{d['rule']} declined: {d['reason']}", d["at"])
    summary = report(mode, run, skipped, result.summary)
    summary["dead_code_removed"] = sorted(dead)
    return PassResult(added=result.added, removed=result.removed + len(dead), rewritten=result.rewritten,
                      summary=summary)


def report(mode: str, run: list, skipped: dict, rewrite_summary: dict) -> dict:
    """The fusion report: per rule (number order) matches, fused, declined; every decline's reason."""
    fired, declined = rewrite_summary.get("fired", []), rewrite_summary.get("declined", [])
    table = []
    for r in sorted(run + [], key=lambda r: r.number):
        f = [x for x in fired if x["rule"] == r.name]
        d = [x for x in declined if x["rule"] == r.name]
        table.append({"number": r.number, "rule": r.name, "matched": len(f) + len(d), "fused": len(f),
                      "declined": len(d)})
    return {"mode": mode, "rules": table, "not_run": dict(sorted(skipped.items())),
            "fired": [{"rule": x["rule"], "at": x["at"], "nodes": x["nodes"], "graph": x["graph"]} for x in fired],
            "declined": [{"rule": x["rule"], "at": x["at"], "reason": x["reason"], "graph": x["graph"]}
                         for x in declined],
            "converged": rewrite_summary.get("converged", True)}


def report_table(summary: dict) -> str:
    """The fusion report as text: one row per rule, then each decline with its reason."""
    head = f"{'#':>2}  {'rule':<27} {'matched':>7} {'fused':>6} {'declined':>8}"
    lines = [f"fusion (--fuse {summary['mode']})", head, "-" * len(head)]
    for r in summary["rules"]:
        lines.append(f"{r['number']:>2}  {r['rule']:<27} {r['matched']:>7} {r['fused']:>6} {r['declined']:>8}")
    for name, why in summary.get("not_run", {}).items():
        lines.append(f"    {name:<27} not run: {why}")
    if summary["declined"]:
        lines.append("declined:")
        for d in summary["declined"]:
            lines.append(f"  {d['rule']} at '{d['at']}': {d['reason']}")
    return "\n".join(lines)


__all__ = ["fuse_ops", "MODES", "TARGET_DEFAULTS", "mode_of", "rules_for", "report", "report_table"]
