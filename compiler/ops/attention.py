"""Attention ops: scaled dot-product `attention`, `multi_head_attention` and Bahdanau `additive_attention`.

Masks follow F.scaled_dot_product_attention everywhere: a bool mask is True where a query may attend
to a key, a float mask is added to the scores; it broadcasts to [..., Tq, Tk] ([N, heads, Tq, Tk] for
multi_head_attention). Note nn.MultiheadAttention's bool `attn_mask` means the opposite (True =
blocked): pass `~mask` to it. `multi_head_attention`'s `causal` lets query i see keys 0..i (top-left
aligned, as in torch); `attention`'s causal rule (aligned bottom-right for a KV cache), sliding
`window` and grouped-query heads are documented on the op.

FLOPs are 2 per multiply-add of the two score/value matmuls and the projections. FlopCounterMode on
CPU counts attention only when torch runs SDPA's math kernel (it sees the fused CPU flash kernel,
chosen for most shapes, as zero): `flop_counter_counts = False` on the two SDPA ops, whose cost equals
the counter's figure under `sdpa_kernel(SDPBackend.MATH)`. `additive_attention` is plain mm/bmm and
agrees with the counter as it runs.
"""
from __future__ import annotations

import math
from typing import Optional

from pydantic import Field

from ..errors import ShapeError
from ..ir import dims as D
from ..ir.dims import TensorType
from ..init import ZEROS, fan_in_uniform, xavier_uniform
from ..ir.params import ParamSpec
from .base import Port, Attrs, Cost, DropP, Op, Size, TorchCode, broadcast, expect, fmt_args, register, same_dim

LOWEST_F32 = -3.4028234663852886e38  # masked scores: finite, so TensorRT and softmax never see inf - inf


def _float(t: TensorType, what: str) -> None:
    expect(t.dtype.startswith(("float", "bfloat")), f"{what} has dtype {t.dtype}", "a floating-point tensor")


def _check_mask(mask: TensorType, target: tuple) -> None:
    expect(mask.dtype == "bool" or mask.dtype.startswith("float"), f"mask has dtype {mask.dtype}",
           "bool (True = may attend) or float (added to the scores)")
    ok = mask.rank <= len(target)
    if ok:
        try:
            ok = all(same_dim(a, b) for a, b in zip(broadcast([mask.shape, target]), target))
        except ShapeError:  # reported below, with the shape the mask must broadcast to
            ok = False
    expect(ok, f"mask {mask} does not broadcast to the scores",
           f"a mask broadcastable to [{', '.join(str(d) for d in target)}]")


def _sdpa_flops(batch, tq, tk, d, dv):
    return D.mul(2 * (d + dv), D.prod([batch, tq, tk]))


def _eq(a, b):
    """1 where dims a and b (each >= 1) are equal, else 0, as a dim expression."""
    if same_dim(a, b):
        return 1
    if isinstance(a, int) and isinstance(b, int):
        return 0
    return D.mul(D.floordiv(a, b), D.floordiv(b, a))


def _either(x, y):
    """x or y, for 0/1 dim expressions."""
    return D.sub(D.add(x, y), D.mul(x, y))


def _cpu_flash(q: TensorType, k: TensorType, v: TensorType, mask: TensorType | None, dropout: float,
               gqa: bool = False):
    """1 where F.scaled_dot_product_attention runs torch's fused CPU (flash) kernel in training, else
    0, as a dim expression (the batch sizes may decide). Measured on torch 2.14's CPU dispatch:
    3-d q, k, v run as [1, B, T, d]; the kernel needs 4-d q, k, v of one batch size, k and v of one
    head count equal to q's or 1, one head dim, no dropout, and no mask or a bool one of rank 2 or 4
    (any rank up to 3 for 3-d inputs); a float mask requires grad here, which the kernel refuses.
    Grouped-query heads (`enable_gqa=True`, k and v with H / g heads) run the fused kernel too."""
    if dropout or not (q.rank == k.rank == v.rank and q.rank in (3, 4)):
        return 0
    if mask is not None and (mask.dtype != "bool" or mask.rank not in ((1, 2, 3) if q.rank == 3 else (2, 4))):
        return 0
    q4, k4, v4 = ((1,) + t.shape if t.rank == 3 else t.shape for t in (q, k, v))
    sel = D.mul(_eq(q4[3], k4[3]), _eq(q4[3], v4[3]))  # one head dim
    sel = D.mul(sel, D.mul(_eq(q4[0], k4[0]), _eq(q4[0], v4[0])))  # one batch size
    heads = D.mul(_eq(k4[1], v4[1]), 1 if gqa else _either(_eq(k4[1], q4[1]), _eq(k4[1], 1)))
    return D.mul(sel, heads)


