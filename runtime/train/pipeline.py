"""Pipeline-parallel training (GPipe, 1F1B) on torch.distributed.pipelining for `nnspec train
--pipeline-stages K --microbatches M --schedule gpipe|1f1b`.

The program goes through the torch pipeline with the stage options (`nnspec plan`'s: K stages, M
micro-batches, the dims of one micro-batch), so model.py holds one class per stage
(targets/torch/stages.py). Rank k builds only stage k's class and loads only its slice of the
IR's initial weights for the recipe's seed (keys are the whole model's: every module sits at its
whole-model path). A thin wrapper turns the stage's keyword arguments and dict of outputs into the
positional tuples PipelineStage sends, in the stage's declared `inputs` / `outputs` order.

One step: the global batch is cut into M micro-batches (split_batch, as LocalEngine cuts it); the
first stage is fed their inputs, the last computes the Objective on its outputs and the
micro-batch's task arrays, returning loss / M, so the gradients are LocalEngine's with the same M.
The logged loss and metrics are the means over micro-batches, broadcast from the last rank. A
parameter tied across stages is a copy in each (stages.py rule 3): its gradients are summed
across ranks after the backward, and gradient-norm clipping counts it once, in the whole model's
parameter order, so clipping equals the single process's.

Checkpoints are the single-process layout: every stage's weights and optimizer state are gathered
to rank 0, which writes one checkpoint with whole-model keys and the optimizer state in the whole
model's parameter order (read from the whole model's class built on the meta device: no memory).
It resumes in one process, and a single-process checkpoint resumes here (each rank takes its
slice through checkpoint.Part). Dropout draws from each rank's own RNG, so with dropout > 0 a
pipeline run's losses are not a single process's.

Before training, rank 0 prints `nnspec plan`'s prediction for this cut (step time, bubble).
Set NNSPEC_PIPELINE_TIMES=PREFIX to have every rank write PREFIX.rank<k>.json at exit with the
seconds each step took and the seconds its stage spent computing (forward / backward calls): the
rest of the step is waiting (benchmarks/train_parallel.py).
"""
from __future__ import annotations

import atexit
import json
import os
import time

import torch
from torch import nn

from nnspec.compiler.errors import SpecError

from .distributed import broadcast, checkpoint_path, init_group, rank0_prepared
from .engine import split_batch
from .loop import World

TIMES = "NNSPEC_PIPELINE_TIMES"
SCHEDULES = ("gpipe", "1f1b")


# -- the program and this rank's stage ------------------------------------------------------------
def micro_dims(program, batch: dict, microbatches: int) -> dict:
    """{symbol: size} of one micro-batch, read off a real batch against the spec's input shapes."""
    from nnspec.runtime.compile import interface

    dims = {}
    for spec_in in interface(program)["inputs"]:
        arr = batch.get(spec_in["name"])
        if arr is None:
            continue
        for i, (sym, size) in enumerate(zip(spec_in["shape"], arr.shape)):
            if isinstance(sym, str):
                dims.setdefault(sym, max(1, size // microbatches) if i == 0 else int(size))
    return dims


def stage_program(loaded, cfg, stages: int, microbatches: int):
    """The program compiled with `nnspec plan`'s stage options for this run's micro-batch shape."""
    from nnspec.runtime.compile import program_for

    from .loop import bind_task

    base = program_for(loaded, "torch")
    dims = micro_dims(base, bind_task(cfg).batch(0, cfg.batch_size), microbatches)
    program = program_for(loaded, "torch", options={"stages": stages, "microbatches": microbatches, "dims": dims})
    found = len(program.forward.stages)
    if found != stages:
        raise SpecError(f"--pipeline-stages {stages}: the model cuts into {found} stage(s) only",
                        expected=f"at most {found} stages for spec '{loaded.name}'")
    return program


def load_stage_classes(program):
    """(generated module, whole-model class name) of the program's model.py with its stage classes."""
    import hashlib

    from nnspec.targets.torch.build import load_source
    from nnspec.targets.torch.stages import generate_source

    src, cls = generate_source(program)
    digest = hashlib.sha256(src.encode()).hexdigest()[:12]
    return load_source(src, f"nnspec_stages_{program.spec.name}_{digest}"), cls


def build_stage(program, mod, index: int, seed: int, arrays: dict | None = None):
    """Stage `index` alone, with its slice of the whole-model `arrays` (`nnspec train --weights`) or
    of the IR's initial weights for `seed`, ties completed (a parameter tied across stages loads the
    same array into each copy)."""
    from nnspec.targets.initialise import initial_weights
    from nnspec.targets.weights import complete_tied

    cls = mod.STAGES[index]
    torch.manual_seed(seed)
    stage = cls()
    arrays = complete_tied(program, arrays if arrays is not None else initial_weights(program, seed))
    stage.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(cls.prefixes)},
                          strict=True)
    return stage


