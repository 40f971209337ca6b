"""The IR owns initialisation: every parameter's initialiser is recorded on the IR (the reference's
default per op, the spec's `init_defaults`, the node's `init:`), every target draws the same weights
from it with numpy for a seed, and `nnspec compile --target onnx` never imports torch."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from nnspec.compiler import load
from nnspec.compiler.errors import NnspecError
from nnspec.targets.initialise import initial_weights
from nnspec.targets.torch.build import build_module

from conftest import compile_nodes
from test_registry import OPS, representative


@pytest.mark.parametrize("name", OPS)
def test_ir_defaults_match_what_torch_modules_draw(tmp_path, name):
    """For every op: each parameter drawn from the IR has torch's own initial distribution (its
    constants equal, its spread and range those of the module's reset_parameters)."""
    inputs, nodes = representative(name)
    program = compile_nodes(tmp_path, inputs, nodes)
    torch.manual_seed(0)
    theirs = {k: v.detach().double().numpy() for k, v in build_module(program, seed=None).state_dict().items()}
    ours = initial_weights(program, seed=0)
    for key, arr in ours.items():
        ref = theirs[key]
        assert arr.shape == ref.shape and str(arr.dtype) == str(theirs[key].dtype).replace("float64", str(arr.dtype)), key
        if np.all(ref == ref.flat[0]) and ref.size > 1 or ref.size == 1 and ref.std() == 0 and np.all(ref == np.round(ref)):
            assert np.array_equal(arr, ref.astype(arr.dtype)), key  # constants: zeros, ones
            continue
        if ref.size >= 200:
            assert abs(arr.std() - ref.std()) < 0.15 * ref.std(), (key, arr.std(), ref.std())
            assert abs(np.abs(arr).max() - np.abs(ref).max()) < 0.25 * np.abs(ref).max() + 1e-6, key


def test_same_seed_same_weights_in_every_target(tmp_path):
    from safetensors.numpy import load_file

    from nnspec.runtime.cli import main
    for target in ("torch", "onnx"):
        assert main(["compile", "char_rnn", "--target", target, "-o", str(tmp_path / target), "--seed", "7"]) == 0
    a = load_file(str(tmp_path / "torch" / "weights.safetensors"))
    b = load_file(str(tmp_path / "onnx" / "weights.safetensors"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    m = build_module(load("char_rnn"), seed=7)
    assert all(np.array_equal(v.numpy(), a[k]) for k, v in m.state_dict().items())
    c = initial_weights(load("char_rnn"), seed=8)
    assert any(not np.array_equal(c[k], a[k]) for k in a)  # another seed, other weights


def test_a_parameter_does_not_depend_on_the_others(tmp_path):
    """Each parameter has its own stream: adding a layer leaves the others' values alone."""
    base = {"a": {"op": "linear", "in": "x", "out": 8}, "b": {"op": "linear", "out": 4}}
    more = {"a": {"op": "linear", "in": "x", "out": 8}, "z": {"op": "linear", "in": "x", "out": 5},
            "b": {"op": "linear", "in": "a", "out": 4}}
    one = initial_weights(compile_nodes(tmp_path, {"x": ["N", 6]}, base), 3)
    two = initial_weights(compile_nodes(tmp_path, {"x": ["N", 6]}, more, outputs={"o": "b", "p": "z"}), 3)
    assert all(np.array_equal(one[k], two[k]) for k in one)


GPT = """\
nnspec: 1
name: tiny_gpt
params: {vocab: 512, d: 64}
dims: {N: {min: 1, opt: 4, max: 8}, T: {min: 1, opt: 32, max: 64}}
inputs: {ids: {shape: [N, T], dtype: int64, range: [0, "${vocab}"]}}
INIT
nodes:
  embed: {op: embedding, num: "${vocab}", dim: "${d}"}
  pos: {op: positional_encoding, kind: learned, max_len: 64}
  attn: {op: multi_head_attention, heads: 4, causal: true}
  res: {op: add, in: [pos, attn]}
  norm: {op: layer_norm}
  head: {op: linear, out: "${vocab}", bias: false, tie: {weight: embed.weight}}
outputs: {logits: head}
"""


def _first_loss(tmp_path, init: str) -> float:
    p = tmp_path / "gpt.yaml"
    p.write_text(GPT.replace("INIT", init))
    program = load(str(p))
    m = build_module(program, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    ids, targets = torch.randint(0, 512, (4, 32), generator=g), torch.randint(0, 512, (4, 32), generator=g)
    with torch.no_grad():
        logits = m(ids)
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()))


def test_init_defaults_start_gpt_where_its_paper_starts(tmp_path):
    """With torch's defaults the tied N(0, 1) embedding makes the first loss far above ln(vocab);
    GPT's N(0, 0.02) (`init_defaults`) starts at ln(vocab)."""
    torch_defaults = _first_loss(tmp_path, "")
    gpt = _first_loss(tmp_path, "init_defaults: {linear: {normal: {std: 0.02}}, embedding: {normal: {std: 0.02}}}")
    assert abs(gpt - math.log(512)) < 0.1 * math.log(512), gpt
    assert torch_defaults > 2 * math.log(512), torch_defaults


def test_init_defaults_reach_generated_code_and_are_checked(tmp_path):
    from nnspec.targets.torch.codegen import generate_source
    p = tmp_path / "gpt.yaml"
    p.write_text(GPT.replace("INIT", "init_defaults: {embedding: {weight: {normal: {std: 0.02}}}}"))
    src, _ = generate_source(load(str(p)))
    assert "nn.init.normal_(self.embed.weight, mean=0.0, std=0.02)" in src
    for bad, says in [("{linaer: zeros}", "unknown op 'linaer'"), ("{linear: {wieght: zeros}}", "wieght"),
                      ("{linear: {normal: {std: x}}}", "a finite number")]:
        p.write_text(GPT.replace("INIT", f"init_defaults: {bad}"))
        with pytest.raises(NnspecError) as ei:
            load(str(p))
        assert says in ei.value.render() and ei.value.loc is not None and ei.value.loc.line == 6, ei.value.render()


def test_compile_to_onnx_never_imports_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules['torch'] = None  # any import of torch now fails
        from nnspec.runtime.cli import main
        sys.exit(main(['compile', 'resnet', '-p', 'resnet18', '--target', 'onnx', '-o', {str(tmp_path / 'out')!r}]))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "weights.safetensors").is_file()