def _sdpa_kept(q: TensorType, k: TensorType, v: TensorType, mask: TensorType | None, dropout: float,
               gqa: bool = False) -> dict:
    """What SDPA keeps for backward: `flash` (1 where the fused kernel runs, `_cpu_flash`), bytes of
    tensors it makes (`extra`), where it keeps v itself (`v_kept`) and its output (`output`), all dim
    expressions; `Cost` fields are built from them.

    The fused kernel keeps q, k, v, its output, the logsumexp of every query row (float32) and a
    bool mask converted to q's dtype. The composed (math) kernel keeps q and k scaled (copies), the
    softmax weights [..., Tq, Tk] (with dropout also its mask and the dropped weights) and v, each
    as its batched matmul reads it: the operand broadcast to the result's batch dims B and flattened
    to one batch dim, which is a view where the operand's batch holds one element or all of B's,
    and a copy of the full size otherwise. With grouped-query heads (`gqa`) the math kernel reads k
    and v repeated to q's heads (copies; v's copy kept in place of v)."""
    flash = _cpu_flash(q, k, v, mask, dropout, gqa)
    if gqa:
        k, v = (t.with_shape(t.shape[:-3] + (q.shape[-3],) + t.shape[-2:]) for t in (k, v))
    lse = TensorType(q.shape[:-1], "float64" if q.dtype == "float64" else "float32")
    converted = [TensorType(mask.shape, q.dtype)] if mask is not None else []
    fused = Cost.nbytes(lse, *converted)
    lead = broadcast([q.shape[:-2], k.shape[:-2], v.shape[:-2]])
    whole = D.prod(lead)

    def mixed(t):  # 1 where t's batch holds more than one element but fewer than B's
        p = D.prod(t.shape[:-2])
        return D.mul(D.sub(1, D.floordiv(1, p)), D.sub(1, D.floordiv(p, whole)))

    def operand(t):  # bytes of the copy of t a batched matmul keeps
        full = t.with_shape(lead + t.shape[-2:])
        return D.add(D.mul(D.sub(1, mixed(t)), Cost.nbytes(t)), D.mul(mixed(t), Cost.nbytes(full)))

    scores = q.with_shape(lead + (q.shape[-2], k.shape[-2]))
    math_extra = D.add(D.add(operand(q), operand(k)), D.mul(3 if dropout else 1, Cost.nbytes(scores)))
    math_extra = D.add(math_extra, D.mul(mixed(v), Cost.nbytes(v.with_shape(lead + v.shape[-2:]))))
    math = D.sub(1, flash)
    if gqa:
        math_extra = D.add(math_extra, Cost.nbytes(v))
    v_kept = flash if gqa else D.sub(1, D.mul(math, mixed(v)))
    return {"flash": flash, "output": flash, "v_kept": v_kept,
            "extra": D.add(D.mul(flash, fused), D.mul(math, math_extra)), "math_extra": math_extra}


def _sdpa_call(q, k, v, mask, causal, dropout, scale=None, gqa=False) -> str:
    args = [q, k, v]
    if mask:
        args.append(f"attn_mask={mask}")
    if dropout:
        args.append(f"dropout_p={dropout!r} if self.training else 0.0")
    if causal:
        args.append("is_causal=True")
    if scale is not None:
        args.append(f"scale={scale!r}")
    if gqa:
        args.append("enable_gqa=True")
    return f"F.scaled_dot_product_attention({', '.join(args)})"