class WholeLayout:
    """The whole model's state-dict keys, parameter order and ties, from its class built on the meta
    device; which stage holds which key follows from the stage classes' `prefixes`."""

    def __init__(self, mod, root: str):
        with torch.device("meta"):
            whole = getattr(mod, root)()
        self.keys = tuple(whole.state_dict().keys())
        self.names = [n for n, p in whole.named_parameters() if p.requires_grad]  # LocalEngine's order
        self.index = {n: i for i, n in enumerate(self.names)}
        first: dict = {}
        self.owner: dict = {}  # every parameter key -> the name its parameter is listed under
        self.shapes: dict = {}
        for n, p in whole.named_parameters(remove_duplicate=False):
            self.owner[n] = first.setdefault(id(p), n)
            self.shapes[n] = tuple(p.shape)
        self.prefixes = [c.prefixes for c in mod.STAGES]

    def holders(self, name: str) -> list[int]:
        """The stages holding a copy of whole-model parameter `name` (more than one when tied across)."""
        keys = [k for k, o in self.owner.items() if o == name]
        return sorted({s for s, pre in enumerate(self.prefixes) for k in keys if k.startswith(pre)})


class StageModule(nn.Module):
    """A stage class behind PipelineStage's calling convention: positional tensors in, a tuple out
    (the last stage's result passes through as the whole model's forward returns it)."""

    def __init__(self, stage: nn.Module, last: bool):
        super().__init__()
        self.stage = stage
        self.last = last

    def forward(self, *args):
        out = self.stage(**dict(zip(type(self.stage).inputs, args)))
        if self.last:
            return out
        # contiguous: gloo sends only dense tensors, and the receiver's buffers copy these strides
        return tuple(out[name].contiguous() for name in type(self.stage).outputs)


