"""Data-parallel training on torch.distributed: launching through torchrun, the process group, and
the DDP engine (`ddp_trainer`); the pipeline engine lives in pipeline.py and shares the helpers here.

`nnspec train ... --nproc N` re-runs the same command under `torchrun --standalone
--nproc-per-node N` (which sets OMP_NUM_THREADS=1 and the RANK / WORLD_SIZE / MASTER_* variables);
a command already running under torchrun (the user's own launch, any launcher that sets those
variables) trains as the rank the environment says.

Data parallel (DDP): every rank builds the whole generated module with the recipe's seed (so the
same weights), wrapped in torch.nn.parallel.DistributedDataParallel over gloo (the trainer runs on
CPU; NCCL is the backend for CUDA tensors). Rank r trains on split_batch(global batch, N, r); each
rank's loss is scaled by its share of the batch so DDP's gradient average is the global batch's
mean gradient even when N does not divide the batch, and the logged loss and metrics are the
global batch's means (all_reduce), identical on every rank. Rank 0 writes checkpoints of the
unwrapped module (the single-process layout: a DDP checkpoint resumes in one process and vice
versa); every rank loads them on resume.

Batch norm under DDP normalises with each rank's own micro-batch statistics (batch / N examples),
not the global batch's, so a BN model's losses differ from a single-process run's. Set
NNSPEC_SYNC_BN=1 to convert every BatchNorm to torch.nn.SyncBatchNorm (statistics all-reduced
across ranks in each forward: the global batch's, at the cost of one collective per BN layer).
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path

from .loop import World

LAUNCHED = "NNSPEC_TORCHRUN"  # set for the processes nnspec's own launch starts
SYNC_BN = "NNSPEC_SYNC_BN"  # "1": BatchNorm -> SyncBatchNorm under DDP


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def launch_needed(procs: int) -> bool:
    """Whether this command must start torchrun itself: more than one process asked for, and this
    process is not already one of a launch's ranks."""
    return procs > 1 and not under_torchrun()


def launch(procs: int, argv: list[str] | None = None) -> int:
    """Run this `nnspec train` command again as `procs` ranks under torchrun; its exit status."""
    argv = _without_nproc(list(sys.argv[1:] if argv is None else argv))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           "-m", "nnspec.runtime.cli", *argv]
    env = dict(os.environ, **{LAUNCHED: "1"})
    if os.environ.get("NNSPEC_DEBUG"):
        return subprocess.call(cmd, env=env)
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE) as p:
        failed = _relay_stderr(p.stderr)
        rc = p.wait()
    if rc != 0 and failed:
        print(f"nnspec: a rank failed (its error is above); torchrun exited with status {rc}", file=sys.stderr)
    return rc


# torchrun's own report of a failed rank: its logger's lines, then its Python traceback
_TORCHRUN_REPORT = (b"torch/distributed/elastic/", b"\nTraceback (most recent call last):")


def _relay_stderr(stream) -> bool:
    """Copy the ranks' stderr (progress bars included: chunks, not lines) until torchrun starts its
    failure report, a traceback of its own; drop that. Whether a report was seen."""
    seen = False
    while True:
        chunk = os.read(stream.fileno(), 1 << 14)
        if not chunk:
            return seen
        if not seen:
            cut = min((i for i in (chunk.find(m) for m in _TORCHRUN_REPORT) if i >= 0), default=-1)
            if cut >= 0:
                seen = True
                chunk = chunk[:chunk.rfind(b"\n", 0, cut) + 1]
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()


