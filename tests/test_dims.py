"""Symbolic dims: canonical arithmetic, so equal sizes written differently compare equal."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.compiler.ir import dims as D


def test_constants_fold_and_symbols_stay():
    assert D.add(2, 3) == 5 and D.mul("N", 1) == "N" and D.add("T", 0) == "T"
    assert D.mul(2, "T") == D.mul("T", 2) == "2*T"
    assert D.floordiv(D.mul(4, "T"), 2) == "2*T"
    assert D.sub(D.add("T", 1), 1) == "T"


def test_strided_branches_agree():
    # main path: 3x3/1 then 3x3/2; shortcut: 1x1/2 -- a residual add needs these equal
    main = D.conv_out(D.conv_out("S", 3, 1, 1), 3, 2, 1)
    short = D.conv_out("S", 1, 2, 0)
    assert main == short == "(S+1)//2"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2), st.booleans()),
                min_size=1, max_size=4), st.integers(16, 200))
def test_symbolic_conv_chains_evaluate_like_integers(layers, size):
    sym, val = "S", size
    for k, s, p, d, ceil in layers:
        if val + 2 * p - d * (k - 1) - 1 < 0:
            return
        sym, val = D.conv_out(sym, k, s, p, d, ceil), D.conv_out(val, k, s, p, d, ceil)
    assert D.resolve(sym, {"S": size}) == val
    assert D.canonical(sym) == sym  # rendering is a fixed point


def test_negative_division_atoms_keep_their_meaning():
    e = D.sub(1, D.floordiv(1, "N"))  # 0 for N=1, else 1
    assert [D.resolve(e, {"N": n}) for n in (1, 2, 5)] == [0, 1, 1]
    e = D.sub("T", D.conv_out("T", 3, 2, 1))  # T - (T+1)//2
    assert [D.resolve(e, {"T": t}) for t in (4, 5)] == [2, 2]


def test_division_atoms_as_right_factors_keep_their_meaning():
    # `*` and `//` associate to the left: 4096*(640*N+4095)//4096 would be 640*N+4095
    e = D.mul(4096, D.floordiv(D.add(D.mul(640, "N"), 4095), 4096))  # whole pages of 640*N bytes
    assert [D.resolve(e, {"N": n}) for n in (1, 6, 7)] == [4096, 4096, 8192]
    e = D.mul("M", D.floordiv(D.add("T", 1), 2))
    f = D.mul(D.floordiv("M", 2), D.floordiv(D.add("T", 1), 2))
    assert [D.resolve(x, {"M": 3, "T": 4}) for x in (e, f)] == [6, 2]
    assert D.canonical(e) == e and D.canonical(f) == f