# -- the engine ----------------------------------------------------------------------------------
class PipelineEngine:
    """This rank's stage of a pipeline run (see the module docstring)."""

    whole_model = False  # each rank holds one stage

    def __init__(self, program, world: World, microbatches: int, schedule: str, seed: int,
                 arrays: dict | None = None):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        if schedule not in SCHEDULES:
            raise SpecError(f"--schedule {schedule}: no such pipeline schedule", expected=" or ".join(SCHEDULES))
        self.world, self.M = world, microbatches
        self.rank, self.K = world.rank, world.size
        self.first, self.last = self.rank == 0, self.rank == self.K - 1
        mod, root = load_stage_classes(program)
        _check_chain(mod)
        self.layout = WholeLayout(mod, root)
        self.stage = build_stage(program, mod, self.rank, seed, arrays)
        self.inputs = type(self.stage).inputs
        self.wrapper = StageModule(self.stage, self.last)
        self.named = [(n, p) for n, p in self.stage.named_parameters() if p.requires_grad]
        if not self.named:
            raise SpecError(f"pipeline stage {self.rank} has no parameters to train",
                            hint="use fewer --pipeline-stages")
        self.whole_index = [self.layout.index[self.layout.owner[n]] for n, _ in self.named]
        self._shared = self._shared_params()
        self.pipe = PipelineStage(self.wrapper, self.rank, self.K, torch.device("cpu"))
        make = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
        self.schedule = make(self.pipe, microbatches, loss_fn=self._loss, scale_grads=False)
        self.objective = None  # set by pipeline_trainer once the Trainer has bound task and loss
        self._mbs, self._stats = [], {}
        self.step_s, self.busy_s = [], []
        self._busy = 0.0
        self._time_calls()

    # what the Trainer uses
    def parameters(self):
        return [p for _, p in self.named]

    def state_module(self):
        return self.stage

    def train(self, mode: bool = True):
        self.wrapper.train(mode)

    def _loss(self, output, target):
        """The Objective on the last stage's outputs and micro-batch `target`'s arrays, over M (the
        micro-batch's share of the batch's gradient, as LocalEngine scales it)."""
        t = time.perf_counter()
        i = int(target)
        mb = self._mbs[i]
        result = output if isinstance(output, tuple) else (output,)
        loss, metrics, _ = self.objective(dict(zip(self.objective.output_names, result)), mb)
        # keyed by micro-batch: the schedule's one shape-finding call on micro-batch 0 is overwritten
        self._stats[i] = (float(loss.detach()), {k: float(v) for k, v in metrics.items()})
        self._busy += time.perf_counter() - t  # the loss is the last stage's work too
        return loss / self.M

    def train_step(self, batch):
        t0, self._busy = time.perf_counter(), 0.0
        self._mbs = [split_batch(batch, self.M, i) for i in range(self.M)]
        self._stats = {}
        args = [tuple(mb[k] for k in self.inputs) for mb in self._mbs] if self.first else None
        targets = [torch.tensor(i) for i in range(self.M)] if self.last else None
        self.schedule.step(arg_mbs=args, target_mbs=targets, return_outputs=False)
        result = None
        if self.last:
            losses = [self._stats[i][0] for i in range(self.M)]
            names = self._stats[0][1]
            result = (sum(losses) / self.M,
                      {k: sum(self._stats[i][1][k] for i in range(self.M)) / self.M for k in names})
        loss, metrics = broadcast(result, src=self.K - 1)
        self._sum_shared_grads()
        self.step_s.append(time.perf_counter() - t0)
        self.busy_s.append(self._busy)
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, batch):
        """The whole batch through the stages one after another (point to point), the loss on the
        last; its loss and loss inputs broadcast to every rank (rank 0 logs them)."""
        import torch.distributed as dist

        if self.first:
            args = tuple(batch[k] for k in self.inputs)
        else:
            box = [None]
            dist.recv_object_list(box, src=self.rank - 1)
            args = box[0]
        out = self.wrapper(*args)
        result = None
        if not self.last:
            dist.send_object_list([tuple(out)], dst=self.rank + 1)
        else:
            result_t = out if isinstance(out, tuple) else (out,)
            loss, _, inputs = self.objective(dict(zip(self.objective.output_names, result_t)), batch)
            result = (float(loss), inputs)
        return broadcast(result, src=self.K - 1)

    # -- gradients of parameters tied across stages, and clipping as one model
    def _shared_params(self) -> list:
        """[(whole index, local parameter or None)] of parameters more than one stage holds."""
        mine = {w: p for w, (_, p) in zip(self.whole_index, self.named)}
        return [(i, mine.get(i)) for i, n in enumerate(self.layout.names) if len(self.layout.holders(n)) > 1]

    def _sum_shared_grads(self) -> None:
        import torch.distributed as dist

        if not self._shared:
            return
        flat = []
        for i, p in self._shared:
            shape = self.layout.shapes[self.layout.names[i]]
            g = p.grad if p is not None and p.grad is not None else None
            flat.append((g if g is not None else torch.zeros(shape)).reshape(-1))
        total = torch.cat(flat)
        dist.all_reduce(total)
        at = 0
        for i, p in self._shared:
            n = p.numel() if p is not None else int(torch.Size(self.layout.shapes[self.layout.names[i]]).numel())
            if p is not None:
                p.grad = total[at:at + n].view_as(p).clone()
            at += n

    def clip_gradients(self, cfg):
        """clip_gradients over the whole model: per-parameter norms in whole-model order (each
        parameter once, from the first stage holding it) all-reduced, then torch's own formula."""
        import torch.distributed as dist

        c = cfg.clip
        if c is None:
            return None
        if c.norm is None:
            torch.nn.utils.clip_grad_value_([p for p in self.parameters() if p.grad is not None], clip_value=c.value)
            return None
        norms = torch.zeros(len(self.layout.names))
        for w, (name, p) in zip(self.whole_index, self.named):
            if p.grad is not None and self.layout.holders(self.layout.names[w])[0] == self.rank:
                norms[w] = torch.linalg.vector_norm(p.grad.detach(), c.norm_type)
        dist.all_reduce(norms)  # each entry is non-zero on one rank only
        total = torch.linalg.vector_norm(norms, c.norm_type)
        coef = torch.clamp(c.norm / (total + 1e-6), max=1.0)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.detach().mul_(coef)
        return total

    # -- the run folder and checkpoints in the single-process layout
    def prepared(self, ok: bool) -> None:
        rank0_prepared(self.world, ok)

    def save(self, run_dir, step, optimizer, scheduler, rng, extra, keep):
        import torch.distributed as dist

        from .checkpoint import save_state

        sd = optimizer.state_dict()
        mine = {"weights": {k: v.detach().cpu() for k, v in self.stage.state_dict().items()},
                "state": {self.whole_index[j]: entries for j, entries in sd["state"].items()},
                "groups": sd["param_groups"]}
        parts = [None] * self.K if self.world.main else None
        dist.gather_object(mine, parts, dst=0)
        if self.world.main:
            weights, state = {}, {}
            for part in parts:
                weights.update(part["weights"])
                for w, entries in part["state"].items():
                    state.setdefault(w, entries)  # a tied copy's state equals its twin's
            missing = set(self.layout.keys) - set(weights)
            if missing:
                raise SpecError(f"the stages hold no weights for {', '.join(sorted(missing)[:5])}")
            whole_sd = {"state": {w: state[w] for w in sorted(state)},
                        "param_groups": [{**g, "params": list(range(len(self.layout.names)))} for g in sd["param_groups"]]}
            save_state(run_dir, step, {k: weights[k] for k in self.layout.keys}, whole_sd, type(optimizer).__name__,
                       scheduler, rng, extra, keep)
        dist.barrier()
        return checkpoint_path(run_dir, step)

    def load(self, run_dir, optimizer, scheduler):
        from .checkpoint import Part, resume

        part = Part(self.layout.keys, tuple(self.whole_index), len(self.layout.names))
        return resume(run_dir, self.stage, optimizer, scheduler, part=part)

    # -- timing for the benchmark
    def _time_calls(self) -> None:
        """Count the seconds spent inside the stage's forward / backward calls (the rest of a step
        is waiting on the other stages or on sends)."""
        for name in ("forward_one_chunk", "backward_one_chunk"):
            fn = getattr(self.pipe, name)

            def timed(*a, _fn=fn, **kw):
                t = time.perf_counter()
                try:
                    return _fn(*a, **kw)
                finally:
                    self._busy += time.perf_counter() - t
            setattr(self.pipe, name, timed)
        prefix = os.environ.get(TIMES)
        if prefix:
            atexit.register(self._write_times, prefix)

    def _write_times(self, prefix: str) -> None:
        with open(f"{prefix}.rank{self.rank}.json", "w") as f:
            json.dump({"rank": self.rank, "step_s": self.step_s, "busy_s": self.busy_s}, f)


