"""mistral (Mistral 7B, aligned as Zephyr with DPO) against transformers' MistralForCausalLM built
from its config (no weights downloaded): the 7B preset's count on the meta device, the tiny
preset's state dict imported with `nnspec import-weights` from a safetensors file the reference
wrote, logits equal with those weights (grouped-query heads, RoPE and a sliding window that masks
at the test's length), and the signature behaviour of DPO: the policy's implicit-reward margin
over the frozen reference grows."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.runtime.cli import main as nnspec
from nnspec.targets.torch.build import build_module, is_meta
from nnspec.targets.weights import load_weights

torch.set_num_threads(1)

transformers = pytest.importorskip("transformers")


SHORT_WINDOW = {"window": 4}  # so that the sliding window masks at the parity test's length


def hf_config(preset: str, overrides: dict | None = None):
    """The MistralConfig of a preset, read from the spec's own params."""
    p = c.load("mistral", preset, overrides).spec.params
    return transformers.MistralConfig(
        vocab_size=p["vocab"], hidden_size=p["d_model"], intermediate_size=p["d_ff"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
        head_dim=p["head_dim"], rms_norm_eps=p["eps"], rope_theta=p["rope_theta"], sliding_window=p["window"],
        tie_word_embeddings=False, attn_implementation="eager")


def test_7b_count_equals_mistralforcausallm_default_config():
    """MistralConfig() is Mistral-7B-v0.1; built on the meta device (shapes only, nothing drawn)."""
    with torch.device("meta"):
        ref = transformers.MistralForCausalLM(transformers.MistralConfig())
    want = sum(t.numel() for t in ref.parameters())
    assert cost_report(c.load("mistral", "mistral_7b")).params == want == 7_241_732_096


def test_7b_count_closed_form():
    """Per layer: q and o d*d each, k and v d*(kv_heads*head_dim) each, the SwiGLU's three d*ff
    and two RMSNorm weights d; plus the embedding and the untied head V*d each and the final norm d."""
    V, d, L, ff, kv = 32000, 4096, 32, 14336, 8 * 128
    closed = L * (2 * d * d + 2 * d * kv + 3 * d * ff + 2 * d) + 2 * V * d + d
    assert closed == cost_report(c.load("mistral", "mistral_7b")).params


def test_7b_builds_on_the_meta_device():
    module = build_module(c.load("mistral", "mistral_7b"), device="meta")
    assert is_meta(module) and all(p.is_meta for p in module.parameters())
    assert sum(p.numel() for p in module.parameters()) == 7_241_732_096


@pytest.fixture(scope="module")
def reference_and_weights(tmp_path_factory):
    """The tiny reference (seeded random init) and our weights file imported from its safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = transformers.MistralForCausalLM(hf_config("tiny", SHORT_WINDOW)).eval()
    d = tmp_path_factory.mktemp("mistral")
    theirs, ours = d / "hf.safetensors", d / "ours.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(theirs))
    assert nnspec(["import-weights", "mistral", "-p", "tiny", "--set", "window=4", "--from", str(theirs),
                   "-o", str(ours)]) == 0
    return ref, load_weights(ours)


def test_import_weights_renames_every_reference_key(reference_and_weights):
    ref, arrays = reference_and_weights
    module = build_module(c.load("mistral", "tiny"), seed=0)
    assert set(arrays) == set(module.state_dict())
    assert len(arrays) == len(ref.state_dict())
    np.testing.assert_array_equal(arrays["layers.1.self_attn.k_proj.weight"],
                                  ref.model.layers[1].self_attn.k_proj.weight.detach().numpy())


def test_logits_equal_mistralforcausallm(reference_and_weights):
    ref, arrays = reference_and_weights
    module = build_module(c.load("mistral", "tiny", SHORT_WINDOW), seed=1).eval()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    ids = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        got = module(ids)
    assert got.shape == want.shape == (2, 12, 32)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    # the window (4 in the tiny preset) masks: position 11 no longer sees token 0 ... 7, and layer 2
    # of 2 reaches back at most 2 * 3 positions, so changing token 0 leaves the last logits alone
    changed = ids.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 32
    with torch.no_grad():
        again = module(changed)
    assert torch.allclose(again[:, 7:], got[:, 7:], atol=1e-6)
    assert not torch.allclose(again[:, :4], got[:, :4], atol=1e-4)


# -- DPO (Zephyr's alignment step) ------------------------------------------------------------------

def dpo_run(tmp_path, steps: int) -> tuple[list[dict], dict]:
    """`nnspec train mistral --preset tiny` for `steps` steps of the spec's recipe (dpo_lm at beta
    0.1 on preference_pairs, AdamW): the trainer keeps a frozen copy of the starting weights as the
    reference, as in Zephyr (policy and reference both start as the SFT model). Returns the train
    rows and the last validation row of metrics.jsonl."""
    out = tmp_path / "run"
    rc = nnspec(["train", "mistral", "--preset", "tiny", "--steps", str(steps), "--no-progress",
                 "--set", f"train.log_every={min(5, steps)}", "--set", f"train.eval.every={steps}", "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "valid"][-1]


def test_signature_dpo_margin_over_the_reference_grows(tmp_path):
    """The policy's implicit-reward margin r_c - r_r on fresh pairs grows over 150 steps of the
    recipe (measured: mean 0.010 over the rows logged in the first 30 steps, 0.087 over the last 30),
    and 0.617 of the held-out pairs are ranked right by the implicit reward (chance 0.5)."""
    train, valid = dpo_run(tmp_path, 150)
    early = np.mean([r["margin"] for r in train[:6]])
    late = np.mean([r["margin"] for r in train[-6:]])
    assert late > 0.03 and late > early + 0.02, (early, late)
    assert valid["preference_accuracy"] > 0.6, valid


def test_dpo_reference_is_the_starting_model(tmp_path):
    """The first step's forward runs before any update: the policy equals its reference there, so
    every implicit reward is zero (a reference copied later, or one the optimizer moves, would show)."""
    train, _ = dpo_run(tmp_path, 1)
    assert train[0]["step"] == 1
    assert abs(train[0]["margin"]) < 1e-6 and abs(train[0]["chosen_reward"]) < 1e-6


def test_dpo_refuses_micro_batches_that_would_split_the_pairs(tmp_path, capsys):
    rc = nnspec(["train", "mistral", "--preset", "tiny", "--steps", "1", "--microbatches", "2", "--no-progress",
                 "--out", str(tmp_path / "mb")])
    assert rc == 1
    assert "frozen reference" in capsys.readouterr().err


def test_dpo_from_a_weights_file_starts_there_and_keeps_it_as_reference(tmp_path, capsys):
    """`--weights` (Zephyr's order: DPO from a fine-tuned model): the policy starts from the file
    and the frozen reference is the file, so the first step's implicit rewards are zero, one step
    stays next to the file's weights, and a resume must give the same file."""
    from safetensors.numpy import load_file

    _, _ = dpo_run(tmp_path / "a", 30)
    start = tmp_path / "a" / "run" / "checkpoints" / "step-000000030" / "weights.safetensors"
    out = tmp_path / "b"
    args = ["train", "mistral", "--preset", "tiny", "--no-progress", "--set", "train.log_every=1", "--out", str(out)]
    assert nnspec([*args, "--steps", "1", "--weights", str(start)]) == 0
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and abs(first["margin"]) < 1e-6 and abs(first["chosen_reward"]) < 1e-6
    a, b = load_file(str(start)), load_file(str(out / "checkpoints" / "step-000000001" / "weights.safetensors"))
    init = {k: v.detach().numpy() for k, v in build_module(c.load("mistral", "tiny"), seed=0).state_dict().items()}
    moved = sum(float(np.abs(b[k] - a[k]).sum()) for k in a)
    trained = sum(float(np.abs(a[k] - init[k]).sum()) for k in a)
    assert moved < 0.1 * trained, (moved, trained)
    record = json.loads((out / "run.json").read_text())["initial_weights"]
    assert record["file"] == "weights.safetensors" and len(record["sha256"]) == 64
    resume = ["train", "mistral", "--preset", "tiny", "--no-progress", "--steps", "2", "--resume", str(out)]
    assert nnspec(resume) == 1
    assert "started from --weights" in capsys.readouterr().err  # and this resume does not give them
    assert nnspec([*resume, "--weights", str(start)]) == 0


def test_weights_of_another_shape_are_refused_before_training(tmp_path, capsys):
    _, _ = dpo_run(tmp_path / "a", 1)
    start = tmp_path / "a" / "run" / "checkpoints" / "step-000000001" / "weights.safetensors"
    rc = nnspec(["train", "mistral", "--preset", "tiny", "--set", "layers=1", "--steps", "1", "--no-progress",
                 "--weights", str(start), "--out", str(tmp_path / "b")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "do not match the spec" in err and "unexpected 'layers.1.mlp.down_proj.weight'" in err
    assert not (tmp_path / "b" / "checkpoints").exists()
