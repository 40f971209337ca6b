"""The cost model's bytes saved for backward equal what torch's autograd keeps, and its backward FLOPs
equal FlopCounterMode's count of the backward.

Saved bytes are measured by running the generated module's forward (train mode, float inputs
requiring grad) under `torch.autograd.graph.saved_tensors_hooks`, counting every storage a saved
tensor lives in once, module state (parameters, buffers, fixed tensors) excluded: the convention
`compiler/ops/base.Cost` documents. Every op of the registry is held to it exactly at two batch
sizes (its representative spec, tests/test_registry.py), attribute variants that change what torch
keeps are held to it too, and so are whole models, where values two nodes keep count once.

Where torch picks a kernel by shape (SDPA's fused CPU kernel or its math one, oneDNN's LSTM with its
page-rounded workspace) the op's declaration states the rule and variants pin each branch. One
exception is stated and asserted exactly rather than skipped: the IR does not track memory layout,
so a linear reading nn.LSTM's non-contiguous batch-first `y` keeps a copy the cost model does not
count (`strided_copies`). No op is an exception (`EXCEPTIONS` is empty).
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import nnspec.compiler as nc
from nnspec.compiler.cost import cost_report, dim_values
from nnspec.compiler.ir.dims import resolve
from nnspec.compiler.ops import get_op
from nnspec.targets.torch.build import build_module

from conftest import declared_inputs
from test_flops import COUNTED, OPS
from test_registry import representative

# Ops whose figure cannot equal torch's here, with why and the measured difference (ours - torch's,
# bytes, at the representative spec). Empty: every op matches.
EXCEPTIONS: dict[str, tuple[str, int]] = {}


def module_state(module) -> set:
    """Storages that live as long as the module: parameters, buffers, fixed tensors (FixedTensor)."""
    tensors = list(module.parameters()) + list(module.buffers())
    for m in module.modules():
        tensors += [v for v in vars(m).values() if isinstance(v, torch.Tensor)]
    return {t.untyped_storage().data_ptr() for t in tensors}


def grad_inputs(program, dims=None) -> list:
    """The graph's example inputs, float ones requiring grad (the common training case)."""
    return [x.requires_grad_() if x.is_floating_point() else x for x in declared_inputs(program, dims)]


def saved_by_torch(module, inputs) -> int:
    """Bytes autograd keeps for backward over one forward call: each storage once, module state out."""
    state = module_state(module)
    packed = []  # held so that no saved storage is freed and its address reused during the forward

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*inputs)
    sizes = {}
    for t in packed:
        s = t.untyped_storage()
        if s.data_ptr() not in state:
            sizes[s.data_ptr()] = s.nbytes()
    return sum(sizes.values())


def compare(program, dims=None) -> tuple[int, int]:
    module = build_module(program).train()
    return cost_report(program, dims=dims).saved_bytes, saved_by_torch(module, grad_inputs(program, dims))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", OPS)
def test_op_saved_bytes_equal_autograd(name, batch, spec_from_nodes):
    inputs, nodes = representative(name)
    ours, torchs = compare(spec_from_nodes(inputs, nodes, {"out": "n"}), {"N": batch})
    if name in EXCEPTIONS:
        assert ours - torchs == EXCEPTIONS[name][1], EXCEPTIONS[name][0]
    else:
        assert ours == torchs


def test_exceptions_are_registered_ops():
    assert set(EXCEPTIONS) <= set(OPS)


