"""rmc (Santoro et al. 2018): the relational memory core on Nth farthest. The core's count is
derived from Sonnet v1's RelationalMemory term by term; a torch module written here with that
module's semantics, given the generated module's weights, computes the same logits; trained on
Nth farthest, the core beats an LSTM of about its size in the same number of steps."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.runtime.cli import main as nnspec
from nnspec.runtime.train.rundir import read_metrics
from nnspec.runtime.tasks import make_task
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

# preset -> (vectors, dim, slots, heads, head_size, output MLP widths)
SIZES = {None: (8, 16, 8, 8, 32, [256] * 4), "nth_farthest": (8, 16, 8, 8, 32, [256] * 4),
         "small": (3, 2, 4, 2, 16, [64, 64])}


def linear(i: int, o: int) -> int:
    return i * o + o  # weight and bias (Sonnet's snt.Linear has a bias)


def layer_norm(d: int) -> int:
    return 2 * d  # scale and offset (Sonnet's LayerNorm defaults)


def core_params(in_dim: int, heads: int, head_size: int, key_size: int | None = None,
                mlp_layers: int = 2, blocks: int = 1, gate_style: str = "unit") -> int:
    """Parameters of Sonnet v1's RelationalMemory(mem_slots, head_size, num_heads, num_blocks,
    attention_mlp_layers, key_size, gate_style) reading in_dim-wide inputs; mem_slots adds none
    (the initial memory is an identity, not a variable)."""
    key_size = key_size or head_size
    mem = heads * head_size
    total = linear(in_dim, mem)  # _build: the input projected to one memory row
    per_block = (linear(mem, heads * (2 * key_size + head_size))  # _multihead_attention's qkv linear
                 + layer_norm(heads * (2 * key_size + head_size))  # and the LayerNorm over qkv
                 + 2 * layer_norm(mem))  # _attend_over_memory: the norms after each residual
    total += blocks * per_block  # both made afresh in every block
    total += mlp_layers * linear(mem, mem)  # attention_mlp, made once before the loop over blocks
    gate = {"unit": mem, "memory": 1, None: 0}[gate_style]  # _calculate_gate_size
    if gate:
        total += linear(mem, 2 * gate)  # _create_gates: gate_inputs, from the projected input
        total += linear(mem, 2 * gate)  # and gate_memory, from tanh(memory)
    return total


def head_params(slots: int, mem: int, widths: list[int], classes: int) -> int:
    """The Nth-farthest example's head: the flattened memory through an MLP, then the logits."""
    dims = [slots * mem] + widths
    return sum(linear(a, b) for a, b in zip(dims, dims[1:])) + linear(dims[-1], classes)


def test_core_count_at_the_issue_sizes():
    # input 40 = a 16-d vector and three 8-way one-hots; 8 heads of 32 (mem 256), one block:
    # 10,496 + (197,376 + 1,536 + 1,024) + 131,584 + 2 * 131,584
    assert core_params(16 + 3 * 8, heads=8, head_size=32) == 605_184
    # more blocks add attention, not MLP: the MLP is shared
    assert core_params(40, 8, 32, blocks=2) - core_params(40, 8, 32) == 197_376 + 1_536 + 1_024


@pytest.mark.parametrize("preset", list(SIZES))
def test_param_count(preset):
    vectors, dim, slots, heads, head_size, widths = SIZES[preset]
    p = c.load("rmc", preset)
    per_node = {n.id: sum(q.numel() for k, q in n.params.items() if k not in n.ties) for n in p.all_nodes()}
    core = sum(v for k, v in per_node.items() if k.startswith("rmc."))
    assert core == core_params(dim + 3 * vectors, heads, head_size)
    head = cost_report(p).params - core
    assert head == head_params(slots, heads * head_size, widths, vectors)
    if preset == "nth_farthest":
        assert core == 605_184 and head == 723_976
        assert p.spec.reported["params_core"] == core == c.load("rmc").spec.reported["params_core"]


