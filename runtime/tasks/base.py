"""What a task is: a seeded generator of batches, the tensors it feeds and reads, and its checks.

A task is a class registered with `@register("name")`, holding:
`Options` (pydantic, `extra=forbid`, every size bounded), `metric` (the documented name of the
figure its validation reports), `feeds(o)` / `reads(o)` (name -> `Slot`: the spec inputs it
provides and the targets the loss reads), and `make(o, rng, batch_size)` building one batch.

Batches are deterministic in (seed, step): step `k` of a training run draws from the random
stream seeded by `[seed, 0, k]`, validation batch `i` from `[seed, 1, i]`, so a resumed run sees
the data it would have seen and validation never overlaps the training stream's seeds.
Nothing here imports torch; batches are numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nnspec.compiler.errors import NnspecError, clean, quote

MAX_BATCH = 4096  # examples in one batch
MAX_ELEMENTS = 1 << 24  # numbers in one batch, all arrays together
MAX_SEED = 2**63 - 1
MAX_STEP = 2**62
MAX_EVAL_BATCHES = 10_000

SHORT = {"float32": "f32", "int64": "i64"}


class TaskError(NnspecError):
    """A task cannot be built or does not fit a spec (bad options, bad corpus, mismatched inputs)."""

    kind = "task error"


@dataclass(frozen=True)
class Slot:
    """One array a task feeds or reads: dtype and shape; a str dim is the batch or a free length."""

    dtype: str
    shape: tuple
    high: int | None = None  # integer slots: values lie in [0, high)

    def __str__(self) -> str:
        text = f"{SHORT.get(self.dtype, self.dtype)}[{','.join(str(d) for d in self.shape)}]"
        return text if self.high is None else f"{text} in [0, {self.high})"


class TaskOptions(BaseModel):
    """Base of every task's options: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class Task:
    """A task bound to validated options. Subclasses set `name`, `Options`, `metric`, and implement
    `feeds`, `reads` and `make`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    metric: ClassVar[str] = ""
    metric_doc: ClassVar[str] = ""
    eval_size: ClassVar[int] = 8  # validation batches unless options say otherwise
    # Training examples in one epoch (a finite data set's size, set when the task is built);
    # None for generators that draw fresh examples forever.
    examples: int | None = None

    def __init__(self, options: TaskOptions):
        self.options = options

    # -- what a subclass provides
    def feeds(self) -> dict[str, Slot]:
        raise NotImplementedError

    def reads(self) -> dict[str, Slot]:
        raise NotImplementedError

    def make(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def elements(self, batch_size: int) -> int:
        """Upper bound on the numbers one batch holds (checked before any work)."""
        return batch_size * sum(_numel(s.shape) for s in {**self.feeds(), **self.reads()}.values())

    # -- the interface a training loop uses
    def batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """Training batch `step`: the same arrays, byte for byte, for the same seed and step."""
        _bounded("step", step, 0, MAX_STEP)
        return self._draw(np.random.default_rng([self.options.seed, 0, step]), batch_size)

    def eval_batches(self, batch_size: int, count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Validation batches, from streams no training step uses."""
        count = self.eval_size if count is None else count
        _bounded("count", count, 1, MAX_EVAL_BATCHES)
        _bounded("batch_size", batch_size, 1, MAX_BATCH)
        for i in range(count):
            yield self._draw(np.random.default_rng([self.options.seed, 1, i]), batch_size)

    def _draw(self, rng, batch_size):
        _bounded("batch_size", batch_size, 1, MAX_BATCH)
        if self.elements(batch_size) > MAX_ELEMENTS:
            raise TaskError(f"task '{self.name}': a batch of {batch_size} would hold about "
                            f"{self.elements(batch_size):,} numbers (at most {MAX_ELEMENTS:,})",
                            hint="use a smaller batch size or smaller task sizes")
        return self.make(rng, batch_size)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d if isinstance(d, int) else 1
    return n