CAUSAL_MASK_SNIPPET = '''
def causal_mask(q, k, window=None):
    """[Tq, Tk] bool, True where query i may see key j: the queries are the last Tq of the Tk
    positions (a KV cache's new tokens; the first Tq when Tq > Tk), so query i is position
    p = i + max(Tk - Tq, 0) and sees keys j <= p, and with a window only p - window < j <= p."""
    tq, tk = q.shape[-2], k.shape[-2]
    pos = torch.arange(tq, device=q.device).unsqueeze(-1) + max(tk - tq, 0)
    key = torch.arange(tk, device=q.device)
    allowed = key <= pos
    if window is not None:
        allowed = allowed & (key > pos - window)
    return allowed
'''


def _mask_by_rule(q: TensorType, k: TensorType, causal: bool, window) -> bool:
    """Whether `attention` builds its causal mask itself (see the op's docstring): with a window, and
    with causal where Tq and Tk are not known to be equal (or Tq > Tk, where both rules agree) --
    torch's is_causal is top-left aligned, which is the op's rule only where Tq >= Tk."""
    if window is not None:
        return True
    if not causal:
        return False
    tq, tk = q.shape[-2], k.shape[-2]
    if same_dim(tq, tk) or (isinstance(tq, int) and isinstance(tk, int) and tq >= tk):
        return False
    return True


def _gqa(q: TensorType, k: TensorType) -> bool:
    """Grouped-query heads: 4-d q [N, H, Tq, d] and k [N, Hkv, Tk, d] with 1 < Hkv < H."""
    if q.rank != 4 or k.rank != 4:
        return False
    h, hkv = q.shape[1], k.shape[1]
    return isinstance(h, int) and isinstance(hkv, int) and 1 < hkv < h


def onnx_sdpa(b, q: str, k: str, v: str, rank: int, scale: float, causal: bool, mask: str | None,
              mask_is_bool: bool, bottom_right: bool = False, window: int | None = None) -> str:
    """softmax(q k^T * scale [+ mask]) v over the last two axes, with no shape baked in. `causal`
    masks keys after each query (top-left aligned; `bottom_right`: query i is position
    i + max(Tk - Tq, 0)); `window` also masks keys at or before position - window."""
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scores = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=perm)]), b.scalar(scale)])
    lowest = b.scalar(LOWEST_F32)
    if causal:
        zero, one = b.scalar(0, "int64"), b.scalar(1, "int64")
        tq, tk = b.op("Squeeze", [b.dim(q, rank - 2)]), b.op("Squeeze", [b.dim(k, rank - 2)])
        rows = b.op("Range", [zero, tq, one])
        if bottom_right or window is not None:
            rows = b.op("Add", [rows, b.op("Max", [b.op("Sub", [tk, tq]), zero])])
        rows = b.op("Unsqueeze", [rows, b.const([1])])  # [Tq, 1]: each query's position
        cols = b.op("Unsqueeze", [b.op("Range", [zero, tk, one]), b.const([0])])  # [1, Tk]
        allowed = b.op("GreaterOrEqual", [rows, cols])
        if window is not None:
            allowed = b.op("And", [allowed, b.op("Less", [rows, b.op("Add", [cols, b.scalar(window, "int64")])])])
        scores = b.op("Where", [allowed, scores, lowest])
    if mask is not None:
        scores = b.op("Where", [mask, scores, lowest]) if mask_is_bool else b.op("Add", [scores, mask])
    return b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])


class AttentionAttrs(Attrs):
    causal: bool = Field(False, description="query i attends to keys up to its own position only (the "
                         "queries are the last Tq of the Tk positions: bottom-right aligned, for a KV cache)")
    window: Optional[Size] = Field(None, description="sliding-window attention (needs causal): query at "
                                   "position p sees keys j with p - window < j <= p (Mistral's convention)")
    scale: Optional[float] = Field(None, gt=0.0, description="score scale; null: 1/sqrt(d)")
    dropout: DropP = Field(0.0, description="dropout on the attention weights, in training")


