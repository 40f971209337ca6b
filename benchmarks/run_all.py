"""Run every benchmark script, one after another in fresh processes, print their tables and
replace the results block of BENCHMARKS.md (between its `results:begin` / `results:end` markers)
with this run's output. The text around the block (verdicts, discussion) is left alone.

Usage: .venv/bin/python benchmarks/run_all.py [--quick] [--only compile_time,step_time] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from timing import PYTHON, REPO, machine, machine_line

SCRIPTS = ["compile_time", "check_time", "step_time", "export_time", "export_cli", "ort_vs_eager", "fusion", "partition",
           "remat", "train_overhead", "train_parallel", "inspect_7b"]
DOC = REPO / "BENCHMARKS.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def run(name: str, quick: bool) -> str:
    cmd = [PYTHON, f"benchmarks/{name}.py"] + (["--quick"] if quick else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    # stderr (progress lines) passes through to the terminal; stdout is the report
    p = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    took = time.perf_counter() - t0
    out = p.stdout.rstrip()
    if p.returncode != 0:
        out += f"\n\n(`{name}` exited with status {p.returncode})"
    return out + f"\n\n(script wall time {took:.0f} s)\n"


def nested(text: str) -> str:
    """The scripts' `## title` lines one level down, so they sit under the document's results heading."""
    return "\n".join("#" + line if line.startswith("## ") else line for line in text.splitlines())


def write_block(text: str) -> None:
    """Replace the results block of BENCHMARKS.md atomically (the block is appended if missing)."""
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{nested(text).rstrip()}\n{END}"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + block + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=DOC.parent, prefix=".BENCHMARKS.md.")
    with os.fdopen(fd, "w") as f:
        f.write(doc)
    os.chmod(tmp, 0o644)
    os.replace(tmp, DOC)


def main(argv: list) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script")
    ap.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated script names")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args(argv[1:])
    mode = "quick" if args.quick else "full"
    cmd = ".venv/bin/python benchmarks/run_all.py" + (" " + " ".join(argv[1:]) if argv[1:] else "")
    parts = [f"Run of `{cmd}` ({mode} size), started {machine_line(machine())}\n"]
    t0 = time.perf_counter()
    for name in args.only.split(","):
        print(f"== {name} ==", file=sys.stderr, flush=True)
        out = run(name, args.quick)
        print(out, flush=True)
        parts.append(out)
    parts.append(f"Total wall time {time.perf_counter() - t0:.0f} s.")
    text = "\n".join(parts)
    if not args.no_write:
        write_block(text)
        print(f"updated the results block of {DOC.name}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
