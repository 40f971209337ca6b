"""Group B ops (recurrent, attention, indexing, positional encoding) against torch references.

Each case compiles a one-op spec and checks, for concrete sizes of its symbolic dims:
  * inferred shapes (with N, T, ... substituted) equal the shapes the generated module returns,
  * outputs equal an independent torch reference (nn.LSTM/GRU/cells/MultiheadAttention loaded with
    the generated module's weights by state-dict name, or the op's formula written out) to 1e-5,
  * the cost model's FLOPs equal FlopCounterMode's count (ops the counter does not see in torch's
    default kernels are counted in the setting where it does: mkldnn off, SDPA's math kernel),
  * onnxruntime on one ONNX model agrees with torch at two different sizes (dynamic axes stay
    dynamic), and scatter_add's TensorRT form (one-hot matmul) agrees too.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.compiler.errors import ShapeError
from nnspec.compiler.ir.dims import resolve
from nnspec.compiler.ops import registry
from nnspec.targets.inputs import example_inputs
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")
TOL = 1e-5
SIZES = [{"N": 2, "T": 5, "S": 4, "E": 7, "V": 4}, {"N": 3, "T": 9, "S": 6, "E": 11, "V": 6}]

HEAD = """
nnspec: 1
name: {name}
dims: {{N: {{min: 1, opt: 2, max: 8}}, T: {{min: 1, opt: 5, max: 64}}, S: {{min: 1, opt: 4, max: 64}},
       E: {{min: 1, opt: 7, max: 64}}, V: {{min: 1, opt: 4, max: 64}}}}