def _without_nproc(argv: list[str]) -> list[str]:
    """argv less `--nproc N`: torchrun's argparse would take `--nproc` for an ambiguous prefix of its
    own --nproc-per-node, and the ranks learn their number from the environment anyway."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def world_from_env(args) -> World:
    """This process's place: the torchrun environment's rank and size, or a single process."""
    if not under_torchrun():
        return World()
    size = int(os.environ["WORLD_SIZE"])
    if size == 1:
        return World()
    mode = "pipeline" if getattr(args, "pipeline_stages", None) else "ddp"
    return World(int(os.environ["RANK"]), size, mode)


# -- the process group ---------------------------------------------------------------------------
def init_group(world: World) -> None:
    """Join torchrun's process group (gloo: the trainer's tensors are on the CPU), once per process."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    dist.init_process_group(backend="gloo", rank=world.rank, world_size=world.size)
    atexit.register(_destroy)


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj, src: int):
    """`obj` of rank `src` on every rank (small Python values: losses, metric dicts)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank0_prepared(world: World, ok: bool) -> None:
    """Trainer.run's hook: every rank learns whether rank 0 could prepare the run folder; the
    others end quietly (exit 1) when it could not, rank 0 reports the error."""
    if not broadcast(ok if world.main else None, src=0) and not world.main:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # no teardown of a process group whose rank 0 is going away


def checkpoint_path(run_dir, step: int) -> Path:
    """Where rank 0 writes the checkpoint of `step` (what every rank's save returns)."""
    from .checkpoint import CHECKPOINTS, step_dir_name
    return (Path(run_dir) / CHECKPOINTS).resolve() / step_dir_name(step)


# -- data parallel -------------------------------------------------------------------------------
class DDPEngine:
    """One rank of a data-parallel run (see the module docstring). `objective` is set by ddp_trainer
    once the Trainer has bound the task and the loss."""

    def __init__(self, module, world: World, microbatches: int = 1, objective=None):
        from torch.nn.parallel import DistributedDataParallel

        self.module = module  # unwrapped: what checkpoints hold and evaluation runs
        self.ddp = DistributedDataParallel(module)
        self.world = world
        self.microbatches = microbatches
        self.objective = objective

    def parameters(self):
        return [p for p in self.module.parameters() if p.requires_grad]

    def state_module(self):
        return self.module

    def train_step(self, batch):
        import torch
        import torch.distributed as dist

        from .engine import split_batch

        total = _batch_size(batch)
        part = split_batch(batch, self.world.size, self.world.rank)
        share = _batch_size(part)
        # DDP averages gradients over ranks; scaling by share * N / total makes that average the
        # gradient of the global batch's mean loss when the parts differ in size.
        scale = share * self.world.size / total
        M = min(self.microbatches, share) if share else 1
        loss_sum, metric_sums = 0.0, {}
        for i in range(M):
            piece = part if M == 1 else split_batch(part, M, i)
            weight = _batch_size(piece) / share if share else 0.0
            sync = self.ddp.no_sync() if i < M - 1 else _nullcontext()
            with sync:
                outputs = self.objective.outputs(self.ddp, piece)
                loss, m, _ = self.objective(outputs, piece)
                (loss * (scale * weight)).backward()
            loss_sum += float(loss.detach()) * _batch_size(piece)
            for k, v in m.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v) * _batch_size(piece)
        # the global batch's means: sums of example-weighted values over ranks, over the batch size
        names = sorted(metric_sums)
        sums = torch.tensor([loss_sum, *(metric_sums[k] for k in names)], dtype=torch.float64)
        dist.all_reduce(sums)
        sums /= total
        return float(sums[0]), {k: float(v) for k, v in zip(names, sums[1:])}

    def evaluate(self, batch):
        import torch
        # every rank evaluates the whole batch: identical numbers on all ranks, no collective needed
        with torch.no_grad():
            outputs = self.objective.outputs(self.module, batch)
            loss, _, inputs = self.objective(outputs, batch)
        return float(loss), inputs

    def train(self, mode: bool = True):
        self.ddp.train(mode)

    def prepared(self, ok: bool) -> None:
        rank0_prepared(self.world, ok)

    def save(self, run_dir, step, optimizer, scheduler, rng, extra, keep):
        import torch.distributed as dist

        from .checkpoint import save_checkpoint
        if self.world.main:
            save_checkpoint(run_dir, step, self.module, optimizer, scheduler, rng, extra, keep)
        dist.barrier()  # no rank goes on (or resumes) before the checkpoint is complete
        return checkpoint_path(run_dir, step)

    def load(self, run_dir, optimizer, scheduler):
        from .checkpoint import resume
        return resume(run_dir, self.module, optimizer, scheduler)


def _batch_size(batch) -> int:
    return next(iter(batch.values())).shape[0] if batch else 0


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def sync_batchnorm_wanted() -> bool:
    return os.environ.get(SYNC_BN, "").strip() in ("1", "true", "yes")


def ddp_trainer(loaded, cfg, run_dir, world: World, microbatches: int = 1, progress: bool = True,
                options: dict | None = None, weights: str | None = None):
    """The Trainer of one DDP rank: the whole module with the recipe's seed (or `weights`), wrapped
    in DDP. `options`: PassContext options of the torch program (e.g. remat_budget)."""
    import torch

    from nnspec.runtime.compile import program_for
    from nnspec.targets.torch.build import build_module, load_arrays

    from .loop import Trainer, start_weights

    if cfg.batch_size < world.size:
        from nnspec.compiler.errors import SpecError
        raise SpecError(f"--nproc {world.size}: the batch of {cfg.batch_size} leaves some ranks no examples",
                        expected=f"a batch of at least {world.size} (--batch)")
    init_group(world)
    program = program_for(loaded, "torch", options=options)
    module = build_module(program, seed=cfg.seed)  # same seed on every rank: the same weights
    start = start_weights(program, weights) if weights is not None else None
    if start is not None:
        load_arrays(module, program, start[0])  # every rank reads the same file
    if sync_batchnorm_wanted():
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    engine = DDPEngine(module, world, microbatches)
    trainer = Trainer(loaded, cfg, run_dir, program=program, world=world, engine=engine, progress=progress,
                      start=start)
    engine.objective = trainer.objective
    return trainer


__all__ = ["DDPEngine", "broadcast", "rank0_prepared", "ddp_trainer", "init_group", "launch", "launch_needed", "under_torchrun",
           "world_from_env"]
