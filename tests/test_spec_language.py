"""Spec-language features a newcomer reached for: expressions that read shapes, repeats with constant
side inputs, ties to dotted parameter paths inside blocks, and references to nodes dropped by `when`."""
from __future__ import annotations

import textwrap

import pytest
import torch

from nnspec.compiler import load
from nnspec.compiler.errors import NnspecError
from nnspec.targets.torch.build import build_module

from test_errors import assert_at


def spec(tmp_path, text: str):
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


RES = """\
nnspec: 1
name: t
dims: {N: {min: 1, opt: 2, max: 4}}
inputs: {x: {shape: [N, 3, 8, 8]}}
blocks:
  res:
    args: {planes: int}
    in: [x]
    nodes:
      c1: {op: conv2d, out: "${planes}", kernel: 3, padding: 1}
      proj: {op: conv2d, in: x, out: "${planes}", kernel: 1, when: "${channels(x) != planes}"}
      sum: {op: add, in: [c1, "${'proj' if channels(x) != planes else 'x'}"]}
    out: sum
nodes:
  a: {block: res, args: {planes: 8}}
  b: {block: res, args: {planes: "${a.shape[1]}"}}
  c: {block: res, args: {planes: "${2 * channels(b)}"}}
  d: {op: linear, in: c, out: "${c.shape[-1] + c.rank}"}
outputs: {y: d}
"""


def test_expressions_read_shapes_of_inputs_and_nodes(tmp_path):
    p = load(spec(tmp_path, RES))
    ids = [n.id for n in p.forward.topo()]
    # a: 3 -> 8 channels needs a projection; b: 8 -> 8 does not (even though a's instance had one); c: 8 -> 16 does
    assert "a.proj" in ids and "b.proj" not in ids and "c.proj" in ids
    assert p.forward.node("c.c1").attrs.out == 16 and p.forward.node("d").attrs.out == 8 + 4
    m = build_module(p).eval()
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 16, 8, 12)


def test_reading_a_shape_that_does_not_exist_is_located(tmp_path):
    e = _err(tmp_path, RES.replace('"${a.shape[1]}"', '"${a.shape[7]}"'))
    assert "out of range" in e.message and e.loc.line == 16 and e.loc.path[-1] == "planes"
    e = _err(tmp_path, RES.replace('"${2 * channels(b)}"', '"${channels(3)}"'))
    assert "channels() takes a tensor" in e.message


def test_resnet_blocks_read_their_input_channels():
    """The bundled resnet threads no `inplanes` by hand: each block reads channels(x)."""
    text = (load("resnet").spec.block_sources["bottleneck"].file)
    assert "blocks/resnet.yaml" in text
    p = load("resnet", "resnet50")
    downsample = sorted(i for i in p.forward.instances if i.endswith("downsample"))
    assert downsample == ["layer1.0.downsample", "layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]


def _err(tmp_path, text) -> NnspecError:
    with pytest.raises(NnspecError) as ei:
        load(spec(tmp_path, text))
    e = ei.value
    return e.errors[0] if hasattr(e, "errors") else e


MASKED = """\
nnspec: 1
name: t
dims: {N: {min: 1, opt: 2, max: 4}}
inputs: {x: {shape: [N, 5, 8]}, mask: {shape: [N, 1, 5, 5], dtype: bool}}
blocks:
  layer:
    in: [h, mask]
    nodes:
      attn: {op: multi_head_attention, in: [h, h, mask], heads: 2}
      sum: {op: add, in: [h, attn]}
    out: sum
nodes:
  enc: {block: layer, repeat: 3, in: x, const: {mask: mask}}
outputs: {y: enc}
"""


def test_repeat_takes_constant_side_inputs(tmp_path):
    p = load(spec(tmp_path, MASKED))
    for i in range(3):
        assert p.forward.inputs_of(f"enc.{i}.attn")[2] == ("mask", 0)
    m = build_module(p).eval()
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 1, 5, 5, dtype=torch.bool)
    h = x
    for layer in m.enc:
        h = layer(h, mask)
    assert torch.equal(m(x, mask), h)
    e = _err(tmp_path, MASKED.replace("const: {mask: mask}", "const: {msk: mask}"))
    assert "'msk' is not an input of block 'layer'" in e.message


CROSS = """\
nnspec: 1
name: t
inputs: {x: {shape: [2, 3, 8]}, memory: {shape: [2, 5, 8]}, mask: {shape: [2, 1, 1, 5], dtype: bool}}
blocks:
  cross:
    in: [x, memory, mask]
    nodes:
      attn: {op: multi_head_attention, in: [x, memory, mask], heads: 2}
    out: attn
  layer:
    in: [x, memory, mask]
    nodes:
      norm: {op: layer_norm, in: x}
      encoder_attn: {block: cross, in: [norm, memory, mask]}
      res: {op: add, in: [x, encoder_attn]}
    out: res
nodes:
  layers: {block: layer, in: x, const: {memory: memory, mask: mask}, repeat: 2}
outputs: {y: layers}
"""