@register
class Attention(Op):
    """softmax(q k^T / sqrt(d) [+ mask]) v over q[..., Tq, d], k[..., Tk, d], v[..., Tk, dv] (F.scaled_dot_product_attention).

    Grouped-query attention: 4-d q [N, H, Tq, d] with k, v [N, Hkv, Tk, d] of fewer heads (H % Hkv == 0;
    query head h reads kv head h // (H / Hkv)); torch passes enable_gqa=True, ONNX repeats the kv heads.
    `causal`: query i is position i + max(Tk - Tq, 0) and sees keys at positions up to its own -- the
    queries are the last Tq of Tk positions (bottom-right aligned: a KV cache's new tokens attend to
    the whole cache), and where Tq > Tk the first (top-left, as torch's is_causal). Torch's fast path
    is_causal=True is used where the two rules agree: Tq and Tk the same dim (the same symbol, or
    equal sizes) or concrete with Tq > Tk; otherwise (and with a `window`) the generated code builds
    the bool mask from aranges (`causal_mask`). `window` (needs causal) keeps keys p - window < j <= p.
    """

    name = "attention"
    in_ports = (Port("q", "[..., Tq, d]"), Port("k", "[..., Tk, d]"), Port("v", "[..., Tk, dv]"),
                Port("mask", "[..., Tq, Tk]", dtype="bool or float", optional=True,
                     doc="bool: True where a query may attend; float: added to the scores"))
    out_ports = (Port("y", "[..., Tq, dv]"),)
    Attrs = AttentionAttrs
    arity = (3, 4)
    fusion = "opaque"
    train_dependent = True  # attention dropout
    flop_counter_counts = False  # only under SDPBackend.MATH (see the module docstring)
    torch_snippets = {"causal_mask": CAUSAL_MASK_SNIPPET}
    # grouped-query heads, the cache's bottom-right causal rule and a window: the built-mask path
    example = ({"q": ["N", 4, 5, 4], "k": ["N", 2, 6, 4], "v": ["N", 2, 6, 3]}, {"causal": True, "window": 3})

    def infer(self, a, ins):
        q, k, v = ins[:3]
        for t, what in ((q, "q"), (k, "k"), (v, "v")):
            expect(t.rank >= 2, f"{what} is {t}", f"{what} of rank >= 2: [..., T, features]")
            _float(t, what)
        expect(q.rank == k.rank == v.rank, f"q, k, v have ranks {q.rank}, {k.rank}, {v.rank}", "equal ranks")
        expect(same_dim(q.shape[-1], k.shape[-1]), f"q has {q.shape[-1]} features and k {k.shape[-1]}",
               "q and k with the same last dim d")
        expect(same_dim(k.shape[-2], v.shape[-2]), f"k has {k.shape[-2]} keys and v {v.shape[-2]}",
               "k and v with the same length Tk")
        expect(not (a.causal and len(ins) > 3), "both causal: true and a mask are given",
               "either causal or a mask (fold the causal pattern into the mask)")
        expect(0.0 <= a.dropout < 1.0, f"dropout={a.dropout}", "0 <= dropout < 1")
        expect(a.window is None or a.causal, f"window={a.window} without causal: true",
               "causal: true with a sliding window (keys p - window < j <= p)")
        if q.rank == 4 and k.rank == 4 and not same_dim(q.shape[1], k.shape[1]) and k.shape[1] != 1:
            h, hkv = q.shape[1], k.shape[1]
            expect(isinstance(h, int) and isinstance(hkv, int) and h % hkv == 0,
                   f"q has {h} heads and k {hkv}",
                   "k and v heads dividing q's heads (grouped-query attention: H % Hkv == 0)")
            expect(same_dim(v.shape[1], hkv), f"k has {hkv} heads and v {v.shape[1]}",
                   "k and v with the same number of heads")
        lead = self._lead(q, k, v)
        if len(ins) > 3:
            _check_mask(ins[3], lead + (q.shape[-2], k.shape[-2]))
        return [TensorType(lead + (q.shape[-2], v.shape[-1]), q.dtype)]

    @staticmethod
    def _lead(q, k, v) -> tuple:
        if _gqa(q, k):  # kv heads are repeated to q's before broadcasting
            k, v = (t.with_shape(t.shape[:1] + (q.shape[1],) + t.shape[2:]) for t in (k, v))
        return broadcast([q.shape[:-2], k.shape[:-2], v.shape[:-2]])

    def cost(self, a, ins, outs):
        q, k, v = ins[:3]
        flops = _sdpa_flops(D.prod(outs[0].shape[:-2]), q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1])
        mask = ins[3] if len(ins) > 3 else None
        if _mask_by_rule(q, k, a.causal, a.window):  # the [Tq, Tk] bool mask the code builds
            mask = TensorType((q.shape[-2], k.shape[-2]), "bool")
        kept = _sdpa_kept(q, k, v, mask, a.dropout, _gqa(q, k))
        # backward: two matmuls per forward matmul (the fused kernel's are not counted: >= holds).
        # q and k are kept where the fused kernel runs, v there or where the math kernel's view is v.
        return Cost(flops=flops, bwd_flops=D.mul(2, flops),
                    saved_inputs=((0, kept["flash"]), (1, kept["flash"]), (2, kept["v_kept"])),
                    saved_outputs=((0, kept["output"]),), saved_extra=kept["extra"])

    def to_torch(self, a, ins, m, node):
        q, k = node.in_types[0], node.in_types[1]
        gqa = _gqa(q, k)
        if _mask_by_rule(q, k, a.causal, a.window):
            window = "" if a.window is None else f", window={a.window!r}"
            mask = f"causal_mask({ins[0]}, {ins[1]}{window})"
            return TorchCode(expr=_sdpa_call(*ins[:3], mask, False, a.dropout, a.scale, gqa), helpers=("causal_mask",))
        mask = ins[3] if len(ins) > 3 else None
        return TorchCode(expr=_sdpa_call(*ins[:3], mask, a.causal, a.dropout, a.scale, gqa))

    def to_onnx(self, a, ins, b, node):
        q, kt = b.in_type(0), b.in_type(1)
        scale = a.scale if a.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        mask = ins[3] if len(ins) > 3 else None
        bool_mask = mask is not None and b.in_type(3).dtype == "bool"
        k, v = ins[1], ins[2]
        if _gqa(q, kt):  # [N, Hkv, T, d] -> [N, Hkv, g, T, d] -> [N, H, T, d]: kv head h // g for query head h
            group = q.shape[1] // kt.shape[1]

            def repeat(x):
                shape = b.op("Concat", [b.dim(x, 0), b.const([q.shape[1]]), b.dim(x, 2), b.dim(x, 3)], axis=0)
                wide = b.op("Expand", [b.op("Unsqueeze", [x, b.const([2])]), b.const([1, 1, group, 1, 1])])
                return b.op("Reshape", [wide, shape])

            k, v = repeat(k), repeat(v)
        return [onnx_sdpa(b, ins[0], k, v, q.rank, scale, a.causal, mask, bool_mask,
                          bottom_right=_mask_by_rule(q, kt, a.causal, a.window), window=a.window)]


