"""The op registry: every op implements the whole contract, and for a tiny spec per op the generated
torch module's state dict (keys, shapes, dtypes, buffer flags) is exactly the IR's parameter list.

`REPRESENTATIVES` (or the op class's own `example`) holds one small spec fragment per op; a newly
registered op without one fails `test_every_op_has_a_representative`, so the checks here (and the FLOP checks that reuse the table
in tests/test_flops.py) always cover the whole registry.
"""
from __future__ import annotations

import pytest
import torch

from nnspec.compiler.ops import registry
from nnspec.compiler.ops.base import FUSION_CLASSES, Attrs, Op
from nnspec.targets.torch.build import build_module

HANDLED_BY_TARGETS = {"input", "scan"}
F4 = ["N", 3, 8, 8]
SEQ = ["N", 5, 8]
IDS = {"shape": ["N", 5], "dtype": "int64", "range": [0, 10]}

# op -> (inputs, node). The node reads the inputs in order unless it names `in` itself.
REPRESENTATIVES = {
    # conv / elementwise (already written elsewhere; covered so the registry check is complete)
    "conv1d": ({"x": ["N", 3, 9]}, {"out": 4, "kernel": 3}),
    "conv2d": ({"x": F4}, {"out": 4, "kernel": 3, "groups": 1}),
    "leaky_relu": ({"x": F4}, {"slope": 0.1}),
    # group A
    "linear": ({"x": SEQ}, {"out": 6}),
    "embedding": ({"ids": IDS}, {"num": 10, "dim": 6, "padding_idx": 0}),
    "batch_norm": ({"x": F4}, {}),
    "layer_norm": ({"x": SEQ}, {}),
    "rms_norm": ({"x": SEQ}, {"dims": 2}),
    "group_norm": ({"x": ["N", 4, 5, 5]}, {"groups": 2}),
    "local_response_norm": ({"x": F4}, {"size": 2}),
    "dropout": ({"x": F4}, {"p": 0.2}),
    "softmax": ({"x": SEQ}, {}),
    "log_softmax": ({"x": SEQ}, {"axis": 1}),
    "max_pool1d": ({"x": ["N", 3, 9]}, {"kernel": 2}),
    "max_pool2d": ({"x": F4}, {"kernel": 3, "stride": 2, "padding": 1}),
    "avg_pool1d": ({"x": ["N", 3, 9]}, {"kernel": 3, "stride": 2}),
    "avg_pool2d": ({"x": F4}, {"kernel": 2}),
    "adaptive_avg_pool1d": ({"x": ["N", 3, 9]}, {"size": 4}),
    "adaptive_avg_pool2d": ({"x": F4}, {"size": [3, 1]}),
    "adaptive_max_pool2d": ({"x": F4}, {"size": 3}),
    "flatten": ({"x": F4}, {}),
    "reshape": ({"x": F4}, {"shape": [0, 12, -1]}),
    "transpose": ({"x": F4}, {"perm": [0, 2, 3, 1]}),
    "swap": ({"x": SEQ}, {"a": 1, "b": 2}),
    "slice": ({"x": SEQ}, {"axis": 1, "start": 1, "end": -1}),
    "concat": ({"x": SEQ, "y": ["N", 2, 8]}, {"axis": 1}),
    "split": ({"x": SEQ}, {"axis": 2, "sizes": [3, 5]}),
    "stack": ({"x": SEQ, "y": SEQ}, {"axis": 1}),
    "matmul": ({"x": SEQ, "y": ["N", 8, 3]}, {}),
    "scale": ({"x": SEQ}, {"factor": 0.125}),
    "mean": ({"x": F4}, {"axes": [2, 3]}),
    "sum": ({"x": F4}, {"axes": 1, "keepdim": True}),
    "max": ({"x": F4}, {"axes": -1}),
    "parameter": ({}, {"shape": [1, 5, 8], "std": 0.02}),
    "zeros_like": ({"x": SEQ}, {}),
    "gaussian_sample": ({"mu": SEQ, "logvar": SEQ}, {}),
    # group B
    "lstm": ({"x": SEQ}, {"hidden": 6, "layers": 2}),
    "gru": ({"x": SEQ}, {"hidden": 6, "bidirectional": True}),
    "lstm_cell": ({"x": ["N", 8]}, {"hidden": 6}),
    "gru_cell": ({"x": ["N", 8]}, {"hidden": 6}),
    "rnn_cell": ({"x": ["N", 8]}, {"hidden": 6}),
    "multi_head_attention": ({"x": SEQ}, {"heads": 2}),
    "attention": ({"q": ["N", 2, 5, 4], "k": ["N", 2, 6, 4], "v": ["N", 2, 6, 3]}, {}),
    "additive_attention": ({"q": ["N", 6], "keys": SEQ}, {"hidden": 7}),
    "positional_encoding": ({"x": SEQ}, {"kind": "learned", "max_len": 16}),
    "gather": ({"x": ["N", 6], "i": {"shape": ["N", 3], "dtype": "int64", "range": [0, 6]}}, {"axis": 1}),
    "index_select": ({"x": [6, 4], "i": {"shape": [3], "dtype": "int64", "range": [0, 6]}}, {"axis": 0}),
    "scatter_add": ({"t": [6, 4], "i": {"shape": [5], "dtype": "int64", "range": [0, 6]}, "s": [5, 4]}, {"axis": 0}),
    # group C (relu6, hardswish, hardsigmoid and the comparisons take the default unary/binary specs)
    "clamp": ({"x": F4}, {"min": -0.5, "max": 0.5}),
    "hardtanh": ({"x": F4}, {"min_val": -2.0, "max_val": 2.0}),
    "constant": ({}, {"value": [[0.5, -1.0, 2.0], [3.0, 0.0, -4.5]]}),
    "cast": ({"x": F4}, {"dtype": "int64"}),
    "where": ({"c": {"shape": ["N", 1, 8, 8], "dtype": "bool"}, "x": F4, "y": ["N", 3, 1, 8]}, {}),
    "logical_and": ({"x": {"shape": ["N", 5], "dtype": "bool"}, "y": {"shape": [1, 5], "dtype": "bool"}}, {}),
    "logical_or": ({"x": {"shape": ["N", 5], "dtype": "bool"}, "y": {"shape": ["N", 1], "dtype": "bool"}}, {}),
    "logical_xor": ({"x": {"shape": ["N", 5], "dtype": "bool"}, "y": {"shape": ["N", 5], "dtype": "bool"}}, {}),
    "logical_not": ({"x": {"shape": ["N", 5], "dtype": "bool"}}, {}),
    "arange": ({"x": SEQ}, {"length_of": 1}),
    "tril": ({"x": SEQ}, {"diagonal": 1}),
    "triu": ({"x": SEQ}, {"diagonal": -1}),
    "interpolate": ({"x": F4}, {"size": [5, 12], "mode": "bilinear"}),
    "upsample": ({"x": F4}, {"scale_factor": 2}),
    "conv_transpose1d": ({"x": ["N", 3, 9]}, {"out": 4, "kernel": 3, "stride": 2, "padding": 1, "output_padding": 1}),
    "conv_transpose2d": ({"x": F4}, {"out": 4, "kernel": 3, "stride": 2, "groups": 1}),
    "pixel_shuffle": ({"x": ["N", 8, 4, 4]}, {"upscale_factor": 2}),
    "argmax": ({"x": SEQ}, {"axis": -1}),
    "one_hot": ({"ids": IDS}, {"num_classes": 10}),
    "cumsum": ({"x": SEQ}, {"axis": 1}),
}
UNARY_INPUT = {"x": F4}


