"""ptb_lstm (Zaremba, Sutskever, Vinyals 2014): the count against nn.Embedding + nn.LSTM(h, h, 2) +
nn.Linear(h, vocab), the forward (eval and training, dropout masks included) against that torch
model with the same weights, the paper's uniform initialisation, and the signature: on a small
word corpus the model with dropout on its non-recurrent connections ends with a lower validation
perplexity than the same model without dropout, which overfits.
"""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.runtime.cli import main as nnspec
from nnspec.runtime.train.rundir import read_metrics
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

PRESETS = {"small": (200, 0.0, 0.1), "medium": (650, 0.5, 0.05), "large": (1500, 0.65, 0.04)}  # hidden, p, init


class Reference(nn.Module):
    """Zaremba et al.'s model in torch modules: embedding (as wide as the LSTM), dropout, a 2-layer
    nn.LSTM whose `dropout` acts between the layers, dropout, an untied linear decoder."""

    def __init__(self, vocab: int, hidden: int, p: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, 2, batch_first=True, dropout=p)
        self.drop = nn.Dropout(p)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, ids):
        y, _ = self.lstm(self.drop(self.embed(ids)))
        return self.decoder(self.drop(y))


def reference_count(vocab: int, hidden: int) -> int:
    with torch.device("meta"):  # shapes only: the large model's 66M numbers are never drawn
        ref = Reference(vocab, hidden, 0.0)
    return sum(p.numel() for p in ref.parameters())


def ir_params(p) -> int:
    return sum(q.numel() for n in p.forward.topo() for q in n.params.values() if not q.buffer)


@pytest.mark.parametrize("preset", PRESETS)
def test_params_equal_the_torch_reference(preset):
    p = c.load("ptb_lstm", preset)
    hidden, drop, _ = PRESETS[preset]
    assert p.spec.params["hidden"] == hidden and p.spec.params["dropout"] == drop
    want = reference_count(10000, hidden)
    # the closed form: embedding V*h, two layers of 4h x (h + h) weights and two 4h biases, decoder h*V + V
    assert want == 10000 * hidden + 2 * (4 * hidden * 2 * hidden + 2 * 4 * hidden) + hidden * 10000 + 10000
    assert ir_params(p) == want
    assert cost_report(p).params == want


def small(**over):
    return c.load("ptb_lstm", "medium", overrides={"vocab": 50, "hidden": 16, **over})


def loaded_reference(module, vocab=50, hidden=16, p=0.5):
    ref = Reference(vocab, hidden, p)
    sd = module.state_dict()
    assert set(sd) == set(ref.state_dict()), sorted(sd)  # torch's own names: the weights load unchanged
    ref.load_state_dict(sd)
    return ref


def test_forward_equals_the_reference_with_the_same_weights():
    module = build_module(small(), seed=3)
    ref = loaded_reference(module)
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    module.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(ids), ref(ids), rtol=1e-5, atol=1e-5)
    # Training mode: the same random stream gives the same dropout masks only if the generated
    # module drops at the same places in the same order (embedding output, between the layers
    # inside nn.LSTM, top output), so equal outputs check where dropout sits.
    module.train(), ref.train()
    with torch.no_grad():
        torch.manual_seed(7)
        got = module(ids)
        torch.manual_seed(7)
        want = ref(ids)
        torch.manual_seed(8)
        other = module(ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, other)  # dropout is live in training


def test_dropout_only_on_non_recurrent_connections():
    """Three dropout sites, each with the preset's p: the embedding's output, nn.LSTM's between-layer
    dropout, the decoder's input; the recurrent weights are used as nn.LSTM uses them (no mask on
    h_{t-1}). With p = 0 (the small model) training and evaluation give the same logits."""
    p = small()
    ops = {n.id: n for n in p.forward.topo()}
    assert ops["drop_in"].op == "dropout" and ops["drop_out"].op == "dropout"
    module = build_module(p, seed=0)
    lstms = [m for m in module.modules() if isinstance(m, nn.LSTM)]
    assert len(lstms) == 1 and lstms[0].num_layers == 2 and lstms[0].dropout == 0.5
    drops = [m.p for m in module.modules() if isinstance(m, nn.Dropout)]
    assert drops in ([0.5, 0.5], [0.5])  # one module may serve both sites
    plain = build_module(small(dropout=0.0), seed=0)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        train_out = plain.train()(ids)
        torch.testing.assert_close(train_out, plain.eval()(ids), rtol=0, atol=0)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_parameter_starts_uniform_in_the_papers_range(preset):
    """U(-k, k) for every parameter (k = 0.1, 0.05, 0.04): recorded on the IR for the full-size
    preset, and drawn so (a narrow vocabulary keeps it quick): inside [-k, k], filling it (the
    largest value near k and the spread k / sqrt(3) of a uniform), not torch's own defaults."""
    _, _, k = PRESETS[preset]
    for n in c.load("ptb_lstm", preset).forward.topo():
        for name in n.params:
            init = n.init[name]
            assert (init.name, init.kwargs) == ("uniform", {"a": -k, "b": k}), (n.id, name, init)
    module = build_module(c.load("ptb_lstm", preset, overrides={"vocab": 100}), seed=0)
    for name, w in module.state_dict().items():
        assert w.abs().max() <= k * (1 + 1e-6), name
        assert w.abs().max() >= 0.9 * k, name
        if w.numel() >= 1000:
            assert abs(w.std().item() - k / math.sqrt(3)) < 0.05 * k, (name, w.std().item())