def test_a_block_of_three_inputs_inside_a_repeat_with_constants(tmp_path):
    """A decoder layer's cross-attention as its own block: the repeat's constants (memory, mask)
    reach the inner block's inputs of the same names in every instance, the chained input its x."""
    p = load(spec(tmp_path, CROSS))
    assert p.forward.inputs_of("layers.0.encoder_attn.attn") == [("layers.0.norm", 0), ("memory", 0), ("mask", 0)]
    assert p.forward.inputs_of("layers.1.norm") == [("layers.0.res", 0)]
    assert p.forward.inputs_of("layers.1.encoder_attn.attn")[1:] == [("memory", 0), ("mask", 0)]


TIED = """\
nnspec: 1
name: t
dims: {N: {min: 1, opt: 2, max: 4}}
inputs: {x: {shape: [N, 5, 8]}}
blocks:
  layer:
    in: [h]
    nodes:
      attn: {op: multi_head_attention, heads: 2}
    out: attn
nodes:
  a: {block: layer, repeat: 2}
  b: {op: multi_head_attention, in: a, heads: 2, tie: {out_proj.weight: a.0.attn.out_proj.weight}}
outputs: {y: b}
"""


def test_ties_reach_dotted_parameters_inside_blocks(tmp_path):
    p = load(spec(tmp_path, TIED))
    assert p.forward.node("b").ties == {"out_proj.weight": "a.0.attn.out_proj.weight"}
    m = build_module(p)
    assert m.b.out_proj.weight is m.a[0].attn.out_proj.weight
    from nnspec.compiler.cost import cost_report
    assert cost_report(p).params == sum(q.numel() for q in m.parameters())


def test_reference_to_a_node_dropped_by_when_says_so(tmp_path):
    text = """\
    nnspec: 1
    name: t
    params: {use: false}
    inputs: {x: {shape: [1, 4]}}
    nodes:
      a: {op: relu, when: "${use}"}
      b: {op: tanh, in: a}
    outputs: {y: b}
    """
    e = _err(tmp_path, text)
    assert_at(e, 7, text="'a' is not in the graph here: its `when:` condition is false")


@pytest.mark.parametrize("expr, value", [
    ("[int(c * w) for c in ch]", [8, 12, 16, 32]),
    ("[c for c in ch if c > 20]", [24, 32, 64]),
    ("sum([c * 2 for c in ch]) + 1", 273),
    ("[[a * b for a in ch[:2]] for b in [1, 2]]", [[16, 24], [32, 48]]),
    ("['for x in y' for c in ch[:1]]", ["for x in y"]),  # keywords inside strings are text
    ("[i for i in range(3)][1:]", [1, 2]),
    ("[a, b] if True else []", [1, 2]),  # a plain list literal is not a comprehension
])
def test_list_comprehensions(expr, value):
    from nnspec.compiler.spec.expr import eval_expr
    assert eval_expr(expr, {"ch": [16, 24, 32, 64], "w": 0.5, "a": 1, "b": 2}) == value


@pytest.mark.parametrize("expr, message", [
    ("[[a for a in range(99999)] for b in range(99999)]", "more than 100000 elements"),
    ("[a for a in ch for b in ch]", "one `for` per list comprehension"),
    ("[a for 1 in ch]", "must be a name"),
    ("[a for a in 3]", "iterates over a list"),
    ("[a for a in ch if]", "is [ITEM for NAME in ITERABLE]"),
    ("[a.__class__ for a in ch]", "not allowed"),
])
def test_list_comprehension_errors(expr, message):
    from nnspec.compiler.spec.expr import ExprError, eval_expr
    with pytest.raises(ExprError, match=message.replace("[", r"\[")):
        eval_expr(expr, {"ch": [16, 24]})


def test_width_multiplier_through_a_comprehension(tmp_path):
    """MobileNetV2's width multiplier: every stage's channels scaled and rounded in one expression."""
    text = """\
    nnspec: 1
    name: t
    params: {mult: 0.5, base: [32, 64, 96]}
    dims: {N: {min: 1, opt: 2, max: 4}}
    inputs: {x: {shape: [N, 3, 8, 8]}}
    blocks:
      stage:
        args: {out: int}
        in: [x]
        nodes: {c: {op: conv2d, out: "${out}", kernel: 3, padding: 1}}
        out: c
    nodes:
      s0: {block: stage, args: {out: "${[max(8, int(c * mult) // 8 * 8) for c in base][0]}"}}
      s1: {block: stage, args: {out: "${[max(8, int(c * mult) // 8 * 8) for c in base][2]}"}}
    outputs: {y: s1}
    """
    p = load(spec(tmp_path, text))
    assert p.forward.node("s0.c").attrs.out == 16 and p.forward.node("s1.c").attrs.out == 48