class RelationalMemory(nn.Module):
    """Sonnet v1's RelationalMemory (gate_style 'unit'), one attention block per step."""

    def __init__(self, in_dim, slots, heads, head_size, forget_bias=1.0, input_bias=0.0):
        super().__init__()
        self.slots, self.heads, self.head_size = slots, heads, head_size
        self.mem = heads * head_size
        self.proj = nn.Linear(in_dim, self.mem)
        self.qkv = nn.Linear(self.mem, 3 * self.mem)
        self.qkv_norm = nn.LayerNorm(3 * self.mem)
        self.attn_norm = nn.LayerNorm(self.mem)
        self.mlp = nn.Sequential(nn.Linear(self.mem, self.mem), nn.ReLU(), nn.Linear(self.mem, self.mem))
        self.mlp_norm = nn.LayerNorm(self.mem)
        self.gate_inputs = nn.Linear(self.mem, 2 * self.mem)
        self.gate_memory = nn.Linear(self.mem, 2 * self.mem)
        self.forget_bias, self.input_bias = forget_bias, input_bias

    def initial_state(self, batch):
        eye = torch.eye(self.slots, self.mem)  # the identity, zero-padded (or truncated) to mem
        return eye.expand(batch, -1, -1)

    def attend(self, m):
        n, r, _ = m.shape
        qkv = self.qkv_norm(self.qkv(m)).reshape(n, r, self.heads, 3 * self.head_size).transpose(1, 2)
        q, k, v = qkv.split(self.head_size, dim=-1)
        w = torch.softmax((q * self.head_size ** -0.5) @ k.transpose(-1, -2), dim=-1)
        return (w @ v).transpose(1, 2).reshape(n, r, self.mem)

    def forward(self, x_t, memory):
        inp = self.proj(x_t)[:, None, :]
        m = torch.cat([memory, inp], dim=1)
        m = self.attn_norm(m + self.attend(m))
        m = self.mlp_norm(self.mlp(m) + m)
        new = m[:, :-1]
        gates = self.gate_memory(torch.tanh(memory)) + self.gate_inputs(inp)
        i, f = gates.split(self.mem, dim=2)
        i, f = torch.sigmoid(i + self.input_bias), torch.sigmoid(f + self.forget_bias)
        return i * torch.tanh(new) + f * memory


class Reference(nn.Module):
    """dynamic_rnn over the rows, then the example's head on the last output."""

    def __init__(self, vectors, dim, slots, heads, head_size, widths):
        super().__init__()
        self.core = RelationalMemory(dim + 3 * vectors, slots, heads, head_size)
        layers, d = [], slots * heads * head_size
        for w in widths:
            layers += [nn.Linear(d, w), nn.ReLU()]
            d = w
        self.head = nn.Sequential(*layers, nn.Linear(d, vectors))

    def forward(self, x):
        memory = self.core.initial_state(x.shape[0])
        for t in range(x.shape[1]):
            memory = self.core(x[:, t], memory)
        return self.head(memory.flatten(1))


