"""Plots as PNG files:

- `loglog_png`: a sweep's points on log-log axes with its fitted power law (`nnspec sweep`);
- `curves_png`: two series over one x axis, each on its own scale (the coffee automaton's entropy
  and complexity over time).

With matplotlib installed (`pip install 'nnspec[plot]'`) they are drawn by it, with labelled axes
and a legend (Agg, no pyplot state); without it by `Canvas`, which draws and encodes with the
standard library alone (zlib, struct): the same points and lines, no text.
"""
from __future__ import annotations

import math
import struct
import zlib

BLACK, GREY = (0, 0, 0), (200, 200, 200)
BLUE, RED, GREEN = (31, 119, 180), (214, 39, 40), (44, 160, 44)


class Canvas:
    """An RGB image with a plot area `margin` pixels inside its border, over data ranges
    [x0, x1] x [y0, y1]."""

    def __init__(self, x0, x1, y0, y1, width: int = 480, height: int = 360, margin: int = 40):
        self.w, self.h, self.m = width, height, margin
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 + 1.0)
        self.y0, self.y1 = y0, (y1 if y1 > y0 else y0 + 1.0)
        self.img = bytearray(b"\xff" * (width * height * 3))

    def put(self, x: int, y: int, color) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.img[i:i + 3] = bytes(color)

    def px(self, v) -> int:
        return int(self.m + (v - self.x0) / (self.x1 - self.x0) * (self.w - 2 * self.m))

    def py(self, v) -> int:
        return int(self.h - self.m - (v - self.y0) / (self.y1 - self.y0) * (self.h - 2 * self.m))

    def axes(self) -> None:
        for x in range(self.m, self.w - self.m + 1):
            self.put(x, self.h - self.m, BLACK)
        for y in range(self.m, self.h - self.m + 1):
            self.put(self.m, y, BLACK)

    def vline(self, v, color=GREY) -> None:
        gx = self.px(v)
        if self.m <= gx <= self.w - self.m:
            for y in range(self.m, self.h - self.m):
                self.put(gx, y, color)

    def line(self, xs, ys, color) -> None:
        """A polyline through the data points (xs, ys), 3 pixels thick, clipped to the plot area."""
        pts = [(self.px(x), self.py(y)) for x, y in zip(xs, ys)]
        for (ax, ay), (bx, by) in zip(pts, pts[1:]):
            n = max(abs(bx - ax), abs(by - ay), 1)
            for k in range(n + 1):
                x, y = ax + (bx - ax) * k // n, ay + (by - ay) * k // n
                for t in (-1, 0, 1):
                    if self.m <= y + t <= self.h - self.m:
                        self.put(x, y + t, color)

    def square(self, x, y, color, r: int = 3) -> None:
        cx, cy = self.px(x), self.py(y)
        for dx in range(-r, r + 1):
            for dy in range(-r, r + 1):
                self.put(cx + dx, cy + dy, color)

    def png(self) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        row = self.w * 3
        rows = b"".join(b"\x00" + bytes(self.img[y * row:(y + 1) * row]) for y in range(self.h))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def _matplotlib():
    """matplotlib's Figure and Agg canvas, or None where matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _png_of(fig, canvas_cls) -> bytes:
    import io
    buf = io.BytesIO()
    canvas_cls(fig).print_png(buf, metadata={"Software": None})  # no version stamp: the same bytes each run
    return buf.getvalue()


def _padded(lo, hi, frac: float, least: float):
    pad = (hi - lo) * frac or least
    return lo - pad, hi + pad


def loglog_png(n, loss, fit: dict | None, width: int = 480, height: int = 360) -> bytes:
    """The points (n, loss) on log-log axes with grey lines at the decades of n and, given a fit
    (`log_intercept`, `alpha_N`), its line log L = a - alpha log N."""
    mpl = _matplotlib()
    if mpl is not None:
        Figure, Agg = mpl
        fig = Figure(figsize=(6.4, 4.4), dpi=100)
        ax = fig.add_subplot()
        ax.loglog(n, loss, "s", color="tab:blue", label="final validation loss")
        if fit is not None:
            lo, hi = min(n) / 1.3, max(n) * 1.3
            err = fit.get("alpha_N_stderr")
            label = f"fit: alpha_N = {fit['alpha_N']:.4f}" + (f" +- {err:.4f}" if err is not None else "")
            ax.loglog([lo, hi], [math.exp(fit["log_intercept"] - fit["alpha_N"] * math.log(x)) for x in (lo, hi)],
                      "-", color="tab:red", label=label)
        from matplotlib.ticker import FormatStrFormatter
        for which in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            which(FormatStrFormatter("%.2f"))  # a loss spans less than a decade: plain numbers
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("loss L (nats per token)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        return _png_of(fig, Agg)
    lx = [math.log(v) for v in n]
    ly = [math.log(v) for v in loss]
    c = Canvas(*_padded(min(lx), max(lx), 0.1, 0.5), *_padded(min(ly), max(ly), 0.1, 0.1), width, height)
    for d in range(math.floor(c.x0 / math.log(10)), math.ceil(c.x1 / math.log(10)) + 1):  # decades of N
        c.vline(d * math.log(10))
    c.axes()
    if fit is not None:
        a, b = fit["log_intercept"], -fit["alpha_N"]
        c.line([c.x0, c.x1], [a + b * c.x0, a + b * c.x1], RED)
    for u, v in zip(lx, ly):
        c.square(u, v, BLUE)
    return c.png()


def curves_png(x, series, colors=(BLUE, RED, GREEN), width: int = 640, height: int = 360,
               labels=(), xlabel: str = "") -> bytes:
    """Each series of `series` (lists as long as x) as a line, scaled from 0 to its own maximum
    (with matplotlib: the first on the left axis, the second on a right one, named by `labels`)."""
    mpl = _matplotlib()
    if mpl is not None and 1 <= len(series) <= 2:
        Figure, Agg = mpl
        fig = Figure(figsize=(width / 100, height / 100), dpi=100)
        ax = fig.add_subplot()
        axes = [ax, ax.twinx()][:len(series)]
        names = list(labels) + [""] * len(series)
        for a, ys, color, name in zip(axes, series, ("tab:blue", "tab:red"), names):
            a.plot(x, ys, color=color)
            a.set_ylabel(name, color=color)
            a.set_ylim(0, max(ys) * 1.05 or 1)
        ax.set_xlabel(xlabel)
        fig.tight_layout()
        return _png_of(fig, Agg)
    c = Canvas(min(x), max(x), 0.0, 1.05, width, height)
    c.axes()
    for ys, color in zip(series, colors):
        top = max(ys) or 1
        c.line(x, [y / top for y in ys], color)
    return c.png()


__all__ = ["Canvas", "curves_png", "loglog_png"]