def representative(name: str) -> tuple[dict, dict]:
    """(inputs, nodes) of the tiny spec for op `name`: one node `n` reading every input in order."""
    op = registry()[name]
    if op.example is not None:  # ops declare their own tiny spec (compiler/ops/base.py: Op.example)
        inputs, attrs = op.example
    elif name in REPRESENTATIVES:
        inputs, attrs = REPRESENTATIVES[name]
    elif op.arity == (1, 1) and not op.Attrs.model_fields:
        inputs, attrs = UNARY_INPUT, {}
    elif op.arity[0] == 2 and not op.Attrs.model_fields:
        inputs, attrs = {"x": F4, "y": ["N", 3, 1, 8]}, {}
    else:
        raise KeyError(name)
    node = {"op": name, **attrs}
    if inputs:
        node["in"] = list(inputs)
    return dict(inputs), {"n": node}


def _overrides(op: Op, member: str) -> bool:
    return getattr(type(op), member) is not getattr(Op, member)


OPS = sorted(n for n in registry() if n not in HANDLED_BY_TARGETS)


def test_every_op_has_a_representative():
    missing = []
    for name in OPS:
        try:
            representative(name)
        except KeyError:
            missing.append(name)
    assert not missing, f"add a tiny spec for these ops to REPRESENTATIVES: {missing}"


@pytest.mark.parametrize("name", OPS)
def test_op_implements_the_contract(name):
    op = registry()[name]
    assert op.name == name
    assert issubclass(op.Attrs, Attrs), f"{name}.Attrs must derive from ops.base.Attrs (extra=forbid)"
    assert op.Attrs.model_config.get("extra") == "forbid"
    for member in ("infer", "to_torch", "to_onnx"):
        assert _overrides(op, member), f"{name} does not implement {member}"
    for member in ("params", "cost", "outputs", "trt_support", "to_trt"):
        assert callable(getattr(op, member))
    assert op.fusion in FUSION_CLASSES, f"{name}: fusion class {op.fusion!r}"
    lo, hi = op.arity
    assert 0 <= lo and (hi is None or hi >= lo)
    assert isinstance(op.train_dependent, bool)


