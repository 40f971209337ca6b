"""Spec text never becomes code: hostile strings in every free-text and name position.

Each hostile string carries a payload that, were it ever executed, would create a marker file. For
every position a spec (or an override, or the spec's file name) can put text in, the spec either
fails with a located error, or compiles to a `model.py` that parses, holds the payload only inside
string literals and comments, runs without creating the marker, and has state-dict keys equal to
the node ids.
"""
from __future__ import annotations

import io
import json
import tokenize
from pathlib import Path

import pytest
import torch

from nnspec.compiler import load
from nnspec.compiler.errors import NnspecError, SpecErrors
from nnspec.compiler.spec.load import parse_overrides
from nnspec.targets.inputs import example_inputs
from nnspec.targets.torch.build import load_source
from nnspec.targets.torch.codegen import generate_source

MARK = "PWNED"


def payloads(marker: Path) -> list[str]:
    act = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return [
        f'x"""\n{act}\n"""',                        # close a docstring, run, reopen
        f"x'''\n{act}\n'''",
        f"a\n{act}  # {MARK}",                      # a newline ends a comment
        f"a\r{act}  # {MARK}",
        f"a\u2028{act}  # {MARK}",                   # a Unicode line separator
        f"{{{act}}} {{0}} %s {MARK}",               # str.format / % fields
        f"\\\\\\\"\"\" {act} {MARK}",               # backslashes before quotes
        f"# {MARK}\x00\x1b[2J\u202e",               # NUL, terminal escapes, bidi override
        f"ｆｏｒｗａｒｄ{MARK}",                      # full-width look-alikes
        f"forward\n    def forward(self, x): {act}  # {MARK}",
    ]


NAME_ATTACKS = ["forward", "training", "state_dict", "_parameters", "__class__", "self", "torch", "F", "for",
                "class", "x y", "a.b", "1abc", "ｘ", "é", "a" * 101, "x\ny", "lambda", "super"]

BASE = {
    "nnspec": 1, "name": "t",
    "description": "ok", "paper": {"title": "ok", "authors": ["ok"], "year": 2020, "venue": "ok", "arxiv": "1"},
    "params": {"width": 4, "note": "plain"},
    "presets": {"small": {"params": {"width": 2}, "description": "ok"}},
    "dims": {"N": {"min": 1, "opt": 2, "max": 4}},
    "inputs": {"x": {"shape": ["N", 3], "doc": "ok"}},
    "blocks": {"layer": {"args": {"w": "int"}, "in": ["h"], "doc": "ok",
                         "nodes": {"fc": {"op": "linear", "out": "${w}", "doc": "ok"}, "act": {"op": "relu"}},
                         "out": "act"}},
    "nodes": {"body": {"block": "layer", "repeat": 2, "args": {"w": 3}},
              "head": {"op": "linear", "out": "${width}", "init": {"bias": "zeros"}}},
    "outputs": {"y": "head"},
    "graphs": {"step": {"inputs": {"z": {"shape": ["N", 3]}}, "nodes": {"lin": {"op": "linear", "in": "z", "out": 3,
                                                                                  "share": "body.0.fc"}},
                        "outputs": {"o": "lin"}}},
    "notes": "ok",
}

FREE_TEXT = [("description",), ("paper", "title"), ("paper", "authors", 0), ("paper", "venue"), ("paper", "arxiv"),
             ("presets", "small", "description"), ("inputs", "x", "doc"), ("blocks", "layer", "doc"),
             ("blocks", "layer", "nodes", "fc", "doc"), ("notes",)]


def _set(spec: dict, path: tuple, value) -> dict:
    spec = json.loads(json.dumps(spec))
    node = spec
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return spec


def _rename_key(spec: dict, path: tuple, new: str) -> dict:
    """`spec` with the mapping key at `path` renamed to `new` (references to it left as they are)."""
    spec = json.loads(json.dumps(spec))
    node = spec
    for k in path[:-1]:
        node = node[k]
    node[new] = node.pop(path[-1])
    return spec


