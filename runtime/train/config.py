"""The `train:` section of a spec: one pydantic model (`TrainSpec`) beside the architecture.

A train section names the task (its options checked by the task's own Options model), the loss
(checked by `make_loss`), the optimizer and the learning-rate schedule (each a union tagged by
`name`), gradient clipping, weight decay, the batch size, the run length (`steps` or `epochs`,
exactly one), evaluation and the seed:

    train:
      task: {name: word_corpus, options: {seq_len: 35}}
      loss: {name: sequence_ce}
      optimizer: {name: sgd, lr: 1.0}
      schedule: {name: step, step_size: 1, gamma: 0.5, after: 3, interval: epoch}
      clip: {norm: 5.0}
      batch_size: 20
      epochs: 13

`validate_train(data)` returns a `TrainSpec` or raises a `SpecErrors` whose messages name the field
path (`train.optimizer.lr: ...`); `train_schema()` is its JSON Schema. Nothing here imports torch:
optim.py and schedules.py turn the validated model into torch objects.
"""
from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from ...compiler.errors import Location, SpecError, SpecErrors, clean, quote
from ...compiler.spec.load import _expected

MAX_STEPS = 10**9
MAX_EPOCHS = 10**6
MAX_BATCH_SIZE = 65536
MAX_SEED = 2**63 - 1
MAX_LR = 1e3  # no recipe uses a larger base rate; a larger one is a typo
MAX_CLIP = 1e6
MAX_METRICS = 32

PositiveLR = Annotated[float, Field(gt=0.0, le=MAX_LR)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
Eps = Annotated[float, Field(gt=0.0, le=1.0)]
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
# YAML has lists, not tuples; strict mode would refuse a list where a tuple is declared
_AsTuple = BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)
Betas = Annotated[tuple[Beta, Beta], _AsTuple]


class Strict(BaseModel):
    """Base of every train model: unknown keys, loose types (YAML `true` as 1) and inf/nan are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# -- task and loss: their option models live with them (runtime/tasks, runtime/losses)

class TaskConfig(Strict):
    """A registered task and its options (validated by that task's Options model)."""

    name: Name
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self):
        from ..tasks import TASKS  # numpy only
        cls = TASKS.get(self.name)
        if cls is None:
            raise ValueError(f"unknown task {quote(self.name)}; one of {', '.join(sorted(TASKS))}")
        try:
            # the options model only: building the task may read a corpus, validating must not
            cls.Options.model_validate(self.options)
        except ValidationError as e:
            raise ValueError(f"bad options for task '{self.name}': {_brief(e)}") from None
        return self


class LossConfig(Strict):
    """A registered loss and its options (validated by `make_loss`). `map` renames what the loss
    reads to what the model outputs or the batch holds: `{predictions: y}` feeds the spec's output
    `y` to mse's `predictions`."""

    name: Name
    options: dict[str, Any] = Field(default_factory=dict)
    map: dict[Name, Name] = Field(default_factory=dict, max_length=64)

    @model_validator(mode="after")
    def _check(self):
        from ..losses import LossError, make_loss  # imports torch: only when a train section is checked
        try:
            make_loss({**self.options, "name": self.name})
        except LossError as e:
            detail = f" ({e.expected})" if e.expected else ""
            raise ValueError(f"{e.message}{detail}") from None
        return self


def _name_only(value):
    """`loss: cross_entropy` is short for `loss: {name: cross_entropy}` (likewise task, schedule)."""
    return {"name": value} if isinstance(value, str) else value


# -- optimizers: one model each, tagged by `name`; defaults are torch's

class SGD(Strict):
    """SGD with (optionally Nesterov) momentum."""

    name: Literal["sgd"]
    lr: PositiveLR
    momentum: Beta = 0.0
    dampening: Beta = 0.0
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov(self):
        if self.nesterov and (self.momentum == 0.0 or self.dampening != 0.0):
            raise ValueError("nesterov needs momentum > 0 and dampening 0")
        return self


