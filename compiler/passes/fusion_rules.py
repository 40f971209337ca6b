"""The rules of `fuse_ops` (compiler/passes/fuse_ops.py), each a small `pattern` / `check` / `rewrite`
class on the rewrite mechanism (compiler/passes/rewrite.py).

A rule either rewrites the graph (attention from primitives becomes one `attention` node; dropout and
identities are removed) or only *marks* nodes in `Node.fused`, when the targets have to do the work at
lowering time because the weights must stay the training ones (`weights.safetensors` holds the
unfused parameters, so a trained checkpoint exports with the same command). The marks, and what the
targets make of them (targets/torch/folding.py, targets/onnx/folding.py):

    fold_bn(<bn id>)       a conv/linear absorbs the batch norm after it: its weight and bias are folded
                           from the training weights when lowered (or as a torch state dict loads)
    folded_into(<id>)      that batch norm: it passes its input through
    lstm | gru | rnn       a scan of one recurrent cell: run by the fused sequence kernel (nn.LSTM's)
    constant               a value of parameters and constants only, computed once at lowering time
    table                  a sinusoidal positional encoding whose table is a constant (ONNX: sliced)

`check` returns why a match must not fuse ("'conv1' is also read by 'probe'"); a rule never raises on
a spec. Rules that are about a class of ops rather than one op read the op's declared `fusion` class
(elementwise / injective / reduction / out_fusable / opaque), so a new op becomes fusable by
declaring its class.
"""
from __future__ import annotations

import math
import re

from ..errors import ShapeError
from ..ir.graph import Graph, Node
from ..limits import MAX_TENSOR_ELEMENTS
from .rewrite import Chain, Match, OpPattern, Pattern, Rule

# -- marks ---------------------------------------------------------------------------------------
FOLD_BN, FOLDED, CONSTANT, TABLE = "fold_bn", "folded_into", "constant", "table"
SEQUENCES = {"lstm_cell": "lstm", "gru_cell": "gru", "rnn_cell": "rnn"}
_MARK = re.compile(r"([a-z_]+)(?:\((.*)\))?\Z")


def mark(node: Node) -> tuple:
    """(kind, argument) of a node's fusion mark: ("fold_bn", "bn1"), ("lstm", None); (None, None) unmarked."""
    m = _MARK.match(node.fused or "")
    return (m.group(1), m.group(2)) if m else (None, None)


def set_mark(node: Node, kind: str, arg: str | None = None) -> None:
    node.fused = kind if arg is None else f"{kind}({arg})"


# Ops whose value is the same every call when their inputs are: everything but the opaque class
# (state, bodies, randomness) and the train-dependent ops (dropout). Sources have no inputs.
PURE_CLASSES = ("elementwise", "injective", "reduction", "out_fusable")
CONSTANT_SOURCES = ("constant", "parameter", "arange")
MAX_FOLDED_ELEMENTS = 1 << 24  # a folded constant is stored in the model: larger values stay computed


class Unmarked(Pattern):
    """Wraps a pattern so it matches only where none of the matched nodes carries a fusion mark (a
    marking rule would otherwise fire again on its own mark every sweep)."""

    def __init__(self, inner: Pattern):
        self.inner = inner
        self.roots = inner.roots

    def match(self, graph: Graph, node: Node) -> Match | None:
        m = self.inner.match(graph, node)
        return m if m is not None and not any(n.fused for n in m.nodes) else None


class FusionRule(Rule):
    """A rule of fuse_ops: its number in the pass docstring, the modes it runs in, one line before/after."""

    number = 0
    modes = ("safe", "inference")
    before_after = ""

    def readers(self, graph: Graph, node: Node, inside: set) -> list[str]:
        """Who reads `node` from outside `inside` (consumer ids, `output NAME`)."""
        out = [dst for dst, _, _ in graph.users(node.id) if dst not in inside]
        return out + [f"output {k}" for k, (nid, _) in graph.outputs.items() if nid == node.id]


def _tied_ids(nodes) -> set:
    """Ids of nodes that share parameters with another node, either way (`tie:` / `share:`)."""
    out = set()
    ids = {n.id for n in nodes}
    for n in nodes:
        for target in n.ties.values():
            out.add(n.id)
            parts = target.split(".")
            for k in range(len(parts) - 1, 0, -1):
                if ".".join(parts[:k]) in ids:
                    out.add(".".join(parts[:k]))
                    break
    return out


