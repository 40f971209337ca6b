"""The Neural Turing Machine spec (Graves et al. 2014): its parameter count against a plain-torch NTM
in pytorch-ntm's layout, one forward equal to that reference with copied weights, and the copy
task's signature (the loss falls, every addressing weighting stays a distribution; opt-in: better
than an LSTM at twice the training length)."""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nnspec.compiler as nc
from nnspec.compiler.cost import cost_report
from nnspec.compiler.spec.load import load_spec
from nnspec.runtime.cli import main as nnspec
from nnspec.runtime.tasks import make_task
from nnspec.runtime.train.checkpoint import latest_checkpoint
from nnspec.runtime.train.rundir import read_metrics
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

INPUTS, OUTPUTS, CONTROLLER, ROWS, WIDTH = 9, 8, 100, 128, 20


class ReferenceNTM(nn.Module):
    """pytorch-ntm's EncapsulatedNTM(9, 8, 100, 1, 1, 128, 20) layout in plain torch: an nn.LSTM
    controller over [x, r] with learned initial h and c (parameters [1, 1, 100], as that code
    keeps them), a read head and a write head, each one linear from the controller output (the read
    head's k, beta, g, s, gamma; the write head's also e, a), the output linear over [h, r], and the
    initial memory and read vector as buffers (not trained there). Initial weightings are zero.
    Its shift weights run over shifts (+1, 0, -1) in that order (a conv1d over the wrapped
    weighting); the spec's run over (-1, 0, +1)."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(INPUTS + WIDTH, CONTROLLER)
        self.lstm_h_bias = nn.Parameter(torch.randn(1, 1, CONTROLLER) * 0.05)
        self.lstm_c_bias = nn.Parameter(torch.randn(1, 1, CONTROLLER) * 0.05)
        self.read_fc = nn.Linear(CONTROLLER, WIDTH + 1 + 1 + 3 + 1)
        self.write_fc = nn.Linear(CONTROLLER, WIDTH + 1 + 1 + 3 + 1 + WIDTH + WIDTH)
        self.fc = nn.Linear(CONTROLLER + WIDTH, OUTPUTS)
        std = 1 / (ROWS + WIDTH) ** 0.5
        self.register_buffer("mem_bias", torch.empty(ROWS, WIDTH).uniform_(-std, std))
        self.register_buffer("read0_bias", torch.randn(1, WIDTH) * 0.01)

    @staticmethod
    def address(mem, k, beta, g, s, gamma, w_prev):
        beta, g = F.softplus(beta), torch.sigmoid(g)
        s, gamma = F.softmax(s, dim=1), 1 + F.softplus(gamma)
        w_c = F.softmax(beta * F.cosine_similarity(mem + 1e-16, k.unsqueeze(1) + 1e-16, dim=-1), dim=1)
        w_g = g * w_c + (1 - g) * w_prev
        # circular convolution with s over shifts (+1, 0, -1): conv1d of the wrapped weighting
        wrapped = torch.cat([w_g[:, -1:], w_g, w_g[:, :1]], dim=1)
        w_s = torch.stack([F.conv1d(wrapped[b].view(1, 1, -1), s[b].view(1, 1, -1)).view(-1)
                           for b in range(w_g.shape[0])])
        w = w_s ** gamma
        return w / (w.sum(dim=1, keepdim=True) + 1e-16)

    def forward(self, x):  # x [N, T, 9] -> logits [N, T, 8], read and write weightings [N, T, R]
        n = x.shape[0]
        mem = self.mem_bias.clone().repeat(n, 1, 1)
        r = self.read0_bias.clone().repeat(n, 1)
        state = (self.lstm_h_bias.repeat(1, n, 1), self.lstm_c_bias.repeat(1, n, 1))
        w_r = x.new_zeros(n, ROWS)
        w_w = x.new_zeros(n, ROWS)
        logits, reads, writes = [], [], []
        for t in range(x.shape[1]):
            out, state = self.lstm(torch.cat([x[:, t], r], dim=1).unsqueeze(0), state)
            h = out.squeeze(0)
            k, beta, g, s, gamma = torch.split(self.read_fc(h), [WIDTH, 1, 1, 3, 1], dim=1)
            w_r = self.address(mem, k, beta, g, s, gamma, w_r)
            r = torch.matmul(w_r.unsqueeze(1), mem).squeeze(1)
            k, beta, g, s, gamma, e, a = torch.split(self.write_fc(h), [WIDTH, 1, 1, 3, 1, WIDTH, WIDTH], dim=1)
            w_w = self.address(mem, k, beta, g, s, gamma, w_w)
            erase = torch.matmul(w_w.unsqueeze(-1), torch.sigmoid(e).unsqueeze(1))
            add = torch.matmul(w_w.unsqueeze(-1), a.unsqueeze(1))
            mem = mem * (1 - erase) + add
            logits.append(self.fc(torch.cat([h, r], dim=1)))
            reads.append(w_r)
            writes.append(w_w)
        return torch.stack(logits, 1), torch.stack(reads, 1), torch.stack(writes, 1)


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_params_match_pytorch_ntm_layout_plus_learned_initial_state():
    ref = ReferenceNTM()
    # pytorch-ntm's trainable count: LSTM 4*100*(29 + 100) + 2*4*100 = 52,400; its initial h and c
    # 200; read head 100*26 + 26 = 2,626; write head 100*66 + 66 = 6,666; output 120*8 + 8 = 968.
    assert trainable(ref) == 52_400 + 200 + 2_626 + 6_666 + 968 == 62_860
    buffers = sum(b.numel() for b in ref.buffers())  # its initial memory and read vector, not trained
    assert buffers == ROWS * WIDTH + WIDTH == 2_580
    ours = cost_report(nc.load("ntm", "copy")).params
    # The spec learns the initial memory and read vector (the paper does): 62,860 + 2,560 + 20.
    assert ours == trainable(ref) + buffers == 65_440
    # The paper's Table 2 gives 67,561 for this network: 2,121 more than ours. No combination of the
    # usual conventions (9 or 10 input channels, peephole weights 3 * 100, one or two LSTM bias
    # vectors, the output from h or [h, r], learned initial weightings 2 * 128 or controller state
    # 2 * 100) reaches it without a further unexplained parameter, so it is not reproduced.
    reported = load_spec("ntm", preset="copy").reported["params"]
    assert reported - ours == 2_121


def _copy_weights(ref: ReferenceNTM, module: nn.Module) -> None:
    sd = module.state_dict()
    new = {"mem_init.weight": ref.mem_bias, "read_init.weight": ref.read0_bias.view(-1),
           "h_init.weight": ref.lstm_h_bias.view(-1), "c_init.weight": ref.lstm_c_bias.view(-1),
           "run.cell.weight_ih": ref.lstm.weight_ih_l0, "run.cell.weight_hh": ref.lstm.weight_hh_l0,
           "run.cell.bias_ih": ref.lstm.bias_ih_l0, "run.cell.bias_hh": ref.lstm.bias_hh_l0,
           "run.out_fc.weight": ref.fc.weight, "run.out_fc.bias": ref.fc.bias}
    # the shift rows (k, beta, g = rows 0..21; s = 22..24; gamma = 25) reversed: (+1, 0, -1) -> (-1, 0, +1)
    order = list(range(22)) + [24, 23, 22] + list(range(25, ref.write_fc.out_features))
    for name, fc in (("read_fc", ref.read_fc), ("write_fc", ref.write_fc)):
        idx = torch.tensor(order[:fc.out_features])
        new[f"run.{name}.weight"] = fc.weight[idx]
        new[f"run.{name}.bias"] = fc.bias[idx]
    assert set(new) == set(sd)
    module.load_state_dict({k: v.detach().clone() for k, v in new.items()})


def test_forward_equals_reference_with_copied_weights():
    torch.manual_seed(0)
    ref = ReferenceNTM()
    module = build_module(nc.load("ntm", "copy"), seed=0)
    _copy_weights(ref, module)
    x = torch.from_numpy(make_task("copy", {"max_len": 4}).batch(0, 3)["x"])
    with torch.no_grad():
        logits, probs, reads, writes, _ = module(x)
        want_logits, want_reads, want_writes = ref(x)
    assert torch.allclose(logits, want_logits, atol=1e-5)
    assert torch.allclose(probs, torch.sigmoid(want_logits), atol=1e-5)
    assert torch.allclose(reads, want_reads, atol=1e-5)
    assert torch.allclose(writes, want_writes, atol=1e-5)


def _train(tmp_path, name, steps, extra=()):
    out = tmp_path / name
    rc = nnspec(["train", "ntm", "--preset", "copy", "--steps", str(steps), "--out", str(out),
                 "--threads", "1", "--no-progress", *extra])
    assert rc in (0, None)
    return out, read_metrics(out)


def _trained_module(run_dir) -> nn.Module:
    from safetensors.torch import load_file
    module = build_module(nc.load("ntm", "copy"), seed=0)
    module.load_state_dict(load_file(str(latest_checkpoint(run_dir) / "weights.safetensors")))
    return module.eval()


def _distributions(w: torch.Tensor) -> None:
    """Every weighting [N, T, R] non-negative and summing to 1 within 1e-5."""
    assert bool((w >= 0).all())
    assert float((w.sum(-1) - 1).abs().max()) <= 1e-5


# The default-suite run: the spec's recipe (copies of 1..5 vectors) for 150 steps; about 25 s on one core.
FAST = ["--set", "train.eval.every=50", "--set", "train.checkpoint.every=150"]


def test_signature_copy_learns(tmp_path):
    run, rows = _train(tmp_path, "ntm", 150, FAST)
    train = [r["loss"] for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    assert valid and valid[-1]["step"] == 150
    # The loss falls by at least 2x from the first logged training loss (0.80 measured; ln 2 = 0.69
    # for outputs of 0.5) to the last validation (0.28 measured). In 150 steps that is mostly the
    # zero targets before the answer phase; the copy itself takes the slow test's thousands of steps.
    assert valid[-1]["loss"] * 2 <= train[0]
    module = _trained_module(run)
    x = torch.from_numpy(make_task("copy", {"max_len": 5, "seed": 3}).batch(0, 8)["x"])
    with torch.no_grad():
        _, _, reads, writes, _ = module(x)
    _distributions(reads)
    _distributions(writes)


# -- opt-in: generalisation to twice the training length --------------------------------------------
LSTM_SPEC = """
nnspec: 1
name: copy_lstm
description: The copy task's LSTM baseline, one layer of {hidden} units and a linear read-out.
params: {{hidden: {hidden}}}
dims: {{N: {{min: 1, opt: 2, max: 64}}, T: {{min: 1, opt: 5, max: 512}}}}
inputs:
  x: {{shape: [N, T, 9]}}
