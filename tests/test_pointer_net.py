"""pointer_net (Vinyals, Fortunato, Jaitly 2015): the count against torch modules, the teacher-forced
forward against a hand-written torch pointer network with the same weights, the greedy loop
against the same network decoded by hand, ONNX `Loop` parity, and the signature: trained by
`nnspec train`, greedy decoding sorts 5 numbers exactly (and, slow, finds convex hulls).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import nnspec.compiler as c
from nnspec.runtime.cli import main as nnspec
from nnspec.runtime.tasks import make_task
from nnspec.runtime.train.checkpoint import latest_checkpoint
from nnspec.runtime.train.rundir import read_metrics
from nnspec.targets.onnx.export import to_onnx_model
from nnspec.targets.onnx.runner import parity
from nnspec.targets.torch.build import build_module

from conftest import graph_params

torch.set_num_threads(1)

PRESETS = ["hull256", "hull512", "sort256"]


class Reference(nn.Module):
    """A pointer network written with torch modules: nn.LSTM encoder, nn.LSTM decoder (run one step
    at a time), the learned start token and the three attention matrices W1, W2, v (no biases)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.encoder = nn.LSTM(in_dim, hidden, batch_first=True)
        self.decoder = nn.LSTM(in_dim, hidden, batch_first=True)
        self.start = nn.Parameter(torch.zeros(in_dim))
        self.w1 = nn.Linear(hidden, hidden, bias=False)
        self.w2 = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)

    def load_from(self, sd: dict) -> None:
        own = {f"encoder.{k}": sd[f"encoder.{k}"] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")}
        own.update({f"decoder.{k}_l0": sd[f"decode.cell.{k}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        own.update({"start": sd["start.weight"], "w1.weight": sd["keys.weight"], "w2.weight": sd["decode.w2.weight"],
                    "v.weight": sd["decode.v.weight"]})
        self.load_state_dict(own)

    def scores(self, e, d):  # u_j = v^T tanh(W1 e_j + W2 d): [N, S]
        return self.v(torch.tanh(self.w1(e) + self.w2(d)[:, None, :])).squeeze(-1)

    def forward(self, points, targets=None, steps=None):
        e, state = self.encoder(points)
        inp = self.start.expand(points.shape[0], -1)
        logits, chosen = [], []
        for i in range(targets.shape[1] if targets is not None else steps):
            out, state = self.decoder(inp[:, None, :], state)
            u = self.scores(e, out[:, 0])
            logits.append(u)
            pick = targets[:, i].clamp(min=0) if targets is not None else u.argmax(-1)
            chosen.append(u.argmax(-1))
            inp = points[torch.arange(points.shape[0]), pick]
        return torch.stack(logits, 1), torch.stack(chosen, 1)


def reference_count(in_dim: int, hidden: int) -> int:
    ref = Reference(in_dim, hidden)
    return sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("preset", PRESETS)
def test_params_equal_the_torch_reference(preset):
    p = c.load("pointer_net", preset)
    want = reference_count(p.spec.params["in_dim"], p.spec.params["hidden"])
    assert graph_params(p.forward) == want
    assert graph_params(p.graphs["greedy"]) == want  # the same parameters, by node id
    assert sum(v.numel() for v in build_module(p, seed=0).state_dict().values()) == want


def small(preset="hull256", **over):
    return c.load("pointer_net", preset, overrides={"hidden": 16, **over})


def test_forward_and_greedy_equal_the_reference_with_the_same_weights():
    p = small(max_len=6)
    module = build_module(p, seed=1).eval()
    ref = Reference(2, 16)
    ref.load_from(module.state_dict())
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(4, 7, 2, generator=g)
    targets = torch.randint(-1, 7, (4, 7), generator=g)
    with torch.no_grad():
        got = module(pts, targets)
        want, _ = ref(pts, targets)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        order, logits = module.greedy(pts)
        want_logits, want_order = ref(pts, steps=6)
    assert order.shape == (4, 6) and torch.equal(order, want_order)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)


def test_greedy_shares_the_training_weights():
    p = small()
    assert set(p.graphs) >= {"forward", "greedy"}
    module = build_module(p, seed=0)
    names = {k for k, _ in module.named_parameters()}
    assert "decode.cell.weight_ih" in names and "keys.weight" in names and "start.weight" in names
    assert len(names) == 12  # encoder (4), keys, start, decoder cell (4), W2, v: nothing duplicated


def test_greedy_graph_is_an_onnx_loop_equal_to_torch_at_two_shapes():
    p = small(max_len=5)
    module = build_module(p, seed=0).eval()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    model = to_onnx_model(p, weights, graph="greedy")
    assert [n.op_type for n in model.graph.node].count("Loop") == 1
    for dims in ({"N": 2, "S": 5}, {"N": 3, "S": 8}):
        diff = parity(p, dims, seed=0, module=module, model=model, graph="greedy")
        assert diff["order"] == 0 and diff["pointer_logits"] <= 1e-5, diff


def greedy_accuracy(run, preset, over, task, batches=4, batch=256, length=None):
    """Exact-sequence accuracy of greedy decoding on the task's validation batches: the whole
    predicted index sequence (the first `length` steps where the label says so) equals the label."""
    p = c.load("pointer_net", preset, overrides=over)
    module = build_module(p, seed=0).eval()
    module.load_state_dict(load_file(str(latest_checkpoint(run) / "weights.safetensors")))
    hits = total = 0
    with torch.no_grad():
        for b in task.eval_batches(batch, batches):
            order, _ = module.greedy(torch.from_numpy(b["points"]))
            label = torch.from_numpy(b["targets"])
            if length is None:
                ok = (order == label).all(1)
            else:
                n = torch.from_numpy(b[length])
                steps = torch.arange(label.shape[1])[None, :] < n[:, None]
                ok = ((order == label) | ~steps).all(1)
            hits, total = hits + int(ok.sum()), total + len(ok)
    return hits / total


def train(tmp_path, preset, steps, over, extra=()):
    run = tmp_path / "run"
    sets = [f"{k}={v}" for k, v in over.items()]
    argv = ["train", "pointer_net", "--preset", preset, "--steps", str(steps), "--out", str(run),
            "--threads", "1", "--no-progress", "--set", f"train.eval.every={steps}",
            "--set", f"train.checkpoint.every={steps}", *extra]
    for s in sets:
        argv += ["--set", s]
    t0 = time.perf_counter()
    assert nnspec(argv) == 0
    return run, time.perf_counter() - t0


SORT = {"hidden": 128}


def test_signature_pointer_net_sorts(tmp_path):
    """600 steps of sorting 5 numbers (128 cells): greedy decoding is exact on most sets, far above
    chance (1/120), and the teacher-forced loss fell from log 5."""
    run, secs = train(tmp_path, "sort256", 600, SORT)
    losses = [r["loss"] for r in read_metrics(run) if r["split"] == "train"]
    assert losses[-1] < 0.5 * np.log(5)
    task = make_task("sort", {"n": 5, "points": True, "teacher_forcing": True})
    acc = greedy_accuracy(run, "sort256", SORT, task)
    print(f"pointer_net sort n=5, 600 steps: greedy exact {acc:.3f}, loss {losses[-1]:.3f}, {secs:.0f} s")
    assert acc >= 0.5, acc


@pytest.mark.slow
def test_signature_pointer_net_sorts_toward_the_paper(tmp_path):
    """The spec's own recipe, 3000 steps at 256 cells: toward the ~95% exact sorts of 5 numbers the
    pointer network reaches in the papers."""
    run, secs = train(tmp_path, "sort256", 3000, {})
    task = make_task("sort", {"n": 5, "points": True, "teacher_forcing": True})
    acc = greedy_accuracy(run, "sort256", {}, task)
    print(f"pointer_net sort n=5, 3000 steps, 256 cells: greedy exact {acc:.3f}, {secs:.0f} s")
    assert acc >= 0.85, acc


@pytest.mark.slow
def test_signature_pointer_net_convex_hull(tmp_path):
    """Convex hulls of 5 planar points, 3,000 steps at 128 cells: greedy decoding gets the whole hull
    (its vertices counter-clockwise from the lowest index) on some of the sets. Measured: 9.6% exact
    after 90 s, the teacher-forced loss 0.82; far from the paper's 72.6% at n = 50 with 512 cells and
    far longer training, but far above chance (a random start among a hull's vertices, then the
    right order)."""
    over = {"hidden": 128, "max_len": 5}
    run, secs = train(tmp_path, "hull256", 3000, over, extra=["--set", "train.task.options.n=5"])
    task = make_task("convex_hull", {"n": 5, "teacher_forcing": True})
    acc = greedy_accuracy(run, "hull256", over, task, length="hull_len")
    print(f"pointer_net convex hull n=5, 3000 steps, 128 cells: greedy exact {acc:.3f}, {secs:.0f} s")
    assert acc >= 0.05, acc


def test_tensorrt_rtx_builds_the_greedy_loop(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is part of the dev install (`.[dev]`)")
    from nnspec.targets.onnx.export import compile_onnx
    from nnspec.targets.tensorrt import build_engine

    p = c.load("pointer_net", "sort256")
    files = compile_onnx(p, tmp_path / "out", seed=0, for_trt=True)
    build_engine(files["greedy"], tmp_path / "greedy", program=p, precision="fp32", opt_level=0,
                 backend="trt-rtx", progress=False)
    assert (tmp_path / "greedy" / "model.engine").stat().st_size > 1000


def test_tasks_feed_points_and_teacher_forcing_targets():
    sort = make_task("sort", {"n": 5, "points": True, "teacher_forcing": True})
    assert set(sort.feeds()) == {"points", "targets"}
    b = sort.batch(0, 16)
    assert b["points"].shape == (16, 5, 1) and np.array_equal(b["targets"], b["order"])
    assert np.array_equal(b["order"], np.argsort(b["points"][:, :, 0], axis=1, kind="stable"))
    assert set(make_task("sort", {"n": 5}).feeds()) == {"x"}  # the defaults are unchanged
    hull = make_task("convex_hull", {"n": 8, "teacher_forcing": True})
    h = hull.batch(0, 16)
    assert set(hull.feeds()) == {"points", "targets"} and np.array_equal(h["targets"], h["hull"])
    assert (h["targets"][np.arange(8)[None, :] >= h["hull_len"][:, None]] == -1).all()
