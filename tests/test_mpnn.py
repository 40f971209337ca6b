"""mpnn (Gilmer et al. 2017): the count equals PyG's examples/qm9_nn_conv.py model built here from
torch_geometric's NNConv, GRU and Set2Set; with its weights copied in, the generated module (edge
list, `batch` vector, scatter_add mean aggregation, set2set with a softmax within each graph) gives
its outputs; ONNX holds parity at two shapes; and the signature: on generated graphs, the number of
connected components (a property of the neighbourhoods, not of any node's own features) is fitted
far better by the MPNN than by the same model without message passing (node features only).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.nn import NNConv, Set2Set

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.runtime.tasks import make_task
from nnspec.targets.onnx.export import to_onnx_model
from nnspec.targets.onnx.runner import ort_session, run_ort
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

PRESETS = ["qm9", "node_only", "graph_small", "graph_small_node_only"]


class Reference(nn.Module):
    """PyG's examples/qm9_nn_conv.py `Net`, its sizes taken from the spec's params: lin0, NNConv with
    an edge network (Linear, ReLU, Linear to d*d) and mean aggregation (sum with `aggregate: sum`), one nn.GRU shared over the
    steps, Set2Set, lin1, lin2 (the example's `.view(-1)` of one target left out)."""

    def __init__(self, a):
        super().__init__()
        d = a["dim"]
        self.steps = a["steps"]
        self.lin0 = nn.Linear(a["node_features"], d)
        net = nn.Sequential(nn.Linear(a["edge_features"], a["edge_hidden"]), nn.ReLU(),
                            nn.Linear(a["edge_hidden"], d * d))
        self.conv = NNConv(d, d, net, aggr="add" if a["aggregate"] == "sum" else "mean")
        self.gru = nn.GRU(d, d)
        self.set2set = Set2Set(d, processing_steps=a["readout_steps"])
        self.lin1 = nn.Linear(2 * d, d)
        self.lin2 = nn.Linear(d, a["targets"])

    def forward(self, x, edge_index, edge_attr, batch, graphs):
        out = F.relu(self.lin0(x))
        h = out.unsqueeze(0)
        for _ in range(self.steps):
            m = F.relu(self.conv(out, edge_index, edge_attr))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        out = self.set2set(out, batch, dim_size=graphs)
        return self.lin2(F.relu(self.lin1(out)))

    def used(self):
        """The modules this configuration runs (T = 0 never calls the convolution or the GRU)."""
        mods = [self.lin0, self.set2set, self.lin1, self.lin2]
        return mods + ([self.conv, self.gru] if self.steps > 0 else [])


def reference_count(a) -> int:
    return sum(p.numel() for m in Reference(a).used() for p in m.parameters())


# generated state-dict key -> the reference's
KEYS = {
    "embed": "lin0", "edge_hidden": "conv.nn.0", "edge_net": "conv.nn.2", "lin1": "lin1", "lin2": "lin2",
    "propagate.root.weight": "conv.lin.weight", "propagate.root.bias": "conv.bias",
    **{f"propagate.update.{w}": f"gru.{w}_l0" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
    **{f"set2set.lstm.{w}": f"set2set.lstm.{w}_l0" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
}


def reference_key(key: str) -> str:
    if key in KEYS:
        return KEYS[key]
    node, _, leaf = key.rpartition(".")
    return f"{KEYS[node]}.{leaf}"


def copy_into(ours: nn.Module, ref: nn.Module) -> None:
    theirs = ref.state_dict()
    state = {k: theirs[reference_key(k)].clone() for k in ours.state_dict()}
    ours.load_state_dict(state, strict=True)


def random_graphs(sizes, node_features, edge_features, p=0.4, seed=0):
    """A batch of random undirected graphs as PyG lays them out: both directions of every edge,
    nodes of graph g after those of graph g - 1. Some nodes end up with no incoming edge."""
    g = torch.Generator().manual_seed(seed)
    edges, batch, start = [], [], 0
    for i, n in enumerate(sizes):
        upper = torch.triu(torch.rand(n, n, generator=g) < p, diagonal=1)
        s, t = upper.nonzero(as_tuple=True)
        edges += [torch.stack([s, t]) + start, torch.stack([t, s]) + start]
        batch.append(torch.full((n,), i, dtype=torch.int64))
        start += n
    edge_index = torch.cat(edges, dim=1)
    x = torch.randn(start, node_features, generator=g)
    edge_attr = torch.randn(edge_index.shape[1], edge_features, generator=g)
    return x, edge_index, edge_attr, torch.cat(batch), torch.tensor(sizes, dtype=torch.int64)


@pytest.mark.parametrize("preset", PRESETS)
def test_params_equal_pyg_qm9_example(preset):
    p = c.load("mpnn", preset)
    want = reference_count(p.spec.params)
    assert cost_report(p).params == want
    assert sum(v.numel() for v in build_module(p, seed=0).state_dict().values()) == want
    if preset == "qm9":
        assert want == 617_025  # lin0 768, edge net 529,152, root 4,160, GRU 24,960, set2set 49,664, lins 8,321


@pytest.mark.parametrize("preset", ["qm9", "node_only", "graph_small"])
def test_outputs_equal_pyg_with_copied_weights(preset):
    p = c.load("mpnn", preset)
    a = p.spec.params
    torch.manual_seed(0)
    ref = Reference(a).eval()
    ours = build_module(p, seed=0).eval()
    copy_into(ours, ref)
    x, ei, ea, batch, sizes = random_graphs([4, 7, 1, 5], a["node_features"], a["edge_features"])
    assert (torch.bincount(ei[1], minlength=x.shape[0]) == 0).any()  # isolated nodes are covered
    with torch.no_grad():
        want = ref(x, ei, ea, batch, len(sizes))
        got = ours(x=x, edge_index=ei, edge_attr=ea, batch=batch, num_nodes=sizes)
    assert got.shape == (len(sizes), a["targets"])
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


def test_set2set_is_per_graph():
    """Permuting the graphs of a batch permutes the outputs: each graph's readout attends to its own
    nodes only (a batch-wide softmax would mix them)."""
    p = c.load("mpnn", "graph_small")
    m = build_module(p, seed=0).eval()
    x, ei, ea, batch, sizes = random_graphs([3, 6, 4], 2, 1, seed=1)
    with torch.no_grad():
        whole = m(x=x, edge_index=ei, edge_attr=ea, batch=batch, num_nodes=sizes)
        one = [m(x=x[batch == g], edge_index=ei[:, batch[ei[0]] == g] - int((batch < g).sum()),
                 edge_attr=ea[batch[ei[0]] == g], batch=torch.zeros(int(sizes[g]), dtype=torch.int64),
                 num_nodes=sizes[g:g + 1]) for g in range(3)]
    assert torch.allclose(whole, torch.cat(one), atol=1e-5)


@pytest.mark.parametrize("preset", ["qm9", "node_only"])
def test_onnx_parity_two_shapes(preset):
    """onnxruntime against the torch module on two batches of graphs of different sizes and counts."""
    p = c.load("mpnn", preset)
    a = p.spec.params
    ours = build_module(p, seed=0).eval()
    weights = {k: v.detach().numpy() for k, v in ours.state_dict().items()}
    # the ONNX model, and the form built for TensorRT (scatter_add as a one-hot matmul)
    sessions = [ort_session(to_onnx_model(p, weights, seed=0, for_trt=trt)) for trt in (False, True)]
    for sizes in ([3, 4], [2, 5, 1, 6]):
        x, ei, ea, batch, n = random_graphs(sizes, a["node_features"], a["edge_features"], seed=len(sizes))
        feeds = {"x": x, "edge_index": ei, "edge_attr": ea, "batch": batch, "num_nodes": n}
        with torch.no_grad():
            want = ours(**feeds).numpy()
        for session in sessions:
            got = run_ort(session, {k: v.numpy() for k, v in feeds.items()})["y"]
            assert got.shape == want.shape == (len(sizes), a["targets"])
            assert np.abs(got - want).max() <= 1e-4


# -- the signature: neighbourhood properties need message passing

def edge_lists(b):
    """graph_properties' dense batch (padded nodes, adjacency, node mask) as the spec's edge lists:
    the real nodes of every graph in turn, both directions of each edge, edge feature 1."""
    xs, edges, batch, start = [], [], [], 0
    for i in range(b["nodes"].shape[0]):
        n = int(b["node_mask"][i].sum())
        xs.append(b["nodes"][i, :n])
        s, t = np.nonzero(b["adj"][i, :n, :n])
        edges.append(np.stack([s, t]) + start)
        batch.append(np.full(n, i))
        start += n
    ei = torch.from_numpy(np.concatenate(edges, axis=1).astype(np.int64))
    return {"x": torch.from_numpy(np.concatenate(xs)), "edge_index": ei,
            "edge_attr": torch.ones(ei.shape[1], 1), "batch": torch.from_numpy(np.concatenate(batch)),
            "num_nodes": torch.from_numpy(b["node_mask"].sum(1).astype(np.int64))}


def train_errors(preset, steps=300, batch_size=32, lr=3e-3):
    """Train `preset` by Adam on the MAE of the component count (the task's third target);
    its validation MAE over 4 batches of 64 graphs."""
    task = make_task("graph_properties", {"seed": 0})
    torch.manual_seed(0)
    model = build_module(c.load("mpnn", preset), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        b = task.batch(step, batch_size)
        loss = (model(**edge_lists(b))[:, 2] - torch.from_numpy(b["target"][:, 2])).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    errors = []
    with torch.no_grad():
        for b in task.eval_batches(64, count=4):
            errors.append((model(**edge_lists(b))[:, 2] - torch.from_numpy(b["target"][:, 2])).abs().mean())
    return float(torch.stack(errors).mean())


def test_signature_neighbourhood_property():
    """The number of connected components depends on who is joined to whom: a node's own features
    (its degree) say whether it is isolated, not which component it is in. With 3 message-passing
    steps the MPNN's error is far below the same model's without message passing."""
    t0 = time.time()
    mpnn = train_errors("graph_small")
    base = train_errors("graph_small_node_only")
    print(f"components, validation MAE: mpnn {mpnn:.3f}, node features only {base:.3f} "
          f"({time.time() - t0:.1f} s)")
    assert mpnn < 0.6 * base
