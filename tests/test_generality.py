"""Two models outside the bundled zoo, written only from the op catalog, against hand-written torch:

  * tests/specs/bahdanau_decoder.yaml: an attention decoder whose step (embedding, additive attention
    over closed-over encoder outputs, concat, GRU cell, projection) is a block run by `scan`;
  * tests/specs/mpnn_step.yaml: one MPNN message-passing step (index_select by edge source, an
    edge network, scatter_add into destinations, GRU cell update).

Weights are copied into the hand-written models by state-dict name; outputs must agree to 1e-5 at
two sizes, the IR must have the expected structure and symbolic shapes, and onnxruntime must agree
with torch on one exported model at both sizes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import nnspec.compiler as c
from nnspec.targets.inputs import example_inputs
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)
SPECS = Path(__file__).parent / "specs"
TOL = 1e-5


def inputs_for(program, vals: dict, seed: int) -> dict:
    """The project's example inputs (int64 inside their declared range) as torch tensors."""
    return {k: torch.from_numpy(v) for k, v in example_inputs(program, vals, seed).items()}


def copy_by_name(src: nn.Module, dst: nn.Module, rename: dict) -> None:
    """Load `src`'s weights into `dst`, mapping each source key's prefix through `rename` (strict)."""
    state = {}
    for k, v in src.state_dict().items():
        prefix = next(p for p in rename if k.startswith(p + "."))
        state[rename[prefix] + k[len(prefix):]] = v
    dst.load_state_dict(state)


def outputs(module, program, x: dict) -> dict:
    module.eval()
    with torch.no_grad():
        res = module(*x.values())
    return dict(zip(program.forward.outputs, res if isinstance(res, tuple) else (res,)))


def onnx_agrees(program, module, sizes, seed=3, for_trt=False) -> float:
    """Largest |onnxruntime - torch| over `sizes`, all run on one exported model."""
    from nnspec.targets.onnx import ort_session, run_ort, to_onnx_model

    weights = {k: v.numpy() for k, v in module.state_dict().items()}
    sess = ort_session(to_onnx_model(program, weights, for_trt=for_trt))
    worst = 0.0
    for vals in sizes:
        x = inputs_for(program, vals, seed)
        got = run_ort(sess, {k: v.numpy() for k, v in x.items()})
        for o, t in outputs(module, program, x).items():
            worst = max(worst, float(np.max(np.abs(got[o] - t.numpy()))))
    return worst


