"""IR dumps: JSON (machine-readable), Graphviz DOT, Mermaid, text, and pictures (SVG, PNG).

Every dump is deterministic: the same program gives the same bytes. The DOT dump draws each block
instance as a cluster (`subgraph "cluster_layer1.0"`), nested as the instances nest, so a residual
block reads as one box and its skip edge as an edge that Graphviz routes around the other nodes.
Pictures come from Graphviz's `dot`, run as a subprocess on that DOT text (`render`). Without
`dot`, an SVG falls back to a small built-in layout (nodes in layers by longest path from the
inputs, no clusters, straight edges that may cross boxes) and `render` says so; PNG needs `dot`.

Node ids are identifiers with dots, but labels carry attribute values and shapes: every string in
the DOT text goes through `dot_string`, which quotes and escapes it and keeps the text ASCII.
"""
from __future__ import annotations

import html
import json
import shutil
import subprocess
import textwrap
from dataclasses import dataclass, field

from ..errors import NnspecError, clean
from .graph import Graph

LABEL_WIDTH = 48  # characters of one label line in the DOT dump
MAX_TEXT = 2000  # characters of a node's attribute text before wrapping
ATTR_LINES = 3  # label lines of attribute text at most
DOT_TIMEOUT = 120.0  # seconds `dot` may take for one picture
PICTURES = ("svg", "png")  # formats drawn by Graphviz
INSTALL_HINT = "install Graphviz, e.g. `sudo apt-get install graphviz` (`make install` does it on Debian)"
CLUSTER_COLORS = ("#eef3fb", "#fdf3e3", "#edf7ee", "#f6eefa")  # by nesting depth


class GraphvizError(NnspecError):
    """Graphviz is missing, failed or took too long to draw a picture."""


def _label(n) -> str:
    t = ", ".join(str(x) for x in n.outputs)
    return f"{n.id}\n{n.op}" + (f"\n{t}" if t else "")


# -- JSON -----------------------------------------------------------------------------------------
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


# -- DOT ------------------------------------------------------------------------------------------
def dot_string(text) -> str:
    """`text` as a DOT quoted string, shown literally by Graphviz; lines are joined by `\\n` breaks.

    Control and bidirectional characters become visible escapes (`\\x1b`), backslashes and quotes
    are escaped, `&` and non-ASCII characters become HTML entities (Graphviz decodes them in every
    label), so no text can end the string, start a DOT statement or a Graphviz escape like `\\N`."""
    lines = str(text).split("\n")
    return '"' + "\\n".join(_dot_escape(clean(line, len(line))) for line in lines) + '"'


def _dot_escape(line: str) -> str:
    out = []
    for ch in line:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "&":
            out.append("&amp;")
        elif not " " <= ch <= "~":
            out.append(f"&#{ord(ch)};")
        else:
            out.append(ch)
    return "".join(out)


def _cut(text: str, width: int = LABEL_WIDTH) -> str:
    """One label line: unsafe characters made visible (`clean`), cut to `width` characters."""
    text = clean(text, len(text))
    return text if len(text) <= width else text[: width - 3] + "..."


def _value_text(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value_text(x) for x in v) + "]"
    return repr(v) if isinstance(v, float) else str(v)


def _attr_lines(n) -> list[str]:
    shown = n.attrs.model_dump(exclude_defaults=True) if hasattr(n.attrs, "model_dump") else {}
    if n.op == "input":
        shown.pop("name", None)  # the node's id
    text = clean(", ".join(f"{k}={_value_text(v)}" for k, v in shown.items()), MAX_TEXT)
    return textwrap.wrap(text, LABEL_WIDTH, max_lines=ATTR_LINES, placeholder=" ...") if text else []


def _node_label(n) -> str:
    """Local name, op, attributes (wrapped) and one line per output type."""
    lines = [_cut(n.local), _cut(n.op)] + _attr_lines(n) + [_cut(str(t)) for t in n.outputs]
    return "\n".join(lines)


@dataclass
class _Cluster:
    """One block instance (the root holds the nodes outside any block)."""

    key: str
    block: str
    items: list = field(default_factory=list)  # its nodes and child clusters, in topological order
    children: dict = field(default_factory=dict)  # key -> _Cluster (also in `items`)


def _cluster_path(scope: tuple) -> list[tuple[str, str]]:
    """(instance key, block) for each block instance enclosing a node, outermost first.

    A `repeat` adds a list level (`layer1`) that holds the instances (`layer1.0`) but is not one."""
    names, out = [], []
    for s in scope:
        names.append(s.name)
        if s.kind == "block":
            out.append((".".join(names), s.block))
    return out


def _cluster_tree(g: Graph) -> _Cluster:
    root = _Cluster("", "")
    for n in g.topo():
        c = root
        for key, block in _cluster_path(n.scope):
            if key not in c.children:
                c.children[key] = _Cluster(key, block)
                c.items.append(c.children[key])
            c = c.children[key]
        c.items.append(n)
    return root


@dataclass(frozen=True)
class _Ids:
    """DOT ids of one graph's nodes and clusters; `prefix` tells the graphs of a program apart."""

    prefix: str = ""

    def __call__(self, node_id: str) -> str:
        return dot_string(self.prefix + node_id)

    def cluster(self, key: str) -> str:
        return dot_string("cluster_" + self.prefix + key)  # Graphviz draws subgraphs named cluster* as boxes


def _item_lines(c: _Cluster, ref: _Ids, depth: int, pad: str) -> list[str]:
    out = []
    for item in c.items:
        if isinstance(item, _Cluster):
            out += _cluster_lines(item, ref, depth + 1, pad)
        else:
            out.append(pad + _node_line(item, ref))
    return out