"""


def compile_text(tmp_path, name: str, body: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(HEAD.format(name=name) + body)
    return c.load(str(path))


def make_inputs(program, vals: dict, seed: int = 0) -> dict:
    """The project's example inputs as torch tensors, except bool masks: those are True with
    probability 0.7, so no attention row is masked out entirely (SDPA would return NaN)."""
    out = {k: torch.from_numpy(v) for k, v in example_inputs(program, vals, seed).items()}
    gen = torch.Generator().manual_seed(seed)
    for n in program.forward.inputs():
        if n.outputs[0].dtype == "bool":
            shape = tuple(resolve(d, vals) for d in n.outputs[0].shape)
            out[n.attrs.name] = torch.rand(shape, generator=gen) > 0.3
    return out


def run(module, program, inputs: dict) -> dict:
    module.eval()
    with torch.no_grad():
        res = module(*inputs.values())
    res = res if isinstance(res, tuple) else (res,)
    return dict(zip(program.forward.outputs, res))


def sub_state(module, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in module.state_dict().items() if k.startswith(prefix + ".")}


# -- references: (module, inputs) -> {output name: tensor} -------------------------------------
def ref_rnn(kind, layers, bidir, bias, state):
    def ref(m, x):
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        r = cls(3, 5, num_layers=layers, bias=bias, batch_first=True, bidirectional=bidir)
        r.load_state_dict(sub_state(m, "rnn"))  # strict: the names must be torch's
        if kind == "lstm":
            y, (h, cc) = r(x["x"], (x["h0"], x["c0"]) if state else None)
            return {"y": y, "h": h, "c": cc}
        y, h = r(x["x"], x["h0"] if state else None)
        return {"y": y, "h": h}
    return ref


def ref_cell(kind, state, nonlinearity="tanh"):
    def ref(m, x):
        if kind == "lstm_cell":
            r = nn.LSTMCell(3, 5)
            r.load_state_dict(sub_state(m, "cell"))
            h, cc = r(x["x"], (x["h_in"], x["c_in"]) if state else None)
            return {"h": h, "c": cc}
        r = nn.GRUCell(3, 5) if kind == "gru_cell" else nn.RNNCell(3, 5, nonlinearity=nonlinearity)
        r.load_state_dict(sub_state(m, "cell"))
        return {"h": r(x["x"], x["h_in"] if state else None)}
    return ref


def ref_mha(heads, causal=False, cross=False, mask=False, bias=True):
    def ref(m, x):
        dim = x["q"].shape[-1]
        r = nn.MultiheadAttention(dim, heads, bias=bias, batch_first=True)
        r.load_state_dict(sub_state(m, "mha"))
        kv = x["kv"] if cross else x["q"]
        attn_mask = None
        if causal:
            attn_mask = nn.Transformer.generate_square_subsequent_mask(x["q"].shape[1])
        if mask:
            attn_mask = ~x["mask"]  # torch's MHA blocks where True; nnspec's mask allows where True
        y, _ = r(x["q"], kv, kv, attn_mask=attn_mask, need_weights=False)
        return {"y": y}
    return ref


def ref_sdpa(causal=False, scale=None, mask=None):
    """softmax(q k^T * scale + mask) v, written out."""
    def ref(m, x):
        q, k, v = x["q"], x["k"], x["v"]
        s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
        if causal:
            s = s.masked_fill(torch.ones(q.shape[-2], k.shape[-2]).tril() == 0, float("-inf"))
        if mask == "bool":
            s = s.masked_fill(~x["mask"], float("-inf"))
        if mask == "float":
            s = s + x["mask"]
        return {"y": torch.softmax(s, -1) @ v}
    return ref


def ref_additive(m, x):
    w = sub_state(m, "att")
    energy = torch.tanh(x["q"] @ w["W_q.weight"].T + (x["keys"] @ w["W_k.weight"].T).transpose(0, 1))
    scores = (energy @ w["v.weight"].T).squeeze(-1).transpose(0, 1)  # [N, T]
    weights = torch.softmax(scores, -1)
    return {"context": torch.einsum("nt,ntd->nd", weights, x["keys"]), "weights": weights}


def ref_sinusoidal(m, x):
    steps, dim = x["x"].shape[1:]
    pos = torch.arange(steps, dtype=torch.float64)[:, None]
    i = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / 10000 ** ((i - i % 2) / dim)
    table = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle)).float()
    return {"y": x["x"] + table}


def ref_learned(m, x):
    return {"y": x["x"] + m.state_dict()["pe.weight"][: x["x"].shape[1]]}


RNN_CASES = [("lstm", 1, False, True, False), ("lstm", 2, True, True, True), ("lstm", 1, True, False, True),
             ("gru", 1, False, True, False), ("gru", 2, True, True, True), ("gru", 2, False, False, True)]


def rnn_case(kind, layers, bidir, bias, state):
    dirs = 2 if bidir else 1
    ins = "x: {shape: [N, T, 3]}\n"
    refs = ["x"]
    if state:
        ins += f"  h0: {{shape: [{layers * dirs}, N, 5]}}\n"
        refs.append("h0")
        if kind == "lstm":
            ins += f"  c0: {{shape: [{layers * dirs}, N, 5]}}\n"
            refs.append("c0")
    outs = "{y: rnn.y, h: rnn.h, c: rnn.c}" if kind == "lstm" else "{y: rnn.y, h: rnn.h}"
    body = (f"inputs:\n  {ins}nodes:\n  rnn: {{op: {kind}, in: [{', '.join(refs)}], hidden: 5, layers: {layers}, "
            f"bidirectional: {str(bidir).lower()}, bias: {str(bias).lower()}}}\noutputs: {outs}\n")
    return (f"{kind}_{layers}_{dirs}_{int(bias)}_{int(state)}", body, ref_rnn(kind, layers, bidir, bias, state))


def cell_case(kind, state, extra=""):
    ins = "x: {shape: [N, 3]}\n"
    refs = ["x"]
    if state:
        ins += "  h_in: {shape: [N, 5]}\n"
        refs.append("h_in")
        if kind == "lstm_cell":
            ins += "  c_in: {shape: [N, 5]}\n"
            refs.append("c_in")
    outs = "{h: cell.h, c: cell.c}" if kind == "lstm_cell" else "{h: cell}"
    body = f"inputs:\n  {ins}nodes:\n  cell: {{op: {kind}, in: [{', '.join(refs)}], hidden: 5{extra}}}\noutputs: {outs}\n"
    nl = "relu" if "relu" in extra else "tanh"
    return (f"{kind}_{int(state)}{'_relu' if nl == 'relu' else ''}", body, ref_cell(kind, state, nl))


CASES = [rnn_case(*a) for a in RNN_CASES] + [
    cell_case("lstm_cell", True), cell_case("lstm_cell", False), cell_case("gru_cell", True),
    cell_case("gru_cell", False), cell_case("rnn_cell", True, ", nonlinearity: relu"), cell_case("rnn_cell", True),
    ("mha_self_causal", """