class MhaAttrs(Attrs):
    heads: Size = Field(description="number of heads; divides the model width")
    dropout: DropP = Field(0.0, description="dropout on the attention weights, in training")
    causal: bool = Field(False, description="query i attends to keys 0..i only")
    bias: bool = Field(True, description="biases on the input and output projections")


MHA_SNIPPET = '''
class MultiHeadAttention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameter names (in_proj_weight, in_proj_bias,
    out_proj), batch first, computed with F.scaled_dot_product_attention. A bool mask is True where a
    query may attend (SDPA's convention); `causal` masks future keys."""

    def __init__(self, dim, heads, bias=True, dropout=0.0, causal=False):
        super().__init__()
        self.heads, self.dropout, self.causal = heads, dropout, causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim)) if bias else None
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key_value=None, mask=None):
        dim = query.shape[-1]
        source = query if key_value is None else key_value
        w_q, w_kv = self.in_proj_weight.split([dim, 2 * dim])
        b_q, b_kv = (None, None) if self.in_proj_bias is None else self.in_proj_bias.split([dim, 2 * dim])
        q = F.linear(query, w_q, b_q)  # [N, Tq, D]
        k, v = F.linear(source, w_kv, b_kv).chunk(2, dim=-1)  # [N, Tk, D] each
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # [N, heads, T, D/heads]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).flatten(2))  # [N, Tq, D]
'''


