"""`nnspec sweep`: train a grid of a spec's variants and fit the loss to a power law in model size
(Kaplan et al. 2020, "Scaling Laws for Neural Language Models").

    nnspec sweep gpt2 -p tiny --set d_model=[32,48,64,96] --set layers=[2] --steps 300 \\
        --set train.schedule.total=300 -o sweeps/gpt2

Every `--set` whose value is a YAML list is an axis of the grid (a param that is itself a list is
swept with a list of lists: `--set widths=[[16,32],[32,64]]`); the grid is the product of the axes,
at most MAX_POINTS points; other `--set`s apply to every point. Each point is one in-process
`nnspec train` run (its run folder under runs/), then:

- N, the non-embedding parameters: the cost model's trainable count (ties counted once) less the
  parameters of `embedding` and `positional_encoding` nodes, the token and position tables Kaplan
  et al. leave out (section 1.2: "N ... excluding all vocabulary and positional embeddings"). A
  head tied to the token table is the table, so it is left out too; an untied head is counted.
- D, the tokens trained: steps x batch size x the task's `seq_len` (1 for tasks without one).
- C = 6 N D, the paper's estimate of training compute (2 N per token forward, 4 N backward).
- L, the final validation loss (nats per token, the loss of the last evaluation).

The fit is L(N) = (N_c / N)^alpha_N, a straight line log L = alpha_N log N_c - alpha_N log N fitted by
ordinary least squares in log space; alpha_N's error is the slope's standard error
(sqrt(residual variance / sum (log N - mean)^2), residual variance over n - 2 degrees of freedom).
The results folder (points.csv, points.json, fit.json, loss_vs_params.png, runs/) is written
through the artifact folder swap: a killed sweep leaves the old folder or none.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import sys
import time
from pathlib import Path

MAX_POINTS = 64
MAX_AXIS = 64
TABLE_OPS = ("embedding", "positional_encoding")  # what N leaves out


class GridError(argparse.ArgumentTypeError):
    """A bad grid (exit 2 through the CLI)."""


# -- the grid ---------------------------------------------------------------------------------------

def parse_grid(items: list[str]) -> tuple[list[tuple[str, list]], list[str]]:
    """`--set` items -> (axes [(key, values)], fixed items passed through as they are)."""
    from nnspec.compiler.spec.load import parse_overrides

    parsed = parse_overrides(items)  # checks keys and YAML values, with located errors
    axes, fixed = [], []
    for item in items:
        key = item.split("=", 1)[0].strip()
        value = parsed[key]
        if isinstance(value, list):
            if not value:
                raise GridError(f"--set {key}=[]: an axis needs at least one value")
            if len(value) > MAX_AXIS:
                raise GridError(f"--set {key}: {len(value)} values (at most {MAX_AXIS} an axis)")
            if any(k == key for k, _ in axes):
                raise GridError(f"--set {key} is given twice")
            axes.append((key, value))
        else:
            fixed.append(item)
    if not axes:
        raise GridError("no axis to sweep: give at least one list-valued --set, e.g. --set d_model=[32,64,128]")
    n = math.prod(len(v) for _, v in axes)
    if n > MAX_POINTS:
        raise GridError(f"the grid has {n} points ({' x '.join(str(len(v)) for _, v in axes)}); at most {MAX_POINTS}")
    return axes, fixed


def grid_points(axes) -> list[dict]:
    """The product of the axes, the first axis varying slowest."""
    keys = [k for k, _ in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def set_items(point: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in point.items()]  # JSON is YAML flow syntax


# -- what each point measures -------------------------------------------------------------------------

def non_embedding_params(program) -> int:
    """Trainable parameters less the token and position tables (see the module docstring)."""
    from nnspec.compiler.cost import _own_params, _unique_param_nodes, param_count

    tables = sum(_own_params(n)[0] for n in _unique_param_nodes(program) if n.op in TABLE_OPS)
    return param_count(program)[0] - tables


def tokens_trained(run_json: dict) -> int:
    t = run_json["train"]
    steps = t["steps"]
    seq = (t.get("task", {}).get("options") or {}).get("seq_len", 1)
    return int(steps) * int(t["batch_size"]) * int(seq)


# -- the fit ------------------------------------------------------------------------------------------

def fit_power_law(n, loss) -> dict:
    """Least squares of log L on log N: L = (N_c / N)^alpha. Returns alpha, its standard error (None
    with fewer than 3 distinct sizes), N_c and the fit's r^2."""
    import numpy as np

    x = np.log(np.asarray(n, dtype=np.float64))
    y = np.log(np.asarray(loss, dtype=np.float64))
    if len(x) != len(y) or len(set(x.tolist())) < 2:
        raise ValueError("a power-law fit needs at least two distinct sizes N")
    if not np.all(np.isfinite(y)):
        raise ValueError("every loss must be positive and finite")
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - ym)).sum() / sxx)
    icept = float(ym - slope * xm)
    resid = y - (icept + slope * x)
    ss_res, ss_tot = float((resid ** 2).sum()), float(((y - ym) ** 2).sum())
    dof = len(x) - 2
    err = math.sqrt(ss_res / dof / sxx) if dof > 0 else None
    alpha = -slope
    n_c = math.exp(icept / alpha) if alpha != 0 else None
    return {"alpha_N": alpha, "alpha_N_stderr": err, "N_c": n_c, "log_intercept": icept,
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, "points": len(x)}