class Adam(Strict):
    name: Literal["adam"]
    lr: PositiveLR = 1e-3
    betas: Betas = (0.9, 0.999)
    eps: Eps = 1e-8
    amsgrad: bool = False


class AdamW(Adam):
    """Adam with decoupled weight decay (the section's `weight_decay`)."""

    name: Literal["adamw"]


class RMSprop(Strict):
    name: Literal["rmsprop"]
    lr: PositiveLR = 1e-2
    alpha: Beta = 0.99  # char-rnn's decay_rate
    eps: Eps = 1e-8
    momentum: Beta = 0.0
    centered: bool = False


class Adadelta(Strict):
    name: Literal["adadelta"]
    lr: PositiveLR = 1.0
    rho: Beta = 0.9
    eps: Eps = 1e-6


class Adamax(Strict):
    name: Literal["adamax"]
    lr: PositiveLR = 2e-3
    betas: Betas = (0.9, 0.999)
    eps: Eps = 1e-8


Optimizer = Annotated[Union[SGD, Adam, AdamW, RMSprop, Adadelta, Adamax], Field(discriminator="name")]


# -- schedules: a multiplier on the optimizer's lr, advanced once per `interval`

class ScheduleBase(Strict):
    # when a trainer advances the schedule: after every optimizer step, or after every epoch
    interval: Literal["step", "epoch"] = "step"


class Constant(ScheduleBase):
    name: Literal["constant"]


class StepDecay(ScheduleBase):
    """lr * gamma ** (max(0, k - after) // step_size): torch's StepLR when `after` is 0; Zaremba's
    and char-rnn's "decay every epoch once `after` epochs have passed" otherwise."""

    name: Literal["step"]
    step_size: Steps
    gamma: Annotated[float, Field(gt=0.0, le=1.0)]
    after: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 0


class Exponential(ScheduleBase):
    """lr * gamma ** k (torch's ExponentialLR)."""

    name: Literal["exponential"]
    gamma: Annotated[float, Field(gt=0.0, le=1.0)]


class InverseSqrt(ScheduleBase):
    """The Transformer's warm-up: lr * c * min(s**-0.5, s * warmup**-1.5) at step s = k + 1, with
    c = d_model**-0.5 (give `d_model`) or c = `scale` (exactly one). With lr 1 and d_model 512 this
    is "Attention Is All You Need" eq. 3; the peak, at s = warmup, is c * warmup**-0.5."""

    name: Literal["inverse_sqrt"]
    warmup: Steps
    d_model: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    scale: Annotated[float, Field(gt=0.0, le=MAX_LR)] | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.d_model is None) == (self.scale is None):
            raise ValueError("give exactly one of d_model or scale")
        return self

    @property
    def factor(self) -> float:
        return self.scale if self.scale is not None else self.d_model ** -0.5


class Cosine(ScheduleBase):
    """Linear warm-up over `warmup` steps to lr, then half a cosine from lr down to `min_lr` at
    k = total; min_lr after that."""

    name: Literal["cosine"]
    total: Steps
    min_lr: Annotated[float, Field(ge=0.0, le=MAX_LR)] = 0.0
    warmup: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 0

    @model_validator(mode="after")
    def _order(self):
        if self.warmup >= self.total:
            raise ValueError(f"warmup ({self.warmup}) must be less than total ({self.total})")
        return self


Schedule = Annotated[Union[Constant, StepDecay, Exponential, InverseSqrt, Cosine], Field(discriminator="name")]


# -- the rest of the section

class Clip(Strict):
    """Clip gradients by their global norm or by value, exactly one."""

    norm: Annotated[float, Field(gt=0.0, le=MAX_CLIP)] | None = None
    norm_type: Annotated[float, Field(ge=1.0, allow_inf_nan=True)] = 2.0  # inf: the max norm; nan fails ge
    value: Annotated[float, Field(gt=0.0, le=MAX_CLIP)] | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.norm is None) == (self.value is None):
            raise ValueError("give exactly one of norm or value")
        if self.value is not None and "norm_type" in self.model_fields_set:
            raise ValueError("norm_type applies to clipping by norm only")
        return self


