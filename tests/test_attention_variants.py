"""Attention variants as attributes of the attention ops: grouped-query heads, sliding `window`,
causal aligned bottom-right when Tq < Tk (a KV cache), the `rotary_embedding` op, and
multi_head_attention's padding masks and cross attention.

Each variant is held to: plain torch (F.scaled_dot_product_attention with an explicit mask, kv heads
repeated by hand; transformers' Llama rotary code built from LlamaConfig), onnxruntime at two shapes
(<= 1e-5), the cost model's FLOPs to FlopCounterMode under SDPBackend.MATH, its saved-for-backward
bytes to autograd's (N = 1 and 3), and a TensorRT-RTX engine build. tests/specs/kv_cache_decoder.yaml
checks greedy decoding step by step through its `decode_step` graph against the full forward.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.compiler.errors import NnspecError
from nnspec.targets.onnx.runner import parity
from nnspec.targets.torch.build import build_module

from conftest import declared_inputs
from test_saved_bytes import compare

torch.set_num_threads(1)
TOL = 1e-5
SPEC = Path(__file__).parent / "specs" / "kv_cache_decoder.yaml"

# name -> (inputs, node attrs); the node reads the inputs in order. T and S are symbolic, so the
# causal rule decides at run time (S >= T in every size used below: the KV-cache alignment).
VARIANTS = {
    "gqa": ({"q": ["N", 4, "T", 8], "k": ["N", 2, "S", 8], "v": ["N", 2, "S", 6]}, {}),
    "gqa_causal": ({"q": ["N", 6, "T", 4], "k": ["N", 3, "T", 4], "v": ["N", 3, "T", 4]}, {"causal": True}),
    "gqa_bool_mask": ({"q": ["N", 4, "T", 4], "k": ["N", 2, "S", 4], "v": ["N", 2, "S", 4],
                       "m": {"shape": ["N", 1, 1, "S"], "dtype": "bool"}}, {}),
    "window": ({"q": ["N", 2, "T", 4], "k": ["N", 2, "T", 4], "v": ["N", 2, "T", 4]}, {"causal": True, "window": 3}),
    "window_gqa_cache": ({"q": ["N", 4, "T", 4], "k": ["N", 2, "S", 4], "v": ["N", 2, "S", 4]},
                         {"causal": True, "window": 2}),
    "causal_cache": ({"q": ["N", 2, "T", 4], "k": ["N", 2, "S", 4], "v": ["N", 2, "S", 4]}, {"causal": True}),
    "causal_one_query": ({"q": ["N", 2, 1, 4], "k": ["N", 2, "S", 4], "v": ["N", 2, "S", 4]}, {"causal": True}),
    "causal_cache_3d": ({"q": ["N", "T", 4], "k": ["N", "S", 4], "v": ["N", "S", 4]}, {"causal": True, "scale": 0.3}),
}
SIZES = [{"N": 2, "T": 3, "S": 5}, {"N": 3, "T": 4, "S": 7}]


def _program(spec_from_nodes, case):
    inputs, attrs = VARIANTS[case]
    return spec_from_nodes(inputs, {"n": {"op": "attention", "in": list(inputs), **attrs}}, {"out": "n"})


def reference(attrs, q, k, v, m=None):
    """The variant in plain torch: kv heads repeated, the causal / window pattern an explicit mask."""
    if k.dim() == 4 and k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    tq, tk = q.shape[-2], k.shape[-2]
    mask = m
    if attrs.get("causal"):
        pos = torch.arange(tq)[:, None] + max(tk - tq, 0)  # the queries are the last Tq positions
        key = torch.arange(tk)[None, :]
        mask = key <= pos
        if attrs.get("window"):
            mask &= key > pos - attrs["window"]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attrs.get("scale"))


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_variant_against_torch_onnx_flops(case, spec_from_nodes):
    p = _program(spec_from_nodes, case)
    module = build_module(p).eval()
    attrs = VARIANTS[case][1]
    for vals in SIZES:
        xs = declared_inputs(p, vals, seed=vals["T"])
        if len(xs) > 3:  # a padding mask: keep the last key of every row visible
            xs[3] = xs[3].clone()
            xs[3][..., -1] = True
        with torch.no_grad():
            got = module(*xs)
            want = reference(attrs, *xs)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= TOL, case
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
            module(*xs)
        assert cost_report(p, dims=vals).flops == fc.get_total_flops() > 0
        assert max(parity(p, vals, seed=vals["T"], module=module).values()) <= TOL


# Kernel choices grouped-query heads add to what torch keeps: dropout and a float mask (which
# requires grad) run SDPA's math kernel, which repeats k and v to q's heads and keeps the copies.
KEPT_ONLY = {
    "gqa_dropout": ({"q": ["N", 4, "T", 4], "k": ["N", 2, "S", 4], "v": ["N", 2, "S", 4]}, {"dropout": 0.1}),
    "gqa_float_mask": ({"q": ["N", 4, "T", 4], "k": ["N", 2, "S", 4], "v": ["N", 2, "S", 3], "m": ["T", "S"]}, {}),
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", sorted(VARIANTS) + sorted(KEPT_ONLY))
def test_variant_saved_bytes(case, batch, spec_from_nodes):
    inputs, attrs = {**VARIANTS, **KEPT_ONLY}[case]
    p = spec_from_nodes(inputs, {"n": {"op": "attention", "in": list(inputs), **attrs}}, {"out": "n"})
    ours, torchs = compare(p, {"N": batch, "T": 3, "S": 5})
    assert ours == torchs


def test_fast_path_and_mask_rule_in_generated_code(spec_from_nodes):
    """Tq and Tk of one dim keep torch's is_causal; Tq != Tk possible builds the mask; GQA passes enable_gqa."""
    from nnspec.targets.torch.codegen import generate_source

    src = {case: generate_source(_program(spec_from_nodes, case))[0] for case in ("gqa_causal", "causal_cache", "window")}
    assert "is_causal=True, enable_gqa=True)" in src["gqa_causal"] and "causal_mask" not in src["gqa_causal"]
    assert "attn_mask=causal_mask(q, k)" in src["causal_cache"] and "is_causal" not in src["causal_cache"]
    assert "attn_mask=causal_mask(q, k, window=3)" in src["window"]


