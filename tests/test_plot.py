"""The PNG plots of `nnspec sweep` and the coffee automaton: with matplotlib (labelled, the same
bytes on every call) and with the standard-library canvas it falls back to (decoded here: the
fitted line's red and the points' blue where the data puts them)."""
from __future__ import annotations

import struct
import zlib

import pytest

from nnspec.runtime import plot

N, LOSS = [2e3, 8e3, 3e4, 1e5], [3.0, 2.7, 2.45, 2.2]
FIT = {"log_intercept": 1.9, "alpha_N": 0.07, "alpha_N_stderr": 0.003}


def decode(png: bytes):
    """(width, height, rows of RGB tuples) of an 8-bit RGB PNG whose rows use filter 0 (the canvas's)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    at, data = 8, b""
    while at < len(png):
        (n,), kind = struct.unpack(">I", png[at:at + 4]), png[at + 4:at + 8]
        if kind == b"IDAT":
            data += png[at + 8:at + 8 + n]
        at += 12 + n
    raw = zlib.decompress(data)
    stride = 1 + 3 * width
    rows = [raw[y * stride + 1:(y + 1) * stride] for y in range(height)]
    return width, height, [[tuple(r[3 * x:3 * x + 3]) for x in range(width)] for r in rows]


def test_matplotlib_plots_are_labelled_pngs_with_stable_bytes():
    pytest.importorskip("matplotlib")
    a, b = plot.loglog_png(N, LOSS, FIT), plot.loglog_png(N, LOSS, FIT)
    assert a.startswith(b"\x89PNG\r\n\x1a\n") and a == b
    c = plot.curves_png([0, 1, 2], [[1, 5, 6], [1, 4, 2]], labels=("entropy", "complexity"), xlabel="steps")
    assert c.startswith(b"\x89PNG\r\n\x1a\n") and len(c) > 5000


def test_without_matplotlib_the_canvas_draws_points_and_fit(monkeypatch):
    monkeypatch.setattr(plot, "_matplotlib", lambda: None)
    width, height, px = decode(plot.loglog_png(N, LOSS, FIT))
    assert (width, height) == (480, 360)
    blue = {(x, y) for y in range(height) for x in range(width) if px[y][x] == plot.BLUE}
    red = [(x, y) for y in range(height) for x in range(width) if px[y][x] == plot.RED]
    assert len(blue) == 4 * 49  # four 7 x 7 squares
    # the fit falls from left to right: its leftmost red pixel sits higher (smaller y) than its rightmost
    left, right = min(red), max(red)
    assert left[1] < right[1]
    width, height, px = decode(plot.curves_png([0, 1, 2, 3], [[0, 2, 3, 3], [0, 3, 1, 0]]))
    assert (width, height) == (640, 360)
    assert any(plot.RED in row for row in px) and any(plot.BLUE in row for row in px)
