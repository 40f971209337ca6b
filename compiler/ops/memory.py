"""Memory addressing primitives of the Neural Turing Machine (Graves et al. 2014): content
addressing's cosine similarity between a key and every memory row, and location addressing's
circular convolution of a weighting with a shift distribution.

Both are matrix products in their torch and ONNX lowerings (a batched matmul of the memory with
the key; of the rolled copies of the weighting with the shift weights), so FlopCounterMode counts
them: 2 per multiply-add, as the cost says. The ONNX forms use only MatMul, ReduceSum, Sqrt, Max,
Div, Slice and Concat with constant indices, which onnxruntime and TensorRT-RTX both run.
"""
from __future__ import annotations

from pydantic import Field

from ..ir import dims as D
from ..ir.dims import TensorType
from .base import Attrs, Cost, Eps, NoAttrs, Op, Port, TorchCode, expect, register, same_dim
from .linear import FLOAT_DTYPES

COSINE_SNIPPET = '''
def cosine_similarity(key, memory, eps=1e-08):
    """cos(key, row) for every memory row: key [..., M], memory [..., R, M] -> [..., R]; the product
    of the norms is floored at eps."""
    dot = torch.matmul(memory, key.unsqueeze(-1)).squeeze(-1)
    norms = memory.norm(dim=-1) * key.norm(dim=-1, keepdim=True)
    return dot / norms.clamp_min(eps)
'''

CIRCULAR_SNIPPET = '''
def circular_convolution(w, s):
    """w~[..., i] = sum_k s[..., k] * w[..., (i - (k - K)) mod R]: w [..., R] shifted circularly by
    -K..K and mixed by the shift weights s [..., 2K + 1] (s[..., K] keeps w in place)."""
    K = s.shape[-1] // 2
    rolled = torch.stack([w.roll(k - K, dims=-1) for k in range(s.shape[-1])], dim=-1)  # [..., R, 2K + 1]
    return torch.matmul(rolled, s.unsqueeze(-1)).squeeze(-1)
'''


def _float(t: TensorType, what: str) -> None:
    expect(t.dtype in FLOAT_DTYPES, f"{what} has dtype {t.dtype}", "a floating-point tensor")


def _same_batch(x: TensorType, y: TensorType, what: str) -> None:
    expect(len(x.shape) == len(y.shape) and all(same_dim(p, q) for p, q in zip(x.shape, y.shape)),
           f"{what}: batch dims {list(x.shape)} and {list(y.shape)}", "the same leading (batch) dims")


@register
class CosineSimilarity(Op):
    """Cosine similarity of a key[..., M] with every row of memory[..., R, M] -> [..., R]:
    k . m_i / max(|k| |m_i|, eps) (the NTM's content addressing, before the key strength)."""

    name = "cosine_similarity"
    in_ports = (Port("key", "[..., M]"), Port("memory", "[..., R, M]"))
    out_ports = (Port("out", "[..., R]", doc="one similarity in [-1, 1] per memory row"),)
    arity = (2, 2)
    fusion = "opaque"
    torch_snippets = {"cosine_similarity": COSINE_SNIPPET}
    example = ({"k": ["N", 4], "mem": ["N", 6, 4]}, {})

    class Attrs(Attrs):
        eps: Eps = Field(1e-8, description="floor of the product of the norms (torch's default)")

    def infer(self, a, ins):
        k, m = ins
        _float(k, "key")
        _float(m, "memory")
        expect(k.dtype == m.dtype, f"key is {k.dtype}, memory {m.dtype}", "one dtype")
        expect(k.rank >= 1 and m.rank == k.rank + 1, f"key {k}, memory {m}",
               "key [..., M] and memory [..., R, M] (one more axis)")
        expect(same_dim(k.shape[-1], m.shape[-1]), f"key width {k.shape[-1]} vs memory width {m.shape[-1]}",
               "the same word width M")
        _same_batch(k.with_shape(k.shape[:-1]), m.with_shape(m.shape[:-2]), "cosine_similarity")
        return [m.with_shape(m.shape[:-1])]

    def cost(self, a, ins, outs):
        k, m = ins
        # the matmul memory @ key: 2 per multiply-add; its backward one matmul per operand.
        flops = D.mul(2, D.prod(m.shape))
        # Kept: key and memory (the matmul's operands, the norms' inputs), and four [..., R] tensors
        # (the memory norms, their product with the key norm, its clamped copy, the dot products)
        # plus the key norms [..., 1].
        out = outs[0]
        extra = D.add(D.mul(4, Cost.nbytes(out)), Cost.nbytes(k.with_shape(k.shape[:-1] + (1,))))
        return Cost(flops=flops, bwd_flops=D.mul(2, flops), saved_inputs=(0, 1), saved_extra=extra)

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"cosine_similarity({ins[0]}, {ins[1]}, eps={a.eps!r})",
                         helpers=("cosine_similarity",))

    def to_onnx(self, a, ins, b, node):
        k, mem = ins
        last = b.const([-1])
        dot = b.op("Squeeze", [b.op("MatMul", [mem, b.op("Unsqueeze", [k, last])]), last])
        mnorm = b.op("Sqrt", [b.op("ReduceSum", [b.op("Mul", [mem, mem]), last], keepdims=0)])
        knorm = b.op("Sqrt", [b.op("ReduceSum", [b.op("Mul", [k, k]), last], keepdims=1)])
        eps = b.scalar(a.eps, "float32") if b.dtype() == 1 else b.op("Cast", [b.scalar(a.eps, "float32")],
                                                                      to=b.dtype())
        return [b.op("Div", [dot, b.op("Max", [b.op("Mul", [mnorm, knorm]), eps])])]


