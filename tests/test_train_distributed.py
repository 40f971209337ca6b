"""`nnspec train` on 2 CPU processes (torchrun through `--nproc 2` / `--pipeline-stages 2`): DDP and
the GPipe / 1F1B pipeline reach a single process's losses and weights within 1e-6, and checkpoints
cross layouts (a pipeline checkpoint resumes in one process, a single-process one in a pipeline).
Also, in process: a stage's slice of a whole-model checkpoint (checkpoint.Part)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nnspec.runtime.train.checkpoint import CheckpointError, Part, latest_checkpoint, load_checkpoint, save_checkpoint

torch.set_num_threads(1)

# char_rnn small: 2 stages cut at the LSTM (embed+lstm | dropout+decoder)
SMALL = ["--set", "hidden=32", "--set", "embed=16", "--set", "train.task.options.seq_len=32",
         "--set", "train.log_every=2", "--batch", "8", "--threads", "1", "--no-progress"]
TOL = 1e-6


# a GPT whose language-model head is tied to the embedding: the 2 stages hold one copy each
GPT = [str(Path(__file__).resolve().parent.parent / "benchmarks" / "specs" / "gpt_small.yaml"), "--preset", "tiny",
       "--set", "train.task.name=char_corpus", "--set", "train.task.options.seq_len=16",
       "--set", "train.task.options.vocab_size=97", "--set", "train.loss=sequence_ce",
       # SGD: Adam would turn the rounding noise of the attention key bias's zero gradient into
       # lr-sized steps, in any two runs that sum gradients in a different order
       "--set", "train.optimizer.name=sgd", "--set", "train.optimizer.lr=0.5", "--set", "train.optimizer.momentum=0.9",
       "--set", "train.clip.norm=0.5",
       "--set", "train.log_every=2", "--batch", "8", "--threads", "1", "--no-progress"]


def train(out: Path, *extra: str, steps: int = 20, resume: bool = False, spec=("char_rnn", *SMALL)) -> str:
    where = ["--resume", str(out)] if resume else ["--out", str(out)]
    cmd = [sys.executable, "-m", "nnspec.runtime.cli", "train", *spec, "--steps", str(steps), *where, *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=110, env=env, cwd=out.parent)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p.stdout


def losses(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {(r["split"], r["step"]): r["loss"] for r in rows}


def weights(run: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(latest_checkpoint(run) / "weights.safetensors"))


def optimizer_state(run: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(latest_checkpoint(run) / "optimizer.safetensors"))


def assert_close_runs(a: Path, b: Path, optimizer: bool = True) -> None:
    la, lb = losses(a), losses(b)
    train_rows = {k for k in la if k[0] == "train"}
    assert train_rows == {k for k in lb if k[0] == "train"} and len(train_rows) == 10
    assert ("valid", 20) in la and ("valid", 20) in lb  # a resumed run also evaluated where it stopped
    worst = max(abs(la[k] - lb[k]) for k in set(la) & set(lb))
    assert worst < TOL, f"losses differ by {worst}"
    for get in (weights, optimizer_state) if optimizer else (weights,):
        wa, wb = get(a), get(b)
        assert set(wa) == set(wb) and wa
        for k in wa:
            assert wa[k].shape == wb[k].shape, k
            assert (wa[k] - wb[k]).abs().max().item() < TOL, k


@pytest.fixture(scope="module")
def single_m4(tmp_path_factory) -> Path:
    """The single-process reference for the pipeline: the same 4 micro-batches, accumulated."""
    out = tmp_path_factory.mktemp("single") / "m4"
    train(out, "--microbatches", "4")
    return out


def test_ddp_matches_single_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train(single)
    train(ddp, "--nproc", "2")
    assert json.loads((ddp / "run.json").read_text())["world"] == {"mode": "ddp", "size": 2}
    assert_close_runs(single, ddp)
    assert latest_checkpoint(ddp).name == "step-000000020"


def test_ddp_ranks_and_pipeline_stages_start_from_a_weights_file(tmp_path):
    """`--nproc 2 --weights W` and `--pipeline-stages 2 --weights W`: every rank loads W (seed 7's
    weights, not the recipe's seed 0), each pipeline stage its part, so the first step's loss,
    computed before any update, equals one process's from W (which the single-process tests show
    loads W; W differs from the recipe's own initial weights)."""
    import nnspec.compiler as c
    from nnspec.compiler.spec.load import parse_overrides
    from nnspec.targets.torch.build import build_module
    from nnspec.targets.weights import save_weights

    start = tmp_path / "start.safetensors"
    sets = [SMALL[i + 1] for i in range(len(SMALL) - 1) if SMALL[i] == "--set" and not SMALL[i + 1].startswith("train.")]
    module = build_module(c.load("char_rnn", None, parse_overrides(sets)), seed=7)
    start.write_bytes(save_weights({k: v.detach().numpy() for k, v in module.state_dict().items()}))
    single, ddp, pipe = tmp_path / "single", tmp_path / "ddp", tmp_path / "pipe"
    train(single, "--set", "train.log_every=1", "--weights", str(start), steps=1)
    train(ddp, "--set", "train.log_every=1", "--nproc", "2", "--weights", str(start), steps=1)
    train(pipe, "--set", "train.log_every=1", "--pipeline-stages", "2", "--microbatches", "2", "--weights", str(start),
          steps=1)
    first = {run: losses(run)[("train", 1)] for run in (single, ddp, pipe)}
    assert abs(first[ddp] - first[single]) < TOL and abs(first[pipe] - first[single]) < TOL, first
    seed0 = build_module(c.load("char_rnn", None, parse_overrides(sets)), seed=0)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(seed0.state_dict().values(), module.state_dict().values()))
    for run in (ddp, pipe):
        assert json.loads((run / "run.json").read_text())["initial_weights"]["file"] == "start.safetensors"


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_matches_single_process(tmp_path, single_m4, schedule):
    run = tmp_path / schedule
    out = train(run, "--pipeline-stages", "2", "--microbatches", "4", "--schedule", schedule)
    assert "GPipe bubble (K-1)/(M+K-1) = 1/5" in out  # the plan's prediction, printed once (rank 0)
    assert out.count("nnspec plan (prediction)") == 1
    assert json.loads((run / "run.json").read_text())["world"] == {"mode": "pipeline", "size": 2}
    assert_close_runs(single_m4, run)
    # one checkpoint in the single-process layout: the whole model's keys
    assert set(weights(run)) == set(weights(single_m4))


