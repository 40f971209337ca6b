"""The `train:` section (nnspec.runtime.train): validation with field-path messages, each optimizer
against torch's own built by hand, each schedule's lr sequence against its closed form and through
a state_dict round trip, gradient clipping against torch.nn.utils, and the papers' recipes."""
from __future__ import annotations

import copy
import io
import json
import math
import subprocess
import sys

import pytest
import torch

from nnspec.compiler.errors import SpecError
from nnspec.runtime.train import (TrainSpec, build_optimizer, build_schedule, clip_gradients, train_schema,
                                  validate_train)

torch.set_num_threads(1)

BASE = {"task": {"name": "seq2seq"}, "loss": {"name": "sequence_ce"}, "batch_size": 32, "steps": 100}

# The papers' recipes as a spec's train: section would hold them.
ZAREMBA_MEDIUM = {  # Zaremba et al. 2014, medium LSTM: SGD lr 1, /1.2 per epoch after 6, clip 5
    "task": {"name": "word_corpus", "options": {"seq_len": 35}},
    "loss": "sequence_ce",
    "optimizer": {"name": "sgd", "lr": 1.0},
    "schedule": {"name": "step", "step_size": 1, "gamma": 1 / 1.2, "after": 6, "interval": "epoch"},
    "clip": {"norm": 5.0},
    "batch_size": 20,
    "epochs": 39,
}
CHAR_RNN = {  # Karpathy's char-rnn: RMSprop 2e-3 (decay 0.95), x0.97 per epoch after 10, clamp 5
    "task": {"name": "char_corpus", "options": {"seq_len": 50}},
    "loss": {"name": "sequence_ce"},
    "optimizer": {"name": "rmsprop", "lr": 2e-3, "alpha": 0.95},
    "schedule": {"name": "step", "step_size": 1, "gamma": 0.97, "after": 10, "interval": "epoch"},
    "clip": {"value": 5.0},
    "batch_size": 50,
    "epochs": 50,
}
TRANSFORMER = {  # Vaswani et al. 2017: Adam(0.9, 0.98, 1e-9), warm-up 4000, d_model 512, smoothing 0.1
    "task": {"name": "seq2seq", "options": {"mode": "reverse"}},
    "loss": {"name": "sequence_ce", "options": {"label_smoothing": 0.1}},
    "optimizer": {"name": "adam", "lr": 1.0, "betas": [0.9, 0.98], "eps": 1e-9},
    "schedule": {"name": "inverse_sqrt", "warmup": 4000, "d_model": 512},
    "batch_size": 64,
    "steps": 100000,
    "eval": {"every": 1000, "batches": 4},
}


def cfg(**over) -> TrainSpec:
    return validate_train({**BASE, **over})


def model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def train_steps(net, opt, n=3):
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    for _ in range(n):
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()


# -- optimizers ---------------------------------------------------------------------------------

OPTIMIZERS = [
    ({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}, 1e-4,
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)),
    ({"name": "adam", "lr": 3e-4, "betas": [0.8, 0.95], "eps": 1e-7, "amsgrad": True}, 0.0,
     lambda p: torch.optim.Adam(p, lr=3e-4, betas=(0.8, 0.95), eps=1e-7, amsgrad=True)),
    ({"name": "adamw", "lr": 1e-3}, 0.01, lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01)),
    ({"name": "rmsprop", "lr": 2e-3, "alpha": 0.95, "momentum": 0.5, "centered": True}, 0.0,
     lambda p: torch.optim.RMSprop(p, lr=2e-3, alpha=0.95, momentum=0.5, centered=True, weight_decay=0.0)),
    ({"name": "adadelta", "rho": 0.95, "eps": 1e-5}, 0.0, lambda p: torch.optim.Adadelta(p, lr=1.0, rho=0.95, eps=1e-5)),
    ({"name": "adamax", "lr": 2e-3, "betas": [0.9, 0.99]}, 0.0,
     lambda p: torch.optim.Adamax(p, lr=2e-3, betas=(0.9, 0.99), weight_decay=0.0)),
]


@pytest.mark.parametrize("spec,wd,by_hand", OPTIMIZERS, ids=[o[0]["name"] for o in OPTIMIZERS])
def test_optimizer_matches_torch_built_by_hand(spec, wd, by_hand):
    c = cfg(optimizer=spec, weight_decay=wd)
    a, b = model(), model()
    ours, theirs = build_optimizer(c, a.parameters()), by_hand(b.parameters())
    assert type(ours) is type(theirs)
    assert ours.defaults == theirs.defaults
    train_steps(a, ours)
    train_steps(b, theirs)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    # and the step really moved the weights
    assert not torch.equal(next(a.parameters()), next(model().parameters()))