NAME_KEYS = [("name",), ("params", "note"), ("presets", "small"), ("dims", "N"), ("inputs", "x"),
             ("blocks", "layer"), ("blocks", "layer", "args", "w"), ("blocks", "layer", "nodes", "fc"),
             ("nodes", "head"), ("outputs", "y"), ("graphs", "step"), ("graphs", "step", "nodes", "lin"),
             ("nodes", "head", "init", "bias")]


def _state_keys(program) -> set:
    keys = set()
    for n in program.all_nodes():
        keys |= {f"{n.id}.{p}" for p in n.params}
    return keys


def assert_safe(spec: dict, tmp_path: Path, marker: Path, file_name: str = "spec.yaml", overrides=None) -> str:
    """Load `spec`; a located error is fine, anything else must yield inert, runnable code."""
    path = tmp_path / file_name
    path.write_text(json.dumps(spec))
    try:
        program = load(str(path), overrides=overrides)
    except NnspecError as e:
        errs = e.errors if isinstance(e, SpecErrors) else [e]
        assert all(x.loc is not None for x in errs), e.render()
        assert "Traceback" not in e.render()
        return "error"
    src, cls = generate_source(program)
    compile(src, "model.py", "exec")
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if MARK in tok.string or "__import__" in tok.string:
            assert tok.type in (tokenize.STRING, tokenize.COMMENT), f"spec text became code: {tok}"
    mod = load_source(src, f"nnspec_hostile_{abs(hash(src))}")
    model = getattr(mod, cls)()
    g = program.forward
    arrays = example_inputs(program, {"N": 2}, 0)
    model.eval()(*[torch.from_numpy(arrays[n.attrs.name]) for n in g.inputs()])
    assert not marker.exists(), "a payload ran"
    assert set(model.state_dict()) == _state_keys(program)
    return "code"


def test_base_spec_compiles(tmp_path):
    assert assert_safe(BASE, tmp_path, tmp_path / "marker") == "code"


@pytest.mark.parametrize("where", FREE_TEXT, ids=lambda p: ".".join(map(str, p)))
def test_free_text_stays_data(tmp_path, where):
    marker = tmp_path / "marker"
    outcomes = {assert_safe(_set(BASE, where, text), tmp_path, marker) for text in payloads(marker)}
    assert outcomes == {"code"}  # free text is accepted, and only ever data


def test_spec_file_name_stays_data(tmp_path):
    marker = tmp_path / "marker"
    for text in payloads(marker):
        if "/" in text or "\x00" in text:
            continue  # not a possible file name
        assert assert_safe(BASE, tmp_path, marker, file_name=text[:60].replace("/", "") + ".yaml") == "code"


def test_override_values_stay_data(tmp_path):
    marker = tmp_path / "marker"
    for text in payloads(marker):
        try:
            overrides = parse_overrides([f"note={text}"])
        except NnspecError as e:
            assert e.loc is not None
            continue
        assert assert_safe(BASE, tmp_path, marker, overrides=overrides) in ("code", "error")


def test_the_reported_resnet_override_stays_data(tmp_path):
    """The finding: `--set 'imagenet_stem=x\"\"\"; ...; \"\"\"' --target onnx` ran the payload."""
    marker = tmp_path / "marker"
    act = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    program = load("resnet", "resnet18", parse_overrides([f'imagenet_stem=x"""; {act}; """']))
    src, _ = generate_source(program)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if "__import__" in tok.string:
            assert tok.type == tokenize.STRING, tok
    load_source(src, "nnspec_hostile_resnet")
    assert not marker.exists()


@pytest.mark.parametrize("where", NAME_KEYS, ids=lambda p: ".".join(map(str, p)))
def test_hostile_names_are_located_errors(tmp_path, where):
    marker = tmp_path / "marker"
    for bad in NAME_ATTACKS + payloads(marker):
        spec = _set(BASE, where, bad) if where == ("name",) else _rename_key(BASE, where, bad)
        outcome = assert_safe(spec, tmp_path, marker)
        if bad in ("F", "self", "torch", "super") and where[0] not in ("inputs",) and where != ("blocks", "layer"):
            continue  # fine as a node, block or param name: generated code renames its variable
        if outcome == "code":
            # only names that are harmless in this position may be accepted
            assert bad.isidentifier() and bad.isascii() and not bad.startswith("__"), (where, bad)


