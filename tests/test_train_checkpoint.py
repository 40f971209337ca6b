"""Training checkpoints: exact resume (bit for bit on CPU), atomic saves that survive SIGKILL,
keep-last-K, tampered files rejected with clear errors, and no pickle anywhere."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nnspec.runtime.train import checkpoint as ck
from nnspec.runtime.train.checkpoint import (CheckpointError, capture_rng, latest_checkpoint, load_checkpoint,
                                             resume, save_checkpoint, verify_checkpoint)

torch.set_num_threads(1)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def _optim(kind, model):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95), amsgrad=True)
    return torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.5, centered=True)


def _step(model, opt, sched, gen):
    # Data from a numpy Generator, dropout from torch's RNG, a python-random choice of loss weight:
    # all three RNG states must be restored for the resumed run to match.
    x = torch.from_numpy(gen.standard_normal((8, 6)).astype(np.float32))
    y = torch.from_numpy(gen.integers(0, 3, 8))
    w = random.choice([0.5, 1.0, 2.0])
    opt.zero_grad()
    loss = w * nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def _run(kind, steps, tmp=None, stop_at=None):
    torch.manual_seed(123)
    random.seed(7)
    gen = np.random.default_rng(5)
    model = _model()
    opt = _optim(kind, model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    model.train()
    losses = []
    start = 0
    if tmp is not None and stop_at is not None:
        for i in range(stop_at):
            losses.append(_step(model, opt, sched, gen))
        save_checkpoint(tmp, stop_at, model, opt, sched, capture_rng(gen), extra={"losses": losses})
        # A fresh "process": new model, optimizer, scheduler, generator and scrambled global RNGs.
        torch.manual_seed(999)
        random.seed(999)
        gen = np.random.default_rng(999)
        model = _model(seed=42)
        opt = _optim(kind, model)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        model.train()
        got = resume(tmp, model, opt, sched, numpy_generator=gen)
        assert got.step == stop_at
        losses = list(got.extra["losses"])
        start = got.step
    for i in range(start, steps):
        losses.append(_step(model, opt, sched, gen))
    return losses, model, opt


@pytest.mark.parametrize("kind", ["sgd", "adam", "rmsprop"])
def test_resume_is_bit_exact(tmp_path, kind):
    full, m1, o1 = _run(kind, 10)
    resumed, m2, o2 = _run(kind, 10, tmp_path, stop_at=5)
    assert resumed == full  # floats compared exactly
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for name, v in s1["state"][i].items():
            assert torch.equal(v, s2["state"][i][name]) if torch.is_tensor(v) else v == s2["state"][i][name]


@pytest.mark.parametrize("kind", ["sgd", "adam", "rmsprop"])
def test_round_trip_bit_identical(tmp_path, kind):
    losses, model, opt = _run(kind, 4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    path = save_checkpoint(tmp_path, 4, model, opt, sched)
    assert sorted(os.listdir(path)) == ["optimizer.safetensors", "state.json", "weights.safetensors"]
    from safetensors.torch import load_file
    keys = set(load_file(str(path / "optimizer.safetensors")))
    want = {"sgd": "state.0.momentum_buffer", "adam": "state.0.exp_avg_sq", "rmsprop": "state.0.grad_avg"}[kind]
    assert want in keys
    m2 = _model(seed=9)
    o2 = _optim(kind, m2)
    s2 = torch.optim.lr_scheduler.StepLR(o2, step_size=3, gamma=0.5)
    load_checkpoint(path, m2, o2, s2)
    for k, v in model.state_dict().items():
        a = m2.state_dict()[k]
        assert a.dtype == v.dtype and torch.equal(a, v), k
    a, b = opt.state_dict(), o2.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for name, v in a["state"][i].items():
            w = b["state"][i][name]
            assert (v.dtype == w.dtype and torch.equal(v, w)) if torch.is_tensor(v) else v == w
    assert s2.state_dict() == sched.state_dict()
    # Same state, same bytes: the folder is deterministic.
    again = save_checkpoint(tmp_path / "b", 4, model, opt, sched, rng_state=json.loads((path / "state.json").read_text())["rng"])
    for f in ("weights.safetensors", "optimizer.safetensors", "state.json"):
        assert (again / f).read_bytes() == (path / f).read_bytes(), f


def test_rng_states_restored(tmp_path):
    m = nn.Linear(2, 2)
    gen = np.random.Generator(np.random.MT19937(3))
    torch.manual_seed(1)
    random.seed(2)
    path = save_checkpoint(tmp_path, 0, m, rng_state=capture_rng(gen))
    want = (torch.rand(5), random.random(), gen.random())
    torch.manual_seed(50)
    random.seed(50)
    gen2 = np.random.Generator(np.random.MT19937(50))
    load_checkpoint(path, m, numpy_generator=gen2)
    assert torch.equal(torch.rand(5), want[0]) and random.random() == want[1] and gen2.random() == want[2]


def test_keep_last_k(tmp_path):
    m = nn.Linear(3, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for step in range(0, 60, 10):
        save_checkpoint(tmp_path, step, m, opt, keep=3)
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert [n for n in names if not n.startswith(".")] == ["step-000000030", "step-000000040", "step-000000050"]
    assert not [n for n in names if "tmp" in n]
    assert latest_checkpoint(tmp_path).name == "step-000000050"
    save_checkpoint(tmp_path, 60, m, opt, keep=None)
    assert len([n for n in os.listdir(tmp_path / "checkpoints") if n.startswith("step-")]) == 4
    for bad in (0, -1, True, 1.5):
        with pytest.raises(CheckpointError, match="keep"):
            save_checkpoint(tmp_path, 70, m, opt, keep=bad)
    with pytest.raises(CheckpointError, match="step"):
        save_checkpoint(tmp_path, 10**9, m, opt)


_CHILD = r"""
import os, sys, time, torch
from torch import nn
torch.set_num_threads(1)
from nnspec.runtime.train.checkpoint import save_checkpoint
from nnspec.targets import files
run, mode = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
opt = torch.optim.Adam(m.parameters())
m(torch.randn(2, 256)).sum().backward(); opt.step()
save_checkpoint(run, 1, m, opt, keep=2)
if mode == "pause":
    real = files._fsync_tree
    def pause(tmp):  # every file of step 2 written, not yet swapped in: the worst moment to die
        real(tmp)
        open(os.path.join(run, "paused"), "w").close()
        time.sleep(600)
    files._fsync_tree = pause
    save_checkpoint(run, 2, m, opt, keep=2)