def train(tmp_path, name, dropout, epochs, every, over):
    run = tmp_path / name
    argv = ["train", "ptb_lstm", "--preset", "small", "--out", str(run), "--threads", "1", "--no-progress",
            "--set", f"dropout={dropout}", "--set", f"train.epochs={epochs}", "--set", f"train.eval.every={every}",
            "--set", "train.eval.batches=64", "--set", "train.checkpoint.every=100000"]
    for k, v in over.items():
        argv += ["--set", f"{k}={v}"]
    t0 = time.perf_counter()
    assert nnspec(argv) == 0
    metrics = read_metrics(run)
    valid = [r["perplexity"] for r in metrics if r["split"] != "train" and "perplexity" in r]
    losses = [r["loss"] for r in metrics if r["split"] == "train"]
    return valid, losses, time.perf_counter() - t0


def signature(tmp_path, epochs, every, over):
    plain, plain_loss, t0 = train(tmp_path, "plain", 0.0, epochs, every, over)
    drop, _, t1 = train(tmp_path, "dropout", 0.5, epochs, every, over)
    print(f"\nno dropout: valid ppl {[round(v, 1) for v in plain]}\n   dropout: valid ppl "
          f"{[round(v, 1) for v in drop]}\n{t0:.1f} s + {t1:.1f} s")
    best = min(range(len(plain)), key=plain.__getitem__)
    # the model without dropout overfits: its validation perplexity ends well above its best and
    # above where it stood mid-run, while its training loss keeps falling
    assert best < len(plain) - 1 and plain[-1] > 1.25 * plain[best], plain
    mid, end = plain[len(plain) // 2 - 2:len(plain) // 2 + 2], plain[-4:]
    assert sum(end) / 4 > 1.1 * sum(mid) / 4, plain
    k = len(plain_loss) // 4
    assert sum(plain_loss[-k:]) / k < sum(plain_loss[-2 * k:-k]) / k, plain_loss
    # the same model with dropout ends near its own best, and lower
    assert drop[-1] < 1.1 * min(drop), drop
    assert drop[-1] < plain[-1], (drop[-1], plain[-1])
    return plain, drop


def write_corpus(folder, words: int) -> str:
    """The first `words` words (whole lines) of the default corpus, CPython's help topics, as a file
    in `folder`: a corpus small enough to overfit within a few hundred steps."""
    from nnspec.runtime.tasks.text import read_corpus

    lines, n = [], 0
    for line in read_corpus(None).splitlines():
        lines.append(line)
        n += len(line.split()) + 1  # and its <eos>
        if n >= words:
            break
    (folder / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    return "corpus.txt"


def test_signature_dropout_beats_no_dropout(tmp_path, monkeypatch):
    """The paper's small model (2 x 200, init 0.1, the spec's SGD recipe) on 8k words of help text,
    half of them the validation split, a 500-word vocabulary: 40 epochs of 10 steps, the rate halved
    every epoch from the 35th (the late decay settles both curves' last points). Without dropout the validation perplexity bottoms out and then
    climbs while the training loss keeps falling; with dropout 0.5 on the non-recurrent
    connections it ends lower."""
    monkeypatch.chdir(tmp_path)  # corpus paths resolve inside the folder nnspec runs in
    over = {"vocab": 500, "train.task.options.path": write_corpus(tmp_path, 8000),
            "train.task.options.valid_fraction": 0.5, "train.schedule.after": 33}
    plain, drop = signature(tmp_path, epochs=40, every=20, over=over)
    assert plain[-1] > 1.4 * drop[-1], (plain[-1], drop[-1])