inputs: {q: {shape: [N, T, 12]}}
nodes: {mha: {op: multi_head_attention, in: q, heads: 3, causal: true}}
outputs: {y: mha}
""", ref_mha(3, causal=True)),
    ("mha_cross_mask", """
inputs: {q: {shape: [N, T, 8]}, kv: {shape: [N, S, 8]}, mask: {shape: [T, S], dtype: bool}}
nodes: {mha: {op: multi_head_attention, in: [q, kv, mask], heads: 2}}
outputs: {y: mha}
""", ref_mha(2, cross=True, mask=True)),
    ("mha_nobias", """
inputs: {q: {shape: [N, T, 8]}}
nodes: {mha: {op: multi_head_attention, in: q, heads: 4, bias: false}}
outputs: {y: mha}
""", ref_mha(4, bias=False)),
    ("sdpa", """
inputs: {q: {shape: [N, 2, T, 8]}, k: {shape: [N, 2, S, 8]}, v: {shape: [N, 2, S, 6]}}
nodes: {att: {op: attention, in: [q, k, v]}}
outputs: {y: att}
""", ref_sdpa()),
    ("sdpa_causal_scale", """
inputs: {q: {shape: [N, T, 8]}, k: {shape: [N, S, 8]}, v: {shape: [N, S, 8]}}
nodes: {att: {op: attention, in: [q, k, v], causal: true, scale: 0.5}}
outputs: {y: att}
""", ref_sdpa(causal=True, scale=0.5)),
    ("sdpa_bool_mask", """
inputs: {q: {shape: [N, 2, T, 4]}, k: {shape: [N, 2, T, 4]}, v: {shape: [N, 2, T, 4]}, mask: {shape: [T, T], dtype: bool}}
nodes:
  causal: {op: attention, in: [q, k, v], causal: true}
  att: {op: attention, in: [causal, k, v, mask]}
outputs: {y: att}
""", None),
    ("sdpa_float_mask", """
inputs: {q: {shape: [N, T, 4]}, k: {shape: [N, S, 4]}, v: {shape: [N, S, 3]}, mask: {shape: [N, T, S]}}
nodes: {att: {op: attention, in: [q, k, v, mask]}}
outputs: {y: att}
""", ref_sdpa(mask="float")),
    ("additive", """
inputs: {q: {shape: [N, 6]}, keys: {shape: [N, T, 4]}}
nodes: {att: {op: additive_attention, in: [q, keys], hidden: 5}}
outputs: {context: att.context, weights: att.weights}
""", ref_additive),
    ("pe_sinusoidal", """
inputs: {x: {shape: [N, T, 10]}}
nodes: {pe: {op: positional_encoding, in: x, max_len: 64}}
outputs: {y: pe}
""", ref_sinusoidal),
    ("pe_learned", """
inputs: {x: {shape: [N, T, 6]}}
nodes: {pe: {op: positional_encoding, in: x, kind: learned, max_len: 64}}
outputs: {y: pe}
""", ref_learned),
    ("gather", """
inputs: {x: {shape: [N, T, 5]}, idx: {shape: [N, T, 3], dtype: int64, range: [0, 5]}}
nodes: {g: {op: gather, in: [x, idx], axis: 2}}
outputs: {y: g}
""", lambda m, x: {"y": torch.gather(x["x"], 2, x["idx"])}),
    ("index_select", """
inputs: {h: {shape: [V, 6]}, src: {shape: [E], dtype: int64, range: [0, V]}}
nodes: {sel: {op: index_select, in: [h, src], axis: 0}}
outputs: {y: sel}
""", lambda m, x: {"y": torch.index_select(x["h"], 0, x["src"])}),
    ("scatter_add", """
