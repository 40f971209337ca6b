"""The op reference, generated from the registry: docs/ops.md and the op descriptions of `nnspec schema`.

Everything comes from the op classes (summary, input and output ports, attribute fields with their
types, constraints, defaults and descriptions), so the reference cannot drift from the code;
tests/test_op_reference.py fails when docs/ops.md is stale. Regenerate it with

    .venv/bin/python -m nnspec.compiler.ops.reference -o docs/ops.md
"""
from __future__ import annotations

import argparse
import sys

from .describe import field_text

HIDDEN = {"input", "scan"}  # written as `inputs:` and `{scan: block}` nodes (README), not as `op:` nodes


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a table cell: `|x|` must not end the cell


def _default(field) -> str:
    if field.is_required():
        return "required"
    return "`null`" if field.default is None else f"`{field.default!r}`".replace("True", "true").replace("False", "false")


def description(op) -> str:
    """Plain-text description of one op: what it computes, its inputs and outputs."""
    lines = [op.summary()]
    if op.in_ports:
        lines.append("Inputs: " + "; ".join(p.text() for p in op.in_ports) + ".")
    lines.append("Outputs: " + "; ".join(p.text() for p in op.out_ports) + ".")
    return " ".join(lines)


def markdown() -> str:
    from . import op_names, registry

    ops = registry()
    out = ["# Op reference", "",
           "Generated from the op registry by `python -m nnspec.compiler.ops.reference -o docs/ops.md`; do not edit.",
           "Every op node also takes `in`, `when`, `tie`, `share`, `init` and `doc` (README: the spec language).",
           "Shapes use the papers' symbols; `*spatial` stands for one or two spatial axes.", ""]
    names = [n for n in op_names() if n not in HIDDEN]
    out.append("| op | what it computes |")
    out.append("|---|---|")
    for n in names:
        out.append(f"| [`{n}`](#{n}) | {_cell(ops[n].summary().split('. ')[0].rstrip('.'))} |")
    for n in names:
        op = ops[n]
        out += ["", f"## {n}", "", op.summary(), ""]
        if op.in_ports:
            out.append("Inputs:")
            out += [f"- {p.text()}" for p in op.in_ports]
            out.append("")
        out.append("Outputs:")
        out += [f"- {p.text()}" for p in op.out_ports]
        fields = op.Attrs.model_fields
        if fields:
            out += ["", "| attribute | type | default | meaning |", "|---|---|---|---|"]
            for fname, f in fields.items():
                out.append(f"| `{fname}` | {_cell(field_text(f))} | {_cell(_default(f))} | {_cell(f.description or '')} |")
        notes = [f"fusion class: {op.fusion}"]
        if op.train_dependent:
            notes.append("behaves differently in training and evaluation")
        out += ["", "; ".join(notes) + "."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the op reference (Markdown) generated from the registry.")
    ap.add_argument("-o", "--output", help="file to write (default: stdout)")
    args = ap.parse_args(argv)
    text = markdown()
    if args.output:
        from pathlib import Path
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
