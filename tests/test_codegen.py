"""The torch target: readable, deterministic, standalone generated code (goldens + behaviour)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nnspec.compiler import load
from nnspec.targets.torch.build import build_module
from nnspec.targets.torch.codegen import generate_source

from test_errors import GOOD

GOLDEN = Path(__file__).parent / "golden"
PY = sys.executable


def _spec(tmp_path, text=GOOD, name="tiny.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("NNSPEC_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with NNSPEC_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} changed; inspect the diff and rerun with NNSPEC_UPDATE_GOLDEN=1 if intended"


def test_generated_code_golden(tmp_path):
    src, cls = generate_source(load(_spec(tmp_path)))
    assert cls == "Tiny"
    _golden("tiny_model.py", src)


def test_ir_dump_golden(tmp_path):
    p = load(_spec(tmp_path))
    text = "\n".join(line.split("  #")[0].rstrip() for line in p.dump().splitlines())  # drop tmp paths
    _golden("tiny_ir.txt", text + "\n")


def test_repeat_becomes_module_list_with_shared_classes(tmp_path):
    src, _ = generate_source(load(_spec(tmp_path, GOOD.replace('repeat: "${depth}"', "repeat: 5"))))
    assert "self.body = nn.ModuleList([Res() for _ in range(5)])" in src
    assert src.count("class Res(") == 1
    # a chained repeat is a loop over the ModuleList
    assert "for block in self.body:  # 5 x block res\n            body = block(body)" in src


def test_repeat_whose_inner_values_escape_is_unrolled(tmp_path):
    spec = GOOD.replace("  body: {block: res, repeat: \"${depth}\", args: {planes: \"${width}\"}}",
                        "  body: {block: res, repeat: 2, args: {planes: \"${width}\"}}\n  more: {block: res, in: body, args: {planes: 8}}")
    p = load(_spec(tmp_path, spec.replace("{y: body}", "{y: more}")))
    assert "for block in self.body" in generate_source(p)[0]
    # a graph output inside the chain forces one call per instance
    p.forward.outputs["early"] = p.forward.instances["body.0"].out_refs[0]  # expose an inner value
    src, _ = generate_source(p)
    assert "for block in self.body" not in src and "body_0 = self.body[0](stem)" in src


def test_state_dict_keys_are_node_ids_and_module_runs(tmp_path):
    p = load(_spec(tmp_path))
    m = build_module(p)
    ids = {f"{n.id}.{k}" for n in p.all_nodes() for k in n.params}
    assert set(m.state_dict()) == ids
    y = m(torch.randn(2, 3, 16, 16))
    assert tuple(y.shape) == (2, 8, 16, 16)


def test_same_spec_same_bytes_across_processes(tmp_path):
    spec = _spec(tmp_path)
    outs = []
    for k in range(2):
        d = tmp_path / f"out{k}"
        r = subprocess.run([PY, "-m", "nnspec.runtime.cli", "compile", spec, "--target", "torch", "-o", str(d)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append(((d / "model.py").read_bytes(), (d / "manifest.json").read_bytes()))
    assert outs[0] == outs[1]
    manifest = json.loads(outs[0][1])
    for key in ("spec", "preset", "overrides", "spec_sha256", "nnspec_version", "inputs", "outputs", "params", "flops", "files"):
        assert key in manifest
    assert manifest["torch"]["class"] == "Tiny"
    assert manifest["inputs"][0] == {"name": "x", "shape": ["N", 3, 16, 16], "dtype": "float32",
                                     "dims": {"N": {"min": 1, "opt": None, "max": None}}}
    import hashlib
    assert manifest["files"]["model.py"] == hashlib.sha256(outs[0][0]).hexdigest()


BLOCK_NNSPEC = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "nnspec" or name.startswith("nnspec."):
            raise ImportError("nnspec is not installed here")
sys.meta_path.insert(0, Block())
import importlib.util, torch
spec = importlib.util.spec_from_file_location("m", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
model = getattr(mod, sys.argv[2])()
print(tuple(model(torch.randn(1, 3, 16, 16)).shape))
"""