inputs: {h: {shape: [V, 6]}, dst: {shape: [E], dtype: int64, range: [0, V]}, msg: {shape: [E, 6]}}
nodes: {agg: {op: scatter_add, in: [h, dst, msg]}}
outputs: {y: agg}
""", lambda m, x: {"y": torch.index_add(x["h"], 0, x["dst"], x["msg"])}),
    ("scatter_add_axis1", """
inputs: {h: {shape: [N, V, 3]}, dst: {shape: [E], dtype: int64, range: [0, V]}, msg: {shape: [N, E, 3]}}
nodes: {agg: {op: scatter_add, in: [h, dst, msg], axis: 1}}
outputs: {y: agg}
""", lambda m, x: {"y": torch.index_add(x["h"], 1, x["dst"], x["msg"])}),
]


def _ref_two_step_attention(m, x):
    first = ref_sdpa(causal=True)(m, x)["y"]
    return ref_sdpa(mask="bool")(m, {**x, "q": first})


CASES = [(n, b, r if r is not None else _ref_two_step_attention) for n, b, r in CASES]


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ops_b")
    return {name: compile_text(d, name, body) for name, body, _ in CASES}


def counter_context(program):
    """Where FlopCounterMode sees an op's work: torch's defaults, or mkldnn off / SDPA math kernel."""
    stack = contextlib.ExitStack()
    ops = {n.op for n in program.forward.nodes()}
    if ops & {"lstm"}:
        stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
    if ops & {"attention", "multi_head_attention"}:
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


@pytest.mark.parametrize("name,body,ref", CASES, ids=[c_[0] for c_ in CASES])
def test_against_torch(programs, name, body, ref):
    p = programs[name]
    module = build_module(p, seed=1)
    for vals in SIZES:
        x = make_inputs(p, vals, seed=sum(vals.values()))
        got = run(module, p, x)
        with torch.no_grad():
            want = ref(module, x)
        assert set(got) == set(want)
        for o, t in got.items():
            inferred = tuple(resolve(d, vals) for d in p.forward.output_type(o).shape)
            assert inferred == tuple(t.shape), f"{o}: inferred {inferred} vs torch {tuple(t.shape)}"
            err = (t - want[o]).abs().max().item()
            assert err <= TOL, f"{name}.{o}: max error {err} at {vals}"
        with counter_context(p), FlopCounterMode(display=False) as fc, torch.no_grad():
            module(*x.values())
        assert cost_report(p, dims=vals).flops == fc.get_total_flops(), name


def test_symbolic_dims_flow(programs):
    g = programs["lstm_2_2_1_1"].forward
    assert [str(t) for t in g.node("rnn").outputs] == ["f32[N,T,10]", "f32[4,N,5]", "f32[4,N,5]"]
    assert str(programs["mha_cross_mask"].forward.output_type("y")) == "f32[N,T,8]"
    assert str(programs["sdpa"].forward.output_type("y")) == "f32[N,2,T,6]"
    assert [str(t) for t in programs["additive"].forward.node("att").outputs] == ["f32[N,4]", "f32[N,T]"]
    assert str(programs["index_select"].forward.output_type("y")) == "f32[E,6]"
    assert str(programs["scatter_add"].forward.output_type("y")) == "f32[V,6]"


def test_flop_counter_flags_are_honest(programs):
    """Ops marked flop_counter_counts=False really are invisible to the counter in torch's defaults."""
    ops = registry()
    assert ops["lstm"].flop_counter_counts is False and ops["gru"].flop_counter_counts is True
    assert ops["attention"].flop_counter_counts is False and ops["additive_attention"].flop_counter_counts
    p = programs["lstm_1_1_1_0"]
    m = build_module(p).eval()
    x = make_inputs(p, SIZES[0])
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(*x.values())
    assert fc.get_total_flops() == 0 < cost_report(p, dims=SIZES[0]).flops
    # 2 * N * T * 4H * (C + H) for one LSTM layer
    assert cost_report(p, dims=SIZES[0]).flops == 2 * 2 * 5 * 20 * (3 + 5)


