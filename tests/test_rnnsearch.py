"""RNNsearch (Bahdanau, Cho, Bengio 2014): the parameter count against the closed form of Appendix
A.2 at B.2's sizes, the generated forward against a torch module written from A.2's equations with
the same weights, `decode_step` and `greedy` against `forward` (shared weights), ONNX parity of the
three entry graphs at two lengths, TensorRT-RTX builds, and the paper's signature behaviour: with
attention, accuracy holds as the source grows; with the fixed context of RNNencdec it collapses.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.targets.onnx.runner import parity
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

SPEC = "rnnsearch"
B2 = dict(Kx=30_000, Ky=30_000, m=620, n=1000, n_a=1000, l=500)  # Appendix B.2's sizes (pool 2)


def paper_count(Kx, Ky, m, n, n_a, l, biases: bool) -> int:
    """Parameters of RNNsearch from Appendix A.2's equations; `biases` adds one bias vector per
    affine map (A.2 says the equations omit them)."""
    total = 0
    # A.2.1 encoder: E in R^{m x Kx} (shared by both directions); per direction W, W_z, W_r in
    # R^{n x m} and U, U_z, U_r in R^{n x n}.
    total += Kx * m
    total += 2 * (3 * n * m + 3 * n * n)
    # A.2.2 initial state s_0 = tanh(W_s h<-_1), W_s in R^{n x n}.
    total += n * n
    # decoder: E in R^{m x Ky}; W, W_z, W_r in R^{n x m}, U, U_z, U_r in R^{n x n}, C, C_z, C_r in R^{n x 2n}.
    total += Ky * m
    total += 3 * n * m + 3 * n * n + 3 * n * 2 * n
    # alignment model e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j): W_a in R^{n' x n}, U_a in R^{n' x 2n}, v_a in R^{n'}.
    total += n_a * n + n_a * 2 * n + n_a
    # deep output t~_i = U_o s_{i-1} + V_o E y_{i-1} + C_o c_i: U_o in R^{2l x n}, V_o in R^{2l x m},
    # C_o in R^{2l x 2n}; maxout halves it to l; W_o in R^{Ky x l}.
    total += 2 * l * n + 2 * l * m + 2 * l * 2 * n
    total += Ky * l
    if biases:
        total += 2 * 3 * n  # each encoder direction's z, r and candidate maps
        total += n  # W_s h<-_1
        total += 3 * n  # the decoder's z, r and candidate maps
        total += n_a  # the alignment model's W_a s + U_a h (v_a has none)
        total += 2 * l  # the deep output
        total += Ky  # W_o t_i
    return total


def nnspec_count(Kx, Ky, m, n, n_a, l) -> int:
    """What nnspec's lowering has with biases on: torch's GRU (nn.GRU, nn.GRUCell) keeps two bias
    vectors per gate set, b_i and b_h (the candidate's b_h sits inside r * (U h + b_h)), so each of
    the three GRUs has 3n more than one bias per affine map; `additive_attention` has no bias, so the
    alignment model has n' fewer."""
    return paper_count(Kx, Ky, m, n, n_a, l, biases=True) + 3 * (3 * n) - n_a


def test_closed_form_gives_the_issue_figures():
    assert paper_count(**B2, biases=False) == 80_401_000
    assert paper_count(**B2, biases=True) == 80_443_000
    assert nnspec_count(**B2) == 80_451_000


def test_parameter_count_equals_the_closed_form():
    program = c.load(SPEC, "rnnsearch")
    assert cost_report(program).params == nnspec_count(**B2)
    # without biases nnspec and the paper's equations have exactly the same parameters
    assert cost_report(c.load(SPEC, "rnnsearch", overrides={"bias": False})).params == paper_count(**B2, biases=False)


@pytest.mark.parametrize("preset", ["small", "small_noattn"])
def test_entry_graphs_share_forward_weights(preset):
    program = c.load(SPEC, preset)
    module = build_module(program, seed=0)
    assert sum(p.numel() for p in module.parameters()) == cost_report(program).params
    sizes = dict(src_vocab=13, tgt_vocab=13, embed=16, hidden=64, align=64, maxout=32)
    Kx, Ky, m, n, n_a, l = sizes.values()
    want = nnspec_count(Kx, Ky, m, n, n_a, l) - (0 if preset == "small" else n_a * n + n_a * 2 * n + n_a)
    assert cost_report(program).params == want


class Reference(nn.Module):
    """RNNsearch written from A.2 in torch, with torch's GRU (its gate biases and r applied to
    U h + b_h, where A.2 writes U (r * h)); `attention=False` is the fixed context [h->_S; h<-_1]."""

    def __init__(self, Kx, Ky, m, n, n_a, l, attention=True):
        super().__init__()
        self.n, self.l, self.attention = n, l, attention
        self.src_embed = nn.Embedding(Kx, m)
        self.encoder = nn.GRU(m, n, batch_first=True, bidirectional=True)
        self.W_s = nn.Linear(n, n)
        self.tgt_embed = nn.Embedding(Ky, m)
        if attention:
            self.W_a = nn.Linear(n, n_a, bias=False)
            self.U_a = nn.Linear(2 * n, n_a, bias=False)
            self.v_a = nn.Linear(n_a, 1, bias=False)
        self.cell = nn.GRUCell(m + 2 * n, n)
        self.deep = nn.Linear(n + m + 2 * n, 2 * l)  # [U_o V_o C_o] over [s_{i-1}; E y_{i-1}; c_i]
        self.W_o = nn.Linear(l, Ky)

    def forward(self, src, tgt_in):
        h, last = self.encoder(self.src_embed(src))  # annotations [N, S, 2n]
        s = torch.tanh(self.W_s(last[1]))  # s_0 from h<-_1
        fixed = torch.cat([h[:, -1, :self.n], h[:, 0, self.n:]], 1)
        logits = []
        for i in range(tgt_in.shape[1]):
            ey = self.tgt_embed(tgt_in[:, i])
            if self.attention:
                e = self.v_a(torch.tanh(self.W_a(s).unsqueeze(1) + self.U_a(h))).squeeze(-1)
                ctx = torch.bmm(torch.softmax(e, -1).unsqueeze(1), h).squeeze(1)
            else:
                ctx = fixed
            t = self.deep(torch.cat([s, ey, ctx], 1)).view(-1, self.l, 2).amax(-1)  # maxout over pairs
            logits.append(self.W_o(t))
            s = self.cell(torch.cat([ey, ctx], 1), s)
        return torch.stack(logits, 1)


KEYS = {"src_embed.weight": "src_embed.weight", "init.weight": "W_s.weight", "init.bias": "W_s.bias",
        "decode.embed.weight": "tgt_embed.weight", "decode.attend.W_q.weight": "W_a.weight",
        "decode.attend.W_k.weight": "U_a.weight", "decode.attend.v.weight": "v_a.weight",
        "decode.deep.weight": "deep.weight", "decode.deep.bias": "deep.bias",
        "decode.project.weight": "W_o.weight", "decode.project.bias": "W_o.bias"}


def _reference_key(k: str) -> str:
    if k.startswith("encoder.") or k.startswith("decode.cell."):
        return k.replace("decode.cell.", "cell.")
    return KEYS[k]


@pytest.mark.parametrize("preset", ["small", "small_noattn"])
def test_forward_equals_a_torch_module_of_the_equations(preset):
    program = c.load(SPEC, preset)
    module = build_module(program, seed=0).eval()
    ref = Reference(13, 13, 16, 64, 64, 32, attention=preset == "small").eval()
    ref_sd = ref.state_dict()
    mine = module.state_dict()
    assert {_reference_key(k) for k in mine} == set(ref_sd)  # every weight has its place, none left over
    ref.load_state_dict({_reference_key(k): v for k, v in mine.items()})
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(0, 13, (3, 7), generator=g), torch.randint(0, 13, (3, 5), generator=g)
    with torch.no_grad():
        got, want = module(src, tgt), ref(src, tgt)
    assert got.shape == (3, 5, 13)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", ["small", "small_noattn"])
def test_decode_step_and_greedy_agree_with_forward(preset):
    program = c.load(SPEC, preset)
    module = build_module(program, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 13, (4, 6), generator=g)
    with torch.no_grad():
        tokens, greedy_logits = module.greedy(src)
        assert tokens.shape == (4, 21) and greedy_logits.shape == (4, 21, 13)
        # teacher forcing on greedy's own choices reproduces greedy's logits
        fed = torch.cat([torch.ones(4, 1, dtype=torch.int64), tokens[:, :-1]], 1)
        torch.testing.assert_close(module(src, fed), greedy_logits, rtol=0, atol=1e-5)
        # decode_step, driven by hand from the encoder, gives the same steps
        enc, last = module.encoder(module.src_embed(src))
        h = torch.tanh(module.init(last[1]))
        token = torch.ones(4, dtype=torch.int64)
        for i in range(5):
            logits, h, token = module.decode_step(token, h, enc)
            torch.testing.assert_close(logits, greedy_logits[:, i], rtol=0, atol=1e-5)
            assert torch.equal(token, tokens[:, i])


@pytest.mark.parametrize("preset", ["small", "small_noattn"])
@pytest.mark.parametrize("graph", ["forward", "decode_step", "greedy"])
def test_onnx_equals_torch_at_two_lengths(preset, graph):
    program = c.load(SPEC, preset)
    for vals in ({"N": 2, "S": 5, "T": 4}, {"N": 3, "S": 9, "T": 7}):
        diffs = parity(program, vals, seed=1, graph=graph)
        assert diffs and all((d == 0 if isinstance(d, int) else d <= 1e-4) for d in diffs.values()), diffs


def test_onnx_lowers_the_decoders_as_scan_and_loop():
    from nnspec.targets.onnx.export import to_onnx_models

    models = to_onnx_models(c.load(SPEC, "small"))
    ops = {g: [n.op_type for n in m.graph.node] for g, m in models.items()}
    assert ops["forward"].count("Scan") == 1 and "Loop" not in ops["forward"]  # teacher forcing
    assert ops["greedy"].count("Loop") == 1 and "Scan" not in ops["greedy"]  # greedy: a Loop of max_len
    assert "Scan" not in ops["decode_step"] and "Loop" not in ops["decode_step"]  # one step
    trip = next(n for n in models["greedy"].graph.node if n.op_type == "Loop").input[0]
    assert trip  # a constant trip count, not an open-ended loop


@pytest.mark.parametrize("preset", ["small", "small_noattn"])
def test_tensorrt_rtx_builds_every_entry_graph(preset, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is part of the dev install (`.[dev]`)")
    from nnspec.targets.onnx.export import compile_onnx
    from nnspec.targets.tensorrt import build_engine

    program = c.load(SPEC, preset)
    files = compile_onnx(program, tmp_path, seed=0, for_trt=True)
    for graph in ("model", "decode_step", "greedy"):
        build_engine(files[graph], tmp_path / graph, program=program, precision="fp32", opt_level=0,
                     backend="trt-rtx", progress=False)
        assert (tmp_path / graph / "model.engine").stat().st_size > 1000


# -- signature: attention keeps accuracy as the source grows, a fixed context does not -------------
def greedy_accuracy(module, length: int, pad_to: int, n: int = 256, seed: int = 7) -> float:
    """Exact-match rate of `greedy` decoding (the trained module's loop, each step's argmax fed to
    the next) on reversing `n` strings of `length` digits, padded with 0 to `pad_to` as in
    training: the first length + 1 tokens must be the reversed string and the end token."""
    from nnspec.runtime.tasks.base import make_task

    task = make_task("seq2seq", {"mode": "reverse", "symbols": 10, "min_len": length, "max_len": length})
    batch = task.make(np.random.default_rng(seed), n)
    src = np.pad(batch["src"], ((0, 0), (0, pad_to - length)))
    with torch.no_grad():
        tokens, _ = module.greedy(torch.from_numpy(src))
    want = batch["tgt_out"][:, :length + 1]
    return float((tokens.numpy()[:, :length + 1] == want).all(1).mean())


def train_and_decode(tmp_path, preset: str, steps: int, train_len: int, lengths) -> dict:
    """Train `preset` on reversing 1..train_len digits, then decode greedily at each of `lengths`."""
    from nnspec.runtime.cli import main as nnspec
    from nnspec.runtime.train.checkpoint import load_checkpoint

    run = tmp_path / preset
    # Adam at 3e-3 instead of the recipe's Adadelta: the same comparison in a few hundred steps.
    assert nnspec(["train", SPEC, "--preset", preset, "--set", "train.optimizer={name: adam, lr: 3.0e-3}",
                   "--set", f"train.task.options.max_len={train_len}", "--steps", str(steps), "--batch", "64",
                   "--set", f"train.eval.every={steps}", "--set", f"train.checkpoint.every={steps}",
                   "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    module = build_module(c.load(SPEC, preset), seed=0).eval()
    load_checkpoint(run, module, restore_rng_state=False)
    return {L: greedy_accuracy(module, L, train_len) for L in lengths}


def test_signature_attention_vs_no_attention(tmp_path):
    """Section 5.2.1 / Figure 2: RNNsearch's BLEU holds as sentences grow while RNNencdec's falls.
    Both small networks train the same 300 steps on reversing 1..12 digits; decoded greedily, the
    attention model reverses short and long strings alike, the fixed-context one only short ones."""
    att = train_and_decode(tmp_path, "small", 300, 12, (3, 12))
    fixed = train_and_decode(tmp_path, "small_noattn", 300, 12, (3, 12))
    print(f"greedy exact match by length: attention {att}, fixed context {fixed}")
    assert att[3] >= 0.95 and att[12] >= 0.9  # attention: long strings as well as short
    assert fixed[3] >= 0.8  # the fixed context learns the task on short strings ...
    assert fixed[12] <= 0.2  # ... and collapses on long ones (measured: 0.97 and 0.0)
    assert att[12] - fixed[12] >= 0.7


@pytest.mark.slow
def test_signature_attention_vs_no_attention_up_to_20_digits(tmp_path):
    """The same on the recipe's lengths, 1..20 digits, 600 steps each, decoded at 5, 10 and 20."""
    att = train_and_decode(tmp_path, "small", 600, 20, (5, 10, 20))
    fixed = train_and_decode(tmp_path, "small_noattn", 600, 20, (5, 10, 20))
    print(f"greedy exact match by length: attention {att}, fixed context {fixed}")
    assert min(att.values()) >= 0.8
    assert fixed[5] >= 0.6 and fixed[20] <= 0.1  # measured: 0.84 and 0.0
