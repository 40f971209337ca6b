"""Shared measurement helpers for the benchmark scripts: statistics, interleaved timing,
fresh-process runs, machine facts and plain-text tables.

The machines these run on are small and shared, so every comparison is made inside one run:
variants are interleaved (order alternating between rounds so drift falls on both sides),
medians are reported rather than means, and ratios are taken per round where the variants are
paired.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def median(xs) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def percentile(xs, q: float) -> float:
    """Nearest-rank percentile; with few samples p90 is simply the slowest but one or the slowest."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def interleaved(fns: dict, rounds: int, warmup: int = 1) -> tuple[dict, dict]:
    """({name: [wall seconds per round]}, {name: [process CPU seconds per round]}).

    Each callable runs once per round. Even rounds run the variants in the given order, odd rounds
    reversed (ABBA), so slow drift in machine load does not systematically favour whichever
    variant runs first. CPU time is kept too: with one compute thread it is what the work cost,
    and other processes competing for the cores inflate it far less than wall time.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            c0, t0 = time.process_time(), time.perf_counter()
            fns[n]()
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    return wall, cpu


def paired_ratios(num: list, den: list) -> list:
    return [a / b for a, b in zip(num, den)]


def run_fresh(code: str, timeout: float = 600) -> dict:
    """Run `code` in a fresh interpreter; it must print one JSON object as its last stdout line.

    Returns that object plus `wall_s`, the parent's view of the whole process lifetime
    (interpreter start-up, imports and work), and `cpu_s`, the child's user+system CPU time, which
    other engineers' load on a shared machine inflates far less than wall time; or {"error": ...}
    when the child fails.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=timeout)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["exit code %d" % p.returncode])[-1]
        return {"error": tail[:200], "wall_s": wall, "cpu_s": cpu}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    out["cpu_s"] = cpu
    return out


def machine() -> dict:
    """Facts identifying the machine and library versions a result was measured with."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
                break
    except OSError:
        pass
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "nproc": os.cpu_count(),
            "cpu": cpu, "ram": ram, "python": platform.python_version()}
    try:
        info["load_avg"] = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        pass
    for mod in ("torch", "torchvision", "onnx", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # a missing library is reported, not fatal
            info[mod] = f"unavailable ({type(e).__name__})"
    try:
        import torch
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:
        info["gpu"] = "none"
    return info


def machine_line(info: dict) -> str:
    return (f"{info['date']} | nproc {info['nproc']} | {info['cpu']} | RAM {info['ram']} | "
            f"load {info.get('load_avg', '?')} | python {info['python']} | torch {info['torch']} | "
            f"torchvision {info['torchvision']} | onnx {info['onnx']} | onnxruntime {info['onnxruntime']} | "
            f"GPU {info['gpu']}")


def table(header: list, rows: list) -> str:
    """A left-aligned text table (also valid Markdown)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def sec(s: float) -> str:
    return f"{s:.2f}"


def rounds_from(argv: list, doc: str, quick: int = 2, full: int = 5) -> int:
    """The rounds a script with only `--quick` / `--rounds N` runs (argv as sys.argv)."""
    import argparse
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{quick} rounds instead of {full}")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv[1:])
    return args.rounds or (quick if args.quick else full)


def header(title: str, argv: list) -> str:
    """Title, the exact command, and the machine line every script prints first."""
    cmd = ".venv/bin/python " + " ".join(["benchmarks/" + Path(argv[0]).name] + argv[1:])
    return f"## {title}\n\ncommand: `{cmd}`\nmachine: {machine_line(machine())}\n"