# (inputs, node): attributes and input counts that change what torch keeps (kernels chosen, zeros
# made for absent states, copies for broadcasting or non-contiguous operands).
VARIANTS = {
    "conv2d_even_same": ({"x": ["N", 3, 8, 8]}, {"op": "conv2d", "out": 4, "kernel": 2, "padding": "same"}),
    "conv2d_grouped": ({"x": ["N", 4, 9, 7]}, {"op": "conv2d", "out": 8, "kernel": 3, "groups": 2, "stride": 2}),
    "mul_three": ({"x": ["N", 3, 8, 8], "y": ["N", 3, 1, 8], "z": ["N", 1, 8, 8]}, {"op": "mul"}),
    "div_broadcast": ({"x": ["N", 3, 8, 8], "y": [8]}, {"op": "div"}),
    "dropout_p0": ({"x": ["N", 3, 8, 8]}, {"op": "dropout", "p": 0.0}),
    "dropout_p1": ({"x": ["N", 3, 8, 8]}, {"op": "dropout", "p": 1.0}),
    "pe_dropout": ({"x": ["N", 5, 8]}, {"op": "positional_encoding", "dropout": 0.1, "max_len": 16}),
    "gap_size1": ({"x": ["N", 3, 8, 8]}, {"op": "adaptive_avg_pool2d", "size": 1}),
    "gap1d_size1": ({"x": ["N", 3, 9]}, {"op": "adaptive_avg_pool1d", "size": 1}),
    "batch_norm_plain": ({"x": ["N", 4, 5, 5]}, {"op": "batch_norm", "affine": False}),
    "layer_norm_plain": ({"x": ["N", 5, 8]}, {"op": "layer_norm", "affine": False}),
    "rms_norm_plain": ({"x": ["N", 5, 8]}, {"op": "rms_norm", "affine": False}),
    "lrn_odd_3d": ({"x": ["N", 3, 9]}, {"op": "local_response_norm", "size": 3}),
    "matmul_broadcast": ({"x": [2, 1, 5, 8], "y": [4, 8, 3]}, {"op": "matmul"}),
    "matmul_fold": ({"x": [5, 8], "y": ["N", 8, 3]}, {"op": "matmul"}),
    "matmul_vec_batch": ({"x": [8], "y": ["N", 8, 3]}, {"op": "matmul"}),
    "matmul_mat_vec": ({"x": ["N", 5, 8], "y": [8]}, {"op": "matmul"}),
    "matmul_batch_bcast": ({"x": ["N", 2, 5, 8], "y": [2, 8, 3]}, {"op": "matmul"}),
    "lstm_deep_dropout": ({"x": ["N", 4, 8]}, {"op": "lstm", "hidden": 6, "layers": 2, "dropout": 0.5}),
    "lstm_bidirectional_deep": ({"x": ["N", 4, 8]}, {"op": "lstm", "hidden": 6, "layers": 2, "bidirectional": True}),
    "lstm_h0": ({"x": ["N", 4, 8], "h": [2, "N", 6]}, {"op": "lstm", "hidden": 6, "layers": 2}),
    "lstm_h0_c0": ({"x": ["N", 4, 8], "h": [1, "N", 6], "c": [1, "N", 6]}, {"op": "lstm", "hidden": 6}),
    "lstm_wide": ({"x": ["N", 30, 40]}, {"op": "lstm", "hidden": 100}),
    "gru_deep": ({"x": ["N", 4, 8]}, {"op": "gru", "hidden": 6, "layers": 2}),
    "gru_deep_bidirectional_dropout": ({"x": ["N", 3, 8]}, {"op": "gru", "hidden": 6, "layers": 2,
                                                            "bidirectional": True, "dropout": 0.5}),
    "gru_h0": ({"x": ["N", 4, 8], "h": [1, "N", 6]}, {"op": "gru", "hidden": 6}),
    "lstm_cell_h": ({"x": ["N", 8], "h": ["N", 6]}, {"op": "lstm_cell", "hidden": 6}),
    "lstm_cell_hc": ({"x": ["N", 8], "h": ["N", 6], "c": ["N", 6]}, {"op": "lstm_cell", "hidden": 6}),
    "gru_cell_h": ({"x": ["N", 8], "h": ["N", 6]}, {"op": "gru_cell", "hidden": 6}),
    "rnn_cell_relu_h": ({"x": ["N", 8], "h": ["N", 6]}, {"op": "rnn_cell", "hidden": 6, "nonlinearity": "relu"}),
    "attention_fused": ({"q": ["N", 2, 5, 4], "k": ["N", 2, 6, 4], "v": ["N", 2, 6, 4]}, {"op": "attention"}),
    "attention_fused_causal": ({"q": ["N", 2, 5, 4], "k": ["N", 2, 5, 4], "v": ["N", 2, 5, 4]},
                               {"op": "attention", "causal": True}),
    "attention_fused_bool_mask": ({"q": ["N", 2, 5, 4], "k": ["N", 2, 6, 4], "v": ["N", 2, 6, 4],
                                   "m": {"shape": ["N", 1, 5, 6], "dtype": "bool"}}, {"op": "attention"}),
    "attention_float_mask": ({"q": ["N", 2, 5, 4], "k": ["N", 2, 6, 4], "v": ["N", 2, 6, 4], "m": [5, 6]},
                             {"op": "attention"}),
    "attention_dropout": ({"q": ["N", 2, 5, 4], "k": ["N", 2, 6, 4], "v": ["N", 2, 6, 4]},
                          {"op": "attention", "dropout": 0.1}),
    "attention_3d": ({"q": ["N", 5, 4], "k": ["N", 6, 4], "v": ["N", 6, 4]}, {"op": "attention"}),
    "attention_broadcast_kv": ({"q": ["N", 2, 5, 4], "k": ["N", 1, 6, 4], "v": ["N", 1, 6, 3]}, {"op": "attention"}),
    # the kernel choice: 3-d inputs run fused as [1, N, T, d] unless the head dims differ; k and v
    # of one head broadcast in the fused kernel; a k, v batch of 1 is fused only where N == 1
    "attention_3d_dv": ({"q": ["N", 5, 4], "k": ["N", 6, 4], "v": ["N", 6, 3]}, {"op": "attention"}),
    "attention_3d_kv_batch1": ({"q": ["N", 5, 4], "k": [1, 6, 4], "v": [1, 6, 4]}, {"op": "attention"}),
    "attention_3d_bool_mask_1d": ({"q": ["N", 5, 4], "k": ["N", 6, 4], "v": ["N", 6, 4],
                                   "m": {"shape": [6], "dtype": "bool"}}, {"op": "attention"}),
    "attention_kv_one_head": ({"q": ["N", 2, 5, 4], "k": ["N", 1, 6, 4], "v": ["N", 1, 6, 4]}, {"op": "attention"}),
    "attention_kv_batch1": ({"q": ["N", 2, 5, 4], "k": [1, 2, 6, 4], "v": [1, 2, 6, 4]}, {"op": "attention"}),
    "attention_bool_mask_3d": ({"q": ["N", 2, 5, 4], "k": ["N", 2, 6, 4], "v": ["N", 2, 6, 4],
                                "m": {"shape": [2, 5, 6], "dtype": "bool"}}, {"op": "attention"}),
    "mha_cross": ({"x": ["N", 5, 8], "kv": ["N", 6, 8]}, {"op": "multi_head_attention", "heads": 2}),
    "mha_causal": ({"x": ["N", 5, 8]}, {"op": "multi_head_attention", "heads": 2, "causal": True}),
    "mha_dropout": ({"x": ["N", 5, 8]}, {"op": "multi_head_attention", "heads": 2, "dropout": 0.1}),
    "mha_bool_mask": ({"x": ["N", 5, 8], "kv": ["N", 6, 8], "m": {"shape": ["N", 1, 5, 6], "dtype": "bool"}},
                      {"op": "multi_head_attention", "heads": 2}),
    "mha_float_mask": ({"x": ["N", 5, 8], "kv": ["N", 6, 8], "m": [5, 6]}, {"op": "multi_head_attention", "heads": 2}),
    "where_float_branches": ({"c": {"shape": ["N", 5], "dtype": "bool"}, "x": ["N", 5], "y": [1]}, {"op": "where"}),
    "scatter_add_rows": ({"t": ["N", 4], "i": {"shape": [5], "dtype": "int64", "range": [0, 1]}, "s": [5, 4]},
                         {"op": "scatter_add", "axis": 0}),
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_variant_saved_bytes_equal_autograd(case, batch, spec_from_nodes):
    inputs, node = VARIANTS[case]
    program = spec_from_nodes(inputs, {"n": {**node, "in": list(inputs)}}, {"out": "n"})
    ours, torchs = compare(program, {"N": batch})
    assert ours == torchs


# Graph-level counting: a value two nodes keep (relu's result, kept by relu and by the conv after
# it), views of kept values (flatten), module state read by ops (parameter, constant) and nodes no
# gradient reaches (a mask built from an arange).
GRAPHS = {
    "relu_then_conv": ({"x": ["N", 3, 8, 8]}, {
        "c1": {"op": "conv2d", "in": "x", "out": 4, "kernel": 3, "padding": 1},
        "r": {"op": "relu"}, "c2": {"op": "conv2d", "out": 4, "kernel": 3},
        "p": {"op": "max_pool2d", "in": "r", "kernel": 2}, "s": {"op": "sigmoid", "in": "c2"}},
        {"a": "p", "b": "s"}),
    "views_of_kept": ({"x": ["N", 4, 6]}, {
        "t": {"op": "tanh", "in": "x"}, "f": {"op": "flatten", "in": "t"}, "fc": {"op": "linear", "out": 3},
        "sw": {"op": "swap", "in": "t", "a": 1, "b": 2}, "m": {"op": "matmul", "in": ["sw", "t"]}},
        {"a": "fc", "b": "m"}),
    "state_operands": ({"x": ["N", 5, 8]}, {
        "w": {"op": "parameter", "shape": [8, 8]}, "mm": {"op": "matmul", "in": ["x", "w"]},
        "k": {"op": "constant", "value": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]]},
        "y": {"op": "mul", "in": ["mm", "k"]}}, {"y": "y"}),
    "no_grad_mask": ({"x": ["N", 5, 8]}, {
        "pos": {"op": "arange", "in": "x", "length_of": 2, "dtype": "float32"},
        "e": {"op": "exp", "in": "pos"}, "g": {"op": "mul", "in": ["x", "e"]},
        "z": {"op": "zeros_like", "in": "x"}, "zs": {"op": "sigmoid", "in": "z"},
        "y": {"op": "add", "in": ["g", "zs"]}}, {"y": "y"}),
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", sorted(GRAPHS))
def test_graph_counts_shared_values_once(case, batch, spec_from_nodes):
    inputs, nodes, outputs = GRAPHS[case]
    ours, torchs = compare(spec_from_nodes(inputs, nodes, outputs), {"N": batch})
    assert ours == torchs