# -- 1. batch norm folded into the conv/linear before it ------------------------------------------
FOLDABLE_WEIGHTS = {"conv1d": 0, "conv2d": 0, "linear": 0}  # the op's output-channel axis of `weight`


class FoldBatchNorm(FusionRule):
    """batch_norm(conv(x)) -> conv'(x): the statistics and affine folded into the weight and bias."""

    name = "fold_batch_norm"
    number = 1
    modes = ("inference",)
    before_after = "batch_norm(conv2d(x)) -> conv2d'(x), weight and bias folded from the training weights"
    pattern = Unmarked(Chain(OpPattern(tuple(FOLDABLE_WEIGHTS) + ("matmul", "conv_transpose1d", "conv_transpose2d")),
                             "batch_norm"))

    def __init__(self, tied: set = frozenset()):
        self.tied = set(tied)

    def check(self, m, g):
        prod, bn = m.nodes
        if prod.opdef.fusion != "out_fusable":
            return f"'{prod.id}' ({prod.op}) is not out_fusable"
        if prod.op not in FOLDABLE_WEIGHTS:
            return f"'{prod.id}' ({prod.op}) has no per-output-channel weight to fold into"
        others = self.readers(g, prod, {bn.id})
        if others:
            return f"'{prod.id}' is also read by {', '.join(repr(o) for o in others)} (it needs the unnormalised value)"
        if prod.op == "linear" and prod.outputs[0].rank != 2:
            return (f"batch_norm '{bn.id}' normalises axis 1 of {prod.outputs[0]}, which is not linear "
                    f"'{prod.id}''s output features")
        for n in (prod, bn):
            if n.id in self.tied:
                return f"'{n.id}' shares parameters with another node (tie/share); its folded copy would differ"
        if bn.outputs[0].dtype not in ("float32", "float16", "float64"):
            return f"batch_norm '{bn.id}' runs in {bn.outputs[0].dtype}"
        return None

    def rewrite(self, m, g):
        prod, bn = m.nodes
        set_mark(prod, FOLD_BN, bn.id)
        set_mark(bn, FOLDED, prod.id)


# -- 2. attention written with matmul / scale / softmax -> one attention node ---------------------
class AttentionChain(Pattern):
    """matmul(dropout?(softmax(add?(scale?(matmul(q, kT)), mask))), v), rooted at the last matmul.
    The scale is `scale`, or `mul`/`div` by another input; the mask add is `add` of two inputs."""

    roots = ("matmul",)

    def match(self, graph: Graph, node: Node) -> Match | None:
        if node.op != "matmul":
            return None
        nodes = [node]
        cur = self._producer(graph, node, 0)
        if cur is not None and cur.op == "dropout":
            nodes.append(cur)
            cur = self._producer(graph, cur, 0)
        if cur is None or cur.op != "softmax":
            return None
        nodes.append(cur)
        cur = self._producer(graph, cur, 0)
        if cur is not None and cur.op == "add" and len(graph.in_edges(cur.id)) == 2:
            nodes.append(cur)
            cur = next((p for p in (self._producer(graph, cur, s) for s in (0, 1))
                        if p is not None and p.op in ("scale", "mul", "div", "matmul")), None)
        if cur is not None and cur.op in ("scale", "mul", "div"):
            nodes.append(cur)
            cur = self._producer(graph, cur, 0)
        if cur is None or cur.op != "matmul":
            return None
        nodes.append(cur)
        return Match(tuple(reversed(nodes)))

    @staticmethod
    def _producer(graph: Graph, node: Node, slot: int) -> Node | None:
        src = next(((s, p) for sl, s, p in graph.in_edges(node.id) if sl == slot), None)
        return graph.node(src[0]) if src is not None and src[1] == 0 else None


def _scalar_constant(graph: Graph, ref: tuple) -> float | None:
    """The value of a one-element float `constant` node, else None."""
    n = graph.node(ref[0])
    if n.op != "constant" or not n.attrs.dtype.startswith("float"):
        return None
    v = n.attrs.value
    while isinstance(v, list) and len(v) == 1:
        v = v[0]
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _norm_perm(perm, rank: int) -> list:
    return [p % rank for p in perm]


# An additive mask value at or below this blocks a key: after softmax its weight is exp(-1e4) = 0.
BLOCKING = -1e4