def test_param_names_are_torchs(programs):
    p = programs["lstm_2_2_1_1"]
    names = list(build_module(p).state_dict())
    want = ["rnn." + k for k in nn.LSTM(3, 5, 2, batch_first=True, bidirectional=True).state_dict()]
    assert names == want
    mha = programs["mha_self_causal"].forward.node("mha").params
    assert list(mha) == list(nn.MultiheadAttention(12, 3).state_dict())
    assert list(build_module(programs["pe_sinusoidal"]).state_dict()) == []  # the table is not a weight


@pytest.mark.parametrize("name", [c_[0] for c_ in CASES])
def test_onnx_parity(programs, name):
    from nnspec.targets.onnx import ort_session, run_ort, to_onnx_model

    p = programs[name]
    module = build_module(p, seed=1).eval()
    weights = {k: v.numpy() for k, v in module.state_dict().items()}
    forms = [False, True] if name.startswith("scatter_add") else [False]
    for for_trt in forms:
        model = to_onnx_model(p, weights, for_trt=for_trt)
        ops = {n.op_type for n in model.graph.node}
        if name.startswith("scatter_add"):
            assert ("ScatterElements" in ops) != for_trt and ("MatMul" in ops) == for_trt
        if name.startswith(("lstm", "gru")) and "cell" not in name:
            assert name.split("_")[0].upper() in ops  # a real ONNX LSTM / GRU, not an unrolled loop
        sess = ort_session(model)
        for vals in SIZES:  # one model, two sizes: no symbolic dim was baked in
            x = make_inputs(p, vals, seed=7)
            got = run_ort(sess, {k: v.numpy() for k, v in x.items()})
            want = run(module, p, x)
            for o, t in want.items():
                err = float(np.max(np.abs(got[o] - t.numpy())))
                assert err <= 2e-5, f"{name}.{o} (for_trt={for_trt}): ONNX vs torch {err} at {vals}"


BAD = [
    ("mha_heads", "inputs: {q: {shape: [N, T, 10]}}\nnodes: {m: {op: multi_head_attention, in: q, heads: 3}}\n"
                  "outputs: {y: m}\n", "divisible"),
    ("lstm_state", "inputs: {x: {shape: [N, T, 3]}, h: {shape: [1, N, 4]}}\n"
                   "nodes: {r: {op: lstm, in: [x, h], hidden: 5}}\noutputs: {y: r.y}\n", "h0 is f32[1,N,4]"),
    ("lstm_rank", "inputs: {x: {shape: [N, 3]}}\nnodes: {r: {op: gru, in: x, hidden: 5}}\noutputs: {y: r.y}\n",
     "rank 3"),
    ("scatter_src", "inputs: {h: {shape: [V, 6]}, i: {shape: [E], dtype: int64}, m: {shape: [E, 5]}}\n"
                    "nodes: {a: {op: scatter_add, in: [h, i, m]}}\noutputs: {y: a}\n", "[E, 6]"),
    ("index_dtype", "inputs: {h: {shape: [V, 6]}, i: {shape: [E]}}\n"
                    "nodes: {a: {op: index_select, in: [h, i], axis: 0}}\noutputs: {y: a}\n", "int64"),
    ("sdpa_dims", "inputs: {q: {shape: [N, T, 4]}, k: {shape: [N, S, 5]}}\n"
                  "nodes: {a: {op: attention, in: [q, k, k]}}\noutputs: {y: a}\n", "same last dim"),
    ("pe_odd", "inputs: {x: {shape: [N, T, 5]}}\nnodes: {a: {op: positional_encoding, in: x}}\noutputs: {y: a}\n",
     "even"),
    ("mask_shape", "inputs: {q: {shape: [N, T, 4]}, m: {shape: [S, T], dtype: bool}}\n"
                   "nodes: {a: {op: attention, in: [q, q, q, m]}}\noutputs: {y: a}\n", "broadcastable"),
]


@pytest.mark.parametrize("name,body,needle", BAD, ids=[b[0] for b in BAD])
def test_shape_errors(tmp_path, name, body, needle):
    with pytest.raises(ShapeError) as e:
        compile_text(tmp_path, name, body)
    assert needle in e.value.render()