def test_all_seven_optimizer_names_are_in_the_schema():
    schema = train_schema()
    text = repr(schema)
    for name in ("sgd", "adam", "adamw", "rmsprop", "adadelta", "adamax"):
        assert f"'{name}'" in text
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"task", "loss", "optimizer", "batch_size"}


# -- schedules ----------------------------------------------------------------------------------

def lrs(c: TrainSpec, n: int) -> list[float]:
    opt = build_optimizer(c, [torch.nn.Parameter(torch.zeros(1))])
    sched = build_schedule(c, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


SGD1 = {"name": "sgd", "lr": 0.5}


def test_constant():
    assert lrs(cfg(optimizer=SGD1), 5) == [0.5] * 5


def test_step_equals_steplr_and_closed_form():
    c = cfg(optimizer=SGD1, schedule={"name": "step", "step_size": 3, "gamma": 0.1})
    got = lrs(c, 10)
    assert got == pytest.approx([0.5 * 0.1 ** (k // 3) for k in range(10)], rel=1e-12)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    ref = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
    want = []
    for _ in range(10):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert got == pytest.approx(want, rel=1e-12)


def test_step_after_delays_the_decay():
    c = cfg(optimizer={"name": "sgd", "lr": 1.0}, schedule={"name": "step", "step_size": 1, "gamma": 0.5, "after": 3})
    assert lrs(c, 7) == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125]


def test_exponential():
    c = cfg(optimizer=SGD1, schedule={"name": "exponential", "gamma": 0.9})
    assert lrs(c, 8) == pytest.approx([0.5 * 0.9 ** k for k in range(8)], rel=1e-12)


def test_inverse_sqrt_is_the_transformer_formula():
    w, d = 10, 512
    c = cfg(optimizer={"name": "adam", "lr": 1.0}, schedule={"name": "inverse_sqrt", "warmup": w, "d_model": d})
    got = lrs(c, 40)
    want = [d ** -0.5 * min(s ** -0.5, s * w ** -1.5) for s in range(1, 41)]
    assert got == pytest.approx(want, rel=1e-12)
    peak = max(got)
    assert got.index(peak) == w - 1  # step s = warmup, the w-th update
    assert peak == pytest.approx(d ** -0.5 * w ** -0.5, rel=1e-12)
    assert all(x < y for x, y in zip(got[:w - 1], got[1:w]))  # linear warm-up
    assert all(x > y for x, y in zip(got[w:], got[w + 1:]))  # then 1/sqrt decay
    scaled = cfg(optimizer={"name": "adam", "lr": 1.0}, schedule={"name": "inverse_sqrt", "warmup": w, "scale": d ** -0.5})
    assert lrs(scaled, 40) == pytest.approx(want, rel=1e-12)


def test_cosine_endpoints_and_warmup():
    lr, lo, w, total = 0.1, 0.001, 4, 20
    c = cfg(optimizer={"name": "adamw", "lr": lr}, schedule={"name": "cosine", "total": total, "min_lr": lo, "warmup": w})
    got = lrs(c, 25)
    assert got[:w] == pytest.approx([lr * (k + 1) / w for k in range(w)], rel=1e-12)
    assert got[w] == pytest.approx(lr, rel=1e-12)  # the top of the cosine
    mid = w + (total - w) // 2
    assert got[mid] == pytest.approx(lo + (lr - lo) / 2, rel=1e-12)
    assert got[total] == pytest.approx(lo, rel=1e-12)
    assert got[total:] == pytest.approx([lo] * 5, rel=1e-12)
    assert all(x >= y for x, y in zip(got[w:], got[w + 1:]))


SCHEDULES = [
    {"name": "constant"},
    {"name": "step", "step_size": 2, "gamma": 0.5, "after": 1},
    {"name": "exponential", "gamma": 0.8},
    {"name": "inverse_sqrt", "warmup": 5, "d_model": 64},
    {"name": "cosine", "total": 12, "warmup": 3, "min_lr": 0.01},
]


@pytest.mark.parametrize("sched", SCHEDULES, ids=[s["name"] for s in SCHEDULES])
def test_schedule_state_dict_round_trips(sched):
    c = cfg(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9}, schedule=sched)
    net = model()
    opt = build_optimizer(c, net.parameters())
    s = build_schedule(c, opt)
    for _ in range(7):
        opt.step()
        s.step()
    # plain numbers only (checkpoints keep the scheduler's state as JSON)
    assert json.loads(json.dumps(s.state_dict())) == s.state_dict()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": s.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # plain numbers only: no pickled closures or models
    net2 = copy.deepcopy(net)
    opt2 = build_optimizer(c, net2.parameters())
    s2 = build_schedule(c, opt2)
    opt2.load_state_dict(saved["opt"])
    s2.load_state_dict(saved["sched"])
    assert s2.last_epoch == s.last_epoch == 7
    a, b = [], []
    for _ in range(6):
        a.append(opt.param_groups[0]["lr"])
        b.append(opt2.param_groups[0]["lr"])
        opt.step(), s.step(), opt2.step(), s2.step()
    assert a == b
    assert s2.get_last_lr() == s.get_last_lr()


# -- clipping -----------------------------------------------------------------------------------

def grads(seed):
    net = model(seed)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(seed))
    (net(x) * 100).pow(2).sum().backward()
    return net


def test_clip_by_norm_equals_torch():
    a, b = grads(3), grads(3)
    total = clip_gradients(validate_train({**BASE, "optimizer": SGD1, "clip": {"norm": 1.5}}), a.parameters())
    want = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm=1.5)
    assert torch.equal(total, want) and total > 1.5  # it really clipped
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
    after = torch.sqrt(sum(p.grad.pow(2).sum() for p in a.parameters()))
    assert after == pytest.approx(1.5, rel=1e-5)


