"""The training loop behind `nnspec train`: the generated module itself, trained on its task.

`Trainer(loaded, recipe, run_dir)` compiles the spec with the torch target's passes (remat marks
included), builds the generated nn.Module with the IR's initial weights for the recipe's seed,
binds the task and the loss to the spec's inputs and outputs (a mismatch is an error naming both
sides before any step), and `run()` trains:

    for step k:  batch k of the task (deterministic in seed and k)
                 forward, loss, backward (the engine: one process, DDP, or a pipeline)
                 clip, optimizer step, schedule step
                 every log_every: a metrics.jsonl line; every eval.every: validation metrics
                 every checkpoint.every: an atomic checkpoint (weights, optimizer, schedule, RNGs)

A resumed run loads the newest complete checkpoint and continues from its step with the RNG states
it saved, so its losses equal an uninterrupted run's bit for bit on CPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from nnspec.compiler.errors import SpecError

from .config import TrainSpec
from .engine import LocalEngine, Objective, to_tensors
from .metrics import Accumulator
from .rundir import MetricsLog, prepare


@dataclass
class World:
    """Where this process sits: rank and size of the data-parallel or pipeline group."""

    rank: int = 0
    size: int = 1
    mode: str = "single"  # single | ddp | pipeline

    @property
    def main(self) -> bool:
        return self.rank == 0

    def to_json(self) -> dict:
        return {"mode": self.mode, "size": self.size}


@dataclass
class Summary:
    """What a finished run reports (and `nnspec train` prints as its last line)."""

    steps: int
    seconds: float
    train_loss: float
    valid: dict
    metric: str
    checkpoint: str | None

    def line(self, name: str) -> str:
        valid = self.valid.get(self.metric)
        figure = (f"valid {self.metric} {valid:.4g}" if valid is not None
                  else f"valid loss {self.valid.get('loss', float('nan')):.4g} ({self.metric} not computed)")
        rate = self.steps / self.seconds if self.seconds > 0 else float("inf")
        return (f"{name}: {self.steps} steps in {self.seconds:.1f} s ({rate:.2f} steps/s); train loss "
                f"{self.train_loss:.4g}; {figure}" + (f"; checkpoint {self.checkpoint}" if self.checkpoint else ""))


def bind_task(cfg: TrainSpec):
    """The recipe's task with the run's seed (unless its options fix one); a corpus `path` must
    lie inside the working folder."""
    from nnspec.runtime.tasks import make_task
    options = dict(cfg.task.options)
    options.setdefault("seed", cfg.seed)
    if isinstance(options.get("path"), str):
        options["path"] = str(data_path(options["path"]))
    return make_task(cfg.task.name, options)


def data_path(path: str) -> Path:
    """A data file a recipe names, resolved and kept inside the working folder: a spec from anyone
    must not read /etc/shadow into a vocabulary and a run folder."""
    from nnspec.runtime.tasks import TaskError
    base = Path.cwd().resolve()
    resolved = (base / path).resolve()  # symlinks followed: where the bytes really are
    if not resolved.is_relative_to(base):
        raise TaskError(f"train.task.options.path {path[:200]!r} resolves to '{resolved}', outside the working "
                        f"folder '{base}'", hint="copy or move the corpus into the folder nnspec runs in")
    return resolved


def build_objective(program, task, cfg: TrainSpec) -> Objective:
    """The loss bound to the program's outputs and the task's arrays, checked before any step."""
    from nnspec.runtime.compile import interface
    from nnspec.runtime.losses import LossError, check_reads, make_loss
    from nnspec.runtime.tasks import check_against

    check_against(task, program.forward, f"spec '{program.spec.name}'")
    loss = make_loss({**cfg.loss.options, "name": cfg.loss.name})
    outputs = [o["name"] for o in interface(program)["outputs"]]
    objective = Objective(loss, cfg.loss.map, outputs, list(task.feeds()))
    available = objective.names_for_loss([*task.feeds(), *task.reads()])
    try:
        check_reads(loss, available)
    except LossError as e:
        e.hint = (f"the model outputs {', '.join(outputs)}; the task '{task.name}' gives "
                  f"{', '.join([*task.feeds(), *task.reads()])}; rename with train.loss.map, e.g. "
                  f"{{{loss.reads[0]}: {outputs[0]}}}")
        raise
    return objective


def steps_per_epoch(task, batch_size: int) -> int | None:
    examples = getattr(task, "examples", None)
    return None if not examples else max(1, math.ceil(examples / batch_size))


def total_steps(cfg: TrainSpec, task) -> int:
    if cfg.steps is not None:
        return cfg.steps
    per = steps_per_epoch(task, cfg.batch_size)
    if per is None:
        raise SpecError(f"train.epochs: task '{task.name}' generates examples without end, so it has no epochs",
                        expected="train.steps instead of train.epochs")
    return cfg.epochs * per


def start_weights(program, path) -> tuple[dict, dict]:
    """The `--weights` file: its arrays, every key, shape and dtype checked against the program (a
    LoweringError lists each mismatch), and what run.json records of it (name and sha256: a resume
    must give the same bytes)."""
    from nnspec.targets.files import sha256_file
    from nnspec.targets.weights import check_weights, load_weights

    arrays = load_weights(path, "--weights file")
    check_weights(program, arrays, f"--weights '{path}'")
    return arrays, {"file": Path(path).name, "sha256": sha256_file(path)}


class Trainer:
    """One training run of a loaded spec under a recipe (see the module docstring)."""

    def __init__(self, loaded, cfg: TrainSpec, run_dir, program=None, world: World | None = None,
                 engine=None, microbatches: int = 1, progress: bool = True, log: bool = True,
                 start: tuple[dict, dict] | None = None):
        from nnspec.runtime.compile import program_for
        from nnspec.targets.torch.build import build_module, load_arrays

        self.loaded, self.cfg, self.run_dir = loaded, cfg, Path(run_dir)
        self.world = world or World()
        self.program = program if program is not None else program_for(loaded, "torch")
        self.task = bind_task(cfg)
        self.objective = build_objective(self.program, self.task, cfg)
        self.total = total_steps(cfg, self.task)
        self.per_epoch = steps_per_epoch(self.task, cfg.batch_size)
        if cfg.schedule.interval == "epoch" and self.per_epoch is None:
            raise SpecError(f"train.schedule.interval: task '{self.task.name}' has no epochs",
                            expected="interval: step")
        # start: start_weights() of the --weights file, loaded here into the module this builds, or
        # already by the caller that built `engine`; its record goes into run.json
        self.weights = start[1] if start is not None else None
        if engine is None:
            module = build_module(self.program, seed=cfg.seed)
            if start is not None:
                load_arrays(module, self.program, start[0])
            engine = LocalEngine(module, self.objective, microbatches)
        self.engine = engine
        if self.objective.reference_names:
            # DPO's reference is the model the run starts from, frozen: copied before any step (and
            # before a resume loads a checkpoint, so a resumed run compares with the same start)
            if not getattr(engine, "whole_model", True) or getattr(engine, "microbatches", 1) > 1:
                raise SpecError(f"loss '{cfg.loss.name}' compares the whole model with a frozen reference on "
                                "batches of paired rows, which pipeline stages and micro-batches split",
                                expected="one process or data parallel, without --microbatches")
            self.objective.freeze_reference(engine.state_module())
        self.progress = progress and self.world.main
        self.log = log

    # -- the pieces a step uses
    def _optim(self):
        from .optim import build_optimizer
        from .schedules import build_schedule
        opt = build_optimizer(self.cfg, self.engine.parameters())
        return opt, build_schedule(self.cfg, opt)

    def record(self) -> dict:
        from nnspec.compiler import __version__
        s = self.loaded
        return {"format": "nnspec-run", "version": 1, "nnspec_version": __version__, "spec": s.name,
                "spec_file": Path(s.file).name, "preset": s.preset, "overrides": s.overrides,
                "train_overrides": dict(s.train_overrides), "spec_sha256": s.sha256(),
                "train": self.cfg.model_dump(mode="json"), "world": self.world.to_json(),
                "task": {"name": self.task.name, "metric": self.task.metric},
                "initial_weights": self.weights}

    def evaluate(self) -> dict:
        """Validation loss and metrics over the task's validation batches (eval mode, no grad)."""
        acc = Accumulator([self.task.metric, *self.cfg.eval.metrics])
        self.engine.train(False)
        try:
            for batch in self.task.eval_batches(self.cfg.batch_size, self.cfg.eval.batches):
                tensors = to_tensors(batch)
                loss, inputs = self.engine.evaluate(tensors)
                if loss is not None:
                    # the loss's inputs (its map applied) first; the task's other arrays as they are
                    # (a metric may need one the loss does not read: induction_mask)
                    acc.add(loss, {**tensors, **inputs})
        finally:
            self.engine.train(True)
        return acc.result()

    def run(self, resume: bool = False) -> Summary:
        from .checkpoint import capture_rng
        from .optim import clip_gradients
        cfg, world = self.cfg, self.world
        # a distributed engine's other ranks wait for rank 0's check of the run folder (and stop
        # quietly when it fails, instead of failing in their first collective)
        prepared = getattr(self.engine, "prepared", lambda ok: None)
        if world.main:
            try:
                prepare(self.run_dir, self.record(), resume)
            except BaseException:
                prepared(False)
                raise
        prepared(True)
        opt, sched = self._optim()
        start = 0
        if resume:
            found = self.engine.load(self.run_dir, opt, sched)
            start = found.step if found is not None else 0
        logger = MetricsLog(self.run_dir, enabled=world.main and self.log)
        if resume:
            logger.truncate(start)
        bar = _bar(self.total, start, self.progress, self.loaded.name)
        self.engine.train(True)
        t0, last = time.perf_counter(), None
        window_t, window_examples, loss = time.perf_counter(), 0, float("nan")
        checkpoint_path = None
        try:
            for step in range(start, self.total):
                batch = to_tensors(self.task.batch(step, cfg.batch_size))
                for p in self.engine.parameters():
                    p.grad = None
                loss, metrics = self.engine.train_step(batch)
                if not math.isfinite(loss):
                    raise TrainingDiverged(step + 1, loss)
                # an engine whose parameters are spread over ranks (a pipeline) clips as one model
                own_clip = getattr(self.engine, "clip_gradients", None)
                gnorm = own_clip(cfg) if own_clip else clip_gradients(cfg, self.engine.parameters())
                opt.step()
                done = step + 1
                if cfg.schedule.interval == "step" or (self.per_epoch and done % self.per_epoch == 0):
                    sched.step()
                window_examples += cfg.batch_size
                if done % cfg.log_every == 0 or done == self.total:
                    now = time.perf_counter()
                    row = {"step": done, "split": "train", "loss": loss, "lr": opt.param_groups[0]["lr"],
                           "examples_per_s": window_examples / max(now - window_t, 1e-9),
                           **{k: v for k, v in metrics.items()}}
                    if gnorm is not None:
                        row["grad_norm"] = float(gnorm)
                    logger.write(row)
                    window_t, window_examples = now, 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{row['lr']:.3g}", refresh=False)
                if done % cfg.eval.every == 0 or done == self.total:
                    last = self.evaluate()
                    logger.write({"step": done, "split": "valid", **last})
                    if world.main and self.log:
                        shown = last.get(self.task.metric, last["loss"])
                        line = (f"step {done}/{self.total}  train loss {loss:.4f}  valid "
                                f"{self.task.metric if self.task.metric in last else 'loss'} {shown:.4f}")
                        bar.write(line) if bar is not None else print(line, flush=True)
                if done % cfg.checkpoint.every == 0 or done == self.total:
                    logger.sync()
                    checkpoint_path = self.engine.save(self.run_dir, done, opt, sched, capture_rng(),
                                                       {"task": self.task.name}, cfg.checkpoint.keep)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            logger.close()
        if last is None:
            last = self.evaluate()  # resumed at its last step: nothing ran, report where it stands
        return Summary(self.total - start, time.perf_counter() - t0, loss, last, self.task.metric,
                       str(checkpoint_path) if checkpoint_path is not None else None)


class TrainingDiverged(SpecError):
    """The loss became inf or nan: the recipe (usually the learning rate) does not train this model."""

    kind = "training error"

    def __init__(self, step: int, loss: float):
        super().__init__(f"the training loss is {loss} at step {step}",
                         hint="lower train.optimizer.lr, or add train.clip: {norm: 1.0}")


def _bar(total: int, start: int, enabled: bool, name: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc=f"train {name}", unit="step", dynamic_ncols=True, leave=False,
                disable=None)


__all__ = ["Summary", "Trainer", "TrainingDiverged", "World", "bind_task", "build_objective"]
