"""No import cycles between nnspec's modules: none among module-level imports anywhere, and none at
all (function-level imports included, so a lazy import cannot hide one) in the targets and the
runtime. Read from the source with `ast`, nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"compiler": "nnspec.compiler", "targets": "nnspec.targets", "runtime": "nnspec.runtime"}


def _modules() -> dict:
    mods = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            mods[".".join([package] + (parts[:-1] if is_pkg else parts))] = (path, is_pkg)
    return mods


def _imports(name: str, is_pkg: bool, node, mods: dict) -> list:
    """The nnspec modules an import statement loads (its package's own __init__ excluded)."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        base = name if is_pkg else name.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            base = base.rsplit(".", 1)[0]
        full = (base + ("." + node.module if node.module else "")) if node.level else (node.module or "")
        targets = [full] + [f"{full}.{a.name}" for a in node.names if f"{full}.{a.name}" in mods]
    out = []
    for t in targets:
        while t and t not in mods:
            t = t.rpartition(".")[0]
        if t and t != name and not name.startswith(t + "."):
            out.append(t)
    return out


def _graph(top_level_only: bool, prefix: str = "nnspec.") -> nx.DiGraph:
    mods = _modules()
    g = nx.DiGraph()
    for name, (path, is_pkg) in mods.items():
        if not name.startswith(prefix):
            continue
        tree = ast.parse(path.read_text())
        for node in (tree.body if top_level_only else ast.walk(tree)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                g.add_edges_from((name, t) for t in _imports(name, is_pkg, node, mods) if t.startswith(prefix))
    return g


def test_no_module_level_import_cycles():
    assert list(nx.simple_cycles(_graph(top_level_only=True))) == []


def test_no_import_cycles_at_all_in_targets_and_runtime():
    for prefix in ("nnspec.targets.", "nnspec.runtime."):
        assert list(nx.simple_cycles(_graph(top_level_only=False, prefix=prefix))) == [], prefix


def test_the_onnx_builder_and_walker_do_not_import_each_other():
    g = _graph(top_level_only=False)
    assert not nx.has_path(g, "nnspec.targets.onnx.walk", "nnspec.targets.onnx.builder")
    assert not nx.has_path(g, "nnspec.targets.onnx.builder", "nnspec.targets.onnx.lower")
