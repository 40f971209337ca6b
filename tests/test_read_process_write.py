"""read_process_write (Vinyals, Bengio, Kudlur 2016): the process block equals PyG's Set2Set with the
same LSTM weights, the count equals torch/PyG modules', the encoder is order-invariant, the greedy
loop is an ONNX `Loop`, and the signature: on sorting sets (inputs in random order), the
order-invariant encoder sorts better than pointer_net after the same number of steps.
"""
from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch_geometric.nn import Set2Set

import nnspec.compiler as c
from nnspec.runtime.cli import main as nnspec
from nnspec.runtime.tasks import make_task
from nnspec.runtime.train.checkpoint import latest_checkpoint
from nnspec.targets.onnx.export import to_onnx_model
from nnspec.targets.onnx.runner import parity
from nnspec.targets.torch.build import build_module

from conftest import graph_params
from nnspec.targets.torch.interpret import evaluate

torch.set_num_threads(1)

PRESETS = ["rpw", "rpw_glimpse", "rpw_p1"]


def reference_count(in_dim: int, d: int, steps: int, glimpse: bool) -> int:
    """Read MLP (two nn.Linear), process block (PyG Set2Set: an LSTM over q* of width 2d), writer
    (an nn.LSTM decoder, the start token, W1, W2, v without biases) and the glimpse's W_g1, W_g2, v_g."""
    mods = [nn.Linear(in_dim, d), nn.Linear(d, d), Set2Set(d, steps), nn.LSTM(in_dim, d),
            nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False), nn.Linear(d, 1, bias=False)]
    if glimpse:
        mods += [nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False), nn.Linear(d, 1, bias=False)]
    return sum(p.numel() for m in mods for p in m.parameters()) + in_dim  # + the start token


@pytest.mark.parametrize("preset", PRESETS)
def test_params_equal_the_reference(preset):
    p = c.load("read_process_write", preset)
    a = p.spec.params
    want = reference_count(a["in_dim"], a["hidden"], a["steps"], a["glimpse"])
    assert graph_params(p.forward) == want
    assert graph_params(p.graphs["greedy"]) == want
    assert sum(v.numel() for v in build_module(p, seed=0).state_dict().values()) == want


def small(preset="rpw", **over):
    return c.load("read_process_write", preset, overrides={"hidden": 8, **over})


def test_process_block_equals_pyg_set2set():
    p = small(steps=3)
    module = build_module(p, seed=2).eval()
    sd = module.state_dict()
    ref = Set2Set(8, processing_steps=3)
    ref.lstm.load_state_dict({f"{k}_l0": sd[f"process.cell.{k}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(4, 6, 1, generator=g)
    vals = evaluate(p, module, {"points": pts, "targets": torch.zeros(4, 6, dtype=torch.long)}, numpy=False)
    memory = vals[("memory", 0)]  # [N, S, d]
    got = vals[("process", 0)]  # q*_T [N, 2d]
    batch = torch.arange(4).repeat_interleave(6)  # four sets of six, PyG's batch vector
    with torch.no_grad():
        want = ref(memory.reshape(-1, 8), batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["rpw", "rpw_glimpse"])
def test_encoder_is_order_invariant_and_greedy_equivariant(preset):
    p = small(preset)
    module = build_module(p, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(3, 5, 1, generator=g)
    perm = torch.randperm(5, generator=g)
    with torch.no_grad():
        order, logits = module.greedy(pts)
        order2, logits2 = module.greedy(pts[:, perm])
    # the same set in another order: the same logits, permuted; the same chosen elements
    torch.testing.assert_close(logits2, logits[:, :, perm], rtol=1e-5, atol=1e-5)
    assert torch.equal(perm[order2], order)


@pytest.mark.parametrize("preset", ["rpw", "rpw_glimpse"])
def test_greedy_graph_is_an_onnx_loop_equal_to_torch_at_two_shapes(preset):
    p = small(preset)
    module = build_module(p, seed=0).eval()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    model = to_onnx_model(p, weights, graph="greedy")
    assert [n.op_type for n in model.graph.node].count("Loop") == 2  # process, write
    for dims in ({"N": 2, "S": 5}, {"N": 3, "S": 8}):
        diff = parity(p, dims, seed=0, module=module, model=model, graph="greedy")
        assert diff["order"] == 0 and diff["pointer_logits"] <= 1e-5, diff


def train(tmp_path, spec, preset, steps, over):
    run = tmp_path / spec
    argv = ["train", spec, "--preset", preset, "--steps", str(steps), "--out", str(run), "--threads", "1",
            "--no-progress", "--set", f"train.eval.every={steps}", "--set", f"train.checkpoint.every={steps}"]
    for k, v in over.items():
        argv += ["--set", f"{k}={v}"]
    t0 = time.perf_counter()
    assert nnspec(argv) == 0
    return run, time.perf_counter() - t0


def greedy_sort_accuracy(spec, preset, over, run, batches=4, batch=256) -> float:
    """Exact-sequence accuracy of greedy decoding: the whole output permutation equals the argsort."""
    p = c.load(spec, preset, overrides=over)
    module = build_module(p, seed=0).eval()
    module.load_state_dict(load_file(str(latest_checkpoint(run) / "weights.safetensors")))
    task = make_task("sort", {"n": 5, "points": True, "teacher_forcing": True})
    hits = total = 0
    with torch.no_grad():
        for b in task.eval_batches(batch, batches):
            order, _ = module.greedy(torch.from_numpy(b["points"]))
            ok = (order == torch.from_numpy(b["order"])).all(1)
            hits, total = hits + int(ok.sum()), total + len(ok)
    return hits / total


def test_signature_order_invariance(tmp_path):
    """Sorting 5 numbers given in random order, 400 steps each at 128 cells, the same recipe:
    read-process-write's set encoder sorts more sets exactly than the pointer network's LSTM
    encoder, which has to undo the input order it reads."""
    over = {"hidden": 128}
    rpw_run, t_rpw = train(tmp_path, "read_process_write", "rpw", 400, over)
    pn_run, t_pn = train(tmp_path, "pointer_net", "sort256", 400, over)
    rpw = greedy_sort_accuracy("read_process_write", "rpw", over, rpw_run)
    pn = greedy_sort_accuracy("pointer_net", "sort256", over, pn_run)
    print(f"sort n=5, 400 steps: read_process_write {rpw:.3f} ({t_rpw:.0f} s), pointer_net {pn:.3f} ({t_pn:.0f} s)")
    assert rpw > pn + 0.05, (rpw, pn)
