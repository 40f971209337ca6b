"""How one training step runs: the objective (model outputs + batch -> the loss's inputs -> loss) and
the engines that execute it: one process with optional micro-batching here; data parallel and
pipeline parallel in distributed.py and pipeline.py, behind the same three methods.

An engine holds the module(s) of this process and provides
  * `train_step(batch) -> (loss, metrics)`: forward and backward of one global batch, gradients left
    in the parameters (the trainer clips and steps the optimizer); `loss` is the global batch's mean
    as a float, identical on every rank;
  * `evaluate(batch) -> (loss, inputs)`: forward only, in eval mode's caller, for validation metrics;
  * `parameters()` and `state_module()`: what the optimizer steps and what a checkpoint saves.
"""
from __future__ import annotations

import copy
from typing import Mapping

import numpy as np
import torch


class Objective:
    """The loss of a spec's outputs on a task's batch: `feeds` go to the model, and the loss reads
    model outputs and batch arrays by name, through the train section's `loss.map`. For a loss
    with `reference` (DPO) it also holds the frozen reference, whose outputs the loss reads as
    `reference_<output>`."""

    def __init__(self, loss, loss_map: Mapping[str, str], output_names: list[str], feeds: list[str]):
        self.loss = loss
        self.map = dict(loss_map)
        self.output_names = list(output_names)
        self.feeds = list(feeds)
        self.reference = None

    @property
    def reference_names(self) -> list[str]:
        return [f"reference_{n}" for n in self.output_names] if self.loss.reference else []

    def freeze_reference(self, module) -> None:
        """Keep a frozen copy of `module` as it is now (the run's starting weights) as the reference."""
        self.reference = copy.deepcopy(module).eval().requires_grad_(False)

    def names_for_loss(self, batch_names) -> dict[str, str]:
        """{name the loss reads: name it is found under} for the reads available."""
        have = set(self.output_names) | set(self.reference_names) | set(batch_names)
        out = {}
        for read in (*self.loss.reads, *self.loss.optional):
            source = self.map.get(read, read)
            if source in have:
                out[read] = source
        return out

    def outputs(self, module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {k: batch[k] for k in self.feeds}
        out = dict(zip(self.output_names, _as_tuple(module(**feeds))))
        if self.reference is not None:
            with torch.no_grad():
                out.update(zip(self.reference_names, _as_tuple(self.reference(**feeds))))
        return out

    def inputs(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict:
        both = {**batch, **outputs}
        return {read: both[source] for read, source in self.names_for_loss(both).items()}

    def __call__(self, outputs, batch):
        """(loss, metrics, loss inputs) of model `outputs` on `batch`."""
        inputs = self.inputs(outputs, batch)
        loss, metrics = self.loss(inputs)
        return loss, metrics, inputs


def _as_tuple(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def to_tensors(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A task's numpy batch as tensors sharing its memory (no copy on CPU)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def split_batch(batch: Mapping[str, torch.Tensor], parts: int, index: int) -> dict[str, torch.Tensor]:
    """Micro-batch `index` of `parts`: every array cut along its first (batch) dim, as
    torch.tensor_split cuts it (sizes differ by at most one when parts does not divide the batch)."""
    return {k: torch.tensor_split(v, parts)[index] for k, v in batch.items()}


class LocalEngine:
    """One process. With `microbatches` M > 1 the batch is cut into M micro-batches whose gradients
    accumulate, each loss scaled by 1/M: the same gradients a pipeline run of M micro-batches
    computes, and (for a spec without batch-coupled ops) the same as one full batch."""

    def __init__(self, module, objective: Objective, microbatches: int = 1):
        self.module = module
        self.objective = objective
        self.microbatches = microbatches

    def parameters(self):
        return [p for p in self.module.parameters() if p.requires_grad]

    def state_module(self):
        return self.module

    def train_step(self, batch):
        M = self.microbatches
        total, metrics = 0.0, {}
        for i in range(M):
            part = batch if M == 1 else split_batch(batch, M, i)
            loss, m, _ = self.objective(self.objective.outputs(self.module, part), part)
            (loss / M if M > 1 else loss).backward()
            total += float(loss.detach()) / M
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / M
        return total, metrics

    @torch.no_grad()
    def evaluate(self, batch):
        outputs = self.objective.outputs(self.module, batch)
        loss, _, inputs = self.objective(outputs, batch)
        return float(loss), inputs

    def train(self, mode: bool = True):
        self.module.train(mode)

    def save(self, run_dir, step, optimizer, scheduler, rng, extra, keep):
        from .checkpoint import save_checkpoint
        return save_checkpoint(run_dir, step, self.module, optimizer, scheduler, rng, extra, keep)

    def load(self, run_dir, optimizer, scheduler):
        """The newest checkpoint of `run_dir` restored (None when it has none yet)."""
        from .checkpoint import resume
        return resume(run_dir, self.module, optimizer, scheduler)


__all__ = ["LocalEngine", "Objective", "split_batch", "to_tensors"]
