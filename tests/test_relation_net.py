"""Relation Networks (Santoro et al. 2017): the CLEVR-from-pixels count derived from the appendix's
layer list and equal to a plain torch module's, the generated module equal to that module with its
weights copied in, and the signature: on Sort-of-CLEVR's relational questions g over object pairs
beats the CNN+MLP baseline's one MLP over all objects."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.runtime.cli import main as nnspec
from nnspec.runtime.train.rundir import read_metrics
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

SPEC = "relation_net"


def clevr_pixels_params(image_size=128, convs=(24, 24, 24, 24), vocab=90, embed=32, lstm=128,
                        g=(256, 256, 256, 256), f=(256, 256, 29), answers=28) -> int:
    """The appendix's CLEVR-from-pixels RN counted layer by layer."""
    total, c_in = 0, 3
    for k in convs:  # 3 x 3 conv with bias, then BN's scale and shift (running statistics are buffers)
        total += k * c_in * 9 + k + 2 * k
        c_in = k
    total += vocab * embed  # word embeddings
    total += 4 * lstm * (embed + lstm) + 2 * 4 * lstm  # nn.LSTM: W_ih, W_hh and its two bias vectors
    # an object is a cell's k channels and its (x, y); g reads two objects and the question
    width = 2 * (convs[-1] + 2) + lstm
    for w in list(g) + list(f) + [answers]:  # g's and f's layers and the final linear, with biases
        total += width * w + w
        width = w
    return total