else:
    open(os.path.join(run, "paused"), "w").close()
    step = 2
    while True:
        opt.step(); save_checkpoint(run, step, m, opt, keep=2); step += 1
"""


def _spawn(run, mode):
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(run), mode], env=env)
    deadline = time.time() + 60
    while not (run / "paused").exists():
        assert proc.poll() is None, "child exited early"
        assert time.time() < deadline
        time.sleep(0.01)
    return proc


def _resumable(run):
    m = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    opt = torch.optim.Adam(m.parameters())
    got = resume(run, m, opt)
    assert got is not None and opt.state_dict()["state"][0]["step"].item() >= 1
    return got


def test_sigkill_mid_save_keeps_previous(tmp_path):
    proc = _spawn(tmp_path, "pause")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    root = tmp_path / "checkpoints"
    leftovers = [n for n in os.listdir(root) if ck._files.TMP_TAG in n]
    assert leftovers  # the half-done step 2 is only a temp folder
    assert latest_checkpoint(tmp_path).name == "step-000000001"
    assert _resumable(tmp_path).step == 1
    # The next save takes the lock the dead process held (flock dies with it) and clears its leftovers.
    m = nn.Linear(2, 2)
    save_checkpoint(tmp_path, 2, m)
    assert not [n for n in os.listdir(root) if ck._files.TMP_TAG in n]


def test_sigkill_during_save_loop(tmp_path):
    for delay in (0.05, 0.3):
        run = tmp_path / str(delay)
        run.mkdir()
        proc = _spawn(run, "loop")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        found = latest_checkpoint(run)
        assert found is not None
        verify_checkpoint(found)
        assert _resumable(run).step >= 1


# -- tampering -----------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    m = nn.Linear(4, 3)
    opt = torch.optim.Adam(m.parameters())
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    return tmp_path, save_checkpoint(tmp_path, 7, m, opt), m, opt


def _fresh():
    m = nn.Linear(4, 3)
    return m, torch.optim.Adam(m.parameters())


def _reject(path, pattern, model=None, opt=None):
    if model is None:
        model, opt = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=pattern) as e:
        load_checkpoint(path, model, opt)
    assert "Traceback" not in e.value.render()
    for k, v in model.state_dict().items():  # nothing changed on a refused load
        assert torch.equal(v, before[k])
    return e.value


def test_changed_bytes(saved):
    run, path, *_ = saved
    data = bytearray((path / "weights.safetensors").read_bytes())
    data[-1] ^= 1
    (path / "weights.safetensors").write_bytes(bytes(data))
    _reject(path, "does not match the sha256")
    assert latest_checkpoint(run) is None


def test_bad_json(saved):
    run, path, *_ = saved
    (path / "state.json").write_text("{not json")
    _reject(path, "not valid JSON")
    (path / "state.json").write_bytes(b" " * (ck.MAX_STATE + 1))
    _reject(path, "larger than")
    (path / "state.json").write_text(json.dumps({"format": "other"}))
    _reject(path, "not an nnspec checkpoint")


def test_bad_rng_in_json(saved):
    run, path, *_ = saved
    state = json.loads((path / "state.json").read_text())
    state["rng"]["torch"][0] = 300
    (path / "state.json").write_text(json.dumps(state))
    _reject(path, "torch RNG state")


def test_wrong_shapes_and_optimizer(saved):
    run, path, *_ = saved
    m = nn.Linear(4, 5)
    _reject(path, "does not fit this model", m, torch.optim.Adam(m.parameters()))
    m = nn.Linear(4, 3)
    _reject(path, "optimizer is 'Adam'", m, torch.optim.SGD(m.parameters(), lr=0.1))
    # An optimizer tensor reshaped, with its sha256 updated so only the shape check can catch it.
    from safetensors.torch import load_file, save
    t = load_file(str(path / "optimizer.safetensors"))
    t["state.0.exp_avg"] = torch.zeros(2, 2)
    data = save(t)
    (path / "optimizer.safetensors").write_bytes(data)
    state = json.loads((path / "state.json").read_text())
    state["files"]["optimizer.safetensors"] = ck.sha256_bytes(data)
    (path / "state.json").write_text(json.dumps(state))
    _reject(path, r"exp_avg.*\[2, 2\]")


def test_not_safetensors(saved):
    run, path, *_ = saved
    data = b"\x80\x04pickle-ish bytes"
    (path / "weights.safetensors").write_bytes(data)
    state = json.loads((path / "state.json").read_text())
    state["files"]["weights.safetensors"] = ck.sha256_bytes(data)
    (path / "state.json").write_text(json.dumps(state))
    _reject(path, "not a safetensors file")


def test_symlink_out_of_run_dir(saved, tmp_path_factory):
    run, path, *_ = saved
    outside = tmp_path_factory.mktemp("outside")
    (outside / "weights.safetensors").write_bytes((path / "weights.safetensors").read_bytes())
    (path / "weights.safetensors").unlink()
    (path / "weights.safetensors").symlink_to(outside / "weights.safetensors")
    _reject(path, "outside the folder")
    assert latest_checkpoint(run) is None
    # A whole step folder planted as a symlink is skipped, and refused when named directly.
    (run / "checkpoints" / "step-000000099").symlink_to(outside)
    assert latest_checkpoint(run) is None
    _reject(run / "checkpoints" / "step-000000099", "symbolic link")


def test_no_pickle_in_module():
    src = Path(ck.__file__).read_text()
    code = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith("#"))
    code = re.sub(r'"""(.|\n)*?"""', "", code)  # docstrings may say "no pickle"
    for bad in (r"\bpickle\b", r"torch\.save", r"torch\.load\b", r"\bmarshal\b", r"\bdill\b"):
        assert not re.search(bad, code), bad


def test_tampered_param_group(saved):
    run, path, *_ = saved
    state = json.loads((path / "state.json").read_text())
    state["optimizer"]["param_groups"][0]["lr"] = "0.1"
    (path / "state.json").write_text(json.dumps(state))
    _reject(path, "'lr' is '0.1'")
    state["optimizer"]["param_groups"][0]["lr"] = 0.1
    state["optimizer"]["param_groups"][0]["params"] = [0, 1, 2]
    (path / "state.json").write_text(json.dumps(state))
    _reject(path, "param group 0 does not match")


def test_bad_values_fail_before_writing(tmp_path):
    m = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, 1, m, extra={"x": object()})
    opt = torch.optim.SGD(m.parameters(), lr=torch.tensor(0.1))
    with pytest.raises(CheckpointError, match="is a tensor"):
        save_checkpoint(tmp_path, 1, m, opt)
    with pytest.raises(CheckpointError, match="RNG state"):
        save_checkpoint(tmp_path, 1, m, rng_state={"torch": [1, 2], "python": []})
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


def test_resume_from_run_dir(tmp_path):
    m, opt = _fresh()
    assert resume(tmp_path, m, opt) is None and latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        load_checkpoint(tmp_path / "checkpoints" / "step-000000001", m, opt)
    save_checkpoint(tmp_path, 3, m, opt, extra={"epoch": 1})
    save_checkpoint(tmp_path, 5, m, opt, extra={"epoch": 2})
    got = load_checkpoint(tmp_path, *_fresh())  # a run folder: its latest checkpoint
    assert (got.step, got.extra, got.path.name) == (5, {"epoch": 2}, "step-000000005")
    # A step folder whose state.json claims another step is refused (renamed or copied folders).
    os.rename(tmp_path / "checkpoints" / "step-000000005", tmp_path / "checkpoints" / "step-000000009")
    _reject(tmp_path / "checkpoints" / "step-000000009", "records step 5")
    assert latest_checkpoint(tmp_path).name == "step-000000003"