def causal_mask(graph: Graph, ref: tuple) -> int | None:
    """T when the value `ref` is a causal additive mask [T, T] built from constants the way specs
    write it -- where(i >= j, 0, -big) over aranged positions, or -big * triu(ones, 1) -- else None.
    Such a mask is what SDPA's is_causal computes itself, without reading a T x T tensor."""
    n = graph.node(ref[0])
    t = n.outputs[ref[1]]
    if ref[1] != 0 or t.rank != 2 or not isinstance(t.shape[0], int) or t.shape[0] != t.shape[1] \
            or not t.dtype.startswith("float"):
        return None
    size = t.shape[0]
    srcs = graph.inputs_of(n.id)
    if n.op == "scale" and n.attrs.factor <= BLOCKING:
        upper = graph.node(srcs[0][0])
        if upper.op == "triu" and upper.attrs.diagonal == 1 and _all_ones(graph, graph.inputs_of(upper.id)[0]):
            return size
    if n.op == "where" and len(srcs) == 3:
        zero, big = _scalar_constant(graph, srcs[1]), _scalar_constant(graph, srcs[2])
        if zero == 0.0 and big is not None and big <= BLOCKING and _lower_triangle(graph, srcs[0], size):
            return size
    return None


def _all_ones(graph: Graph, ref: tuple) -> bool:
    n = graph.node(ref[0])
    if n.op != "constant" or ref[1] != 0:
        return False
    stack = [n.attrs.value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, bool) or v != 1:
            return False
    return True


def _lower_triangle(graph: Graph, ref: tuple, size: int) -> bool:
    """`ref` is rows >= cols (or cols <= rows) of positions 0..size-1 as a column and as a row."""
    n = graph.node(ref[0])
    if ref[1] != 0 or n.op not in ("greater_equal", "less_equal"):
        return False
    a, b = graph.inputs_of(n.id)
    rows, cols = (a, b) if n.op == "greater_equal" else (b, a)
    return _positions(graph, rows, (size, 1)) and _positions(graph, cols, (1, size))


def _positions(graph: Graph, ref: tuple, shape: tuple) -> bool:
    """`ref` is arange(0, size) reshaped to `shape` ([size, 1] or [1, size])."""
    n = graph.node(ref[0])
    if ref[1] != 0 or n.op != "reshape" or tuple(n.outputs[0].shape) != shape:
        return False
    src = graph.node(graph.inputs_of(n.id)[0][0])
    a = src.attrs if src.op == "arange" else None
    return a is not None and a.length_of is None and a.start == 0 and a.step == 1 and a.end == max(shape)