# -- the command --------------------------------------------------------------------------------------

def add_parser(sub, train_main) -> None:
    """The `sweep` subcommand; train_main(argv) -> exit code runs one `nnspec train`."""
    p = sub.add_parser(
        "sweep", help="train a grid of a spec's variants and fit the loss to a power law in non-embedding params",
        description="Every list-valued --set is an axis of the grid (at most %d points); each point is one "
        "`nnspec train` run. Writes points.csv, points.json (non-embedding params N, tokens D, C = 6ND, final "
        "validation loss), fit.json (L(N) = (N_c/N)^alpha_N by least squares in log space, alpha_N with its "
        "standard error) and loss_vs_params.png to OUT, atomically." % MAX_POINTS)
    p.add_argument("spec", help="path to a spec .yaml or the name of a bundled spec")
    p.add_argument("--preset", "-p", help="a named preset of the spec")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a param or train.* override; a YAML list is an axis of the grid (--set d_model=[32,64])")
    p.add_argument("--steps", type=int, help="optimizer steps of every run")
    p.add_argument("--batch", type=int, help="batch size of every run")
    p.add_argument("--task", help="train on this task instead of the recipe's")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="results folder (replaced whole)")
    p.add_argument("--no-progress", action="store_true", help="no per-point lines")
    p.set_defaults(fn=cmd_sweep, train_main=train_main)


def cmd_sweep(args) -> int:
    from nnspec.compiler import load
    from nnspec.compiler.spec.load import parse_overrides
    from nnspec.runtime.plot import loglog_png
    from nnspec.targets.files import staged_folder

    # every point is `nnspec train` through the CLI's own entry point (its parsing and error
    # reports), handed over by the CLI so that this module imports nothing from the module that imports it
    nnspec = args.train_main

    axes, fixed = parse_grid(args.overrides)
    points = grid_points(axes)
    model_fixed = [i for i in fixed if not i.split("=", 1)[0].strip().startswith("train.")]
    # every point's model first: a bad point fails before any training
    sizes = []
    for point in points:
        items = [i for i in set_items(point) if not i.startswith("train.")]
        sizes.append(non_embedding_params(load(args.spec, args.preset, parse_overrides(model_fixed + items))))
    flags = ["--no-progress"]
    for flag, value in (("--preset", args.preset), ("--steps", args.steps), ("--batch", args.batch),
                        ("--task", args.task), ("--threads", args.threads)):
        if value is not None:
            flags += [flag, str(value)]
    rows = []
    with staged_folder(args.out, replace="empty") as tmp:
        for k, (point, n) in enumerate(zip(points, sizes)):
            run = tmp / "runs" / f"point-{k:02d}"
            sets = [x for i in fixed + set_items(point) for x in ("--set", i)]
            t0 = time.perf_counter()
            rc = nnspec(["train", args.spec, *flags, *sets, "--out", str(run)])
            if rc != 0:
                raise GridError(f"point {k} ({point}) failed: nnspec train exited {rc}")
            from nnspec.runtime.train.rundir import read_metrics
            run_json = json.loads((run / "run.json").read_text(encoding="utf-8"))
            valid = [r for r in read_metrics(run) if r.get("split") == "valid"]
            if not valid:
                raise GridError(f"point {k} ({point}) has no validation loss: its run never evaluated",
                                ) from None
            d = tokens_trained(run_json)
            metric = run_json.get("task", {}).get("metric")
            row = {"point": k, **{key: point[key] for key, _ in axes}, "N": n, "D": d, "C": 6 * n * d,
                   "loss": float(valid[-1]["loss"]), "metric": metric,
                   "metric_value": valid[-1].get(metric) if metric else None,
                   "seconds": round(time.perf_counter() - t0, 2), "run": f"runs/point-{k:02d}"}
            rows.append(row)
            if not args.no_progress:
                print(f"point {k + 1}/{len(points)} {point}: N={n:,} D={d:,} C={6 * n * d:.3g} "
                      f"loss={row['loss']:.4f}", file=sys.stderr, flush=True)
        try:
            fit = fit_power_law([r["N"] for r in rows], [r["loss"] for r in rows])
        except ValueError as e:
            fit = {"error": str(e)}
        (tmp / "points.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        (tmp / "points.csv").write_text(buf.getvalue(), encoding="utf-8")
        summary = {"spec": args.spec, "preset": args.preset, "axes": dict(axes), "fixed": fixed,
                   "N": "trainable parameters less embedding and positional_encoding tables",
                   "D": "steps x batch_size x seq_len", "C": "6 N D", "L": "final validation loss (nats)",
                   "fit": fit}
        (tmp / "fit.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        (tmp / "loss_vs_params.png").write_bytes(
            loglog_png([r["N"] for r in rows], [r["loss"] for r in rows], None if "error" in fit else fit))
    if "error" in fit:
        print(f"{args.out}: {len(rows)} points; no fit: {fit['error']}")
    else:
        err = fit["alpha_N_stderr"]
        print(f"{args.out}: {len(rows)} points; L(N) = (N_c / N)^alpha_N with alpha_N = {fit['alpha_N']:.4f}"
              + (f" +/- {err:.4f}" if err is not None else " (no error with 2 sizes)")
              + f", N_c = {fit['N_c']:.3g}, r^2 = {fit['r2']:.3f}")
    return 0