def _check_chain(mod) -> None:
    """Each stage must take exactly what the one before it returns (the schedules pass one tuple on)."""
    for a, b in zip(mod.STAGES, mod.STAGES[1:]):
        if tuple(a.outputs) != tuple(b.inputs):
            raise SpecError(f"pipeline stage {b.__name__} takes {', '.join(b.inputs)} but the stage before it "
                            f"returns {', '.join(a.outputs)}", hint="use fewer --pipeline-stages")


def print_plan(program) -> None:
    """`nnspec plan`'s table for this cut (predicted step time and bubble)."""
    from nnspec.runtime.plan import render

    summary = dict(program.results["partition_pipeline"].summary)
    print("nnspec plan (prediction):\n" + render(program, summary), flush=True)


def pipeline_trainer(loaded, cfg, run_dir, world: World, microbatches: int, schedule: str = "gpipe",
                     progress: bool = True, weights: str | None = None):
    """The Trainer of one pipeline rank: stage `world.rank` of `world.size`, M micro-batches, from
    the recipe's seed or from the whole-model weights file `weights` (each stage loads its part)."""
    from .loop import Trainer, start_weights

    if cfg.batch_size % microbatches:
        # the stages' receive buffers are shaped once, from the first micro-batch
        raise SpecError(f"--microbatches {microbatches} does not divide the batch of {cfg.batch_size}",
                        expected="a divisor of the batch size (--batch)")
    init_group(world)
    program = stage_program(loaded, cfg, world.size, microbatches)
    if world.main:
        print_plan(program)
    start = start_weights(program, weights) if weights is not None else None
    engine = PipelineEngine(program, world, microbatches, schedule, cfg.seed, start[0] if start else None)
    trainer = Trainer(loaded, cfg, run_dir, program=program, world=world, engine=engine, progress=progress,
                      start=start)
    engine.objective = trainer.objective
    return trainer


__all__ = ["PipelineEngine", "StageModule", "WholeLayout", "build_stage", "pipeline_trainer", "stage_program"]