@register
class CircularConvolution(Op):
    """Shift a weighting w[..., R] circularly by -K..K and mix the shifts by s[..., 2K+1]:
    out[..., i] = sum_k s[..., k] w[..., (i - k + K) mod R] (the NTM's rotational shift, eq. 8;
    s[..., K] is the weight of no shift, s[..., K + 1] of moving the focus one row forward)."""

    name = "circular_convolution"
    in_ports = (Port("w", "[..., R]", doc="the weighting"), Port("s", "[..., 2K+1]", doc="shift weights"))
    out_ports = (Port("out", "[..., R]"),)
    arity = (2, 2)
    fusion = "opaque"
    Attrs = NoAttrs
    torch_snippets = {"circular_convolution": CIRCULAR_SNIPPET}
    example = ({"w": ["N", 6], "s": ["N", 3]}, {})

    def infer(self, a, ins):
        w, s = ins
        _float(w, "w")
        _float(s, "s")
        expect(w.dtype == s.dtype, f"w is {w.dtype}, s {s.dtype}", "one dtype")
        expect(w.rank >= 1 and s.rank == w.rank, f"w {w}, s {s}", "w [..., R] and s [..., 2K+1] of one rank")
        width = s.shape[-1]
        expect(isinstance(width, int) and width % 2 == 1, f"{width} shift weights",
               "a fixed, odd number 2K+1 of shift weights (shifts -K..K)")
        R = w.shape[-1]
        expect(not isinstance(R, int) or width // 2 < R, f"shifts up to {width // 2} over {R} locations",
               "K < R (each shift a distinct rotation)")
        _same_batch(w.with_shape(w.shape[:-1]), s.with_shape(s.shape[:-1]), "circular_convolution")
        return [w]

    def cost(self, a, ins, outs):
        w, s = ins
        width = s.shape[-1]
        flops = D.mul(2, D.mul(width, D.prod(w.shape)))
        # Kept: the rolled copies [..., R, 2K+1] and s (the matmul's operands).
        rolled = w.with_shape(w.shape + (width,))
        return Cost(flops=flops, bwd_flops=D.mul(2, flops), saved_inputs=(1,), saved_extra=Cost.nbytes(rolled))

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=f"circular_convolution({ins[0]}, {ins[1]})", helpers=("circular_convolution",))

    def to_onnx(self, a, ins, b, node):
        w, s = ins
        width = b.in_type(1).shape[-1]
        K = width // 2
        last = b.const([-1])
        end = b.const([2**62])
        pieces = []
        for k in range(width):
            d = k - K  # out[i] = w[i - d]: the last d entries move to the front (d < 0: the first -d to the back)
            if d == 0:
                rolled = w
            else:
                cut = b.const([-d])
                head = b.op("Slice", [w, cut, end, last])
                tail = b.op("Slice", [w, b.const([0]), cut, last])
                rolled = b.op("Concat", [head, tail], axis=-1)
            pieces.append(b.op("Unsqueeze", [rolled, last]))
        stacked = b.op("Concat", pieces, axis=-1)
        return [b.op("Squeeze", [b.op("MatMul", [stacked, b.op("Unsqueeze", [s, last])]), last])]
