"""Bounds and located errors for untrusted specs (the security review's findings, one test each).

Bombs are held to structure, not to time: an error before the work it bounds (nodes built, bytes
read, errors collected, characters printed). Every bad input is a located error (file:line:col, the
line with a caret, what was expected) and exit 1 from the CLI, never "internal error".
"""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from nnspec.compiler import load
from nnspec.compiler.errors import NnspecError, SpecErrors
from nnspec.compiler.ir import graph as graph_mod
from nnspec.compiler.spec.load import parse_overrides
from nnspec.runtime.cli import main

from test_errors import GOOD, assert_at, error_of, write


def first(e: NnspecError) -> NnspecError:
    return e.errors[0] if isinstance(e, SpecErrors) else e


def cli_error(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    return err


# -- files: size before reading, quoted lines truncated, control characters escaped ---------------
def test_sparse_huge_file_is_refused_from_its_size(tmp_path, capsys):
    p = tmp_path / "big.yaml"
    with open(p, "wb") as f:
        f.truncate(400 * 1024 * 1024)  # 400 MB of holes: reading it would take seconds and memory
    opened = []
    real_open = open

    def spy(path, mode="r", *a, **kw):
        opened.append((str(path), mode))
        return real_open(path, mode, *a, **kw)

    import builtins
    builtins.open, saved = spy, builtins.open
    try:
        e = error_of(p)
    finally:
        builtins.open = saved
    assert "larger than" in e.message and str(p) not in [o[0] for o in opened]  # never opened
    assert len(cli_error(["check", str(p)], capsys)) < 2000


def test_too_large_error_does_not_quote_the_huge_line(tmp_path, capsys):
    p = write(tmp_path, "nnspec: 1\nname: " + "x" * (2 << 20) + "\n")
    err = cli_error(["check", str(p)], capsys)
    assert "larger than" in err and len(err) < 2000


def test_long_lines_are_cut_around_the_caret(tmp_path):
    spec = GOOD.replace("c1: {op: conv2d", "c1: {" + "doc: " + "y" * 5000 + ", op: conv2x")
    text = first(error_of(write(tmp_path, spec))).render()
    assert "unknown op 'conv2x'" in text and max(len(line) for line in text.splitlines()) < 400
    caret_line = [line for line in text.splitlines() if line.strip().startswith("|") and "^" in line][0]
    shown = text.splitlines()[text.splitlines().index(caret_line) - 1]
    col = caret_line.index("^")
    assert shown[col:col + 6] == "conv2x"


def test_control_characters_in_messages_are_escaped(tmp_path, capsys):
    spec = GOOD.replace("c1: {op: conv2d", 'c1: {op: "conv\\e[2J\\nFAKE: ok\\u202e"')
    err = cli_error(["check", str(write(tmp_path, spec))], capsys)
    assert "\x1b" not in err and "\u202e" not in err and "\nFAKE" not in err
    assert "\\x1b" in err and "\\n" in err


def test_included_library_in_latin1_is_located_at_the_include(tmp_path, capsys):
    (tmp_path / "lib.yaml").write_bytes("nnspec: 1\nblocks: {}\n# caf\xe9\n".encode("latin-1"))
    p = write(tmp_path, "include: [lib.yaml]\n" + GOOD)
    e = error_of(p)
    assert "not UTF-8" in e.message and e.loc.line == 1 and e.loc.file.endswith("spec.yaml")
    cli_error(["check", str(p)], capsys)


def test_errors_in_an_included_library_name_the_include(tmp_path):
    (tmp_path / "lib.yaml").write_text("nnspec: 1\nblocks: {b: {in: [x], nodes: {r: {op: relu}}, out: r, bogus: 1}}\n")
    e = first(error_of(write(tmp_path, "include: [lib.yaml]\n" + GOOD)))
    text = e.render()
    assert e.loc.file.endswith("lib.yaml") and "unknown key 'bogus'" in text
    assert "included from" in text and "spec.yaml:1" in text


# -- expansion: bounded before it is built ---------------------------------------------------
NESTED = """\
nnspec: 1
name: bomb
inputs: {x: {shape: [1, 4]}}
blocks:
  c: {in: [h], nodes: {r: {op: relu}}, out: r}
  b: {in: [h], nodes: {inner: {block: c, repeat: 1000}}, out: inner}
  a: {in: [h], nodes: {inner: {block: b, repeat: 1000}}, out: inner}
nodes:
  top: {block: a, repeat: 1000}
outputs: {y: top}
"""


@pytest.fixture
def nodes_built(monkeypatch):
    built = []
    real = graph_mod.Graph.add

    def add(self, node):
        built.append(node.id)
        return real(self, node)
    monkeypatch.setattr(graph_mod.Graph, "add", add)
    return built


def test_nested_repeats_are_refused_before_building(tmp_path, nodes_built):
    e = error_of(write(tmp_path, NESTED))
    assert "more than 200,000 nodes" in e.message and "at least" in e.message
    assert_at(e, 9, text="repeat")
    assert len(nodes_built) < 10


def test_node_bound_counts_each_node_once(tmp_path, monkeypatch):
    from nnspec.compiler.passes import expand
    monkeypatch.setattr(expand, "MAX_NODES", 60)
    # a block of 3 nodes repeated 19 times is 57 nodes plus the stem: under 60, allowed
    ok = GOOD.replace('repeat: "${depth}"', "repeat: 19")
    assert len(load(str(write(tmp_path, ok))).forward) == 1 + 1 + 57
    e = error_of(write(tmp_path, GOOD.replace('repeat: "${depth}"', "repeat: 20")))
    assert "more than 60 nodes" in e.message


RECURSIVE = """\
nnspec: 1
name: rec
inputs: {x: {shape: [1, 4]}}
blocks:
  tree:
    in: [h]
    nodes:
      left: {block: tree}
      right: {block: tree, in: h}
      sum: {op: add, in: [left, right]}
    out: sum
nodes:
  t: {block: tree}
outputs: {y: t}
"""


def test_recursive_block_with_fan_out_stops_at_the_first_runaway(tmp_path, capsys, nodes_built):
    e = error_of(write(tmp_path, RECURSIVE))
    errs = e.errors if isinstance(e, SpecErrors) else [e]
    assert len(errs) == 1 and "instantiates itself" in errs[0].message
    assert len(nodes_built) < 100
    err = cli_error(["check", str(write(tmp_path, RECURSIVE))], capsys)
    assert len(err) < 20_000


def test_collected_errors_are_capped(tmp_path, capsys):
    nodes = "\n".join(f"  n{i}: {{op: nope{i}, in: x}}" for i in range(500))
    spec = f"nnspec: 1\nname: many\ninputs: {{x: {{shape: [1, 4]}}}}\nnodes:\n{nodes}\noutputs: {{y: n0}}\n"
    e = error_of(write(tmp_path, spec))
    assert isinstance(e, SpecErrors) and len(e.errors) == 100
    err = cli_error(["check", str(write(tmp_path, spec))], capsys)
    assert "more errors not shown" in err and err.count("error: unknown op") == 50


# -- shape inference bounds ----------------------------------------------------------------
def test_huge_weights_are_refused_at_check(tmp_path, capsys):
    spec = """\
    nnspec: 1
    name: huge
    inputs: {x: {shape: [1, 2147483647]}}
    nodes:
      fc: {op: linear, out: 2147483647}
    outputs: {y: fc}
    """
    e = first(error_of(write(tmp_path, spec)))
    assert "parameter 'weight' has shape [2147483647, 2147483647]" in e.message
    assert_at(e, 5)
    cli_error(["check", str(write(tmp_path, spec))], capsys)


def test_huge_dims_are_refused(tmp_path):
    e = first(error_of(write(tmp_path, GOOD.replace("[N, 3, 16, 16]", "[N, 3, 16, 4294967296]"))))
    assert "dim 4294967296" in e.message and e.loc.line == 4


# -- every user error is a located user error ---------------------------------------------
@pytest.mark.parametrize("attr, value, message", [
    ("stride", "0", "greater than or equal to 1"),
    ("groups", "0", "greater than or equal to 1"),
    ("kernel", "0", "greater than or equal to 1"),
    ("kernel", "-3", "greater than or equal to 1"),
    ("out", "-8", "greater than or equal to 1"),
    ("out", "true", "valid integer"),
    ("out", "'8'", "valid integer"),
    ("padding", "[1, -1]", "greater than or equal to 0"),
    ("dilation", "2.5", "valid integer"),
])
def test_nonsense_attributes_are_located_at_the_attribute(tmp_path, capsys, attr, value, message):
    spec = GOOD.replace("  stem: {op: conv2d, in: x, out: \"${width}\", kernel: 3, padding: 1}",
                        f"  stem: {{op: conv2d, in: x, out: \"${{width}}\", kernel: 3, padding: 1, {attr}: {value}}}")
    if attr in ("out", "kernel", "padding"):
        spec = spec.replace(f"out: \"${{width}}\", kernel: 3, padding: 1, {attr}: {value}",
                            {"out": f"out: {value}, kernel: 3, padding: 1", "kernel": f"out: \"${{width}}\", kernel: {value}, padding: 1",
                             "padding": f"out: \"${{width}}\", kernel: 3, padding: {value}"}[attr])
    e = first(error_of(write(tmp_path, spec)))
    text = e.render()
    assert message in text and e.loc.path == ("nodes", "stem", attr) and "expected:" in text, text
    assert e.loc.line == 15
    cli_error(["check", str(write(tmp_path, spec))], capsys)


def test_deeply_nested_parentheses_are_located(tmp_path, capsys):
    expr = "(" * 300 + "1" + ")" * 300
    e = first(error_of(write(tmp_path, GOOD.replace('out: "${width}"', f'out: "${{{expr}}}"'))))
    assert e.loc is not None and e.loc.line == 15
    cli_error(["check", str(write(tmp_path, GOOD.replace('out: "${width}"', f'out: "${{{expr}}}"')))], capsys)


def test_a_chain_of_3000_ties_resolves(tmp_path):
    nodes = {"n0": {"op": "linear", "in": "x", "out": 4}}
    for i in range(1, 3000):
        nodes[f"n{i}"] = {"op": "linear", "in": f"n{i - 1}", "out": 4, "tie": {"weight": f"n{i - 1}.weight"}}
    spec = {"nnspec": 1, "name": "ties", "inputs": {"x": {"shape": [1, 4]}}, "nodes": nodes, "outputs": {"y": "n2999"}}
    (tmp_path / "ties.yaml").write_text(json.dumps(spec))
    program = load(str(tmp_path / "ties.yaml"))
    assert program.forward.node("n2999").ties == {"weight": "n0.weight"}
    nodes["n0"]["tie"] = {"weight": "n2999.weight"}  # now a cycle
    (tmp_path / "ties.yaml").write_text(json.dumps(spec))
    e = error_of(tmp_path / "ties.yaml")
    assert "form a cycle" in e.message and e.loc is not None


def test_set_into_a_scalar_or_a_missing_key_is_located(tmp_path, capsys):
    p = write(tmp_path, GOOD.replace("params: {width: 8, depth: 2}", "params: {width: 8, depth: 2, cfg: {a: {b: 1}}}"))
    e = error_of(p, overrides=parse_overrides(["depth=2", "width.x=1"]))
    assert "param 'width' is 8, not a mapping" in e.message and e.loc.file == "--set" and e.loc.line == 2
    assert "width.x=1" in e.render() and "^" in e.render()
    e = error_of(p, overrides=parse_overrides(["cfg.a.c=1"]))
    assert "'cfg.a' has no key 'c'" in e.message and "one of: b" in e.render()
    e = error_of(p, overrides=parse_overrides(["widht=3"]))
    assert "unknown param 'widht' of spec 'tiny'" in e.message and "did you mean width" in e.render()
    err = cli_error(["check", str(p), "--set", "cfg.a.b.c=1"], capsys)
    assert "--set:1:1" in err and "'cfg.a.b' is 1, not a mapping" in err


def test_set_value_errors_point_at_the_override(tmp_path):
    p = write(tmp_path, GOOD.replace("params: {width: 8, depth: 2}", "params: {width: 8, depth: 2, w2: 1}"))
    e = error_of(p, overrides=parse_overrides(["w2=${nope}"]))
    assert e.loc.file == "--set" and e.loc.col == 4 and "nope" in e.message


def test_preset_value_errors_point_at_the_preset(tmp_path):
    spec = GOOD.replace("params: {width: 8, depth: 2}", "params: {width: 8, depth: 2}\npresets:\n  bad: {params: {width: \"${nope}\"}}")
    e = error_of(write(tmp_path, spec), preset="bad")
    assert_at(e, 5, text="nope")


def test_every_preset_is_checked(tmp_path, capsys):
    spec = GOOD.replace("params: {width: 8, depth: 2}", "params: {width: 8, depth: 2}\npresets:\n  ok: {params: {width: 4}}\n"
                        "  typo: {params: {widht: 4}}")
    e = error_of(write(tmp_path, spec))  # the default params, with a typo in an unselected preset
    assert_at(e, 6, text="preset 'typo' sets unknown param 'widht'")
    spec = GOOD.replace("params: {width: 8, depth: 2}", "params: {width: 8, depth: 2}\npresets:\n  ok: {params: {width: 4}}\n"
                        "  broken: {params: {depth: -1}}")
    err = cli_error(["check", str(write(tmp_path, spec))], capsys)
    assert "repeat is -1" in err and "--preset broken" not in err  # the error, not an ok line
    capsys.readouterr()
    main(["check", str(write(tmp_path, spec))])
    assert "ok  " in capsys.readouterr().out


def test_reported_figures_must_be_numbers(tmp_path, capsys):
    e = error_of(write(tmp_path, GOOD.replace("params: {width: 8, depth: 2}", "params: {width: 8, depth: 2}\nreported: {params: lots}")))
    assert "reported figure is a number" in e.render() and e.loc.line == 4
    cli_error(["inspect", str(write(tmp_path, GOOD.replace("params: {width: 8", "reported: {params: lots}\nparams: {width: 8")))], capsys)


@pytest.mark.parametrize("dims, what", [("{min: 8, opt: 4, max: 2}", "min <= opt <= max"), ("{min: 0}", "greater than or equal to 1"),
                                        ("{min: true}", "valid integer")])
def test_bad_dim_ranges_are_located(tmp_path, dims, what):
    e = first(error_of(write(tmp_path, GOOD.replace("params: {width: 8, depth: 2}", f"params: {{width: 8, depth: 2}}\ndims: {{N: {dims}}}"))))
    assert what in e.render() and e.loc.line == 4


IDS = """\
nnspec: 1
name: emb
inputs: {ids: {shape: [N, 5], dtype: int64, range: RANGE}}
dims: {N: {min: 1, opt: 2, max: 4}, V: {min: 1, max: 1000}}
nodes:
  e: {op: embedding, num: 256, dim: 8}
outputs: {y: e}
"""


@pytest.mark.parametrize("rng, what", [("[10, 2]", "empty or reversed"), ("[0, 1000]", "indexes embedding 'e', which has 256"),
                                       ("[-1, 10]", "which has 256"), ("[0, V]", "which has 256")])
def test_input_ranges_are_ordered_and_fit_what_they_index(tmp_path, rng, what):
    e = first(error_of(write(tmp_path, IDS.replace("RANGE", rng))))
    assert what in e.message and e.loc.line == 3, e.render()


def test_empty_outputs_and_outputs_named_like_inputs(tmp_path):
    e = first(error_of(write(tmp_path, GOOD.replace("outputs: {y: body}", "outputs: {}"))))
    assert "at least one output" in e.render() and e.loc.line == 17
    e = first(error_of(write(tmp_path, GOOD.replace("outputs: {y: body}", "outputs: {x: body}"))))
    assert "has the name of an input" in e.message and e.loc.line == 17
    e = first(error_of(write(tmp_path, GOOD.replace("outputs: {y: body}", "outputs: [body, body]"))))
    assert "both named 'body'" in e.message


def test_op_bugs_are_reported_at_the_node(tmp_path, monkeypatch, capsys):
    from nnspec.compiler.ops import registry
    relu = registry()["relu"]
    monkeypatch.setattr(type(relu), "infer", lambda self, a, ins: [ins[0]] if self.name != "relu" else 1 / 0)
    p = write(tmp_path, GOOD)
    e = first(error_of(p))
    assert "op 'relu' failed on node 'body.0.r1'" in e.message and "bug in the op" in e.message
    assert_at(e, 11)
    assert main(["check", str(p)]) == 1 and "spec.yaml:11:7: internal error: op 'relu'" in capsys.readouterr().err


def test_cli_never_says_internal_error_for_the_findings(tmp_path, capsys):
    cases = {
        "stride0": GOOD.replace("kernel: 3, padding: 1}\n  body", "kernel: 3, padding: 1, stride: 0}\n  body"),
        "groups0": GOOD.replace("kernel: 3, padding: 1}\n  body", "kernel: 3, padding: 1, groups: 0}\n  body"),
        "parens": GOOD.replace('out: "${width}"', 'out: "${' + "(" * 300 + "1" + ")" * 300 + '}"'),
        "nested": NESTED,
        "recursive": RECURSIVE,
    }
    for name, text in cases.items():
        err = cli_error(["check", str(write(tmp_path, text, f"{name}.yaml"))], capsys)
        assert f"{name}.yaml:" in err, (name, err)


def test_missing_key_after_set_on_unknown_spec_names_the_spec(tmp_path, capsys):
    err = cli_error(["check", str(write(tmp_path, GOOD)), "--set", "nope=1"], capsys)
    assert "of spec 'tiny'" in err and "--set:1:1" in err


def test_dims_symbols_must_be_ascii(tmp_path):
    e = first(error_of(write(tmp_path, textwrap.dedent(GOOD).replace("[N, 3, 16, 16]", "[Ｎ, 3, 16, 16]"))))
    assert e.loc.line == 4


def test_file_name_with_newline_is_rendered_escaped(tmp_path, capsys):
    p = write(tmp_path, GOOD.replace("c1: {op: conv2d", "c1: {op: conv2x"), "evil\nFAKE.yaml")
    err = cli_error(["check", str(p)], capsys)
    assert "evil\\nFAKE.yaml" in err and "\nFAKE.yaml" not in err
    assert os.path.exists(p)
