"""Random small CNN and sequence graphs built from the registry's ops: for each, nnspec's
inferred output shape equals the generated torch module's real one, and onnxruntime equals torch
at two input sizes (a symbolic batch N and a symbolic spatial size S or sequence length T). This
exercises shape inference, symbolic dim arithmetic, code generation and ONNX lowering together on
graphs no one wrote by hand."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnspec.compiler.ir import dims as D
from nnspec.targets.inputs import example_inputs
from nnspec.targets.onnx.export import to_onnx_model
from nnspec.targets.onnx.runner import ort_session, run_ort
from nnspec.targets.torch.build import build_module

from conftest import compile_nodes

ACTS = ["relu", "tanh", "sigmoid", "gelu", "silu", "leaky_relu", "elu"]


@st.composite
def cnn(draw):
    """(input channels, nodes, outputs, output shape after N): a chain with residual adds and channel concats over a [N, C, S, S] input."""
    c = draw(st.integers(1, 4))
    values = [("x", c, "S")]  # (name, channels, spatial size as a canonical dim)
    nodes = {}
    downsamples = 0
    for i in range(draw(st.integers(2, 7))):
        name, ch, size = values[-1]
        kind = draw(st.sampled_from(["conv", "act", "bn", "pool", "add", "concat"]))
        node = f"n{i}"
        if kind == "conv":
            k = draw(st.sampled_from([1, 3]))
            s = draw(st.sampled_from([1, 2])) if downsamples < 2 else 1
            downsamples += s == 2
            out = draw(st.integers(1, 6))
            nodes[node] = {"op": "conv2d", "in": name, "out": out, "kernel": k, "stride": s, "padding": k // 2,
                           "bias": draw(st.booleans())}
            values.append((node, out, D.conv_out(size, k, s, k // 2)))
        elif kind == "act":
            nodes[node] = {"op": draw(st.sampled_from(ACTS)), "in": name}
            values.append((node, ch, size))
        elif kind == "bn":
            nodes[node] = {"op": "batch_norm", "in": name}
            values.append((node, ch, size))
        elif kind == "pool":
            if draw(st.booleans()) and downsamples < 2:
                downsamples += 1
                nodes[node] = {"op": "max_pool2d", "in": name, "kernel": 2, "stride": 2}
                values.append((node, ch, D.conv_out(size, 2, 2, 0)))
            else:
                nodes[node] = {"op": "avg_pool2d", "in": name, "kernel": 3, "stride": 1, "padding": 1}
                values.append((node, ch, size))
        else:
            same = [v for v in values[:-1] if v[2] == size and (kind == "concat" or v[1] == ch)]
            if not same:
                continue
            other = draw(st.sampled_from(same))
            if kind == "add":
                nodes[node] = {"op": "add", "in": [name, other[0]]}
                values.append((node, ch, size))
            else:
                nodes[node] = {"op": "concat", "in": [name, other[0]], "axis": 1}
                values.append((node, ch + other[1], size))
    name, ch, size = values[-1]
    if draw(st.booleans()):
        nodes["gap"] = {"op": "adaptive_avg_pool2d", "in": name, "size": 1}
        nodes["flat"] = {"op": "flatten", "in": "gap"}
        nodes["head"] = {"op": "linear", "in": "flat", "out": 3}
        return c, nodes, {"y": "head"}, (3,)
    return c, nodes, {"y": name}, (ch, size, size)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cnn())
def test_random_cnn_shapes_and_onnx_parity(tmp_path, graph):
    channels, nodes, outputs, tail = graph
    program = compile_nodes(tmp_path, {"x": ["N", channels, "S", "S"]}, nodes, outputs,
                            dims={"N": {"min": 1, "opt": 2, "max": 8}, "S": {"min": 8, "opt": 8, "max": 32}})
    inferred = program.forward.output_type("y")
    assert inferred.shape[1:] == tuple(tail)
    module = build_module(program, seed=0).eval()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    session = ort_session(to_onnx_model(program, weights))
    for vals in ({"N": 2, "S": 8}, {"N": 3, "S": 11}):
        x = example_inputs(program, vals, seed=1)
        with torch.no_grad():
            want = module(torch.from_numpy(x["x"])).numpy()
        assert want.shape == tuple(D.resolve(d, vals) for d in inferred.shape)
        got = run_ort(session, x)["y"]
        assert got.shape == want.shape
        assert float(np.max(np.abs(got - want))) <= 1e-4


@st.composite
def sequence_model(draw):
    """(input width, nodes, outputs, output width): a chain over [N, T, D] with attention, recurrent
    layers, norms and residual adds, so a symbolic sequence length flows through every lowering."""
    d = draw(st.sampled_from([4, 8]))
    values = [("x", d)]
    nodes = {}
    for i in range(draw(st.integers(2, 6))):
        name, width = values[-1]
        kind = draw(st.sampled_from(["linear", "norm", "attn", "rnn", "act", "pe", "add", "softmax"]))
        node = f"n{i}"
        if kind == "linear":
            out = draw(st.sampled_from([4, 8, 12]))
            nodes[node] = {"op": "linear", "in": name, "out": out}
            values.append((node, out))
        elif kind == "norm":
            nodes[node] = {"op": draw(st.sampled_from(["layer_norm", "rms_norm"])), "in": name}
            values.append((node, width))
        elif kind == "attn":
            heads = draw(st.sampled_from([h for h in (1, 2, 4) if width % h == 0]))
            nodes[node] = {"op": "multi_head_attention", "in": name, "heads": heads,
                           "causal": draw(st.booleans())}
            values.append((node, width))
        elif kind == "rnn":
            hidden = draw(st.sampled_from([2, 4, 6]))
            bidir = draw(st.booleans())
            nodes[node] = {"op": draw(st.sampled_from(["lstm", "gru"])), "in": name, "hidden": hidden,
                           "layers": draw(st.integers(1, 2)), "bidirectional": bidir}
            values.append((f"{node}.y", hidden * (2 if bidir else 1)))
        elif kind == "act":
            nodes[node] = {"op": draw(st.sampled_from(ACTS)), "in": name}
            values.append((node, width))
        elif kind == "pe":
            nodes[node] = {"op": "positional_encoding", "in": name, "kind": "sinusoidal", "max_len": 64}
            values.append((node, width))
        elif kind == "softmax":
            nodes[node] = {"op": draw(st.sampled_from(["softmax", "log_softmax"])), "in": name}
            values.append((node, width))
        else:
            same = [v for v in values[:-1] if v[1] == width]
            if not same:
                continue
            nodes[node] = {"op": "add", "in": [name, draw(st.sampled_from(same))[0]]}
            values.append((node, width))
    return d, nodes, {"y": values[-1][0]}, values[-1][1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence_model())
def test_random_sequence_models_shapes_and_onnx_parity(tmp_path, model):
    width, nodes, outputs, out_width = model
    if not nodes:
        return
    program = compile_nodes(tmp_path, {"x": ["N", "T", width]}, nodes, outputs,
                            dims={"N": {"min": 1, "opt": 2, "max": 8}, "T": {"min": 1, "opt": 5, "max": 64}})
    assert program.forward.output_type("y").shape == ("N", "T", out_width)
    module = build_module(program, seed=0).eval()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    session = ort_session(to_onnx_model(program, weights))
    for vals in ({"N": 2, "T": 5}, {"N": 3, "T": 9}):
        x = example_inputs(program, vals, seed=1)
        with torch.no_grad():
            want = module(torch.from_numpy(x["x"])).numpy()
        assert want.shape == (vals["N"], vals["T"], out_width)
        got = run_ort(session, x)["y"]
        assert float(np.max(np.abs(got - want))) <= 1e-4