def copy_into(ref: Reference, module) -> None:
    sd = module.state_dict()
    core = ref.core
    pairs = {core.proj: "rmc.proj", core.qkv: "rmc.qkv", core.qkv_norm: "rmc.qkv_norm",
             core.attn_norm: "rmc.attn_norm", core.mlp[0]: "rmc.mlp1", core.mlp[2]: "rmc.mlp2",
             core.mlp_norm: "rmc.mlp_norm", core.gate_inputs: "rmc.gate_inputs",
             core.gate_memory: "rmc.gate_memory", ref.head[-1]: "logits"}
    pairs.update({ref.head[2 * i]: f"head.{i}.fc" for i in range((len(ref.head) - 1) // 2)})
    with torch.no_grad():
        for mod, name in pairs.items():
            mod.weight.copy_(sd[f"{name}.weight"])
            mod.bias.copy_(sd[f"{name}.bias"])
    assert sum(q.numel() for q in ref.parameters()) == sum(q.numel() for q in module.parameters())


@pytest.mark.parametrize("preset", ["small", "nth_farthest"])
def test_matches_the_reference(preset):
    vectors, dim, *_ = SIZES[preset]
    module = build_module(c.load("rmc", preset), seed=0).eval()
    ref = Reference(*SIZES[preset]).eval()
    copy_into(ref, module)
    task = make_task("nth_farthest", {"vectors": vectors, "dim": dim})
    x = torch.from_numpy(task.make(np.random.default_rng(0), 5)["x"])
    with torch.no_grad():
        ours, theirs = module(x), ref(x)
    assert ours.shape == (5, vectors)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # the memory is not a pass-through: a changed first vector changes the answer's logits
    x2 = x.clone()
    x2[:, 0, :dim] += 0.5
    with torch.no_grad():
        assert (module(x2) - ours).abs().max() > 1e-4


# An LSTM of about the small preset's size (22,899 parameters against 22,819) reading the same
# rows, its last hidden state through the same head.
LSTM_SPEC = """
nnspec: 1
name: lstm_farthest
description: An LSTM reads the rows one per step; its last hidden state goes through the rmc head.
params: {vectors: 3, dim: 2, hidden: 55, mlp: [64, 64]}
dims: {N: {min: 1, opt: 4, max: 1600}}
inputs:
  x: {shape: [N, "${vectors}", "${dim + 3 * vectors}"]}
blocks:
  head_layer:
    args: {width: int}
    in: h
    nodes:
      fc: {op: linear, in: h, out: "${width}"}
      act: {op: relu}
    out: act
nodes:
  lstm: {op: lstm, in: x, hidden: "${hidden}"}
  last: {op: slice, in: lstm.y, axis: 1, start: -1}
  flat: {op: flatten}
  head: {block: head_layer, repeat: "${len(mlp)}", args: {width: "${mlp[i]}"}}
  logits: {op: linear, out: "${vectors}"}
outputs: {logits: logits}
train:
  task: {name: nth_farthest, options: {vectors: "${vectors}", dim: "${dim}"}}
  loss: {name: cross_entropy, map: {targets: target}}
  optimizer: {name: adam, lr: 1.0e-3}
  batch_size: 64
  steps: 600
  eval: {every: 200, batches: 8}
"""

# Both models run the same recipe: Adam at 1e-3 (the paper's 1e-4 is for batches of 1600),
# batches of 64, the same steps, on the small preset's task: 3 vectors of 2 dimensions. Chance is
# 1/3; n = 2 asks for the reference itself (the nearest), so answering m there and guessing
# between the other two otherwise gives 2/3 without comparing any distances: the plateau both
# models reach first. Validation: 8 batches of 64.
RECIPE = ["--batch", "64", "--set", "train.optimizer.lr=0.001", "--set", "train.eval.batches=8",
          "--threads", "1", "--no-progress"]


def train(spec, steps, out, *extra):
    t0 = time.perf_counter()
    assert nnspec(["train", str(spec), *extra, "--steps", str(steps), "--set", f"train.eval.every={steps}",
                   "--out", str(out), *RECIPE]) == 0
    last = [m for m in read_metrics(out) if m.get("split") == "valid"][-1]
    assert last["step"] == steps
    return last["accuracy"], time.perf_counter() - t0


def compare(tmp_path, steps):
    lstm_spec = tmp_path / "lstm_farthest.yaml"
    lstm_spec.write_text(LSTM_SPEC)
    assert abs(cost_report(c.load(str(lstm_spec))).params - cost_report(c.load("rmc", "small")).params) < 100
    rmc, t_rmc = train("rmc", steps, tmp_path / "rmc", "--preset", "small")
    lstm, t_lstm = train(lstm_spec, steps, tmp_path / "lstm")
    print(f"nth farthest (3 x 2), {steps} steps: rmc {rmc:.3f} ({t_rmc:.1f} s), lstm {lstm:.3f} ({t_lstm:.1f} s)")
    return rmc, lstm


@pytest.mark.slow
def test_signature_beats_lstm(tmp_path):
    """2,500 steps (about 2.5 minutes on one core): the core leaves the 2/3 plateau, comparing the
    distances (measured: rmc 0.926, lstm 0.660); the LSTM of its size has not left it."""
    rmc, lstm = compare(tmp_path, 2500)
    assert rmc >= 0.85 and lstm <= 0.75 and rmc - lstm >= 0.15


def test_signature_quick(tmp_path):
    """The default suite's short version, 300 steps of each: both learn the part that needs no
    comparison (above chance, 1/3; measured rmc 0.641, lstm 0.631), which the slow test separates."""
    rmc, lstm = compare(tmp_path, 300)
    assert rmc > 0.55 and lstm > 0.55