def _node_line(n, ref: _Ids) -> str:
    style = ', shape=ellipse, fillcolor="#e8f0fe"' if n.op == "input" else ""
    return f"{ref(n.id)} [label={dot_string(_node_label(n))}{style}];"


def _cluster_lines(c: _Cluster, ref: _Ids, depth: int, pad: str) -> list[str]:
    color = CLUSTER_COLORS[(depth - 1) % len(CLUSTER_COLORS)]
    out = [f"{pad}subgraph {ref.cluster(c.key)} {{",
           f"{pad}  label={dot_string(f'{c.key} ({c.block})')}; fillcolor=\"{color}\";"]
    return out + _item_lines(c, ref, depth, pad + "  ") + [pad + "}"]


def _edge_line(g: Graph, ref: _Ids, src: str, port: int, dst: str) -> str:
    """`src -> dst`, the edge tail labelled with the output's name when `src` has several."""
    prod = g.node(src)
    named = len(prod.outputs) > 1 and port < len(prod.out_names)
    extra = f" [taillabel={dot_string(prod.out_names[port])}]" if named else ""
    return f"{ref(src)} -> {dst}{extra};"


def _edge_lines(g: Graph, ref: _Ids, pad: str) -> list[str]:
    out = [pad + _edge_line(g, ref, src, port, ref(n.id)) for n in g.topo() for src, port in g.inputs_of(n.id)]
    for name, (nid, port) in g.outputs.items():
        out.append(f"{pad}{ref('output:' + name)} [label={dot_string(name)}, shape=ellipse, fillcolor=\"#e6f4ea\"];")
        out.append(pad + _edge_line(g, ref, nid, port, ref("output:" + name)))
    return out


def _graph_lines(g: Graph, ref: _Ids, pad: str) -> list[str]:
    return _item_lines(_cluster_tree(g), ref, 0, pad) + _edge_lines(g, ref, pad)


def to_dot(graphs: dict) -> str:
    """Graphviz DOT text: blocks as nested clusters, graph inputs and outputs as ellipses.

    With several entry graphs (`graphs:` in the spec) each is a cluster of its own and its ids are
    prefixed with its name, since graphs share node names."""
    lines = ["digraph nnspec {",
             '  graph [rankdir=TB, newrank=true, fontname="Helvetica", fontsize=10, nodesep=0.25, ranksep=0.3, '
             'style="rounded,filled", color="#9aa0a6"];',
             '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", fontsize=10];',
             '  edge [color="#555555", arrowsize=0.6, fontname="Helvetica", fontsize=8];']
    if len(graphs) == 1:
        lines += _graph_lines(next(iter(graphs.values())), _Ids(), "  ")
    else:
        for gname, g in graphs.items():
            lines.append(f"  subgraph {dot_string('cluster_graph:' + gname)} {{")
            lines.append(f'    label={dot_string("graph " + gname)}; fillcolor="#fafafa";')
            lines += _graph_lines(g, _Ids(gname + "/"), "    ")
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- Mermaid, built-in SVG ------------------------------------------------------------------------
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
    """The built-in SVG layout, used only when Graphviz is missing: the first graph, no clusters."""
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


# -- pictures through Graphviz --------------------------------------------------------------------
TEXT_FORMATS = {"json": to_json, "dot": to_dot, "mermaid": to_mermaid,
                "text": lambda graphs: "\n".join(g.dump() for g in graphs.values()) + "\n"}
FORMATS = ("dot", "svg", "png", "mermaid", "json", "text")

FALLBACK_NOTE = ("Graphviz `dot` not found on PATH, so this SVG uses the built-in fallback layout "
                 f"(no block clusters, edges may cross boxes); for the full drawing {INSTALL_HINT}")


@dataclass(frozen=True)
class Rendered:
    data: bytes
    binary: bool = False  # not text (PNG)
    note: str | None = None  # one line for stderr: how it was drawn, when that is worth knowing


def find_dot() -> str | None:
    """Path of Graphviz's `dot` executable, or None."""
    return shutil.which("dot")


def run_dot(dot_text: str, fmt: str, exe: str, timeout: float | None = None) -> bytes:
    """Run `exe -T<fmt>` on `dot_text` (stdin, no shell; DOT_TIMEOUT seconds at most) and return
    what it wrote."""
    timeout = DOT_TIMEOUT if timeout is None else timeout
    try:
        r = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode("ascii"), capture_output=True,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise GraphvizError(f"Graphviz `dot` did not finish within {timeout:g} s",
                            hint="write `--format dot` and render it with other Graphviz options") from None
    except OSError as e:
        raise GraphvizError(f"cannot run Graphviz `dot` ({exe}): {e.strerror or e}", hint=INSTALL_HINT) from None
    if r.returncode != 0 or not r.stdout:
        detail = r.stderr.decode("utf-8", "replace").strip()[:500] or f"exit status {r.returncode}"
        raise GraphvizError(f"Graphviz `dot -T{fmt}` failed: {detail}")
    return r.stdout


def render(graphs: dict, fmt: str) -> Rendered:
    """The dump `fmt` (one of FORMATS) of `graphs` as bytes; svg and png are drawn by `dot`."""
    if fmt not in PICTURES:
        return Rendered(TEXT_FORMATS[fmt](graphs).encode())
    exe = find_dot()
    if exe is None:
        if fmt == "png":
            raise GraphvizError("`--format png` needs Graphviz's `dot`, which is not on PATH",
                                hint=f"{INSTALL_HINT}; or use --format svg or --format dot")
        return Rendered(to_svg(graphs).encode(), note=FALLBACK_NOTE)
    return Rendered(run_dot(to_dot(graphs), fmt, exe), binary=fmt == "png")