def test_rows_add_up_to_the_total(spec_from_nodes):
    inputs, nodes, outputs = GRAPHS["relu_then_conv"]
    rep = cost_report(spec_from_nodes(inputs, nodes, outputs))
    assert sum(r.saved_bytes for r in rep.rows) == rep.saved_bytes > 0
    rows = {r.id: r for r in rep.rows}
    assert rows["r"].saved_bytes == 4 * 4 * 8 * 8  # relu keeps its result ...
    assert rows["c2"].saved_bytes == 0  # ... which c2 keeps too: charged once, to relu
    assert rows["p"].saved_bytes == 8 * 4 * 4 * 4  # max pool: only its indices are new
    assert rows["c1"].param_bytes == 4 * (4 * 3 * 9 + 4) and rows["c1"].act_bytes == 4 * 4 * 8 * 8


def strided_copies(program, dims) -> int:
    """The stated exception of whole models: the IR does not track memory layout, and nn.LSTM's
    batch-first `y` is a transposed view of its time-major result, non-contiguous where N > 1 and
    T > 1; a linear reading it flattens it to 2-d, which copies, and keeps the copy. The cost model
    charges the linear nothing new (it keeps the LSTM's own output), so it is short by exactly the
    bytes of every such `y` a linear reads."""
    g = program.graphs["forward"]
    vals = dim_values(g, dims)

    def lstm_y(ref) -> bool:  # the LSTM's y, directly or through a dropout of p=0 (which returns it)
        src = g.node(ref[0])
        if src.op == "dropout" and src.attrs.p == 0.0:
            return lstm_y(g.inputs_of(src.id)[0])
        return src.op == "lstm" and ref[1] == 0

    short = 0
    for n in g.topo():
        if n.op == "linear" and lstm_y(g.inputs_of(n.id)[0]):
            t = g.input_types(n.id)[0]
            if resolve(t.shape[0], vals) > 1 and resolve(t.shape[1], vals) > 1:
                short += t.nbytes(vals)
    return short