def test_targets_handle_input_and_scan():
    for name in HANDLED_BY_TARGETS:
        assert name in registry()
    # scan is typed through its body (infer_node), but owns both of its lowerings like any op
    scan = registry()["scan"]
    assert hasattr(scan, "infer_node") and _overrides(scan, "to_torch") and _overrides(scan, "to_onnx")


def test_train_dependent_flags():
    # A fusion or export pass relies on these to pick the inference form.
    for name in ("batch_norm", "dropout", "gaussian_sample"):
        assert registry()[name].train_dependent, name
    for name in ("linear", "layer_norm", "softmax", "reshape"):
        assert not registry()[name].train_dependent, name


def _state_dict_matches_ir(program, module):
    ir = {}
    tied = set()
    for n in program.all_nodes():
        for pname, spec in n.params.items():
            key = f"{n.id}.{pname}"
            if pname in n.ties:
                tied.add(key)
                continue
            ir[key] = spec
    sd = {k: v for k, v in module.state_dict().items() if k not in tied}
    assert sorted(sd) == sorted(ir)
    buffers = dict(module.named_buffers())
    for key, spec in ir.items():
        t = sd[key]
        assert tuple(t.shape) == tuple(spec.shape), key
        assert str(t.dtype).replace("torch.", "") == spec.dtype, key
        assert (key in buffers) == spec.buffer, f"{key}: buffer flag {spec.buffer}"


@pytest.mark.parametrize("name", OPS)
def test_state_dict_equals_ir_params(name, spec_from_nodes):
    inputs, nodes = representative(name)
    program = spec_from_nodes(inputs, nodes, {"out": "n"})
    module = build_module(program)
    _state_dict_matches_ir(program, module)
    # The IR's own parameter count must agree with torch's (tied storage counted once).
    from nnspec.compiler.cost import cost_report
    rep = cost_report(program)
    assert rep.params == sum(p.numel() for p in module.parameters())
    assert rep.buffers == sum(b.numel() for _, b in module.named_buffers())


def test_tied_params_are_excluded_and_counted_once(spec_from_nodes):
    program = spec_from_nodes(
        {"ids": IDS},
        {"emb": {"op": "embedding", "in": "ids", "num": 10, "dim": 6},
         "head": {"op": "linear", "in": "emb", "out": 10, "bias": False, "tie": {"weight": "emb.weight"}}})
    module = build_module(program)
    _state_dict_matches_ir(program, module)
    assert module.head.weight is module.emb.weight
    from nnspec.compiler.cost import cost_report
    assert cost_report(program).params == 60 == sum(p.numel() for p in module.parameters())


def test_batch_norm_buffers_are_typed():
    from nnspec.compiler.ir.dims import TensorType
    op = registry()["batch_norm"]
    ps = op.params(op.Attrs(), [TensorType(("N", 5, 4, 4))])
    assert ps["num_batches_tracked"].dtype == "int64" and ps["num_batches_tracked"].shape == ()
    assert all(ps[k].buffer for k in ("running_mean", "running_var", "num_batches_tracked"))
    assert not ps["weight"].buffer and not ps["bias"].buffer


def test_attribute_names_follow_the_catalog():
    want = {
        "linear": {"out", "bias"}, "embedding": {"num", "dim", "padding_idx"},
        "batch_norm": {"eps", "momentum", "affine"}, "layer_norm": {"dims", "eps", "affine", "bias"},
        "rms_norm": {"dims", "eps", "affine"}, "group_norm": {"groups", "eps", "affine"},
        "local_response_norm": {"size", "alpha", "beta", "k"}, "dropout": {"p"},
        "softmax": {"axis"}, "log_softmax": {"axis"},
        "max_pool2d": {"kernel", "stride", "padding", "dilation", "ceil_mode"},
        "avg_pool1d": {"kernel", "stride", "padding", "ceil_mode", "count_include_pad"},
        "adaptive_avg_pool2d": {"size"}, "flatten": {"start", "end"}, "reshape": {"shape"},
        "transpose": {"perm"}, "swap": {"a", "b"}, "slice": {"axis", "start", "end", "step"},
        "concat": {"axis"}, "split": {"axis", "sizes"}, "stack": {"axis"}, "matmul": set(),
        "scale": {"factor"}, "mean": {"axes", "keepdim"}, "max": {"axes", "keepdim"},
        "parameter": {"shape", "fill", "std"}, "zeros_like": set(), "gaussian_sample": set(),
    }
    for name, fields in want.items():
        assert set(registry()[name].Attrs.model_fields) == fields, name


def test_build_is_deterministic(spec_from_nodes):
    from nnspec.targets.torch.codegen import generate_source
    inputs, nodes = representative("batch_norm")
    p1 = spec_from_nodes(inputs, nodes)
    import nnspec.compiler as c
    p2 = c.load(p1.spec.file)
    assert generate_source(p1)[0] == generate_source(p2)[0]
    torch.testing.assert_close(build_module(p1).state_dict(), build_module(p2).state_dict())
