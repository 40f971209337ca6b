"""A run folder: what a training run writes besides its checkpoints.

    RUN_DIR/run.json         the spec (name, file, preset, overrides, sha256), the validated train
                             section and the world it ran in; written atomically at the start
    RUN_DIR/metrics.jsonl    one JSON object per logged step and per evaluation
    RUN_DIR/checkpoints/     step-NNNNNNNNN folders (checkpoint.py)
    RUN_DIR/tensorboard/     event files, when the `tensorboard` package is installed

Resuming reads run.json back (bounded, checked) and refuses a run of another spec or recipe; the
metrics log is cut back to the resumed checkpoint's step, so a resumed run's log equals an
uninterrupted one's line for line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from nnspec.targets.files import ArtifactError, atomic_write, read_manifest_json

RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
MAX_METRICS_BYTES = 256 << 20  # a run logging every step for 10^6 steps stays far below
# keys of run.json that may differ between the first launch and a resume
RESUMABLE = {"steps", "epochs", "eval", "checkpoint", "log_every"}


class RunError(ArtifactError):
    """A run folder cannot be used (another spec's run, a changed recipe, unreadable files)."""

    kind = "run error"


def prepare(run_dir, record: dict, resume: bool) -> Path:
    """Create RUN_DIR (or check it for --resume) and write run.json. A fresh run refuses a folder
    that already holds checkpoints; a resumed one refuses a different spec or recipe."""
    from .checkpoint import CHECKPOINTS

    root = Path(run_dir)
    if root.exists() and not root.is_dir():
        raise RunError(f"'{root}' exists and is not a folder")
    if resume:
        if not (root / RUN_JSON).is_file():
            raise RunError(f"'{root}' is not a run folder (no {RUN_JSON})", hint="start the run without --resume")
        _check_same(read_record(root), record, root)
    elif (root / CHECKPOINTS).exists() and any(os.scandir(root / CHECKPOINTS)):
        raise RunError(f"'{root}' already holds a run's checkpoints",
                       hint=f"continue it with --resume {root}, or give another --out")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(root / RUN_JSON, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return root


def read_record(root: Path) -> dict:
    """run.json, read as every manifest is: bounded, UTF-8, a JSON object, no symlink out of the folder."""
    return read_manifest_json(root, RUN_JSON)


def _check_same(old: dict, new: dict, root: Path) -> None:
    for key in ("spec", "spec_sha256", "preset"):
        if old.get(key) != new.get(key):
            raise RunError(f"'{root}' is a run of {key} {str(old.get(key))[:80]!r}, not {str(new.get(key))[:80]!r}",
                           hint="resume with the same spec, preset and --set params")
    if old.get("initial_weights") != new.get("initial_weights"):  # DPO's reference is those weights
        was = old.get("initial_weights")
        was = was if isinstance(was, dict) else {"file": "?"} if was else {}  # run.json is read as untrusted
        raise RunError(f"'{root}' started from "
                       + (f"--weights {str(was.get('file'))[:80]!r}" if was else "the seed's initial weights")
                       + ", and this resume " + ("gives other --weights" if new.get("initial_weights") and was
                                                 else "does not give them" if was else "gives --weights"),
                       hint="resume with the --weights file the run started from (the same bytes), or none")
    a, b = old.get("train") or {}, new.get("train") or {}
    if not isinstance(a, dict):
        raise RunError(f"'{root / RUN_JSON}': 'train' is not an object")
    changed = sorted(k for k in set(a) | set(b) if k not in RESUMABLE and a.get(k) != b.get(k))
    if changed:
        raise RunError(f"resuming '{root}' with a different recipe: train.{', train.'.join(changed)} changed",
                       hint="only steps, epochs, eval, checkpoint and log_every may change on --resume")


class MetricsLog:
    """Append-only JSON lines; `truncate(step)` drops lines logged after `step` (on resume)."""

    def __init__(self, root: Path, enabled: bool = True):
        self.path = root / METRICS
        self.enabled = enabled
        self._f = None
        self._tb = None
        if enabled:
            self._tb = _tensorboard(root)

    def truncate(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        if self.path.stat().st_size > MAX_METRICS_BYTES:
            raise RunError(f"'{self.path}' is larger than {MAX_METRICS_BYTES:,} bytes")
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a line cut by a kill: it is rewritten by the resumed run
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line)
        atomic_write(self.path, "".join(x + "\n" for x in kept))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps(row, sort_keys=True) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, float) and k != "step":
                    self._tb.add_scalar(f"{row.get('split', 'train')}/{k}", v, row["step"])

    def sync(self) -> None:
        """Make the lines so far durable (called with each checkpoint)."""
        if self._f is not None:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir) -> list[dict]:
    """The metrics log of a run folder as a list of rows (tests, benchmarks)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _tensorboard(root: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(root / "tensorboard"))


__all__ = ["METRICS", "RUN_JSON", "MetricsLog", "RunError", "prepare", "read_metrics", "read_record"]