# -- (a) Bahdanau attention decoder -------------------------------------------------------------
class HandDecoder(nn.Module):
    """The decoder written directly in torch: a Python loop over target positions."""

    def __init__(self, vocab=11, emb=6, enc=8, hidden=7, att=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.W_q = nn.Linear(hidden, att, bias=False)
        self.W_k = nn.Linear(enc, att, bias=False)
        self.v = nn.Linear(att, 1, bias=False)
        self.cell = nn.GRUCell(emb + enc, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, enc_out, prev_tokens, h):
        keys = self.W_k(enc_out)  # [N, S, att]
        logits, attention = [], []
        for t in range(prev_tokens.shape[1]):
            scores = self.v(torch.tanh(self.W_q(h)[:, None, :] + keys)).squeeze(-1)  # [N, S]
            alpha = torch.softmax(scores, dim=1)
            context = (alpha[:, :, None] * enc_out).sum(1)  # [N, enc]
            h = self.cell(torch.cat([self.embed(prev_tokens[:, t]), context], dim=1), h)
            logits.append(self.out(h))
            attention.append(alpha)
        return torch.stack(logits, 1), torch.stack(attention, 1), h


DECODER_NAMES = {"decode.embed": "embed", "decode.attend.W_q": "W_q", "decode.attend.W_k": "W_k",
                 "decode.attend.v": "v", "decode.cell": "cell", "decode.project": "out"}
DECODER_SIZES = [{"N": 2, "S": 5, "T": 4}, {"N": 3, "S": 7, "T": 6}]


@pytest.fixture(scope="module")
def decoder():
    return c.load(str(SPECS / "bahdanau_decoder.yaml"))


def test_decoder_ir_structure(decoder):
    g = decoder.forward
    scans = [n for n in g.nodes() if n.op == "scan"]
    assert len(scans) == 1 and scans[0].body is not None
    scan = scans[0]
    assert scan.attrs.roles == ["over", "carry", "const"] and scan.attrs.carry == ["h"]
    body_ops = sorted(n.op for n in scan.body.nodes() if n.op != "input")
    assert body_ops == ["additive_attention", "concat", "embedding", "gru_cell", "linear"]
    # symbolic dims flow through the scan: steps T stacked on axis 1, encoder length S kept
    assert [str(t) for t in scan.outputs] == ["f32[N,7]", "f32[N,T,11]", "f32[N,T,S]"]
    assert str(scan.body.node("decode.token").outputs[0]) == "i64[N]"
    assert str(scan.body.node("decode.attend").outputs[1]) == "f32[N,S]"


def test_decoder_matches_hand_written_loop(decoder):
    module = build_module(decoder, seed=0)
    hand = HandDecoder()
    copy_by_name(module, hand, DECODER_NAMES)
    hand.eval()
    for vals in DECODER_SIZES:
        x = inputs_for(decoder, vals, seed=vals["T"])
        got = outputs(module, decoder, x)
        with torch.no_grad():
            want = dict(zip(["logits", "attention", "h"], hand(*x.values())))
        for o in want:
            assert tuple(got[o].shape) == tuple(want[o].shape)
            err = (got[o] - want[o]).abs().max().item()
            assert err <= TOL, f"{o}: {err} at {vals}"
        # the attention rows are distributions over the source positions
        assert torch.allclose(got["attention"].sum(-1), torch.ones(vals["N"], vals["T"]), atol=1e-5)


def test_decoder_onnx_agrees(decoder):
    assert onnx_agrees(decoder, build_module(decoder, seed=0), DECODER_SIZES) <= 2e-5


# -- (b) one MPNN message-passing step ----------------------------------------------------------
class HandMpnn(nn.Module):
    def __init__(self, node_dim=6, edge_dim=3, hidden=10):
        super().__init__()
        self.edge_net = nn.Sequential(nn.Linear(node_dim + edge_dim, hidden), nn.ReLU(), nn.Linear(hidden, node_dim))
        self.gru = nn.GRUCell(node_dim, node_dim)

    def forward(self, h, edge_attr, src, dst):
        messages = self.edge_net(torch.cat([h[src], edge_attr], dim=1))  # [E, node_dim]
        aggregated = torch.zeros_like(h)
        for e in range(len(dst)):  # an explicit loop: the plainest statement of a sum over in-edges
            aggregated[dst[e]] += messages[e]
        return self.gru(aggregated, h), aggregated


MPNN_NAMES = {"msg_hidden": "edge_net.0", "message": "edge_net.2", "update": "gru"}
MPNN_SIZES = [{"V": 5, "E": 9}, {"V": 8, "E": 20}]


@pytest.fixture(scope="module")
def mpnn():
    return c.load(str(SPECS / "mpnn_step.yaml"))


def test_mpnn_ir_structure(mpnn):
    g = mpnn.forward
    ops = [n.op for n in g.topo()]
    assert "index_select" in ops and "scatter_add" in ops
    assert ops.index("index_select") < ops.index("scatter_add") < ops.index("gru_cell")
    assert str(g.node("h_src").outputs[0]) == "f32[E,6]"
    assert str(g.node("message").outputs[0]) == "f32[E,6]"
    assert str(g.node("aggregate").outputs[0]) == "f32[V,6]"
    assert str(g.output_type("h_next")) == "f32[V,6]"


def test_mpnn_matches_hand_written(mpnn):
    module = build_module(mpnn, seed=0)
    hand = HandMpnn()
    copy_by_name(module, hand, MPNN_NAMES)
    hand.eval()
    for vals in MPNN_SIZES:
        x = inputs_for(mpnn, vals, seed=vals["E"])
        assert len(set(x["dst"].tolist())) < vals["E"]  # duplicates: several edges into one node
        got = outputs(module, mpnn, x)
        with torch.no_grad():
            want = dict(zip(["h_next", "messages"], hand(*x.values())))
        for o in want:
            err = (got[o] - want[o]).abs().max().item()
            assert err <= TOL, f"{o}: {err} at {vals}"


@pytest.mark.parametrize("for_trt", [False, True], ids=["onnx", "trt_form"])
def test_mpnn_onnx_agrees(mpnn, for_trt):
    assert onnx_agrees(mpnn, build_module(mpnn, seed=0), MPNN_SIZES, for_trt=for_trt) <= 2e-5