def test_generated_file_runs_without_nnspec(tmp_path):
    src, cls = generate_source(load(_spec(tmp_path)))
    f = tmp_path / "model.py"
    f.write_text(src)
    r = subprocess.run([PY, "-c", BLOCK_NNSPEC, str(f), cls], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(1, 8, 16, 16)"


def test_tied_parameters_share_storage_and_count_once(tmp_path):
    spec = GOOD.replace("outputs: {y: body}", "  head: {op: conv2d, in: body, out: 8, kernel: 3, padding: 1, tie: {weight: body.0.c1.weight}}\n"
                        "outputs: {y: head}")
    p = load(_spec(tmp_path, spec))
    m = build_module(p)
    assert m.head.weight is m.body[0].c1.weight
    from nnspec.compiler.cost import cost_report
    assert cost_report(p).params == sum(x.numel() for x in m.parameters())


def test_init_override(tmp_path):
    spec = GOOD.replace("  stem: {op: conv2d, in: x,", "  stem: {op: conv2d, in: x, init: {bias: zeros, weight: {constant: {value: 0.5}}},")
    m = build_module(load(_spec(tmp_path, spec)))
    assert torch.all(m.stem.bias == 0) and torch.all(m.stem.weight == 0.5)


def test_bad_initialiser_is_a_clean_error(tmp_path):
    from nnspec.compiler.errors import NnspecError
    spec = GOOD.replace("  stem: {op: conv2d, in: x,", "  stem: {op: conv2d, in: x, init: {weight: glorious},")
    with pytest.raises(NnspecError, match="unknown initialiser 'glorious'"):
        generate_source(load(_spec(tmp_path, spec)))


def test_quick_commands_do_not_import_torch(tmp_path):
    spec = _spec(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        from nnspec.runtime.cli import main
        for argv in (["check", {spec!r}], ["inspect", {spec!r}, "--json"], ["graph", {spec!r}, "--format", "dot"],
                     ["compile", {spec!r}, "--target", "torch", "-o", {str(tmp_path / 'o')!r}]):
            assert main(argv) == 0, argv
        assert "torch" not in sys.modules, "torch was imported"
    """)
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_inspect_json_reports_params_and_flops(tmp_path, capsys):
    from nnspec.runtime.cli import main
    assert main(["inspect", _spec(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = build_module(load(_spec(tmp_path)))
    assert out["params"] == sum(x.numel() for x in m.parameters())
    # 3 convs of 3x3 at 16x16, N=1: stem 3->8, two block convs 8->8
    assert out["flops"] == 2 * 16 * 16 * 8 * 9 * (3 + 8 + 8)


def test_graph_formats(tmp_path, capsys):
    from nnspec.runtime.cli import main
    spec = _spec(tmp_path)
    for fmt, marker in (("dot", "digraph"), ("mermaid", "flowchart TD"), ("svg", "<svg"), ("json", '"nodes"'), ("text", "graph forward")):
        assert main(["graph", spec, "--format", fmt]) == 0
        assert marker in capsys.readouterr().out


def test_schema_lists_every_op(capsys):
    from nnspec.compiler.ops import op_names
    from nnspec.runtime.cli import main
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    text = json.dumps(schema)
    for op in op_names():
        if op != "input":
            assert f'"const": "{op}"' in text or f'"enum": ["{op}"]' in text, op


def test_dump_after_pass(tmp_path, capsys):
    from nnspec.runtime.cli import main
    assert main(["inspect", _spec(tmp_path), "--dump-after", "expand"]) == 0
    out = capsys.readouterr().out
    assert "%body.1.c1 = conv2d(%body.0.sum)" in out and ": ?" in out  # expanded but not yet typed
