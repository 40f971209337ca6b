"""IR dumps: JSON (machine-readable), Graphviz dot, Mermaid and a self-contained SVG.

All dumps are deterministic. The SVG needs no Graphviz install: nodes are placed in layers by
longest path from the inputs, which reads well for the mostly-sequential graphs of the zoo.
"""
from __future__ import annotations

import html
import json

from .graph import Graph


def _label(n) -> str:
    t = ", ".join(str(x) for x in n.outputs)
    return f"{n.id}\n{n.op}" + (f"\n{t}" if t else "")


def to_json(graphs: dict) -> str:
    def g_json(g: Graph) -> dict:
        nodes = []
        for n in g.topo():
            attrs = n.attrs.model_dump(mode="json") if hasattr(n.attrs, "model_dump") else {}
            nodes.append({
                "id": n.id, "op": n.op, "attrs": attrs,
                "inputs": [{"node": s, "port": p} for s, p in g.inputs_of(n.id)],
                "outputs": [t.to_json() for t in n.outputs],
                "params": {k: {"shape": list(p.shape), "dtype": p.dtype, "buffer": p.buffer} for k, p in n.params.items()},
                "ties": n.ties, "loc": str(n.loc) if n.loc else None,
                "body": g_json(n.body) if n.body is not None else None,
            })
        return {"name": g.name, "nodes": nodes, "outputs": {k: {"node": v[0], "port": v[1]} for k, v in g.outputs.items()}}
    return json.dumps({name: g_json(g) for name, g in graphs.items()}, indent=1, sort_keys=True)


def to_dot(graphs: dict) -> str:
    lines = ["digraph nnspec {", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica", fontsize=10];']
    for gname, g in graphs.items():
        lines.append(f'  subgraph "cluster_{gname}" {{ label="{gname}";')
        for n in g.topo():
            shape = ', shape=ellipse' if n.op == "input" else ""
            lab = _label(n).replace('"', '\\"').replace("\n", "\\n")
            lines.append(f'    "{n.id}" [label="{lab}"{shape}];')
        for n in g.topo():
            for s, p in g.inputs_of(n.id):
                lines.append(f'    "{s}" -> "{n.id}";')
        for name, (nid, _) in g.outputs.items():
            lines.append(f'    "out:{gname}:{name}" [label="{name}", shape=ellipse];')
            lines.append(f'    "{nid}" -> "out:{gname}:{name}";')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(graphs: dict) -> str:
    ids: dict = {}

    def mid(x: str) -> str:
        return ids.setdefault(x, f"n{len(ids)}")

    lines = ["flowchart TD"]
    for gname, g in graphs.items():
        lines.append(f"  subgraph {gname}")
        for n in g.topo():
            lab = html.escape(_label(n)).replace("\n", "<br/>")
            lines.append(f'    {mid(n.id)}["{lab}"]')
        for n in g.topo():
            for s, _ in g.inputs_of(n.id):
                lines.append(f"    {mid(s)} --> {mid(n.id)}")
        lines.append("  end")
    return "\n".join(lines) + "\n"


def to_svg(graphs: dict, box_w: int = 190, box_h: int = 46, gap_x: int = 24, gap_y: int = 30) -> str:
    g = next(iter(graphs.values()))
    order = g.topo()
    layer: dict = {}
    for n in order:
        layer[n.id] = 1 + max((layer[s] for s, _ in g.inputs_of(n.id)), default=-1)
    rows: dict = {}
    for n in order:
        rows.setdefault(layer[n.id], []).append(n)
    pos = {}
    width = max(len(r) for r in rows.values()) * (box_w + gap_x) + gap_x
    for li, row in rows.items():
        for k, n in enumerate(row):
            pos[n.id] = (gap_x + k * (box_w + gap_x), gap_y + li * (box_h + gap_y))
    height = (max(rows) + 1) * (box_h + gap_y) + gap_y
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="Helvetica" font-size="10">']
    for n in order:
        x, y = pos[n.id]
        for s, _ in g.inputs_of(n.id):
            sx, sy = pos[s]
            out.append(f'<line x1="{sx + box_w // 2}" y1="{sy + box_h}" x2="{x + box_w // 2}" y2="{y}" stroke="#888"/>')
    for n in order:
        x, y = pos[n.id]
        fill = "#e8f0fe" if n.op == "input" else "#f7f7f7"
        out.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="4" fill="{fill}" stroke="#333"/>')
        for i, text in enumerate(_label(n).split("\n")):
            out.append(f'<text x="{x + 6}" y="{y + 13 + 12 * i}">{html.escape(text[:34])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


FORMATS = {"json": to_json, "dot": to_dot, "mermaid": to_mermaid, "svg": to_svg,
           "text": lambda graphs: "\n".join(g.dump() for g in graphs.values()) + "\n"}