nodes:
  lstm: {{op: lstm, in: x, hidden: "${{hidden}}"}}
  out: {{op: linear, in: lstm.y, out: 8}}
outputs: {{logits: out}}
train:
  task: {{name: copy, options: {{width: 8, min_len: 1, max_len: {L}}}}}
  loss: {{name: binary_ce, map: {{targets: y}}}}
  optimizer: {{name: rmsprop, lr: 1.0e-3, alpha: 0.95, momentum: 0.9}}
  clip: {{value: 10.0}}
  batch_size: 16
  steps: {steps}
  eval: {{every: {steps}, batches: 2}}
  checkpoint: {{every: {steps}}}
"""


def _bits(logits: torch.Tensor, batch: dict) -> float:
    from nnspec.runtime.tasks.ntm import bit_errors_per_sequence
    return bit_errors_per_sequence(torch.sigmoid(logits).numpy(), batch["y"], batch["mask"])


@pytest.mark.slow
def test_signature_generalises_to_twice_the_length_better_than_lstm(tmp_path):
    """Trained on copies of 1..L = 5 vectors (3,000 steps of 16), evaluated on 64 copies of exactly
    2L = 10: the NTM's bits wrong per sequence (0.27 measured, of 80) are a small fraction of a
    256-unit LSTM's trained the same way (24.2 measured; both near 0 at length 5). About 12 minutes
    on one core."""
    L, steps = 5, 3000
    run, _ = _train(tmp_path, "ntm", steps, ["--set", f"train.eval.every={steps}", "--set",
                                             f"train.checkpoint.every={steps}"])
    ntm = _trained_module(run)
    spec = tmp_path / "copy_lstm.yaml"
    spec.write_text(LSTM_SPEC.format(hidden=256, L=L, steps=steps))
    lstm_run = tmp_path / "lstm"
    assert nnspec(["train", str(spec), "--out", str(lstm_run), "--threads", "1", "--no-progress"]) in (0, None)
    from safetensors.torch import load_file
    lstm = build_module(nc.load(str(spec)), seed=0)
    lstm.load_state_dict(load_file(str(latest_checkpoint(lstm_run) / "weights.safetensors")))
    lstm.eval()
    batch = make_task("copy", {"min_len": 2 * L, "max_len": 2 * L, "seed": 7}).batch(0, 64)
    x = torch.from_numpy(batch["x"])
    with torch.no_grad():
        ntm_bits = _bits(ntm(x)[0], batch)
        out = lstm(x)
        lstm_bits = _bits(out[0] if isinstance(out, (tuple, list)) else out, batch)
    print(f"bits wrong per sequence at length {2 * L}: ntm {ntm_bits:.2f}, lstm {lstm_bits:.2f}")
    assert ntm_bits < 2.0 and ntm_bits * 5 < lstm_bits
