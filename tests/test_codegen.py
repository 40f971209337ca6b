"""The torch target: readable, deterministic, standalone generated code (goldens + behaviour)."""
from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def golden(path: Path, text: str, test_file: str = "tests/test_codegen.py") -> None:
    """`text` must equal the golden file `path` (under tests/golden/); NNSPEC_UPDATE_GOLDEN=1 rewrites it.
    A mismatch shows the start of the diff and the command that accepts the change."""
    if os.environ.get("NNSPEC_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    rel = path.relative_to(GOLDEN.parent.parent).as_posix()
    how = f"if the change is intended, rewrite the goldens: NNSPEC_UPDATE_GOLDEN=1 python -m pytest {test_file} -q"
    if not path.exists():
        pytest.fail(f"missing golden {rel}; {how}", pytrace=False)
    old = path.read_text()
    if text != old:
        diff = list(difflib.unified_diff(old.splitlines(), text.splitlines(), rel, "generated now", n=2, lineterm=""))
        shown = "\n".join(diff[:80]) + ("\n..." if len(diff) > 80 else "")
        pytest.fail(f"{rel} differs from what nnspec generates now:\n{shown}\n{how}", pytrace=False)


def _golden(name: str, text: str) -> None:
    golden(GOLDEN / name, text)


def test_generated_code_golden(tmp_path):
    src, cls = generate_source(load(_spec(tmp_path)))
    assert cls == "Tiny"
    _golden("tiny_model.py", src)


def test_ir_dump_golden(tmp_path):
    p = load(_spec(tmp_path))
    text = "\n".join(line.split("  #")[0].rstrip() for line in p.dump().splitlines())  # drop tmp paths
    _golden("tiny_ir.txt", text + "\n")


def test_chained_repeat_becomes_sequential_with_shared_classes(tmp_path):
    src, _ = generate_source(load(_spec(tmp_path, GOOD.replace('repeat: "${depth}"', "repeat: 5"))))
    assert "self.body = nn.Sequential(*[Res() for _ in range(5)])" in src
    assert src.count("class Res(") == 1
    assert "body = self.body(stem)  # f32[N,8,16,16]  tiny.yaml:16" in src  # one call, a shape comment
    assert "for block" not in src and "ModuleList" not in src


def test_repeat_whose_inner_values_escape_is_unrolled(tmp_path):
    spec = GOOD.replace("  body: {block: res, repeat: \"${depth}\", args: {planes: \"${width}\"}}",
                        "  body: {block: res, repeat: 2, args: {planes: \"${width}\"}}\n  more: {block: res, in: body, args: {planes: 8}}")
    p = load(_spec(tmp_path, spec.replace("{y: body}", "{y: more}")))
    assert "body = self.body(stem)" in generate_source(p)[0]
    # a graph output inside the chain forces one call per instance, over an nn.ModuleList
    p.forward.outputs["early"] = p.forward.instances["body.0"].out_refs[0]  # expose an inner value
    src, _ = generate_source(p)
    assert "self.body = nn.ModuleList([Res(), Res()])" in src
    assert "body_0 = self.body[0](stem)" in src and "body_1 = self.body[1](body_0)" in src
    m = build_module(p)
    assert set(m.state_dict()) == {f"{n.id}.{k}" for n in p.all_nodes() for k in n.params}


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


# -- one class per block structure ------------------------------------------------------------------
def _classes(src: str) -> list[str]:
    import re
    return re.findall(r"^class (\w+)\(", src, re.M)


def _class_text(src: str, name: str) -> str:
    start = src.index(f"\nclass {name}(")
    end = src.find("\nclass ", start + 1)
    return src[start + 1:end if end > 0 else None].rstrip() + "\n"


def test_resnet50_has_one_class_per_block_structure():
    src, cls = generate_source(load("resnet", "resnet50"))
    assert _classes(src) == ["Projection", "Bottleneck", "Resnet50"]  # 13 classes before sharing
    bottleneck = _class_text(src, "Bottleneck")
    assert "def __init__(self, in_channels, planes, stride=1, downsample=False):" in bottleneck
    assert "self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)" in bottleneck
    assert "self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)" in bottleneck
    # torchvision's Optional submodule: built only where the shape changes, skipped in forward
    assert "self.downsample = Projection(in_channels, planes * 4, stride) if downsample else None" in bottleneck
    assert "downsample = self.downsample(x) if self.downsample is not None else x" in bottleneck
    root = _class_text(src, cls)
    assert "Bottleneck(64, 64, downsample=True)," in root  # stride left at its default
    assert "Bottleneck(256, 128, stride=2, downsample=True)," in root
    assert "*[Bottleneck(1024, 256) for _ in range(5)]," in root
    assert "layer1 = self.layer1(maxpool)  # f32[N,256,56,56]" in root


MLP = """\
nnspec: 1
name: mlp
params: {width: 256, depth: 3, classes: 10}
inputs: {x: {shape: [N, 784]}}
blocks:
  layer:
    doc: One hidden layer.
    args: {width: int, gain: {type: float, default: 1.0}}
    in: [h]
    nodes:
      fc: {op: linear, out: "${width}"}
      act: {op: relu}
      s: {op: scale, factor: "${gain}"}
    out: s
nodes:
  hidden: {block: layer, repeat: "${depth}", args: {width: "${width - 16 * i}", gain: "${1.0 + i}"}}
  head: {op: linear, out: "${classes}"}
outputs: {logits: head}
"""


def test_constants_become_parameters_and_forward_reads_them_from_attributes(tmp_path):
    p = load(_spec(tmp_path, MLP, "mlp.yaml"))
    src, _ = generate_source(p)
    assert _classes(src) == ["Layer", "Mlp"]
    layer = _class_text(src, "Layer")
    assert '"""One hidden layer."""' in layer
    assert "def __init__(self, in_features, width, gain=1.0):" in layer
    assert "self.gain = gain" in layer and "self.fc = nn.Linear(in_features, width)" in layer
    assert "s = act * self.gain  # f32[N,width]  mlp.yaml:13" in layer
    assert "Layer(784, 256),\n            Layer(256, 240, gain=2.0),\n            Layer(240, 224, gain=3.0),\n" in src
    _assert_faithful(p)


def test_a_constant_no_parameter_gives_splits_the_class(tmp_path):
    spec = GOOD.replace("kernel: 3, padding: 1}\n      r1",
                        "kernel: \"${3 if i == 0 else 1}\", padding: \"${1 if i == 0 else 0}\"}\n      r1")
    spec = spec.replace("args: {planes: int}", "args: {planes: int, i: int}").replace(
        'args: {planes: "${width}"}', 'args: {planes: "${width}", i: "${i}"}').replace('"${depth}"', "3")
    p = load(_spec(tmp_path, spec))
    src, _ = generate_source(p)
    # kernel 3 vs 1 follows no arg: two classes, though the arg i names the instance
    assert _classes(src) == ["Res", "Res_2", "Tiny"]
    assert "nn.Sequential(Res(), Res_2(), Res_2())" in src
    _assert_faithful(p)


def test_lstm_outputs_unpack_naturally(tmp_path):
    src, _ = generate_source(load("char_rnn", "small"))
    assert "lstm_y, (lstm_h, lstm_c) = self.lstm(embed)  # f32[N,T,128], f32[2,N,128], f32[2,N,128]" in src
    assert "lstm_outputs" not in src


def test_file_has_only_the_imports_it_uses_and_no_noqa(tmp_path):
    src, _ = generate_source(load(_spec(tmp_path)))
    assert "import math" not in src and "import torch.nn.functional" not in src and "noqa" not in src
    assert "import torch\n" in src  # torch.relu
    assert "pass" not in src
    r50, _ = generate_source(load("resnet", "resnet50"))
    assert "import torch.nn.functional as F\n" in r50 and "import math" not in r50
    # a block without submodules has no __init__ at all
    no_modules = GOOD.replace("c1: {op: conv2d, in: x, out: \"${planes}\", kernel: 3, padding: 1}", "c1: {op: tanh, in: x}")
    src, _ = generate_source(load(_spec(tmp_path, no_modules)))
    assert "def __init__" not in _class_text(src, "Res")


def test_keyword_defaults_match_torch():
    """pieces.TORCH_DEFAULTS completes constructor calls with torch's defaults: they must be torch's."""
    import inspect

    import torch.nn as nn

    from nnspec.compiler.ops import registry
    from nnspec.targets.torch.pieces import TORCH_DEFAULTS

    ns: dict = {"torch": torch, "nn": nn, "F": torch.nn.functional}
    for op in registry().values():
        for snippet in op.torch_snippets.values():
            exec(snippet, ns)  # nnspec's own helper classes
    for func, defaults in TORCH_DEFAULTS.items():
        cls = getattr(nn, func[3:]) if func.startswith("nn.") else ns[func]
        params = inspect.signature(cls).parameters
        if set(params) == {"args", "kwargs"}:  # nn.LSTM / nn.GRU take RNNBase's arguments
            params = inspect.signature(nn.RNNBase).parameters
        names = list(params)
        for k, d in defaults:
            assert k in params and params[k].default == d and type(params[k].default) is type(d), (func, k)
        assert [names.index(k) for k, _ in defaults] == sorted(names.index(k) for k, _ in defaults), func


# -- sharing never changes what a module computes ---------------------------------------------------
def _assert_faithful(program) -> None:
    """The generated module is the IR: every submodule equals what its op's own constructor builds
    (so shared classes pass the right constants), forward equals evaluating the ops one by one, and
    the state-dict keys are the IR's parameter names."""
    import math

    import torch.nn as nn

    from nnspec.targets.inputs import example_inputs
    from nnspec.targets.torch.codegen import ident

    module = build_module(program, seed=0).eval()
    assert set(module.state_dict()) == {f"{n.id}.{k}" for n in program.all_nodes() for k in n.params}
    ns: dict = {"torch": torch, "nn": nn, "F": torch.nn.functional, "math": math}
    g = program.forward
    for n in g.topo():
        for snippet in n.opdef.torch_snippets.values():
            exec(snippet, ns)  # nnspec's own helper classes
    arrays = example_inputs(program, {"N": 2}, 0)
    vals = {}
    with torch.no_grad():
        for n in g.topo():
            if n.op == "input":
                vals[(n.id, 0)] = torch.from_numpy(arrays[n.attrs.name])
                continue
            try:
                sub = module.get_submodule(".".join(p if p.isdigit() else ident(p) for p in n.id.split(".")))
            except AttributeError:
                sub = None  # a functional op: its code never reads the module
            ins = {f"_in{k}": vals[r] for k, r in enumerate(g.inputs_of(n.id))}
            code = n.opdef.to_torch(n.attrs, list(ins), "_m", n)
            if code.init is not None:
                want = eval(code.init, ns).eval()  # the op's own constructor, from its own attributes
                public = lambda m: {k: v for k, v in vars(m).items() if not k.startswith("_")}  # noqa: E731
                assert repr(sub) == repr(want) and public(sub) == public(want), n.id
            code = code.with_temps({t: f"_t_{t}" for t in code.temps})
            local = dict(ns, _m=sub, **ins)
            if code.stmts:
                exec("\n".join(code.stmts), local)
            out = eval(code.expr, local)
            for k, v in enumerate(out if isinstance(out, tuple) else (out,)):
                vals[(n.id, k)] = v
        got = module(*[torch.from_numpy(arrays[n.attrs.name]) for n in g.inputs()])
    got = got if isinstance(got, tuple) else (got,)
    for y, ref in zip(got, g.outputs.values()):
        assert torch.equal(y, vals[ref])


def test_zoo_modules_are_faithful():
    for spec, preset, overrides in (("resnet", "resnet18", {"image_size": 32}), ("resnet", "resnet20", None),
                                    ("transformer", "encoder_base", None), ("transformer", "tiny", None),
                                    ("char_rnn", "small", None)):
        _assert_faithful(load(spec, preset, overrides))


BLOCK_NET = """\
nnspec: 1
name: net
inputs: {{x: {{shape: [N, {c0}, 8, 8]}}}}
blocks:
  proj:
    args: {{out: int, stride: int}}
    in: x
    nodes:
      conv: {{op: conv2d, out: "${{out}}", kernel: 1, stride: "${{stride}}", bias: false}}
    out: conv
  unit:
    args: {{planes: int, stride: {{type: int, default: 1}}, k: {{type: int, default: 3}}, gain: {{type: float, default: 1.0}}}}
    in: x
    nodes:
      c1: {{op: conv2d, in: x, out: "${{planes}}", kernel: "${{k}}", stride: "${{stride}}", padding: "${{k // 2}}"}}
      bn: {{op: batch_norm, when: "${{planes > 2}}"}}
      act: {{op: relu, in: "${{'bn' if planes > 2 else 'c1'}}"}}
      s: {{op: scale, factor: "${{gain}}"}}
      sc: {{block: proj, in: x, args: {{out: "${{planes}}", stride: "${{stride}}"}}, when: "${{stride != 1 or channels(x) != planes}}"}}
      sum: {{op: add, in: [s, "${{'sc' if stride != 1 or channels(x) != planes else 'x'}}"]}}
    out: sum
nodes:
{stages}
outputs: {{y: {last}}}
"""


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c0=st.sampled_from([2, 4]),
       stages=st.lists(st.tuples(st.integers(1, 3), st.sampled_from([2, 4, 6]), st.sampled_from([1, 2]),
                                 st.sampled_from(["3", "1", '"${3 if i == 0 else 1}"']), st.booleans()),
                       min_size=1, max_size=3))
def test_random_block_nets_are_faithful(tmp_path, c0, stages):
    lines = []
    for k, (rep, planes, stride, kernel, gain) in enumerate(stages):
        args = f'planes: {planes}, stride: "${{{stride} if i == 0 else 1}}", k: {kernel}'
        args += ', gain: "${1.0 + i}"' if gain else ""
        lines.append(f"  s{k}: {{block: unit, repeat: {rep}, args: {{{args}}}}}")
    p = load(_spec(tmp_path, BLOCK_NET.format(c0=c0, stages="\n".join(lines), last=f"s{len(stages) - 1}"), "net.yaml"))
    _assert_faithful(p)