def test_clip_by_norm_type_inf():
    a, b = grads(4), grads(4)
    clip_gradients(cfg(optimizer=SGD1, clip={"norm": 0.5, "norm_type": math.inf}), a.parameters())
    torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm=0.5, norm_type=math.inf)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)


def test_clip_by_value_equals_torch():
    a, b = grads(5), grads(5)
    assert clip_gradients(cfg(optimizer=SGD1, clip={"value": 0.25}), a.parameters()) is None
    torch.nn.utils.clip_grad_value_(b.parameters(), clip_value=0.25)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
        assert pa.grad.abs().max() <= 0.25
    assert any((p.grad.abs() == 0.25).any() for p in a.parameters())


def test_no_clip_leaves_gradients():
    a, b = grads(6), grads(6)
    assert clip_gradients(cfg(optimizer=SGD1), a.parameters()) is None
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)


# -- bad input ----------------------------------------------------------------------------------

BAD = [
    ({"optimizer": {"name": "sgd", "lr": 0.0}}, "train.optimizer.lr: Input should be greater than 0"),
    ({"optimizer": {"name": "sgd", "lr": -1.0}}, "train.optimizer.lr"),
    ({"optimizer": {"name": "adam", "lr": float("inf")}}, "train.optimizer.lr"),
    ({"optimizer": {"name": "adam", "lr": float("nan")}}, "train.optimizer.lr"),
    ({"optimizer": {"name": "adam", "lr": "0.1"}}, "train.optimizer.lr"),
    ({"optimizer": {"name": "adam", "betas": [0.9, 1.0]}}, "train.optimizer.betas.1"),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "nesterov": True}}, "train.optimizer: nesterov needs momentum > 0"),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "nesterov": 1}}, "train.optimizer.nesterov"),
    ({"optimizer": {"name": "lbfgs"}}, "train.optimizer: unknown name 'lbfgs'"),
    ({"optimizer": {"name": "adam", "momentum": 0.9}}, "train.optimizer.momentum: unknown key"),
    ({"optimizer": {"name": "sgd"}}, "train.optimizer.lr: missing key"),
    ({"schedule": {"name": "inverse_sqrt", "warmup": 4000}}, "train.schedule: give exactly one of d_model or scale"),
    ({"schedule": {"name": "cosine", "total": 10, "warmup": 10}}, "train.schedule: warmup (10) must be less than total"),
    ({"schedule": {"name": "cosine", "total": 10, "min_lr": 5.0}}, "schedule.min_lr (5.0) is above optimizer.lr"),
    ({"schedule": {"name": "step", "step_size": 0, "gamma": 0.5}}, "train.schedule.step_size"),
    ({"schedule": {"name": "step", "step_size": 1, "gamma": 1.5}}, "train.schedule.gamma"),
    ({"schedule": {"name": "linear"}}, "train.schedule: unknown name 'linear'"),
    ({"clip": {}}, "train.clip: give exactly one of norm or value"),
    ({"clip": {"norm": 1.0, "value": 1.0}}, "train.clip: give exactly one of norm or value"),
    ({"clip": {"value": 1.0, "norm_type": 1.0}}, "norm_type applies to clipping by norm only"),
    ({"clip": {"norm": 1.0, "norm_type": float("nan")}}, "train.clip.norm_type"),
    ({"clip": {"norm": float("inf")}}, "train.clip.norm"),
    ({"steps": None}, "train: give exactly one of steps or epochs"),
    ({"epochs": 3}, "train: give exactly one of steps or epochs"),
    ({"steps": 10**9 + 1}, "train.steps"),
    ({"batch_size": 65537}, "train.batch_size"),
    ({"batch_size": True}, "train.batch_size"),
    ({"weight_decay": -0.1}, "train.weight_decay"),
    ({"seed": -1}, "train.seed"),
    ({"eval": {"every": 0}}, "train.eval.every"),
    ({"eval": {"metrics": ["ok", "bad name"]}}, "train.eval.metrics.1"),
    ({"task": {"name": "nope"}}, "train.task: unknown task 'nope'"),
    ({"task": {"name": "seq2seq", "options": {"symbols": "ten"}}}, "train.task: bad options for task 'seq2seq': symbols"),
    ({"loss": {"name": "sequence_ce", "options": {"label_smoothing": 1.5}}}, "train.loss: loss 'sequence_ce': bad options"),
    ({"loss": {"name": "sequence_ce", "options": {"smoothing": 0.1}}}, "smoothing: unknown option"),
    ({"loss": "hinge"}, "train.loss: unknown loss 'hinge'"),
    ({"optimiser": {}}, "train.optimiser: unknown key"),
]