def test_pipeline_clips_by_the_whole_models_norm(tmp_path):
    clip = ["--set", "train.clip.value=null", "--set", "train.clip.norm=0.1", "--microbatches", "4"]
    single, pipe = tmp_path / "single", tmp_path / "pipe"
    train(single, *clip)
    train(pipe, *clip, "--pipeline-stages", "2")
    assert_close_runs(single, pipe)
    norms = [[r["grad_norm"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"] for run in (single, pipe)]
    assert min(norms[0]) > 0.1  # every logged step was clipped
    assert max(abs(a - b) for a, b in zip(*norms)) < TOL  # the norm over both stages, not one stage's


def test_pipeline_with_a_parameter_tied_across_stages(tmp_path):
    single, pipe = tmp_path / "single", tmp_path / "pipe"
    train(single, "--microbatches", "4", spec=GPT)
    out = train(pipe, "--microbatches", "4", "--pipeline-stages", "2", spec=GPT)
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()[:1] in ("0", "1") and ".." in ln}
    assert " wte .. " in rows["0"] and " .. lm_head " in rows["1"]  # the embedding and its tied head apart
    assert_close_runs(single, pipe)
    w = weights(pipe)
    assert torch.equal(w["lm_head.weight"], w["wte.weight"])  # the stages' copies stayed one parameter


def test_checkpoints_cross_layouts(tmp_path, single_m4):
    # a pipeline's checkpoint at step 10 resumes in one process ...
    a = tmp_path / "pipe_then_single"
    train(a, "--pipeline-stages", "2", "--microbatches", "4", steps=10)
    assert latest_checkpoint(a).name == "step-000000010"
    train(a, "--microbatches", "4", steps=20, resume=True)
    assert_close_runs(single_m4, a)
    # ... and a single process's checkpoint resumes in a pipeline (each stage its slice)
    b = tmp_path / "single_then_pipe"
    train(b, "--microbatches", "4", steps=10)
    train(b, "--pipeline-stages", "2", "--microbatches", "4", "--schedule", "1f1b", steps=20, resume=True)
    assert_close_runs(single_m4, b)


# -- in process: a stage's slice of a whole-model checkpoint ------------------------------------
def _whole():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _stage_of(whole):
    """Stage 1 of the model above: module "2" at its whole-model path, as stages.py writes it."""
    stage = nn.Module()
    stage.add_module("2", nn.Linear(4, 2))
    return stage


def test_part_loads_the_stage_slice_with_renumbered_optimizer_state(tmp_path):
    whole = _whole()
    opt = torch.optim.Adam(whole.parameters(), lr=0.1)
    whole(torch.randn(5, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 1, whole, opt)

    stage = _stage_of(whole)
    s_opt = torch.optim.Adam(stage.parameters(), lr=0.1)
    part = Part(tuple(whole.state_dict()), params=(2, 3), whole_params=4)  # 2.weight, 2.bias
    load_checkpoint(tmp_path, stage, s_opt, part=part)
    assert torch.equal(stage.state_dict()["2.weight"], whole[2].weight.detach())
    assert torch.equal(s_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][2]["exp_avg"])
    assert torch.equal(s_opt.state_dict()["state"][1]["exp_avg_sq"], opt.state_dict()["state"][3]["exp_avg_sq"])


def test_part_refuses_a_checkpoint_of_another_model(tmp_path):
    whole = _whole()
    save_checkpoint(tmp_path, 1, whole)
    stage = _stage_of(whole)
    before = stage.state_dict()["2.weight"].clone()
    part = Part(tuple(whole.state_dict()) + ("4.weight",), params=(2, 3), whole_params=5)
    with pytest.raises(CheckpointError, match="1 missing, 0 unexpected"):
        load_checkpoint(tmp_path, stage, part=part)
    assert torch.equal(stage.state_dict()["2.weight"], before)  # nothing changed


def test_part_refuses_an_optimizer_over_other_parameters(tmp_path):
    whole = _whole()
    opt = torch.optim.SGD(whole.parameters(), lr=0.1, momentum=0.9)
    whole(torch.randn(5, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 1, whole, opt)
    stage = _stage_of(whole)
    part = Part(tuple(whole.state_dict()), params=(2, 3), whole_params=6)
    with pytest.raises(CheckpointError, match="whole model's 6 parameters"):
        load_checkpoint(tmp_path, stage, torch.optim.SGD(stage.parameters(), lr=0.1, momentum=0.9), part=part)