@pytest.mark.parametrize("inputs,attrs,message", [
    ({"q": ["N", 4, 5, 8], "k": ["N", 3, 5, 8], "v": ["N", 3, 5, 8]}, {}, "H % Hkv == 0"),
    ({"q": ["N", 4, 5, 8], "k": ["N", 2, 5, 8], "v": ["N", 4, 5, 8]}, {}, "the same number of heads"),
    ({"q": ["N", 2, 5, 8], "k": ["N", 2, 5, 8], "v": ["N", 2, 5, 8]}, {"window": 2}, "causal: true with a sliding"),
])
def test_located_errors(inputs, attrs, message, spec_from_nodes):
    with pytest.raises(NnspecError) as e:
        spec_from_nodes(inputs, {"n": {"op": "attention", "in": list(inputs), **attrs}}, {"out": "n"})
    assert message in str(e.value) and "nodes.n" in str(e.value)


# -- rotary_embedding --------------------------------------------------------------------------
def _llama_rope(x, position, base):
    """transformers' Llama rotary embedding (from a config, no weights) applied to x as to q."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    heads, dim = x.shape[1], x.shape[3]
    cfg = LlamaConfig(hidden_size=heads * dim, num_attention_heads=heads, rope_theta=base,
                      max_position_embeddings=64)
    rope = LlamaRotaryEmbedding(cfg)
    pos = position if position.dim() == 2 else position.expand(x.shape[0], -1)
    cos, sin = rope(x, pos)
    return apply_rotary_pos_emb(x, x, cos, sin)[0]


def _interleaved_rope(x, position, base):
    """RoFormer's pairs (2i, 2i+1) turned by position * base^(-2i/d), as complex multiplication."""
    dim = x.shape[-1]
    freqs = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = position.double()[..., None] * freqs
    if position.dim() == 2:
        angles = angles[:, None]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], dim // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2).float()


ROPE = {
    "default": ({"x": ["N", 3, "T", 8]}, {}),
    "positions": ({"x": ["N", 2, "T", 6], "p": {"shape": ["T"], "dtype": "int64", "range": [0, 40]}}, {"base": 500.0}),
    "batch_positions": ({"x": ["N", 2, "T", 8], "p": {"shape": ["N", "T"], "dtype": "int64", "range": [0, 40]}}, {}),
    "interleaved": ({"x": ["N", 2, "T", 8], "p": {"shape": ["N", "T"], "dtype": "int64", "range": [0, 40]}},
                    {"interleaved": True}),
}


def _rope_program(spec_from_nodes, case):
    inputs, attrs = ROPE[case]
    return spec_from_nodes(inputs, {"r": {"op": "rotary_embedding", "in": list(inputs), **attrs}}, {"out": "r"})


@pytest.mark.parametrize("case", sorted(ROPE))
def test_rotary_against_reference_and_onnx(case, spec_from_nodes):
    p = _rope_program(spec_from_nodes, case)
    module = build_module(p).eval()
    assert len(module.state_dict()) == 0  # nothing in the state dict: transformers' key maps stay clean
    attrs = ROPE[case][1]
    for vals in ({"N": 2, "T": 5}, {"N": 3, "T": 9}):
        xs = declared_inputs(p, vals, seed=vals["T"])
        x = xs[0]
        position = xs[1] if len(xs) > 1 else torch.arange(x.shape[2])
        ref = _interleaved_rope if attrs.get("interleaved") else _llama_rope
        with torch.no_grad():
            got = module(*xs)
            want = ref(x, position, attrs.get("base", 10000.0))
        assert (got - want).abs().max().item() <= TOL, case
        assert max(parity(p, vals, seed=vals["T"], module=module).values()) <= TOL
        assert cost_report(p, dims=vals).flops == 0
    for batch in (1, 3):
        ours, torchs = compare(p, {"N": batch, "T": 5})
        assert ours == torchs > 0