class AttentionFromPrimitives(FusionRule):
    """softmax(q @ k^T * s + mask) @ v written out -> attention(q, k, v, mask) (F.scaled_dot_product_attention)."""

    name = "attention_from_primitives"
    number = 2
    before_after = ("matmul(dropout(softmax(add(scale(matmul(q, swap(k))), mask))), v) -> "
                    "attention(q, k, v, mask) {scale, dropout}")
    pattern = Unmarked(AttentionChain())

    def parts(self, m, g) -> dict:
        """The match read back: q, kT, v, mask refs, the scale factor, the dropout p and the softmax."""
        by_op = {}
        for n in m.nodes:
            by_op.setdefault(n.op, []).append(n)
        first, last = m.nodes[0], m.root
        out = {"first": first, "last": last, "softmax": by_op["softmax"][0], "factor": 1.0, "dropout": 0.0,
               "mask": None, "causal": False, "error": None}
        q, kt = g.inputs_of(first.id)
        out["q"], out["kt"] = q, kt
        out["v"] = g.inputs_of(last.id)[1]
        inside = {n.id for n in m.nodes}
        for n in m.nodes:
            if n.op == "dropout":
                out["dropout"] = float(n.attrs.p)
            elif n.op == "add":
                ins = g.inputs_of(n.id)
                mine = [r for r in ins if r[0] in inside]
                out["mask"] = next(r for r in ins if r not in mine) if len(mine) == 1 else None
                if len(mine) != 1:
                    out["error"] = f"'{n.id}' adds two values of the chain, not a mask"
            elif n.op == "scale":
                out["factor"] = float(n.attrs.factor)
            elif n.op in ("mul", "div"):
                ins = g.inputs_of(n.id)
                if len(ins) != 2 or ins[0][0] not in inside:
                    out["error"] = f"'{n.id}' ({n.op}) does not scale the scores by one other value"
                    continue
                c = _scalar_constant(g, ins[1])
                if c is None or (n.op == "div" and c == 0.0):
                    out["error"] = f"'{n.id}' {'multiplies' if n.op == 'mul' else 'divides'} the scores by " \
                                   f"'{ins[1][0]}', which is not a nonzero constant scalar"
                    continue
                out["factor"] = c if n.op == "mul" else 1.0 / c
        if out["mask"] is not None and not out["error"]:
            # a causal mask over as many queries as keys: attention's own `causal`, no mask tensor
            size = causal_mask(g, out["mask"])
            tq, tk = g.node(q[0]).outputs[q[1]].shape[-2], g.node(kt[0]).outputs[kt[1]].shape[-1]
            out["causal"] = size is not None and tq == tk == size
        return out

    def check(self, m, g):
        p = self.parts(m, g)
        if p["error"]:
            return p["error"]
        inside = {n.id for n in m.nodes}
        for n in m.nodes[:-1]:
            others = self.readers(g, n, inside)
            if others:
                return f"'{n.id}' is also read by {', '.join(repr(o) for o in others)}"
        sm = p["softmax"]
        rank = sm.outputs[0].rank
        if sm.attrs.axis % rank != rank - 1:
            return f"softmax '{sm.id}' normalises axis {sm.attrs.axis}, not the keys (the last axis)"
        if not p["factor"] > 0.0 or not math.isfinite(p["factor"]):
            return f"the scores are scaled by {p['factor']!r}; attention's scale must be positive"
        if p["dropout"] >= 1.0:
            return f"dropout p={p['dropout']} drops everything"
        q, kt, v = (g.node(r[0]).outputs[r[1]] for r in (p["q"], p["kt"], p["v"]))
        if not (q.rank == kt.rank == v.rank) or q.rank < 2:
            return f"q, k^T and v have ranks {q.rank}, {kt.rank}, {v.rank}; attention needs one rank >= 2"
        k = kt.with_shape(kt.shape[:-2] + (kt.shape[-1], kt.shape[-2]))
        ins = [q, k, v] + ([g.node(p["mask"][0]).outputs[p["mask"][1]]] if p["mask"] and not p["causal"] else [])
        from ..ops import registry
        attention = registry()["attention"]
        try:
            out = attention.infer(self.attrs(p), ins)
        except ShapeError as e:
            return f"attention refuses these inputs: {e.message}"
        if str(out[0]) != str(m.root.outputs[0]):
            return f"attention would give {out[0]}, the chain gives {m.root.outputs[0]}"
        return None

    @staticmethod
    def attrs(p: dict):
        from ..ops import registry
        return registry()["attention"].Attrs(scale=float(p["factor"]), dropout=float(p["dropout"]),
                                             causal=bool(p["causal"]))

    def rewrite(self, m, g):
        p = self.parts(m, g)
        root, first = m.root, p["first"]
        k_ref = self.keys(g, first, p["kt"])
        sources = [p["q"], k_ref, p["v"]] + ([p["mask"]] if p["mask"] and not p["causal"] else [])
        # The last matmul becomes the attention node (its id, location and readers stay), then the
        # rest of the chain, which nothing else reads, goes.
        root.op = "attention"
        root.attrs = self.attrs(p)
        root.params = {}
        g.set_inputs(root.id, sources)
        root.in_types = g.input_types(root.id)
        for n in reversed(m.nodes[:-1]):
            g.remove(n.id)

    def keys(self, g: Graph, first: Node, kt_ref: tuple) -> tuple:
        """k [..., Tk, d] from k^T: the input of the swap or transpose that made k^T when there is one,
        else a new swap of the last two axes."""
        prod = g.node(kt_ref[0])
        t = prod.outputs[kt_ref[1]]
        rank = t.rank
        swap_last = list(range(rank - 2)) + [rank - 1, rank - 2]
        if kt_ref[1] == 0 and prod.op == "swap" and sorted((prod.attrs.a % rank, prod.attrs.b % rank)) == [rank - 2, rank - 1]:
            return g.inputs_of(prod.id)[0]
        if kt_ref[1] == 0 and prod.op == "transpose":
            perm = _norm_perm(prod.attrs.perm, rank)
            undone = [perm[i] for i in swap_last]  # transpose(x, perm) then swap = transpose(x, undone)
            src = g.inputs_of(prod.id)[0]
            if undone == list(range(rank)):
                return src
            return self._add(g, first, "transpose", {"perm": undone}, src)
        return self._add(g, first, "swap", {"a": -2, "b": -1}, kt_ref)

    @staticmethod
    def _add(g: Graph, near: Node, op: str, attrs: dict, src: tuple) -> tuple:
        from ..ops import registry
        base = near.id.rpartition(".")[0]
        stem = (base + "." if base else "") + f"{near.local}_k"
        nid, k = stem, 2
        while nid in g:
            nid, k = f"{stem}{k}", k + 1
        opdef = registry()[op]
        a = opdef.Attrs(**attrs)
        ins = [g.node(src[0]).outputs[src[1]]]
        node = Node(nid, op, a, list(opdef.infer(a, ins)), ins, ["out"], loc=near.loc, chain=list(near.chain),
                    scope=near.scope)
        g.add(node)
        g.connect(src[0], src[1], nid, 0)
        return (nid, 0)