@pytest.mark.parametrize("spec, preset, overrides, dims, short", [
    ("resnet", "resnet18", {"image_size": 32, "num_classes": 10}, {"N": 2}, 0),
    ("char_rnn", None, {}, {"N": 2, "T": 6}, 4 * 2 * 6 * 128),  # the exception: the decoder's copy of y
    ("char_rnn", None, {}, {"N": 1, "T": 3}, 0),
    ("char_rnn", None, {"dropout": 0.5}, {"N": 2, "T": 4}, 0),  # dropout's result is contiguous
    ("resnet", "resnet50", {"image_size": 32, "num_classes": 10, "layers": [1, 1, 1, 1]}, {"N": 2}, 0),
    ("resnet", "resnet20", {}, {"N": 2}, 0),
    ("alexnet", "torchvision", {"image_size": 64, "hidden": 64, "num_classes": 10}, {"N": 2}, 0),
    ("alexnet", "paper", {"image_size": 96, "hidden": 64, "num_classes": 10}, {"N": 2}, 0),
    ("transformer", "encoder_base", {"d_model": 32, "heads": 4, "layers": 2}, {"N": 2, "T": 5}, 0),
    ("transformer", "encoder_base", {"d_model": 32, "heads": 4, "layers": 1, "dropout": 0.0}, {"N": 1, "T": 3}, 0),
    ("transformer", "tiny", {"d_model": 32, "heads": 4, "layers": 1}, {"N": 2, "S": 4, "T": 5}, 0),
])
def test_whole_model_saved_bytes(spec, preset, overrides, dims, short):
    program = nc.load(spec, preset, overrides)
    rep = cost_report(program, dims=dims)
    ours, torchs = compare(program, dims)
    assert rep.saved_bytes == sum(r.saved_bytes for r in rep.rows) == ours
    assert torchs - ours == strided_copies(program, dims) == short


