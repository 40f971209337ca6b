"""The loss contract: a loss is one small class, registered by name, with a pydantic options model.

A loss subclass declares
  * `name`: the registry key (`LOSSES[name]`), the name a `train: {loss: {name: ...}}` section uses,
  * `Options`: its pydantic options model (unknown options, wrong types, out-of-range values are
    errors, reported as `LossError`),
  * `reads`: the named tensors it needs from the model outputs and the batch, and `optional`: the
    ones it uses when present, so a trainer can check a spec's outputs before training,
  * `compute(inputs) -> (loss, metrics)`: a scalar float tensor and a dict of detached scalar
    metrics (logged, never backpropagated).
Calling a loss checks its inputs first, so a missing tensor is a clear error naming the loss and
the tensors it was given. Reductions: `mean` (the default) or `sum`, over the unit each loss names
in its docstring (tokens, examples, pairs).
"""
from __future__ import annotations

from typing import ClassVar, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ...compiler.errors import SpecError

LOSSES: dict[str, type["Loss"]] = {}


class LossError(SpecError):
    """A loss was configured wrongly or given tensors it cannot use."""

    kind = "loss error"


class LossOptions(BaseModel):
    """Base of loss option models: unknown options are errors, YAML `true` is not 1, no inf/nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    reduction: Literal["mean", "sum"] = "mean"


def register(cls: type["Loss"]) -> type["Loss"]:
    """Class decorator: add a loss to `LOSSES` under its `name` (names are unique)."""
    assert cls.name not in LOSSES, f"duplicate loss name {cls.name}"
    LOSSES[cls.name] = cls
    return cls


class Loss:
    """Base of every loss; see the module docstring for the contract."""

    name: ClassVar[str]
    Options: ClassVar[type[LossOptions]] = LossOptions
    reads: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()
    # True for a loss that compares the model with where its run started (DPO's frozen reference):
    # the trainer then keeps a frozen copy of the starting weights and adds its outputs to the
    # loss's inputs as `reference_<output>`
    reference: ClassVar[bool] = False

    def __init__(self, **options):
        try:
            self.options = self.Options(**options)
        except ValidationError as e:
            raise LossError(f"loss '{self.name}': bad options", expected=_describe(e),
                            hint=f"options of '{self.name}': {', '.join(self.Options.model_fields)}") from None

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        check_reads(self, inputs.keys())
        for key in self.reads + self.optional:
            if key in inputs and not isinstance(inputs[key], torch.Tensor):
                raise LossError(f"loss '{self.name}': input '{key}' is a {type(inputs[key]).__name__}, not a tensor")
        loss, metrics = self.compute(inputs)
        return loss, {k: v.detach() for k, v in metrics.items()}

    def compute(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def reduce(self, total: torch.Tensor, count) -> torch.Tensor:
        """`total` (a sum over `count` units) divided by count for `mean`; count 0 gives 0, not nan."""
        if self.options.reduction == "sum":
            return total
        return total / max(int(count), 1)

    def fail(self, message: str) -> LossError:
        return LossError(f"loss '{self.name}': {message}")


def check_reads(loss: Loss | type[Loss], available) -> None:
    """Raise a `LossError` naming the loss and both key sets when `available` lacks a read."""
    have = set(available)
    missing = [k for k in loss.reads if k not in have]
    if missing:
        raise LossError(f"loss '{loss.name}' reads {', '.join(map(repr, missing))}, which the model outputs "
                        f"and batch do not provide",
                        expected=f"tensors named {', '.join(loss.reads)}",
                        hint=f"available: {', '.join(sorted(have)) or '(none)'}")


def make_loss(config: Mapping | str) -> Loss:
    """A loss from a `train: {loss: ...}` value: a name, or a mapping with `name` and its options."""
    if isinstance(config, str):
        config = {"name": config}
    if not isinstance(config, Mapping) or not isinstance(config.get("name"), str):
        raise LossError("a loss is a name or a mapping with a 'name' and its options")
    options = dict(config)
    name = options.pop("name")
    if name not in LOSSES:
        raise LossError(f"unknown loss {name!r}", expected=f"one of {', '.join(sorted(LOSSES))}")
    if not all(isinstance(k, str) for k in options):
        raise LossError(f"loss '{name}': option names must be strings")
    return LOSSES[name](**options)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Half precision inputs are computed in float32; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(options)"
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