# -- 3. a scan of one recurrent cell -> the fused sequence kernel ----------------------------------
class OneNode(Pattern):
    """One node of the given ops (no link to follow)."""

    def __init__(self, *ops):
        self.roots = tuple(ops)

    def match(self, graph, node):
        return Match((node,)) if node.op in self.roots else None


class ScanToSequence(FusionRule):
    """scan(block of one lstm_cell / gru_cell / rnn_cell) -> lstm / gru / rnn (nn.LSTM's kernel, ONNX LSTM)."""

    name = "scan_to_sequence"
    number = 3
    before_after = "scan(x, h0, c0){body: lstm_cell(x_t, h, c)} -> lstm(x, h0, c0), the cell's weights kept"
    pattern = Unmarked(OneNode("scan"))

    def check(self, m, g):
        return describe_scan(m.root)[1]

    def rewrite(self, m, g):
        set_mark(m.root, describe_scan(m.root)[0]["kind"])


def describe_scan(scan: Node) -> tuple:
    """({kind, cell, x, h, c, batch_first, reverse, outputs}, None) for a scan a sequence kernel can
    run, else (None, why not). `x`, `h`, `c` index the scan's inputs; `outputs` says, per scan output,
    which value of the kernel it is: "h", "c" (final states) or "y" (the stacked new states)."""
    a, body = scan.attrs, scan.body
    inner = [n for n in body.topo() if n.op != "input"]
    if len(inner) != 1 or inner[0].op not in SEQUENCES:
        ops = ", ".join(f"{n.op} '{n.local}'" for n in inner[:4]) + (" ..." if len(inner) > 4 else "")
        return None, (f"the body of '{scan.id}' is not one recurrent cell (it has {ops or 'no nodes'}); "
                      "only lstm_cell, gru_cell or rnn_cell alone runs as one sequence kernel")
    cell = inner[0]
    kind = SEQUENCES[cell.op]
    need = 3 if kind == "lstm" else 2
    srcs = body.inputs_of(cell.id)
    if len(srcs) != need:
        return None, (f"{cell.op} '{cell.local}' reads {len(srcs)} inputs; without its state "
                      f"({'h and c' if kind == 'lstm' else 'h'}) it restarts from zeros every step")
    names = {f"{scan.id}.{k}": (i, k, r) for i, (k, r) in enumerate(zip(a.inputs, a.roles))}
    roles = []
    for (src, port), want in zip(srcs, ("over", "carry", "carry")):
        if src not in names or port != 0:
            return None, f"{cell.op} '{cell.local}' reads '{src}', not a block input"
        i, k, r = names[src]
        if r != want:
            return None, f"{cell.op} '{cell.local}' reads '{k}' ({r}) where it needs a {want} input"
        roles.append((i, k))
    carried = [k for _, k in roles[1:]]
    for pos, k in enumerate(carried):
        if body.outputs.get(k) != (cell.id, pos):
            return None, f"carried state '{k}' is not the cell's new {('h', 'c')[pos]}"
    if sorted(a.carry) != sorted(carried):
        return None, f"the scan carries {', '.join(a.carry)}; the cell's state is {', '.join(carried)}"
    for k, (nid, port) in body.outputs.items():
        if k not in a.carry and (nid, port) != (cell.id, 0):
            return None, f"per-step output '{k}' is not the cell's new h (the kernel stacks only h)"
    x_t = a.inputs[roles[0][0]]
    x_outer = scan.in_types[roles[0][0]]
    axis = a.axis % x_outer.rank if x_outer.rank else a.axis
    if x_outer.rank != 3 or axis not in (0, 1):
        return None, f"'{x_t}' is {x_outer} scanned along axis {a.axis}; the kernel runs [N, T, C] or [T, N, C]"
    if x_outer.dtype != "float32":
        return None, f"'{x_t}' is {x_outer.dtype}; the fused kernels here run float32"
    states = {k: ("h", "c")[pos] for pos, k in enumerate(carried)}
    outputs = [states[k] for k in a.carry] + ["y" for k in body.outputs if k not in a.carry]
    return {"kind": kind, "cell": cell, "x": roles[0][0], "h": roles[1][0],
            "c": roles[2][0] if kind == "lstm" else None, "batch_first": axis == 1, "reverse": bool(a.reverse),
            "outputs": outputs}, None


