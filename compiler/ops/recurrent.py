"""Recurrent ops: lstm and gru over a whole sequence, and the single-step cells lstm_cell, gru_cell, rnn_cell.

Parameters carry torch's names (nn.LSTM / nn.GRU / nn.LSTMCell ...), so weights move between a
generated module and a hand-written torch model by name. ONNX lowerings map the sequence ops onto
ONNX LSTM / GRU (whose gate order differs from torch's: the rows of every weight are reordered at
lowering) and spell the cells out as Gemm + activations.

FlopCounterMode (torch 2.14, CPU) sees GRU and every cell as mm/addmm, so their cost agrees with it
exactly; nn.LSTM runs as one opaque `aten.mkldnn_rnn_layer` call it does not count. `lstm` still
reports its real FLOPs and says so through `flop_counter_counts = False`; with mkldnn disabled
torch decomposes LSTM into addmm and the counter then matches.
"""
from __future__ import annotations

import math

from typing import Literal

from pydantic import Field

from ..ir import dims as D
from ..ir.dims import TensorType
from ..init import uniform
from ..ir.params import ParamSpec
from .base import Port, Attrs, Cost, DropP, Op, Size, TorchCode, expect, fmt_args, register, same_dim

# Gates per cell, torch's order, and the position of each ONNX gate in torch's order.
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TORCH_TO_ONNX = {"lstm": [0, 3, 1, 2],  # torch (i, f, g, o) -> ONNX (i, o, f, c)
                 "gru": [1, 0, 2]}  # torch (r, z, n) -> ONNX (z, r, h)
STATES = {"lstm": 2, "gru": 1, "rnn": 1}


class SeqAttrs(Attrs):
    hidden: Size = Field(description="hidden state width")
    layers: Size = Field(1, le=1000, description="stacked layers")
    bidirectional: bool = Field(False, description="also run each layer backwards and concatenate")
    bias: bool = Field(True, description="learned biases")
    dropout: DropP = Field(0.0, description="dropout between stacked layers, in training")


def _float(t: TensorType, what: str) -> None:
    expect(t.dtype.startswith(("float", "bfloat")), f"{what} has dtype {t.dtype}", "a floating-point tensor")


def _check_state(t: TensorType, want: tuple, what: str) -> None:
    ok = t.rank == len(want) and all(same_dim(a, b) for a, b in zip(t.shape, want))
    expect(ok, f"{what} is {t}", f"shape [{', '.join(str(d) for d in want)}]")


def _cell_params(kind: str, cin: int, hidden: int, bias: bool, suffix: str = "") -> dict:
    g = GATES[kind] * hidden
    init = uniform(1.0 / math.sqrt(hidden))  # nn.LSTM / GRU / RNN(Cell): every weight and bias U(-k, k)
    ps = {f"weight_ih{suffix}": ParamSpec((g, cin), init=init), f"weight_hh{suffix}": ParamSpec((g, hidden), init=init)}
    if bias:
        ps[f"bias_ih{suffix}"] = ParamSpec((g,), init=init)
        ps[f"bias_hh{suffix}"] = ParamSpec((g,), init=init)
    return ps


def _cell_flops(kind: str, rows, cin: int, hidden: int):
    """2 x multiply-adds of one cell step over `rows` vectors (input and hidden projections)."""
    return D.mul(2 * GATES[kind] * hidden * (cin + hidden), rows)


def _first_step_bwd(kind: str, ins: list, runs: int, batch, hidden: int):
    """Backward FLOPs torch skips when the state starts at zero (not given): the first step's
    gradient through W_hh to that state, once per layer and direction (`runs`)."""
    return 0 if len(ins) > 1 else D.mul(runs * 2 * GATES[kind] * hidden * hidden, batch)


PAGE = 4096  # oneDNN starts each region of an RNN workspace on a page