def _bounded(what: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise TaskError(f"{what} must be an integer in [{lo}, {hi}] (got {quote(value)})")


TASKS: dict[str, type[Task]] = {}


def register(name: str):
    """Class decorator: add a task under `name`."""
    def add(cls: type[Task]) -> type[Task]:
        assert name not in TASKS, name
        assert cls.metric, f"task {name} documents no metric"
        cls.name = name
        TASKS[name] = cls
        return cls
    return add


def make_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """The task registered as `name`, with `options` validated by its Options model."""
    cls = TASKS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise TaskError(f"unknown task {quote(name)}", expected="one of " + ", ".join(sorted(TASKS)))
    if options is not None and not isinstance(options, Mapping):
        raise TaskError(f"options of task '{cls.name}' must be a mapping of names to values (got {quote(options)})")
    try:
        opts = cls.Options.model_validate(dict(options or {}))
    except ValidationError as e:
        lines = []
        for err in e.errors()[:10]:
            where = ".".join(str(p) for p in err["loc"]) or "options"
            lines.append(f"{where}: {err['msg']}")
        raise TaskError(f"bad options for task '{cls.name}': " + "; ".join(clean(x, 300) for x in lines)) from None
    return cls(opts)


def _spec_slot(value) -> tuple[str, tuple]:
    """(dtype, shape) of a spec input given as an InputSpec, a TensorType or a {shape, dtype} dict."""
    if isinstance(value, Mapping):
        return str(value.get("dtype", "float32")), tuple(value.get("shape", ()))
    return str(getattr(value, "dtype", "float32")), tuple(getattr(value, "shape", ()))


def _spec_range(value):
    """[low, high) of a spec input's values when both are numbers, else None (unset or unevaluated)."""
    r = value.get("range") if isinstance(value, Mapping) else getattr(value, "range", None)
    if isinstance(r, (list, tuple)) and len(r) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in r):
        return r[0], r[1]
    return None


def check_against(task: Task, spec_inputs, spec_name: str = "the spec") -> None:
    """Raise TaskError unless `task` feeds exactly the spec's inputs with their dtypes and shapes.

    `spec_inputs` is a spec model's `inputs` (name -> InputSpec), a name -> {shape, dtype, range}
    mapping, or a compiled IR graph (whose input nodes carry evaluated ranges).
    A dim both sides fix to numbers must agree; a named dim (the spec's `N`, a task's `T`) matches
    any dim, since the batch and free lengths are chosen per run. Every mismatch is listed, each
    naming the task's side and the spec's side.
    """
    if callable(getattr(spec_inputs, "inputs", None)):  # an IR graph: its input nodes, ranges evaluated
        spec_inputs = {n.attrs.name: {"shape": n.outputs[0].shape, "dtype": n.outputs[0].dtype,
                                      "range": getattr(n.attrs, "range", None)} for n in spec_inputs.inputs()}
    feeds = task.feeds()
    problems = []
    for name in sorted(set(feeds) | set(spec_inputs)):
        if name not in spec_inputs:
            problems.append(f"task '{task.name}' feeds '{name}' ({feeds[name]}) but {spec_name} has no input "
                            f"'{name}'")
            continue
        dtype, shape = _spec_slot(spec_inputs[name])
        spec_text = f"{SHORT.get(dtype, dtype)}[{','.join(str(d) for d in shape)}]"
        if name not in feeds:
            problems.append(f"{spec_name} has input '{name}' ({spec_text}) but task '{task.name}' does not feed "
                            f"it (it feeds {', '.join(sorted(feeds)) or 'nothing'})")
            continue
        slot = feeds[name]
        if dtype != slot.dtype or len(shape) != len(slot.shape) or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(shape, slot.shape)):
            problems.append(f"task '{task.name}' feeds '{name}' as {slot} but {spec_name} declares it as "
                            f"{spec_text}")
            continue
        value_range = _spec_range(spec_inputs[name])
        if slot.high is not None and value_range is not None and slot.high > value_range[1]:
            problems.append(f"task '{task.name}' feeds '{name}' with values in [0, {slot.high}) but {spec_name} "
                            f"declares its range as [{value_range[0]}, {value_range[1]})")
    if problems:
        raise TaskError("; ".join(clean(p, 400) for p in problems[:20]),
                        hint="pick task options that match the spec (or the spec's params), or another task")
