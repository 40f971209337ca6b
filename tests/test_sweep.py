"""`nnspec sweep`: the grid, the power-law fit on exact synthetic data, non-embedding parameters
from the cost model, and a 4-point sweep of gpt2's tiny preset on CPython's help topics."""
from __future__ import annotations

import json
import math

import pytest
import torch

import nnspec.compiler as c
from nnspec.runtime.cli import main as nnspec
from nnspec.runtime.sweep import (MAX_POINTS, GridError, fit_power_law, grid_points, non_embedding_params,
                                  parse_grid)

torch.set_num_threads(1)


def test_fit_recovers_an_exact_power_law():
    alpha, n_c = 0.076, 8.8e13  # Kaplan et al.'s alpha_N and N_c (eq. 1.1)
    n = [1e3, 1e4, 3e4, 1e5, 1e6, 1e7]
    loss = [(n_c / x) ** alpha for x in n]
    fit = fit_power_law(n, loss)
    assert fit["alpha_N"] == pytest.approx(alpha, rel=1e-12)
    assert fit["N_c"] == pytest.approx(n_c, rel=1e-9)
    assert fit["alpha_N_stderr"] == pytest.approx(0.0, abs=1e-12)
    assert fit["r2"] == pytest.approx(1.0)


def test_fit_error_is_the_slope_standard_error():
    """Noisy data: the error equals the closed form sqrt(SSR / (n - 2) / Sxx) computed here."""
    n = [1e3, 1e4, 1e5, 1e6]
    loss = [4.0, 3.1, 2.6, 2.0]
    fit = fit_power_law(n, loss)
    x = [math.log(v) for v in n]
    y = [math.log(v) for v in loss]
    xm, ym = sum(x) / 4, sum(y) / 4
    sxx = sum((a - xm) ** 2 for a in x)
    b = sum((a - xm) * (d - ym) for a, d in zip(x, y)) / sxx
    ssr = sum((d - ym - b * (a - xm)) ** 2 for a, d in zip(x, y))
    assert fit["alpha_N"] == pytest.approx(-b)
    assert fit["alpha_N_stderr"] == pytest.approx(math.sqrt(ssr / 2 / sxx))
    assert fit["alpha_N_stderr"] > 0


def test_fit_needs_two_sizes():
    with pytest.raises(ValueError, match="two distinct sizes"):
        fit_power_law([100, 100], [2.0, 2.1])
    assert fit_power_law([100, 1000], [2.0, 1.5])["alpha_N_stderr"] is None


def test_grid_is_the_product_of_list_valued_sets():
    axes, fixed = parse_grid(["d_model=[32,64]", "layers=[1,2,3]", "heads=2", "train.steps=5"])
    assert axes == [("d_model", [32, 64]), ("layers", [1, 2, 3])]
    assert fixed == ["heads=2", "train.steps=5"]
    pts = grid_points(axes)
    assert len(pts) == 6 and pts[0] == {"d_model": 32, "layers": 1} and pts[-1] == {"d_model": 64, "layers": 3}


@pytest.mark.parametrize("items, message", [
    (["heads=2"], "no axis to sweep"),
    (["d_model=[]"], "at least one value"),
    ([f"a=[{','.join(['1'] * 9)}]", f"b=[{','.join(['1'] * 8)}]"], f"at most {MAX_POINTS}"),
])
def test_bad_grids_are_refused(items, message):
    with pytest.raises(GridError, match=message):
        parse_grid(items)


def test_bad_grid_exits_2(tmp_path, capsys):
    assert nnspec(["sweep", "gpt2", "-p", "tiny", "--set", "d_model=64", "-o", str(tmp_path / "s")]) == 2
    assert "no axis to sweep" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_non_embedding_params_leave_out_the_tables():
    """gpt2 small: 124,439,808 less wte (50257 x 768) and wpe (1024 x 768) = 85,056,000, which is
    12 layers x 12 d^2 (Kaplan et al.'s N ~ 12 n_layer d^2) plus the biases and layer norms."""
    d, L = 768, 12
    assert non_embedding_params(c.load("gpt2", "small")) == L * (12 * d * d + 13 * d) + 2 * d == 85_056_000


def sweep(out, widths, steps, extra=()):
    argv = ["sweep", "gpt2", "-p", "tiny", "--set", f"d_model=[{','.join(map(str, widths))}]",
            "--set", "heads=2", "--set", "layers=1", "--set", "n_ctx=32", "--steps", str(steps),
            "--set", f"train.schedule.total={steps}", "--set", f"train.schedule.warmup={steps // 5}",
            "--set", f"train.eval.every={steps}", "--set", "train.eval.batches=2",
            "--set", f"train.checkpoint.every={steps}", *extra, "--threads", "1", "--no-progress", "-o", str(out)]
    assert nnspec(argv) == 0
    return json.loads((out / "fit.json").read_text()), json.loads((out / "points.json").read_text())


def test_sweep_gpt2_tiny_four_points(tmp_path):
    """4 widths, 40 steps each (a few seconds a point): a finite alpha_N > 0 and a PNG plot."""
    fit, points = sweep(tmp_path / "s", [8, 16, 32, 64], 40)
    assert len(points) == 4
    assert [p["N"] for p in points] == sorted(p["N"] for p in points)
    assert all(p["D"] == 40 * 32 * 32 and p["C"] == 6 * p["N"] * p["D"] for p in points)
    a = fit["fit"]["alpha_N"]
    assert math.isfinite(a) and a > 0, fit
    assert math.isfinite(fit["fit"]["alpha_N_stderr"])
    png = (tmp_path / "s" / "loss_vs_params.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 500
    assert (tmp_path / "s" / "points.csv").read_text().startswith("point,d_model,N,D,C,loss")


@pytest.mark.slow
def test_sweep_gpt2_tiny_six_points(tmp_path):
    """6 widths at 300 steps (batch 32, context 32; about 4 minutes of one core)."""
    fit, points = sweep(tmp_path / "s", [8, 16, 24, 32, 48, 64], 300)
    print(json.dumps(fit["fit"]), [round(p["loss"], 4) for p in points])
    assert 0 < fit["fit"]["alpha_N"] < 1
    assert fit["fit"]["alpha_N_stderr"] < fit["fit"]["alpha_N"]