def test_nn_module_members_and_keywords_are_refused_as_node_names(tmp_path):
    for bad in ("forward", "training", "train", "state_dict", "_parameters", "half", "for", "__x"):
        spec = _rename_key(BASE, ("nodes", "head"), bad)
        spec["outputs"] = {"y": bad}
        (tmp_path / "s.yaml").write_text(json.dumps(spec))
        with pytest.raises(NnspecError) as ei:
            load(str(tmp_path / "s.yaml"))
        text = ei.value.render()
        assert f"bad name '{bad}'" in text and ei.value.loc is not None and "^" in text, text


def test_input_names_that_shadow_generated_names_are_refused(tmp_path):
    for bad in ("self", "torch", "F", "nn", "math", "range", "super", "MultiHeadAttention"):
        spec = _rename_key(BASE, ("inputs", "x"), bad)
        spec["nodes"]["body"]["in"] = bad
        (tmp_path / "s.yaml").write_text(json.dumps(spec))
        with pytest.raises(NnspecError, match="name the generated model.py uses|'self' is reserved"):
            load(str(tmp_path / "s.yaml"))


def test_block_names_cannot_collide_with_imports_or_the_root(tmp_path):
    """Blocks named like an import (`f` -> class F), a keyword (`none` -> None) or the root class."""
    spec = json.loads(json.dumps(BASE))
    head = spec["nodes"].pop("head")
    for bname in ("f", "none", "t", "torch", "positional_encoding"):
        spec["blocks"][bname] = spec["blocks"]["layer"]
        spec["nodes"][f"use_{bname}"] = {"block": bname, "in": "body", "args": {"w": 3}}
    spec["nodes"]["head"] = dict(head, **{"in": "use_positional_encoding"})
    assert assert_safe(spec, tmp_path, tmp_path / "marker") == "code"
    program = load(str(tmp_path / "spec.yaml"))
    src, cls = generate_source(program)
    import re
    names = re.findall(r"^class (\w+)\(", src, re.M)
    assert len(names) == len(set(names)) and cls == "T"
    assert not {"F", "None", "torch", "nn", "math"} & set(names)


def test_init_arguments_are_numbers_only(tmp_path):
    marker = tmp_path / "marker"
    for bad in [{"normal": {"std": f"0.02); {MARK}"}}, {"normal": {"std": True}}, {"normal": {"mean": [1]}},
                {"normal": {"stdd": 1.0}}, {"constant": {"value": float("nan")}}, "__import__", {"zeros": {"a": 1}}]:
        spec = _set(BASE, ("nodes", "head", "init", "weight"), bad)
        (tmp_path / "s.yaml").write_text(json.dumps(spec))
        with pytest.raises(NnspecError) as ei:
            load(str(tmp_path / "s.yaml"))
        assert ei.value.loc is not None and ei.value.loc.path[-2:] == ("init", "weight"), ei.value.render()
    good = _set(BASE, ("nodes", "head", "init", "weight"), {"normal": {"std": 2}})
    assert assert_safe(good, tmp_path, marker) == "code"
    src, _ = generate_source(load(str(tmp_path / "spec.yaml")))
    assert "nn.init.normal_(self.head.weight, mean=0.0, std=2.0)" in src


def test_init_of_a_missing_parameter_is_located(tmp_path):
    spec = _set(BASE, ("nodes", "head", "init"), {"wieght": "zeros"})
    (tmp_path / "s.yaml").write_text(json.dumps(spec, indent=1))
    with pytest.raises(NnspecError) as ei:
        load(str(tmp_path / "s.yaml"))
    text = ei.value.render()
    assert "init names parameter 'wieght'" in text and "one of its parameters: weight, bias" in text
    assert ei.value.loc is not None and ei.value.loc.path[-1] == "init"
