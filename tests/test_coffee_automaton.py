"""coffee_automaton (Aaronson, Carroll & Ouellette 2014): the generated module against a plain
numpy automaton written pair by pair (same coins, equal frames), the coarse picture against a
block mean, and the paper's signature: over a mixing run the entropy estimate rises to its maximum
and stays, while the complexity estimate rises, peaks and falls back."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nnspec.compiler as c
from nnspec.runtime.complexity import complexity_estimate, cream_on_top, entropy_estimate, mix
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)


def reference_step(x: np.ndarray, u: np.ndarray, swap: float) -> np.ndarray:
    """One automaton step on one cup, pair by pair: the four tilings (horizontal pairs from column
    0, then from column 1, vertical from row 0, then from row 1), a pair swapping where the coin
    of its first cell is below `swap`; border lines of an odd tiling unpaired."""
    x = x.copy()
    size = x.shape[0]
    for k, (vertical, start) in enumerate(((False, 0), (False, 1), (True, 0), (True, 1))):
        for line in range(size):
            for a in range(start, size - 1, 2):
                if start == 1 and a + 1 > size - 2:
                    break  # the odd tiling pairs 1..size-2 only
                p, q = ((a, line), (a + 1, line)) if vertical else ((line, a), (line, a + 1))
                if u[k][p] < swap:
                    x[p], x[q] = x[q], x[p]
    return x


@pytest.fixture(scope="module")
def small():
    program = c.load("coffee_automaton", "small")
    return program, build_module(program, seed=0).eval()


def test_frames_equal_a_pair_by_pair_automaton(small):
    program, module = small
    p = program.spec.params
    size, steps = p["size"], p["steps"]
    rng = np.random.default_rng(3)
    coins = rng.random((1, steps, 4, size, size), dtype=np.float32)
    start = cream_on_top(size)
    with torch.no_grad():
        final, frames, coarse = module(torch.from_numpy(start), torch.from_numpy(coins))
    x = start[0]
    for t in range(steps):
        x = reference_step(x, coins[0, t], p["swap"])
        np.testing.assert_array_equal(frames[0, t].numpy(), x)
    np.testing.assert_array_equal(final[0].numpy(), x)
    assert final.sum() == start.sum()  # cream is conserved
    assert not np.array_equal(frames[0, 0].numpy(), start[0])  # and moves
    g = p["grain"]
    block_means = frames[0].numpy().reshape(steps, size // g, g, size // g, g).mean((2, 4))
    np.testing.assert_allclose(coarse[0].numpy(), block_means, atol=1e-6)


def test_estimates_order_the_cups():
    """A sorted cup compresses far below a random one at the fine scale; at the coarse scale both
    it and a uniform (mixed) picture are simpler than a patchy one."""
    rng = np.random.default_rng(0)
    sorted_cup = cream_on_top(64)[0]
    mixed = (rng.random((64, 64)) < 0.5).astype(np.float32)
    assert entropy_estimate(sorted_cup) * 10 < entropy_estimate(mixed)
    patchy = rng.random((8, 8))
    assert complexity_estimate(np.full((8, 8), 0.5)) < complexity_estimate(patchy)
    assert complexity_estimate(sorted_cup.reshape(8, 8, 8, 8).mean((1, 3))) < complexity_estimate(patchy)


def test_signature_complexity_rises_and_falls_while_entropy_rises():
    """The bundled 128 x 128 cup, 6,000 steps (about 5 s of one core), measured every 100 steps.
    Measured: entropy 52 -> 2,734 bytes, never more than 1.2% under its running maximum; complexity
    27 bytes at the start, 81 at its peak (step 2,100), 31.6 over the last 1,000 steps."""
    program = c.load("coffee_automaton")
    p = program.spec.params
    r = mix(build_module(program, seed=0).eval(), p["size"], p["steps"], 120, seed=0, every=100)
    e, cx = np.array(r["entropy"], float), np.array(r["complexity"], float)
    assert len(e) == len(cx) == 61
    assert e[-1] > 20 * e[0]
    assert np.all(e >= 0.98 * np.maximum.accumulate(e)), e  # no real fall, only gzip's jitter
    peak = int(np.argmax(cx))
    late = cx[-10:].mean()
    assert 0.1 * len(cx) < peak < 0.6 * len(cx), (peak, cx)
    assert cx[peak] > 2 * cx[0] and cx[peak] > 2 * late, (cx[0], cx[peak], late)


def test_the_command_writes_curves_and_reports_bad_input(tmp_path, capsys):
    from nnspec.runtime.complexity import main

    assert main(["-p", "small", "--steps", "100", "--every", "20", "-o", str(tmp_path / "out")]) == 0
    rows = (tmp_path / "out" / "curves.csv").read_text().splitlines()
    assert rows[0] == "step,entropy_bytes,complexity_bytes" and [r.split(",")[0] for r in rows[1:]] == \
        ["0", "20", "40", "60", "80", "100"]
    assert (tmp_path / "out" / "curves.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert main(["-p", "nope", "-o", str(tmp_path / "bad")]) == 1
    assert "unknown preset 'nope'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