# -- 4. inference simplifications --------------------------------------------------------------
class DropDropout(FusionRule):
    """dropout(x) -> x, and gaussian_sample(mu, logvar) -> mu: what they are in eval mode."""

    name = "drop_dropout"
    number = 4
    modes = ("inference",)
    before_after = "dropout(x) -> x; gaussian_sample(mu, logvar) -> mu (their eval-mode values)"
    pattern = Unmarked(OneNode("dropout", "gaussian_sample"))

    def rewrite(self, m, g):
        (n,) = m.nodes
        g.replace_all_uses((n.id, 0), g.inputs_of(n.id)[0])
        g.remove(n.id)


def identity_like(g: Graph, n: Node) -> str | None:
    """Why `n` returns its input unchanged (in training too), or None."""
    if len(g.in_edges(n.id)) != 1 or len(n.outputs) != 1:
        return None
    t_in = n.in_types[0] if n.in_types else None
    same = t_in is not None and str(t_in) == str(n.outputs[0])
    if n.op == "identity":
        return "identity"
    if n.op == "scale" and n.attrs.factor == 1.0:
        return "scale by 1"
    if n.op == "cast" and same:
        return "cast to its own dtype"
    if n.op == "transpose" and same and _norm_perm(n.attrs.perm, t_in.rank) == list(range(t_in.rank)):
        return "identity permutation"
    if n.op == "swap" and same and t_in.rank and n.attrs.a % t_in.rank == n.attrs.b % t_in.rank:
        return "swap of an axis with itself"
    if n.op in ("reshape", "flatten") and same:
        return f"{n.op} to its own shape"
    return None


class IdentityLike(OneNode):
    """One node that returns its input unchanged (`identity_like`)."""

    def match(self, graph, node):
        return Match((node,)) if node.op in self.roots and identity_like(graph, node) else None


class DropIdentity(FusionRule):
    """identity-like nodes (identity, scale by 1, a cast or reshape to what it already is) -> their input."""

    name = "drop_identity"
    number = 5
    before_after = "identity(x), scale(x){factor=1}, reshape(x) to x's own shape -> x"
    pattern = Unmarked(IdentityLike("identity", "scale", "cast", "transpose", "swap", "reshape", "flatten"))

    def rewrite(self, m, g):
        (n,) = m.nodes
        g.replace_all_uses((n.id, 0), g.inputs_of(n.id)[0])
        g.remove(n.id)


def constant_nodes(g: Graph) -> set:
    """Ids of the nodes of `g` whose values depend on parameters and constants only: sources
    (constant, parameter, fixed arange) and pure ops (by fusion class) all of whose inputs are such."""
    out = set()
    for n in g.topo():
        srcs = g.inputs_of(n.id)
        if n.op in CONSTANT_SOURCES and not srcs:
            out.add(n.id)
        elif srcs and n.body is None and n.opdef.fusion in PURE_CLASSES and not n.opdef.train_dependent \
                and all(s in out for s, _ in srcs):
            out.add(n.id)
    return out


