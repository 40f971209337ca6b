"""`nnspec graph` pictures: the DOT dump (a cluster per block instance, nested as the instances
nest; skip edges; escaped labels; the same bytes every time) and rendering through Graphviz `dot`
(svg, png), with the built-in SVG layout as the fallback when `dot` is missing.

The tests that run `dot` skip when it is not installed; `make test` installs it on Debian.
"""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

import nnspec.compiler as nc
from nnspec.compiler.ir import dump
from nnspec.runtime.cli import main

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz `dot` is not installed (`make install` installs it on Debian)")
SVG = "{http://www.w3.org/2000/svg}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DOT_STRING = r'"(?:[^"\\]|\\.)*"'

SMALL = """\
nnspec: 1
name: small
dims: {N: {min: 1, opt: 2, max: 8}, Sequence_length_of_the_input_token_sequence: {min: 1, opt: 4, max: 16}}
inputs:
  ids: {shape: [N, Sequence_length_of_the_input_token_sequence], dtype: int64, range: [0, 10]}
nodes:
  emb: {op: embedding, in: ids, num: 10, dim: 4, doc: 'a "quoted" doc with \\ and }'}
outputs: {y: emb}
"""


@pytest.fixture(scope="module")
def r18():
    return nc.load("resnet", preset="resnet18")


@pytest.fixture(scope="module")
def r18_dot(r18):
    return dump.to_dot(r18.graphs)


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


@pytest.fixture
def no_dot(tmp_path, monkeypatch):
    """PATH without Graphviz (an empty folder)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def fake_dot(tmp_path, monkeypatch, script: str) -> None:
    """A `dot` on PATH that runs `script` (sh) instead of Graphviz."""
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    exe = folder / "dot"
    exe.write_text("#!/bin/sh\n" + script + "\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))


def unquote(text: str) -> str:
    """What Graphviz shows for a DOT quoted string written by `dot_string`."""
    body = text[1:-1]
    body = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), body)
    return html.unescape(body)


def parse_dot(text: str) -> tuple[dict, dict]:
    """(cluster key -> enclosing cluster key or None, node id -> enclosing cluster key or None)."""
    clusters, nodes, stack = {}, {}, [None]
    for line in text.splitlines():
        line = line.strip()
        if m := re.fullmatch(r'subgraph "cluster_(.*)" \{', line):
            clusters[m.group(1)] = stack[-1]
            stack.append(m.group(1))
        elif line == "}":
            stack.pop()
        elif m := re.fullmatch(r'"([^"]*)" \[label=.*', line):
            nodes[m.group(1)] = stack[-1]
    assert stack == [], "unbalanced braces"
    return clusters, nodes


def innermost_instance(node) -> str | None:
    names, key = [], None
    for s in node.scope:
        names.append(s.name)
        key = ".".join(names) if s.kind == "block" else key
    return key


# -- the DOT text ---------------------------------------------------------------------------------
def test_a_cluster_per_block_instance_nested_as_instances_nest(r18, r18_dot):
    g = r18.graphs["forward"]
    clusters, nodes = parse_dot(r18_dot)
    assert set(clusters) == set(g.instances)  # 8 basic blocks, 3 projections
    assert clusters["layer1.0"] is None and clusters["layer4.1"] is None
    for stage in (2, 3, 4):
        assert clusters[f"layer{stage}.0.downsample"] == f"layer{stage}.0"
    for n in g.topo():
        assert nodes[n.id] == innermost_instance(n), n.id
    assert '"layer2.0.downsample.conv" [label="conv\\nconv2d\\n' in r18_dot  # local names in clusters
    assert 'label="layer2.0.downsample (projection)"' in r18_dot


def test_skip_edges_from_block_inputs_to_their_add(r18, r18_dot):
    g = r18.graphs["forward"]
    edges = set(re.findall(rf"^\s*({DOT_STRING}) -> ({DOT_STRING})", r18_dot, re.M))
    for key, inst in g.instances.items():
        if inst.block != "basic":
            continue
        (add,) = [n.id for n in g.topo() if n.op == "add" and innermost_instance(n) == key]
        src = f"{key}.downsample.bn" if f"{key}.downsample" in g.instances else inst.in_refs[0][0]
        assert (f'"{src}"', f'"{add}"') in edges, key
    assert ('"maxpool"', '"layer1.0.sum"') in edges and ('"layer1.0.relu2"', '"layer1.1.sum"') in edges


def test_labels_are_escaped(small):
    program = nc.load(str(small))
    node = program.graphs["forward"].node("ids")
    hostile = 'V"x\\N & &amp; \u00e9 \x1b[31m \u202e"]; a -> b [label="pwn"]; \\'
    node.attrs = node.attrs.model_copy(update={"range": [0, hostile]})
    text = dump.to_dot(program.graphs)
    assert text.isascii()
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith('"ids" [')]
    # Outside its quoted strings the statement is exactly the node's: nothing leaked out of them.
    assert re.sub(DOT_STRING, "S", line.strip()) == "S [label=S, shape=ellipse, fillcolor=S];"
    label = unquote(re.findall(DOT_STRING, line)[1])
    shown = label.replace("\n", " ")
    assert 'V"x\\N & &amp; \u00e9 \\x1b[31m \\u202e"]; a -> b' in shown  # controls shown as escapes
    assert "\x1b" not in label and "\u202e" not in label


def test_long_shapes_and_attributes_are_cut(small):
    text = dump.to_dot(nc.load(str(small)).graphs)
    labels = [unquote(s) for s in re.findall(rf"label=({DOT_STRING})", text)]
    assert all(len(line) <= dump.LABEL_WIDTH for lab in labels for line in lab.split("\n"))
    (ids,) = [lab for lab in labels if lab.startswith("ids\n")]
    shape = ids.split("\n")[-1]
    assert shape.startswith("i64[N,Sequence_length") and shape.endswith("...") and len(shape) == dump.LABEL_WIDTH


def test_dot_is_deterministic(r18, r18_dot):
    assert dump.to_dot(nc.load("resnet", preset="resnet18").graphs) == r18_dot
    r = subprocess.run([sys.executable, "-m", "nnspec.runtime.cli", "graph", "resnet", "-p", "resnet18",
                        "--format", "dot"], capture_output=True, check=True)
    assert r.stdout == r18_dot.encode()


def test_graphs_of_a_program_are_kept_apart(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(textwrap.dedent("""\
        nnspec: 1
        name: two
        dims: {N: {min: 1, opt: 2, max: 8}}
        inputs: {x: {shape: [N, 3]}}
        blocks:
          layer: {in: [h], nodes: {lin: {op: linear, out: 3}, act: {op: relu}}, out: act}
        nodes:
          body: {block: layer, repeat: 2}
          lin: {op: linear, in: body, out: 3}
        outputs: {y: lin}
        graphs:
          step:
            inputs: {z: {shape: [N, 3]}}
            nodes: {lin2: {op: linear, in: z, out: 3, share: lin}}
            outputs: {y: lin2}
        """))
    clusters, nodes = parse_dot(dump.to_dot(nc.load(str(spec)).graphs))
    assert clusters == {"graph:forward": None, "forward/body.0": "graph:forward",
                        "forward/body.1": "graph:forward", "graph:step": None}
    assert nodes["forward/body.1.act"] == "forward/body.1" and nodes["step/lin2"] == "graph:step"


# -- pictures through Graphviz --------------------------------------------------------------------
@needs_dot
def test_svg_through_dot_has_a_box_per_cluster(r18_dot, tmp_path, capsys):
    out = tmp_path / "r18.svg"
    assert main(["graph", "resnet", "-p", "resnet18", "--format", "svg", "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""
    root = ET.parse(out).getroot()
    groups = [(el.get("class"), el.findtext(f"{SVG}title")) for el in root.iter(f"{SVG}g")]
    clusters, nodes = parse_dot(r18_dot)
    assert sorted(t for c, t in groups if c == "cluster") == sorted("cluster_" + k for k in clusters)
    assert {t for c, t in groups if c == "node"} == set(nodes) | {"output:logits"}
    assert ("edge", "maxpool->layer1.0.sum") in groups  # the skip edge of the first block
    again = tmp_path / "again.svg"
    assert main(["graph", "resnet", "-p", "resnet18", "--format", "svg", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


@needs_dot
def test_png_through_dot(small, tmp_path):
    out = tmp_path / "small.png"
    assert main(["graph", str(small), "--format", "png", "-o", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)


@needs_dot
def test_hostile_labels_render_literally(small):
    program = nc.load(str(small))
    node = program.graphs["forward"].node("ids")
    node.attrs = node.attrs.model_copy(update={"range": [0, 'a"b\\N&amp;\u00e9']})
    svg = dump.render(program.graphs, "svg").data
    texts = [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]
    assert 'range=[0,a"b\\N&amp;\u00e9]' in texts


def test_svg_falls_back_without_dot(small, tmp_path, no_dot, capsys):
    out = tmp_path / "small.svg"
    assert main(["graph", str(small), "--format", "svg", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fallback" in err and "apt-get install graphviz" in err
    root = ET.parse(out).getroot()
    assert root.tag == f"{SVG}svg" and not [g for g in root.iter(f"{SVG}g") if g.get("class") == "cluster"]


def test_png_without_dot_is_an_error(small, tmp_path, no_dot, capsys):
    out = tmp_path / "small.png"
    assert main(["graph", str(small), "--format", "png", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "png" in err and "Graphviz" in err and "`dot`" in err and "Traceback" not in err
    assert not out.exists()


def test_a_failing_dot_is_an_error(small, tmp_path, monkeypatch, capsys):
    fake_dot(tmp_path, monkeypatch, "echo 'Error: syntax error in line 1' >&2; exit 1")
    assert main(["graph", str(small), "--format", "svg", "-o", str(tmp_path / "x.svg")]) == 1
    assert "syntax error in line 1" in capsys.readouterr().err
    assert not (tmp_path / "x.svg").exists()


def test_a_hanging_dot_times_out(tmp_path, monkeypatch):
    fake_dot(tmp_path, monkeypatch, f"exec {sys.executable} -c 'import time; time.sleep(30)'")
    with pytest.raises(dump.GraphvizError, match="did not finish within 0.5 s"):
        dump.run_dot("digraph {}", "svg", dump.find_dot(), timeout=0.5)
