"""`nnspec train SPEC`: the command line of the trainer (flags, launch, the summary line).

    nnspec train char_rnn --steps 600 --out runs/char_rnn
    nnspec train char_rnn --resume runs/char_rnn --steps 1200
    nnspec train char_rnn --set train.optimizer.lr=1e-3 --batch 64
    nnspec train mistral -p tiny --weights sft.safetensors   start from (and, for DPO, compare with) these
    nnspec train char_rnn --nproc 2                     data parallel through torchrun
    nnspec train char_rnn --pipeline-stages 2 --microbatches 4 [--schedule gpipe|1f1b]

Flags override the spec's `train:` section (and its preset's) through the same schema, so a bad
value is reported like one in the file. Without --out the run goes to runs/SPEC[-PRESET].
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nnspec.runtime.plan import positive_int, remat_budget


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="train on this task instead of the recipe's (see runtime/tasks; its options: "
                   "--set train.task.options.KEY=VALUE)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps in all (replaces the recipe's steps or epochs)")
    p.add_argument("--batch", type=positive_int, help="global batch size (replaces train.batch_size)")
    p.add_argument("--seed", type=int, help="seed of the initial weights, the data and dropout (train.seed)")
    p.add_argument("--weights", metavar="W.safetensors",
                   help="start from these weights instead of the seed's initialisation (a file `nnspec "
                        "import-weights` writes, an artifact's weights.safetensors or a checkpoint's): fine-tuning, "
                        "or DPO from a fine-tuned model, whose frozen reference they then are")
    p.add_argument("--out", "-o", metavar="RUN_DIR", help="run folder: run.json, metrics.jsonl, checkpoints/ "
                   "(default runs/SPEC[-PRESET])")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest complete "
                   "checkpoint (same spec, preset and recipe; --steps may grow)")
    p.add_argument("--microbatches", type=positive_int, default=1, metavar="M",
                   help="cut each batch into M micro-batches whose gradients accumulate (default 1); with "
                        "--pipeline-stages, the pipeline's micro-batches")
    p.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                   help="data-parallel processes, launched through torchrun (gloo on CPU, NCCL on GPU)")
    p.add_argument("--pipeline-stages", type=positive_int, metavar="K",
                   help="GPipe pipeline parallelism over K processes: the stages partition_pipeline cuts")
    p.add_argument("--schedule", choices=["gpipe", "1f1b"], default="gpipe",
                   help="pipeline schedule (default gpipe: all forwards, then all backwards)")
    p.add_argument("--remat-budget", dest="remat", type=remat_budget, metavar="B",
                   help="train under a memory budget for the tensors kept for backward: a fraction (0.33) or an "
                        "amount (200MB); the rematerialize pass's segments are recomputed in backward")
    p.add_argument("--threads", type=positive_int, help="torch intra-op threads (default: torch's; torchrun sets 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (lines at each evaluation stay)")


def default_run_dir(loaded) -> Path:
    return Path("runs") / (loaded.name + (f"-{loaded.preset}" if loaded.preset else ""))


def cmd_train(args) -> int:
    """Run `nnspec train` (exit status)."""
    import torch

    from nnspec.compiler.spec.load import load_spec, parse_overrides

    from .distributed import launch_needed, launch, world_from_env
    from .section import recipe

    if args.remat and args.pipeline_stages:
        raise argparse.ArgumentTypeError("--remat-budget plans the whole model; a pipeline's stages recompute what "
                                         "`nnspec plan --memory` plans for them")
    if args.pipeline_stages and args.nproc > 1:
        raise argparse.ArgumentTypeError("--nproc (data parallel) and --pipeline-stages cannot be combined yet")
    if args.resume and args.out and Path(args.resume) != Path(args.out):
        raise argparse.ArgumentTypeError("--resume RUN_DIR continues in RUN_DIR: leave out --out")
    procs = args.pipeline_stages or args.nproc
    if launch_needed(procs):
        return launch(procs, args.argv)
    loaded = load_spec(args.spec, args.preset, parse_overrides(args.overrides))
    cfg = recipe(loaded, steps=args.steps, batch_size=args.batch, task=args.task, seed=args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.resume or args.out or default_run_dir(loaded))
    world = world_from_env(args)
    trainer = make_trainer(loaded, cfg, run_dir, world, args)
    summary = trainer.run(resume=bool(args.resume))
    if world.main:
        print(summary.line(loaded.name))
    return 0


def make_trainer(loaded, cfg, run_dir, world, args):
    """The Trainer for this process: one process, a DDP rank, or a pipeline stage's rank."""
    from nnspec.runtime.compile import program_for

    from .loop import Trainer, start_weights
    progress = not args.no_progress
    options = {"remat_budget": args.remat} if args.remat else {}
    if world.mode == "ddp":
        from .distributed import ddp_trainer
        return ddp_trainer(loaded, cfg, run_dir, world, args.microbatches, progress, options, args.weights)
    if world.mode == "pipeline":
        from .pipeline import pipeline_trainer
        return pipeline_trainer(loaded, cfg, run_dir, world, args.microbatches, args.schedule, progress,
                                args.weights)
    program = program_for(loaded, "torch", options=options)
    return Trainer(loaded, cfg, run_dir, program=program, microbatches=args.microbatches, progress=progress,
                   start=start_weights(program, args.weights) if args.weights else None)


__all__ = ["add_train_args", "cmd_train", "default_run_dir"]