class Eval(Strict):
    """Evaluate every `every` steps on `batches` validation batches, reporting `metrics` (empty:
    the task's metric and the loss's own)."""

    every: Steps = 1000
    batches: Annotated[int, Field(ge=1, le=10_000)] = 8
    metrics: Annotated[tuple[Name, ...], Field(max_length=MAX_METRICS), _AsTuple] = ()


class Checkpointing(Strict):
    """Save a checkpoint every `every` steps (and at the end), keeping the newest `keep`."""

    every: Steps = 1000
    keep: Annotated[int, Field(ge=1, le=1000)] = 3


class TrainSpec(Strict):
    """The `train:` section (see the module docstring)."""

    task: TaskConfig
    loss: LossConfig
    optimizer: Optimizer
    schedule: Schedule = Constant(name="constant")
    clip: Clip | None = None
    weight_decay: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)]
    steps: Steps | None = None
    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] | None = None
    eval: Eval = Eval()
    checkpoint: Checkpointing = Checkpointing()
    log_every: Steps = 10  # steps between metrics.jsonl lines (and progress-bar updates)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0

    @field_validator("task", "loss", "schedule", mode="before")
    @classmethod
    def _short(cls, v):
        return _name_only(v)

    @model_validator(mode="after")
    def _length(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        if isinstance(self.schedule, Cosine) and self.schedule.min_lr > self.optimizer.lr:
            raise ValueError(f"schedule.min_lr ({self.schedule.min_lr}) is above optimizer.lr ({self.optimizer.lr})")
        return self


def validate_train(data: Any, where: Callable[[tuple], Location | None] | None = None,
                   prefix: str = "train") -> TrainSpec:
    """`data` (the parsed `train:` mapping) as a `TrainSpec`, or a `SpecErrors` with one error per
    problem, each naming its path (`train.optimizer.lr: ...`). `where(path)` gives a Location for
    a path inside the section when the caller has the YAML source (spec/load's `Source.loc`)."""
    if not isinstance(data, dict):
        raise SpecError(f"{prefix}: must be a mapping (got {clean(quote(data))})")
    try:
        return TrainSpec.model_validate(data)
    except ValidationError as e:
        raise SpecErrors([_error(err, data, where, prefix) for err in e.errors()]) from None


def train_schema() -> dict:
    """The JSON Schema of the `train:` section (for `nnspec schema`)."""
    return TrainSpec.model_json_schema()


def _error(err, data, where, prefix) -> SpecError:
    path = _data_path(data, tuple(err["loc"]), err["type"] == "missing")
    dotted = ".".join([prefix, *map(str, path)])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "missing key"
    elif err["type"] == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        msg = f"unknown name {quote(ctx.get('tag'))}; one of {ctx.get('expected_tags', '')}"
    # a missing key has no place of its own: point at the mapping that lacks it
    loc = where(path[:-1] if err["type"] == "missing" else path) if where is not None else None
    return SpecError(f"{dotted}: {clean(msg)}", loc, expected=_expected(err))


def _data_path(data, loc: tuple, missing: bool) -> tuple:
    """The keys and indices of `loc` that name places in `data` (plus the final key of a missing-key
    error): pydantic adds union tags ('sgd', 'function-after[...]') that name no place in the file."""
    out, node = [], data
    for i, p in enumerate(loc):
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, (list, tuple)) and isinstance(p, int) and 0 <= p < len(node):
            node = node[p]
        elif not (missing and i == len(loc) - 1):
            continue
        out.append(p)
    return tuple(out)


def _brief(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "options"
        parts.append(f"{where}: {'unknown option' if err['type'] == 'extra_forbidden' else err['msg']}")
    return "; ".join(parts)