@pytest.mark.parametrize("over,needle", BAD, ids=[n for _, n in BAD])
def test_bad_values_name_the_field_path(over, needle):
    data = {**BASE, "optimizer": {"name": "sgd", "lr": 0.1}, **over}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(SpecError) as e:
        validate_train(data)
    assert needle in str(e.value), str(e.value)
    assert "Traceback" not in str(e.value)


def test_several_errors_reported_at_once_and_not_a_mapping():
    with pytest.raises(SpecError) as e:
        validate_train({**BASE, "optimizer": {"name": "sgd", "lr": 0.0}, "batch_size": 0})
    text = str(e.value)
    assert "train.optimizer.lr" in text and "train.batch_size" in text and "2 errors" in text
    with pytest.raises(SpecError, match="train: must be a mapping"):
        validate_train(["sgd"])


def test_untrusted_text_is_escaped_in_messages():
    with pytest.raises(SpecError) as e:
        validate_train({**BASE, "optimizer": {"name": "sgd", "lr": 0.1}, "evil\n\x1b[31mkey": 1})
    assert "\n\x1b" not in str(e.value) and "\\x1b" in str(e.value)


def test_locations_come_from_the_caller():
    from nnspec.compiler.errors import Location
    seen = []

    def where(path):
        seen.append(path)
        return Location("spec.yaml", 7, 3, ("train", *path))
    with pytest.raises(SpecError) as e:
        validate_train({**BASE, "optimizer": {"name": "adam", "lr": -1.0}}, where=where)
    assert ("optimizer", "lr") in seen  # the union tag 'adam' is no place in the file
    assert "spec.yaml:7:3" in str(e.value)


# -- the papers' recipes ------------------------------------------------------------------------

def test_zaremba_recipe():
    c = validate_train(ZAREMBA_MEDIUM)
    opt = build_optimizer(c, model().parameters())
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 1.0 and opt.defaults["momentum"] == 0.0
    assert c.clip.norm == 5.0 and c.schedule.interval == "epoch" and c.epochs == 39
    got = lrs(c, 10)  # per epoch: 1.0 for the first 6 epochs, then /1.2 each
    assert got == pytest.approx([1.0] * 7 + [1.2 ** -1, 1.2 ** -2, 1.2 ** -3], rel=1e-12)


def test_char_rnn_recipe():
    c = validate_train(CHAR_RNN)
    opt = build_optimizer(c, model().parameters())
    assert type(opt) is torch.optim.RMSprop and opt.defaults["lr"] == 2e-3 and opt.defaults["alpha"] == 0.95
    assert c.clip.value == 5.0 and c.clip.norm is None
    assert lrs(c, 13)[-2:] == pytest.approx([2e-3 * 0.97, 2e-3 * 0.97 ** 2], rel=1e-12)


def test_transformer_recipe():
    c = validate_train(TRANSFORMER)
    assert c.loss.options == {"label_smoothing": 0.1}
    opt = build_optimizer(c, model().parameters())
    assert type(opt) is torch.optim.Adam and opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-9
    sched = build_schedule(c, opt)
    # after 3999 scheduler steps the update is step s = 4000, the peak
    assert opt.defaults["lr"] * sched.lr_lambdas[0](3999) == pytest.approx(512 ** -0.5 * 4000 ** -0.5, rel=1e-12)


def test_recipes_are_deterministic_and_frozen():
    a, b = validate_train(TRANSFORMER), validate_train(TRANSFORMER)
    assert a == b and a.model_dump_json() == b.model_dump_json()
    with pytest.raises(Exception):
        a.batch_size = 3


def test_config_imports_no_torch():
    code = ("import sys; from nnspec.runtime.train import config, train_schema; train_schema(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