def _good_ld(n: int) -> int:
    """oneDNN's leading dimension for rows of n floats: a multiple of 16 (64 bytes), not of 256."""
    ld = -(-n // 16) * 16
    return ld + 16 if ld % 256 == 0 else ld


def _lstm_workspace(steps, batch, cin: int, hidden: int):
    """Bytes of the workspace oneDNN's LSTM keeps for backward (saved by torch's CPU
    `mkldnn_rnn_layer`, one call per layer and direction): gate pre-activations and hidden states
    per step, and five state buffers of steps + 1 (three as wide as the wider of input and hidden,
    two cell states), each region rounded up to whole pages; fitted to torch 2.14's oneDNN."""
    rows, states = D.mul(steps, batch), D.mul(D.add(steps, 1), batch)
    regions = [D.mul(4 * _good_ld(4 * hidden), rows), D.mul(4 * _good_ld(hidden), rows)]
    regions += [D.mul(8 * _good_ld(max(cin, hidden)), states)] * 3 + [D.mul(8 * hidden, states)] * 2
    total = 0
    for r in regions:
        total = D.add(total, D.mul(PAGE, D.floordiv(D.add(r, PAGE - 1), PAGE)))
    return total


def _sequence_kept(kind: str, a, ins: list) -> dict:
    """What nn.LSTM / nn.GRU (batch first, float32, CPU) keep for backward.

    Both keep x, or a time-major copy of it where transposing x is not a view (N > 1 and T > 1;
    GRU one copy per direction, LSTM one), the initial states (zeros made for absent ones) and,
    from the second layer, the layer's input (the previous outputs stacked by GRU, concatenated
    when bidirectional; with dropout the mask and the dropped copy instead). LSTM runs each layer
    and direction as one oneDNN call keeping its output (y itself, last layer of one direction),
    final h and c and a workspace; GRU runs cell by cell: each step keeps the hidden-gate
    pre-activations [N, 3H] and three [N, H] intermediates, and the previous step's state."""
    x = ins[0]
    n, t, c = x.shape
    isz = Cost.nbytes(x.with_shape(()))
    dirs, h = (2 if a.bidirectional else 1), a.hidden
    nh = D.mul(n, h)
    seq = D.mul(t, nh)  # one direction's [T, N, H] output
    view = D.sub(1, D.mul(D.sub(1, D.floordiv(1, n)), D.sub(1, D.floordiv(1, t))))  # 1 if N == 1 or T == 1
    inputs = [(0, view)]
    elems = D.mul(dirs if kind == "gru" else 1, D.mul(D.sub(1, view), D.prod(x.shape)))  # elements of x's dtype
    workspace = 0  # bytes
    states = D.mul(a.layers * dirs, nh)
    for slot in range(1, STATES[kind] + 1):  # h0 (and c0): the given one, or zeros
        if len(ins) > slot:
            inputs.append(slot)
        else:
            elems = D.add(elems, states)
    for layer in range(a.layers):
        if layer > 0:
            between = 2 if a.dropout else 1 if (dirs == 2 or kind == "gru") else 0
            elems = D.add(elems, D.mul(between * dirs, seq))
        cin = c if layer == 0 else h * dirs
        for _ in range(dirs):
            if kind == "gru":
                elems = D.add(elems, D.sub(D.mul(7, seq), nh))  # T x (3 + 3) [N, H], T - 1 states
                continue
            own_y = dirs == 1 and layer == a.layers - 1  # that output is y, counted as an output
            elems = D.add(elems, D.add(D.mul(2, nh), 0 if own_y else seq))
            workspace = D.add(workspace, _lstm_workspace(t, n, cin, h))
    outputs = (0,) if kind == "lstm" and dirs == 1 else ()
    return {"saved_inputs": tuple(inputs), "saved_outputs": outputs, "saved_extra": D.add(D.mul(isz, elems), workspace)}


@register
class Sequence(Op):
    """LSTM / GRU over x[N, T, C] (batch first) with optional initial states, like nn.LSTM / nn.GRU."""

    names = ["lstm", "gru"]
    STATE = "[layers * dirs, N, hidden]"

    @property
    def in_ports(self):
        ports = (Port("x", "[N, T, C]"), Port("h0", self.STATE, optional=True, doc="initial state"))
        return ports + ((Port("c0", self.STATE, optional=True, doc="initial cell state"),) if self.name == "lstm" else ())

    @property
    def out_ports(self):
        ports = (Port("y", "[N, T, dirs * hidden]"), Port("h", self.STATE, doc="final state"))
        return ports + ((Port("c", self.STATE, doc="final cell state"),) if self.name == "lstm" else ())
    Attrs = SeqAttrs
    fusion = "opaque"
    train_dependent = True  # dropout between layers

    @property
    def flop_counter_counts(self) -> bool:
        return self.name != "lstm"

    def outputs(self, a):
        return ["y", "h", "c"] if self.name == "lstm" else ["y", "h"]

    @property
    def arity(self):
        return (1, 1 + STATES[self.name])

    def _dirs(self, a) -> int:
        return 2 if a.bidirectional else 1

    def infer(self, a, ins):
        x = ins[0]
        expect(x.rank == 3, f"{self.name} input is {x}", "x of rank 3: [N, T, C] (batch first)")
        _float(x, "x")
        expect(isinstance(x.shape[2], int), f"feature dim {x.shape[2]} is symbolic", "a concrete feature size C")
        expect(a.hidden > 0 and a.layers > 0, f"hidden={a.hidden}, layers={a.layers}", "positive sizes")
        expect(0.0 <= a.dropout < 1.0, f"dropout={a.dropout}", "0 <= dropout < 1")
        n = x.shape[0]
        state = (a.layers * self._dirs(a), n, a.hidden)
        for t, what in zip(ins[1:], ("h0", "c0")):
            _check_state(t, state, what)
        y = TensorType((n, x.shape[1], a.hidden * self._dirs(a)), x.dtype)
        return [y] + [TensorType(state, x.dtype)] * STATES[self.name]

    def _layer_inputs(self, a, cin: int) -> list[int]:
        return [cin] + [a.hidden * self._dirs(a)] * (a.layers - 1)

    def params(self, a, ins):
        ps = {}
        for layer, cin in enumerate(self._layer_inputs(a, ins[0].shape[2])):
            for sfx in ("", "_reverse")[:self._dirs(a)]:
                ps.update(_cell_params(self.name, cin, a.hidden, a.bias, f"_l{layer}{sfx}"))
        return ps

    def cost(self, a, ins, outs):
        x = ins[0]
        rows = D.mul(x.shape[0], x.shape[1])
        flops = 0
        for cin in self._layer_inputs(a, x.shape[2]):
            flops = D.add(flops, D.mul(self._dirs(a), _cell_flops(self.name, rows, cin, a.hidden)))
        # backward: each projection's input and weight gradients
        bwd = D.sub(D.mul(2, flops), _first_step_bwd(self.name, ins, a.layers * self._dirs(a), x.shape[0], a.hidden))
        return Cost(flops=flops, bwd_flops=bwd, **_sequence_kept(self.name, a, ins))

    def to_torch(self, a, ins, m, node):
        cin = node.in_types[0].shape[-1]
        kw = {}
        if a.layers != 1:
            kw["num_layers"] = a.layers
        if not a.bias:
            kw["bias"] = False
        kw["batch_first"] = True
        if a.dropout:
            kw["dropout"] = a.dropout
        if a.bidirectional:
            kw["bidirectional"] = True
        init = f"nn.{self.name.upper()}({fmt_args(cin, a.hidden, **kw)})"
        if self.name == "gru":
            call = f"{m}({', '.join(ins[:2])})"
            return TorchCode(expr=call, init=init)
        state = ""
        if len(ins) > 1:
            c0 = ins[2] if len(ins) > 2 else f"torch.zeros_like({ins[1]})"
            state = f", ({ins[1]}, {c0})"
        # nn.LSTM returns (y, (h, c)): one statement unpacks it into the node's three outputs
        return TorchCode(expr="$y, $h, $c", init=init, stmts=[f"$y, ($h, $c) = {m}({ins[0]}{state})"],
                         temps=("y", "h", "c"))

    def to_onnx(self, a, ins, b, node):
        dirs = self._dirs(a)
        idx = b.const(_gate_rows(TORCH_TO_ONNX[self.name], a.hidden))
        seq = b.op("Transpose", [ins[0]], perm=[1, 0, 2])  # ONNX RNNs run time-major: [T, N, C]
        finals = [[] for _ in range(STATES[self.name])]
        for layer in range(a.layers):
            sfxs = [f"_l{layer}{s}" for s in ("", "_reverse")[:dirs]]

            def stacked(pname: str) -> str:
                rows = [b.op("Unsqueeze", [b.op("Gather", [b.param(node, pname + s), idx], axis=0), b.const([0])])
                        for s in sfxs]
                return rows[0] if dirs == 1 else b.op("Concat", rows, axis=0)

            w, r = stacked("weight_ih"), stacked("weight_hh")
            bias = ""
            if a.bias:
                per_dir = [b.op("Concat", [b.op("Gather", [b.param(node, f"bias_ih{s}"), idx], axis=0),
                                           b.op("Gather", [b.param(node, f"bias_hh{s}"), idx], axis=0)], axis=0)
                           for s in sfxs]
                per_dir = [b.op("Unsqueeze", [p, b.const([0])]) for p in per_dir]
                bias = per_dir[0] if dirs == 1 else b.op("Concat", per_dir, axis=0)
            init = [b.op("Slice", [s, b.const([layer * dirs]), b.const([(layer + 1) * dirs]), b.const([0])])
                    for s in ins[1:]]
            if self.name == "lstm" and len(init) == 1:  # h0 without c0: the cell starts at zero
                init.append("")
            onnx_ins = [seq, w, r, bias, ""] + init
            while onnx_ins and onnx_ins[-1] == "":
                onnx_ins.pop()
            extra = {"linear_before_reset": 1} if self.name == "gru" else {}  # torch applies r after W_hn h
            outs = b.op(self.name.upper(), onnx_ins, n_out=1 + STATES[self.name], hidden_size=a.hidden,
                        direction="bidirectional" if dirs == 2 else "forward", **extra)
            # Y is [T, dirs, N, H]; the next layer (and torch's y) wants [T, N, dirs * H].
            y = b.op("Transpose", [outs[0]], perm=[0, 2, 1, 3])
            seq = b.op("Reshape", [y, b.const([0, 0, -1])])
            for k in range(STATES[self.name]):
                finals[k].append(outs[1 + k])
        y = b.op("Transpose", [seq], perm=[1, 0, 2])
        states = [f[0] if len(f) == 1 else b.op("Concat", f, axis=0) for f in finals]
        return [y] + states


def _gate_rows(order: list[int], hidden: int) -> list[int]:
    """Row indices that reorder stacked gate blocks of `hidden` rows from torch's order to ONNX's."""
    return [g * hidden + j for g in order for j in range(hidden)]


class CellAttrs(Attrs):
    hidden: Size = Field(description="hidden state width")
    bias: bool = Field(True, description="learned biases")


class RnnCellAttrs(CellAttrs):
    nonlinearity: Literal["tanh", "relu"] = Field("tanh", description="activation of the new state")


@register
class Cell(Op):
    """One recurrent step over x[N, C]: lstm_cell (h, c), gru_cell (h), rnn_cell (h); like nn.LSTMCell etc.

    Missing states start at zero, as in torch.
    """

    names = ["lstm_cell", "gru_cell", "rnn_cell"]
    @property
    def in_ports(self):
        ports = (Port("x", "[N, C]"), Port("h", "[N, hidden]", optional=True, doc="state (default zeros)"))
        return ports + ((Port("c", "[N, hidden]", optional=True, doc="cell state"),) if self.name == "lstm_cell" else ())

    @property
    def out_ports(self):
        return (Port("h", "[N, hidden]"),) + ((Port("c", "[N, hidden]"),) if self.name == "lstm_cell" else ())
    fusion = "opaque"

    def kind(self) -> str:
        return self.name.split("_")[0]

    @property
    def Attrs(self):  # noqa: N802 - the op contract's attribute-model name
        return RnnCellAttrs if self.name == "rnn_cell" else CellAttrs

    @property
    def arity(self):
        return (1, 1 + STATES[self.kind()])

    def outputs(self, a):
        return ["h", "c"] if self.name == "lstm_cell" else ["h"]

    def infer(self, a, ins):
        x = ins[0]
        expect(x.rank == 2, f"{self.name} input is {x}", "x of rank 2: [N, C] (one step)")
        _float(x, "x")
        expect(isinstance(x.shape[1], int), f"feature dim {x.shape[1]} is symbolic", "a concrete feature size C")
        expect(a.hidden > 0, f"hidden={a.hidden}", "a positive hidden size")
        state = (x.shape[0], a.hidden)
        for t, what in zip(ins[1:], ("h", "c")):
            _check_state(t, state, what)
        return [TensorType(state, x.dtype)] * STATES[self.kind()]

    def params(self, a, ins):
        return _cell_params(self.kind(), ins[0].shape[1], a.hidden, a.bias)

    def cost(self, a, ins, outs):
        x, kind = ins[0], self.kind()
        flops = _cell_flops(kind, x.shape[0], x.shape[1], a.hidden)
        bwd = D.sub(D.mul(2, flops), _first_step_bwd(kind, ins, 1, x.shape[0], a.hidden))
        # torch composes the cells on CPU. All keep x and the state (zeros when absent: lstm_cell's
        # h and c share one zeros tensor; given h without c, c is zeros_like(h)); lstm_cell keeps
        # its gate pre-activations [N, 4H] and tanh(c'), gru_cell the hidden gates [N, 3H] and three
        # [N, H] intermediates, rnn_cell its result.
        state = Cost.nbytes(outs[0])
        zeros = state if len(ins) < STATES[kind] + 1 else 0
        extra = {"lstm": 5, "gru": 6, "rnn": 0}[kind]
        return Cost(flops=flops, bwd_flops=bwd, saved_inputs=tuple(range(len(ins))),
                    saved_outputs=(0,) if kind == "rnn" else (), saved_extra=D.add(zeros, D.mul(extra, state)))

    def to_torch(self, a, ins, m, node):
        cin = node.in_types[0].shape[-1]
        kw = {} if a.bias else {"bias": False}
        if self.name == "rnn_cell" and a.nonlinearity != "tanh":
            kw["nonlinearity"] = a.nonlinearity
        cls = {"lstm_cell": "LSTMCell", "gru_cell": "GRUCell", "rnn_cell": "RNNCell"}[self.name]
        args = [ins[0]]
        if self.name == "lstm_cell" and len(ins) > 1:
            c = ins[2] if len(ins) > 2 else f"torch.zeros_like({ins[1]})"
            args.append(f"({ins[1]}, {c})")
        elif len(ins) > 1:
            args.append(ins[1])
        return TorchCode(expr=f"{m}({', '.join(args)})", init=f"nn.{cls}({fmt_args(cin, a.hidden, **kw)})")

    def to_onnx(self, a, ins, b, node):
        kind = self.kind()
        x = ins[0]
        states = list(ins[1:])
        while len(states) < STATES[kind]:  # absent states are zeros of [N, H]
            shape = b.op("Concat", [b.dim(x, 0), b.const([a.hidden])], axis=0)
            states.append(b.op("Expand", [b.scalar(0.0), shape]))

        def affine(v, w, bias):
            args = [v, b.param(node, w)] + ([b.param(node, bias)] if a.bias else [])
            return b.op("Gemm", args, transB=1)

        gi, gh = affine(x, "weight_ih", "bias_ih"), affine(states[0], "weight_hh", "bias_hh")
        if kind == "rnn":
            act = "Tanh" if a.nonlinearity == "tanh" else "Relu"
            return [b.op(act, [b.op("Add", [gi, gh])])]
        if kind == "lstm":
            i, f, g, o = b.op("Split", [b.op("Add", [gi, gh])], n_out=4, axis=1, num_outputs=4)
            c = b.op("Add", [b.op("Mul", [b.op("Sigmoid", [f]), states[1]]),
                             b.op("Mul", [b.op("Sigmoid", [i]), b.op("Tanh", [g])])])
            h = b.op("Mul", [b.op("Sigmoid", [o]), b.op("Tanh", [c])])
            return [h, c]
        xr, xz, xn = b.op("Split", [gi], n_out=3, axis=1, num_outputs=3)
        hr, hz, hn = b.op("Split", [gh], n_out=3, axis=1, num_outputs=3)
        r = b.op("Sigmoid", [b.op("Add", [xr, hr])])
        z = b.op("Sigmoid", [b.op("Add", [xz, hz])])
        n = b.op("Tanh", [b.op("Add", [xn, b.op("Mul", [r, hn])])])
        # h' = (1 - z) * n + z * h, written as n + z * (h - n)
        return [b.op("Add", [n, b.op("Mul", [z, b.op("Sub", [states[0], n])])])]