def test_rotary_errors(spec_from_nodes):
    with pytest.raises(NnspecError, match="even head_dim"):
        spec_from_nodes({"x": ["N", 2, 5, 7]}, {"r": {"op": "rotary_embedding", "in": "x"}})
    with pytest.raises(NnspecError, match=r"position of shape \[5\] or \[N, 5\]"):
        spec_from_nodes({"x": ["N", 2, 5, 8], "p": {"shape": [4], "dtype": "int64", "range": [0, 8]}},
                        {"r": {"op": "rotary_embedding", "in": ["x", "p"]}})


# -- multi_head_attention: padding masks and cross attention -----------------------------------
def test_mha_padding_mask_and_cross_attention(spec_from_nodes):
    inputs = {"x": ["N", "T", 8], "kv": ["N", "S", 8], "m": {"shape": ["N", 1, 1, "S"], "dtype": "bool"}}
    p = spec_from_nodes(inputs, {"n": {"op": "multi_head_attention", "in": list(inputs), "heads": 2}}, {"out": "n"})
    module = build_module(p, seed=1).eval()
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    ref.load_state_dict({k.split(".", 1)[1]: t for k, t in module.state_dict().items()})
    for vals in SIZES:
        x, kv, m = declared_inputs(p, vals, seed=vals["S"])
        m = m.clone()
        m[..., 0] = True  # every row sees a key
        with torch.no_grad():
            want = ref(x, kv, kv, key_padding_mask=~m[:, 0, 0], need_weights=False)[0]
            got = module(x, kv, m)
        assert (got - want).abs().max().item() <= TOL
        assert max(parity(p, vals, seed=vals["S"], module=module).values()) <= TOL


# -- KV cache ------------------------------------------------------------------------------------
def _ort(model):
    from nnspec.targets.onnx.runner import ort_session
    return ort_session(model)


def _greedy_check(window):
    from nnspec.targets.onnx.export import to_onnx_model

    p = c.load(str(SPEC), overrides={"window": window})
    module = build_module(p, seed=3).eval()
    weights = {k: t.numpy() for k, t in module.state_dict().items()}
    step = _ort(to_onnx_model(p, weights, graph="decode_step"))
    full = _ort(to_onnx_model(p, weights))
    prompt = torch.tensor([[3], [7]])
    with torch.no_grad():
        logits, k, v = module(prompt)
        tokens, step_logits = [prompt], [logits[:, 0]]
        ok, ov = k.numpy(), v.numpy()
        for pos in range(1, 7):
            token = step_logits[-1].argmax(-1, keepdim=True)
            position = torch.tensor([pos])
            out, k, v = module.decode_step(token, position, k, v)
            onnx_out, ok, ov = step.run(None, {"token": token.numpy(), "position": position.numpy(),
                                                "past_k": ok, "past_v": ov})
            assert np.abs(onnx_out - out.numpy()).max() <= TOL
            assert np.abs(ok - k.numpy()).max() <= TOL
            tokens.append(token)
            step_logits.append(out[:, 0])
        seq = torch.cat(tokens, dim=1)  # [2, 7]: the prompt and six decoded tokens
        want = module(seq)[0]
    got = torch.stack(step_logits, dim=1)
    assert (got - want).abs().max().item() <= TOL
    assert k.shape == (2, 2, 7, 4)
    assert np.abs(full.run(None, {"ids": seq.numpy()})[0] - want.numpy()).max() <= TOL


@pytest.mark.parametrize("window", [None, 3])
def test_kv_cache_greedy_decoding_equals_the_full_forward(window):
    """Greedy decoding one token at a time through decode_step (cache grown each step) gives the
    logits the full forward gives at every position of the decoded sequence, in torch and in ONNX;
    with a sliding window the cache keeps every position and the mask drops the old ones."""
    _greedy_check(window)


def test_tensorrt_rtx_engines_build(tmp_path, spec_from_nodes):
    """TensorRT-RTX (AOT, no GPU) builds the KV-cache decoder's graphs -- grouped-query heads, rotary
    positions (computed and given), causal with and without a window, bottom-right in decode_step --
    and interleaved rotary; the lint passes them."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip install 'nnspec[trt-rtx]')")
    import onnx

    from nnspec.targets.onnx.export import to_onnx_model
    from nnspec.targets.tensorrt import build_engine

    rope = _rope_program(spec_from_nodes, "interleaved")
    builds = [(c.load(str(SPEC)), "forward"), (c.load(str(SPEC), overrides={"window": 3}), "decode_step"),
              (rope, "forward")]
    for i, (p, graph) in enumerate(builds):
        folder = tmp_path / str(i)
        folder.mkdir()
        onnx.save(to_onnx_model(p, for_trt=True, graph=graph), folder / "m.onnx")
        # the profile ranges are read from forward's inputs: decode_step's cache length P is given
        build_engine(folder / "m.onnx", folder, program=p, backend="trt-rtx", progress=False,
                     dims={"P": (1, 3, 16)} if graph == "decode_step" else None)
        assert (folder / "model.engine").stat().st_size > 10_000