class ConstantCone(Pattern):
    """A node computed from constants only that something else reads (the edge of a constant subgraph)."""

    roots = None

    def __init__(self):
        self.cache: tuple = (None, None, set())  # (graph, its topological order, constant_nodes(graph))

    def match(self, graph, node):
        if node.fused or node.op in CONSTANT_SOURCES or not graph.inputs_of(node.id):
            return None
        order = graph.topo()  # a new list after every edit of the graph: the cache is current while it is
        if self.cache[0] is not graph or self.cache[1] is not order:
            self.cache = (graph, order, constant_nodes(graph))
        consts = self.cache[2]
        if node.id not in consts:
            return None
        readers = [dst for dst, _, _ in graph.users(node.id) if dst not in consts]
        outs = [k for k, (nid, _) in graph.outputs.items() if nid == node.id]
        return Match((node,)) if readers or outs else None


class FoldConstants(FusionRule):
    """A subgraph of parameters and constants only -> one constant, computed at lowering time."""

    name = "fold_constants"
    number = 6
    # Training-safe: a value of constants only has no gradient, and torch computes only the cones
    # without weights once in __init__ (a cone of weights would go stale as they train).
    modes = ("safe", "inference")
    before_after = "scale(triu(constant)) read by add(scores, .) -> constant, computed once when lowered"
    pattern = Unmarked(ConstantCone())

    def __init__(self):
        self.pattern = Unmarked(ConstantCone())  # its own cache per run

    def check(self, m, g):
        (n,) = m.nodes
        t = n.outputs[0]
        if any(not isinstance(d, int) for d in t.shape):
            return f"'{n.id}' has a symbolic shape {t}"
        numel = math.prod(t.shape)
        if numel > min(MAX_FOLDED_ELEMENTS, MAX_TENSOR_ELEMENTS):
            return f"'{n.id}' holds {numel:,} elements; folding it would store them in the model"
        cone = constant_cone(g, n)
        scopes = {g.node(c).scope for c in cone}
        if len(scopes) > 1:
            return f"the constant subgraph of '{n.id}' spans block instances ({', '.join(sorted(cone)[:3])} ...)"
        return None

    def rewrite(self, m, g):
        set_mark(m.root, CONSTANT)


def constant_cone(g: Graph, node: Node) -> list[str]:
    """Ids of the computed (non-source) nodes a constant node depends on, itself included."""
    out, stack = [], [node.id]
    while stack:
        nid = stack.pop()
        n = g.node(nid)
        if nid in out or n.op in CONSTANT_SOURCES:
            continue
        out.append(nid)
        stack.extend(s for s, _ in g.inputs_of(nid))
    return out


class PositionalTable(FusionRule):
    """positional_encoding {sinusoidal} -> x + table[:T], the table a constant of the longest T declared."""

    name = "constant_positional_table"
    number = 7
    modes = ("inference",)
    before_after = "positional_encoding(x){sinusoidal} -> x + slice(table), table computed once when lowered"
    pattern = Unmarked(OneNode("positional_encoding"))

    def check(self, m, g):
        (n,) = m.nodes
        if n.attrs.kind != "sinusoidal":
            return f"'{n.id}' is a learned table already"
        rows = table_rows(g, n)
        if rows is None:
            return f"the sequence length {n.outputs[0].shape[1]} of '{n.id}' has no declared maximum"
        if rows * n.outputs[0].shape[2] > MAX_FOLDED_ELEMENTS:
            return f"the table of '{n.id}' would hold {rows * n.outputs[0].shape[2]:,} elements"
        return None

    def rewrite(self, m, g):
        set_mark(m.root, TABLE)


def table_rows(g: Graph, n: Node) -> int | None:
    """Rows of a constant positional table: the concrete T, or its symbol's declared max (capped by max_len)."""
    t = n.outputs[0].shape[1]
    if isinstance(t, int):
        return t
    hi = (g.symbols.get(str(t)) or {}).get("max")
    return min(int(hi), n.attrs.max_len) if isinstance(hi, int) else None


def rules(tied: set = frozenset()) -> list:
    """Every rule, in priority order (the first to fire at a node wins)."""
    return [DropDropout(), DropIdentity(), FoldBatchNorm(tied), AttentionFromPrimitives(), ScanToSequence(),
            PositionalTable(), FoldConstants()]


__all__ = ["mark", "set_mark", "rules", "describe_scan", "causal_mask", "constant_cone", "table_rows", "identity_like",
           "FOLD_BN", "FOLDED", "CONSTANT", "TABLE", "SEQUENCES", "FusionRule", "_tied_ids"]