@register
class MultiHeadAttention(Op):
    """Multi-head attention over query[N, Tq, D] and key_value[N, Tk, D] (self-attention without it)."""

    name = "multi_head_attention"
    in_ports = (Port("query", "[N, Tq, D]"), Port("key_value", "[N, Tk, D]", optional=True, doc="default: query"),
                Port("mask", "[N, heads, Tq, Tk]", dtype="bool or float", optional=True,
                     doc="broadcastable; bool: True where a query may attend; float: added to the scores"))
    out_ports = (Port("y", "[N, Tq, D]"),)
    Attrs = MhaAttrs
    arity = (1, 3)
    fusion = "opaque"
    train_dependent = True
    flop_counter_counts = False  # the projections are counted; the attention core only under SDPBackend.MATH
    torch_snippets = {"MultiHeadAttention": MHA_SNIPPET}

    def infer(self, a, ins):
        q = ins[0]
        kv = ins[1] if len(ins) > 1 else q
        for t, what in ((q, "query"), (kv, "key_value")):
            expect(t.rank == 3, f"{what} is {t}", f"{what} of rank 3: [N, T, D] (batch first)")
            _float(t, what)
        dim = q.shape[2]
        expect(isinstance(dim, int), f"model dim {dim} is symbolic", "a concrete model dim D")
        expect(a.heads > 0 and dim % a.heads == 0, f"D={dim} is not divisible by heads={a.heads}",
               "a model dim that splits evenly into heads")
        expect(same_dim(kv.shape[2], dim) and same_dim(kv.shape[0], q.shape[0]),
               f"key_value {kv} does not match query {q}", f"key_value of shape [{q.shape[0]}, Tk, {dim}]")
        expect(not (a.causal and len(ins) > 2), "both causal: true and a mask are given",
               "either causal or a mask (fold the causal pattern into the mask)")
        expect(0.0 <= a.dropout < 1.0, f"dropout={a.dropout}", "0 <= dropout < 1")
        if len(ins) > 2:
            _check_mask(ins[2], (q.shape[0], a.heads, q.shape[1], kv.shape[1]))
        return [q]

    def params(self, a, ins):
        dim = ins[0].shape[2]
        # nn.MultiheadAttention's _reset_parameters: xavier in_proj, zero biases, out_proj as nn.Linear
        ps = {"in_proj_weight": ParamSpec((3 * dim, dim), init=xavier_uniform())}
        if a.bias:
            ps["in_proj_bias"] = ParamSpec((3 * dim,), init=ZEROS)
        ps["out_proj.weight"] = ParamSpec((dim, dim), init=fan_in_uniform(dim))
        if a.bias:
            ps["out_proj.bias"] = ParamSpec((dim,), init=ZEROS)
        return ps

    def cost(self, a, ins, outs):
        q = ins[0]
        kv = ins[1] if len(ins) > 1 else q
        n, tq, dim = q.shape
        tk = kv.shape[1]
        proj = D.add(D.mul(2 * dim * dim * 2, D.mul(n, tq)), D.mul(2 * dim * dim * 2, D.mul(n, tk)))  # q, out; k, v
        flops = D.add(proj, _sdpa_flops(n, tq, tk, dim, dim))
        # The projections keep their inputs (query; key_value when given). The heads are views of
        # the q projection [N, Tq, D] and the kv projection [N, Tk, 2D]: the fused kernel keeps both
        # and its output, which out_proj reads as a view; the composed kernel keeps its own copies
        # (see _sdpa_kept) plus a copy of v's heads for its batched matmul, and out_proj a copy of
        # the merged heads.
        q_heads = q.with_shape((n, a.heads, tq, dim // a.heads))
        kv_heads = kv.with_shape((n, a.heads, tk, dim // a.heads))
        # The math kernel's view of v's heads (strided in the kv projection) is a view only for N == 1,
        # of the whole [N, Tk, 2D] projection; otherwise a copy [N, heads, Tk, D/heads].
        kept = _sdpa_kept(q_heads, kv_heads, kv_heads, ins[2] if len(ins) > 2 else None, a.dropout)
        kv_proj, one = kv.with_shape((n, tk, 2 * dim)), D.floordiv(1, n)
        fused = D.add(Cost.nbytes(q, kv_proj, q), kept["extra"])
        v_math = D.add(D.mul(one, Cost.nbytes(kv_proj)), D.mul(D.sub(1, one), Cost.nbytes(kv)))
        math = D.add(D.add(v_math, Cost.nbytes(q)), kept["math_extra"])
        flash = kept["flash"]
        return Cost(flops=flops, bwd_flops=D.mul(2, flops), saved_inputs=tuple(range(min(len(ins), 2))),
                    saved_extra=D.add(D.mul(flash, fused), D.mul(D.sub(1, flash), math)))

    def to_torch(self, a, ins, m, node):
        dim = node.in_types[0].shape[-1]
        kw = {}
        if not a.bias:
            kw["bias"] = False
        if a.dropout:
            kw["dropout"] = a.dropout
        if a.causal:
            kw["causal"] = True
        return TorchCode(expr=f"{m}({', '.join(ins)})", init=f"MultiHeadAttention({fmt_args(dim, a.heads, **kw)})",
                         helpers=("MultiHeadAttention",))

    def to_onnx(self, a, ins, b, node):
        dim = b.in_type(0).shape[2]
        hd = dim // a.heads
        query = ins[0]
        source = ins[1] if len(ins) > 1 else query
        w = b.op("Split", [b.param(node, "in_proj_weight"), b.const([dim, dim, dim])], n_out=3, axis=0)
        bs = (b.op("Split", [b.param(node, "in_proj_bias"), b.const([dim, dim, dim])], n_out=3, axis=0)
              if a.bias else [None] * 3)

        def heads(x, wi, bi):
            y = b.op("MatMul", [x, b.op("Transpose", [wi], perm=[1, 0])])
            if bi is not None:
                y = b.op("Add", [y, bi])
            # [N, T, D] -> [N, heads, T, D/heads]; 0 copies N and T from the input at run time
            return b.op("Transpose", [b.op("Reshape", [y, b.const([0, 0, a.heads, hd])])], perm=[0, 2, 1, 3])

        q, k, v = heads(query, w[0], bs[0]), heads(source, w[1], bs[1]), heads(source, w[2], bs[2])
        mask = ins[2] if len(ins) > 2 else None
        bool_mask = mask is not None and b.in_type(2).dtype == "bool"
        y = onnx_sdpa(b, q, k, v, 4, 1.0 / math.sqrt(hd), a.causal, mask, bool_mask)
        y = b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1, 3]), b.const([0, 0, dim])])
        out = b.op("MatMul", [y, b.op("Transpose", [b.param(node, "out_proj.weight")], perm=[1, 0])])
        return [b.op("Add", [out, b.param(node, "out_proj.bias")]) if a.bias else out]