# -- backward FLOPs ---------------------------------------------------------------------------------
def backward_flops(module, inputs) -> int:
    """FlopCounterMode's count of the backward of one forward call (ones as every output's gradient)."""
    out = module(*inputs)
    outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if o.requires_grad]
    with FlopCounterMode(display=False) as counter:
        if outs:
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    return int(counter.get_total_flops())


def bwd_both(program, dims=None) -> tuple[int, int]:
    module = build_module(program).train()
    return cost_report(program, dims=dims).bwd_flops, backward_flops(module, grad_inputs(program, dims))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", OPS)
def test_op_backward_flops_equal_flop_counter(name, batch, spec_from_nodes):
    inputs, nodes = representative(name)
    ours, counted = bwd_both(spec_from_nodes(inputs, nodes, {"out": "n"}), {"N": batch})
    if get_op(name).flop_counter_counts:
        assert ours == counted
    else:  # fused kernels (oneDNN's LSTM, the CPU flash attention) run a backward the counter misses
        assert ours >= counted


BWD_CASES = {**COUNTED, **{k: VARIANTS[k] for k in (
    "conv2d_grouped", "conv2d_even_same", "matmul_fold", "matmul_batch_bcast", "gru_deep", "gru_h0",
    "gru_deep_bidirectional_dropout", "lstm_cell_h", "gru_cell_h", "rnn_cell_relu_h", "attention_3d_dv",
    "attention_dropout")},
    "conv_transpose2d_grouped": ({"x": ["N", 4, 5, 5]}, {"op": "conv_transpose2d", "out": 6, "kernel": 3,
                                                         "stride": 2, "groups": 2}),
    "matmul_vec_mat2": ({"x": [8], "y": [8, 3]}, {"op": "matmul"})}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", sorted(BWD_CASES))
def test_backward_flops_geometries(case, batch, spec_from_nodes):
    inputs, node = BWD_CASES[case]
    program = spec_from_nodes(inputs, {"n": {**node, "in": list(inputs)}}, {"out": "n"})
    ours, counted = bwd_both(program, {"N": batch})
    assert ours == counted


def test_whole_model_backward_flops():
    program = nc.load("resnet", "resnet18", {"image_size": 32, "num_classes": 10})
    ours, counted = bwd_both(program, {"N": 2})
    assert ours == counted > 0


def test_inspect_reports_the_training_figures(capsys):
    import json

    from nnspec.runtime.cli import main
    assert main(["inspect", "resnet", "--preset", "resnet20", "--dim", "N=2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rep = cost_report(nc.load("resnet", "resnet20"), dims={"N": 2})
    assert (doc["bwd_flops"], doc["saved_bytes"], doc["param_bytes"]) == (rep.bwd_flops, rep.saved_bytes, rep.param_bytes)
    assert doc["saved_bytes"] == sum(n["saved_bytes"] for n in doc["nodes"]) > 0
    assert main(["inspect", "resnet", "--preset", "resnet20"]) == 0
    assert "saved for backward: " in capsys.readouterr().out