class Reference(nn.Module):
    """The clevr_pixels RN written in plain torch (eval mode: dropout is the identity)."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for _ in range(4):
            layers += [nn.Conv2d(c_in, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU()]
            c_in = 24
        self.cnn = nn.Sequential(*layers)
        self.embed = nn.Embedding(90, 32)
        self.lstm = nn.LSTM(32, 128, batch_first=True)
        self.g = nn.ModuleList([nn.Linear(2 * 26 + 128, 256)] + [nn.Linear(256, 256) for _ in range(3)])
        self.f = nn.ModuleList([nn.Linear(256, 256), nn.Linear(256, 256), nn.Linear(256, 29)])
        self.out = nn.Linear(29, 28)

    def forward(self, image, words):
        x = self.cnn(image)                                   # [N, 24, d, d]
        n, k, d, _ = x.shape
        o = x.flatten(2).transpose(1, 2)                      # [N, d*d, 24], cells in row order
        idx = torch.arange(d * d)
        xy = torch.stack([idx % d, idx // d], 1).float() * 2 / (d - 1) - 1
        o = torch.cat([o, xy.expand(n, -1, -1)], 2)           # [N, P, 26]
        _, (h, _) = self.lstm(self.embed(words))
        q = h[0]
        p = o.shape[1]
        pairs = torch.cat([o[:, :, None].expand(-1, -1, p, -1), o[:, None].expand(-1, p, -1, -1),
                           q[:, None, None].expand(-1, p, p, -1)], 3)
        for lin in self.g:
            pairs = torch.relu(lin(pairs))
        r = pairs.sum((1, 2))
        for lin in self.f:
            r = torch.relu(lin(r))
        return self.out(r)


def _ref_state(ref: Reference) -> dict:
    """The reference's tensors in the order nnspec's generated module lists its parameters."""
    sd = []
    for i in range(4):
        conv, bn = ref.cnn[3 * i], ref.cnn[3 * i + 1]
        sd += [conv.weight, conv.bias, bn.weight, bn.bias]
    sd += [ref.embed.weight] + list(ref.lstm.parameters())
    for lin in list(ref.g) + list(ref.f) + [ref.out]:
        sd += [lin.weight, lin.bias]
    return sd


def test_clevr_pixels_count_is_the_papers():
    program = c.load(SPEC, "clevr_pixels")
    ref = Reference()
    assert clevr_pixels_params() == 485_901
    assert sum(p.numel() for p in ref.parameters()) == 485_901
    assert cost_report(program).params == 485_901


def test_clevr_pixels_equals_the_torch_reference():
    torch.manual_seed(0)
    ref = Reference().eval()
    for m in ref.cnn:
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    mod = build_module(c.load(SPEC, "clevr_pixels"), seed=0).eval()
    params = [(n, p) for n, p in mod.named_parameters()]
    src = _ref_state(ref)
    assert [tuple(p.shape) for _, p in params] == [tuple(t.shape) for t in src]
    with torch.no_grad():
        for (_, p), t in zip(params, src):
            p.copy_(t)
        bufs = [b for n, b in mod.named_buffers() if n.endswith("running_mean") or n.endswith("running_var")]
        refbufs = [b for m in ref.cnn if isinstance(m, nn.BatchNorm2d) for b in (m.running_mean, m.running_var)]
        for b, r in zip(bufs, refbufs, strict=True):
            b.copy_(r)
        image = torch.rand(2, 3, 128, 128)
        words = torch.randint(0, 90, (2, 7))
        got = mod(image=image, question_words=words)
        got = got["logits"] if isinstance(got, dict) else got
        want = ref(image, words)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_presets_count():
    # Sort-of-CLEVR: convs 32-64-128-256 over 75 x 75 (25 objects of 256 + 2), the 11-number question
    convs = 3 * 9 * 32 + 32 + 64 + 32 * 9 * 64 + 64 + 128 + 64 * 9 * 128 + 128 + 256 + 128 * 9 * 256 + 256 + 512
    widths = [2 * 258 + 11, 2000, 2000, 2000, 2000, 2000, 1000, 500, 100, 10]
    mlp = sum(a * b + b for a, b in zip(widths, widths[1:]))
    assert cost_report(c.load(SPEC, "sort_of_clevr")).params == convs + mlp
    widths = [2 * 9 + 11, 512, 512, 512, 512, 512, 1024, 29, 10]
    assert cost_report(c.load(SPEC, "state_description")).params == sum(a * b + b for a, b in zip(widths, widths[1:]))


SMALL = ["--preset", "state_description", "--set", "g_widths=[128,128,128,128]", "--set", "f_widths=[128,128]",
         "--set", "f_dropout=0.0", "--set", "train.optimizer.lr=0.001", "--set", "train.task.options.relational=relational", "--set", "train.task.options.shuffle=true",
         "--threads", "1", "--no-progress"]


def _accuracy(tmp_path, relation, steps):
    out = tmp_path / relation
    nnspec(["train", SPEC, *SMALL, "--set", f"relation={relation}", "--set", f"train.eval.every={steps}",
            "--steps", str(steps), "--out", str(out)])
    return [m for m in read_metrics(out) if m.get("split") == "valid"][-1]["accuracy"]


@pytest.mark.slow
def test_signature_pairs_beat_the_mlp_on_relational_questions(tmp_path):
    rn, mlp = _accuracy(tmp_path, "pairs", STEPS), _accuracy(tmp_path, "mlp", STEPS)
    assert rn > mlp + MARGIN, (rn, mlp)


# measured (3000 steps of 64, shuffled states, relational questions only): RN 0.824 vs MLP 0.723
# valid accuracy; RN 124 s, MLP 73 s on one thread. At 1000 steps they are not yet apart (0.740 vs 0.725).
STEPS, MARGIN = 3000, 0.05


def test_shuffled_states_hold_the_same_objects():
    from nnspec.runtime.tasks import make_task
    import numpy as np
    plain = make_task("sort_of_clevr", {"seed": 3}).batch(0, 16)
    mixed = make_task("sort_of_clevr", {"seed": 3, "shuffle": True}).batch(0, 16)
    assert np.array_equal(plain["answer"], mixed["answer"])
    assert not np.array_equal(plain["state"], mixed["state"])
    for a, b in zip(plain["state"], mixed["state"]):
        assert np.array_equal(a, b[np.argmax(b[:, 3:], axis=1).argsort()])  # colour one-hot restores the order