ADDITIVE_SNIPPET = '''
class AdditiveAttention(nn.Module):
    """Bahdanau attention: score[n, t] = v . tanh(W_q q[n] + W_k k[n, t]); returns (context, weights)."""

    def __init__(self, query_dim, key_dim, hidden):
        super().__init__()
        self.W_q = nn.Linear(query_dim, hidden, bias=False)
        self.W_k = nn.Linear(key_dim, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, query, keys):
        scores = self.v(torch.tanh(self.W_q(query).unsqueeze(1) + self.W_k(keys))).squeeze(-1)  # [N, T]
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # [N, Dk]
        return context, weights
'''


@register
class AdditiveAttention(Op):
    """Bahdanau additive attention of query[N, Dq] over keys[N, T, Dk] -> context [N, Dk], weights [N, T]."""

    name = "additive_attention"
    in_ports = (Port("query", "[N, Dq]"), Port("keys", "[N, T, Dk]"))
    out_ports = (Port("context", "[N, Dk]"), Port("weights", "[N, T]"))

    class Attrs(Attrs):
        hidden: Size = Field(description="width of the alignment MLP")

    arity = (2, 2)
    fusion = "opaque"
    torch_snippets = {"AdditiveAttention": ADDITIVE_SNIPPET}

    def outputs(self, a):
        return ["context", "weights"]

    def infer(self, a, ins):
        q, keys = ins
        expect(q.rank == 2, f"query is {q}", "query of rank 2: [N, Dq]")
        expect(keys.rank == 3, f"keys are {keys}", "keys of rank 3: [N, T, Dk]")
        _float(q, "query")
        _float(keys, "keys")
        expect(same_dim(q.shape[0], keys.shape[0]), f"query batch {q.shape[0]} vs keys batch {keys.shape[0]}",
               "the same batch size N")
        expect(isinstance(q.shape[1], int) and isinstance(keys.shape[2], int),
               f"feature dims {q.shape[1]}, {keys.shape[2]}", "concrete feature sizes Dq, Dk")
        expect(a.hidden > 0, f"hidden={a.hidden}", "a positive hidden size")
        n, t, dk = keys.shape
        return [TensorType((n, dk), keys.dtype), TensorType((n, t), keys.dtype)]

    def params(self, a, ins):
        return {"W_q.weight": ParamSpec((a.hidden, ins[0].shape[1]), init=fan_in_uniform(ins[0].shape[1])),
                "W_k.weight": ParamSpec((a.hidden, ins[1].shape[2]), init=fan_in_uniform(ins[1].shape[2])),
                "v.weight": ParamSpec((1, a.hidden), init=fan_in_uniform(a.hidden))}

    def cost(self, a, ins, outs):
        q, keys = ins
        n, t, dk = keys.shape
        per_query = 2 * q.shape[1] * a.hidden
        per_key = 2 * (dk * a.hidden + a.hidden + dk)  # W_k, v, and the weighted sum of keys
        flops = D.add(D.mul(per_query, n), D.mul(per_key, D.mul(n, t)))
        # backward: two matmuls per forward one. Kept: query and keys (the projections' inputs; keys
        # again for the weighted sum), the tanh energies [N, T, hidden] and the weights (output 1).
        energies = keys.with_shape((n, t, a.hidden))
        return Cost(flops=flops, bwd_flops=D.mul(2, flops), saved_inputs=(0, 1), saved_outputs=(1,),
                    saved_extra=Cost.nbytes(energies))

    def to_torch(self, a, ins, m, node):
        dq, dk = node.in_types[0].shape[-1], node.in_types[1].shape[-1]
        return TorchCode(expr=f"{m}({ins[0]}, {ins[1]})", init=f"AdditiveAttention({fmt_args(dq, dk, a.hidden)})",
                         helpers=("AdditiveAttention",))

    def to_onnx(self, a, ins, b, node):
        def proj(x, pname):
            return b.op("MatMul", [x, b.op("Transpose", [b.param(node, pname)], perm=[1, 0])])

        q = b.op("Unsqueeze", [proj(ins[0], "W_q.weight"), b.const([1])])  # [N, 1, hidden]
        energy = b.op("Tanh", [b.op("Add", [q, proj(ins[1], "W_k.weight")])])  # [N, T, hidden]
        scores = b.op("Squeeze", [proj(energy, "v.weight"), b.const([-1])])  # [N, T]
        weights = b.op("Softmax", [scores], axis=-1)
        context = b.op("MatMul", [b.op("Unsqueeze", [weights, b.const([1])]), ins[1]])  # [N, 1, Dk]
        return [b.op("Squeeze", [context, b.const([1])]), weights]
