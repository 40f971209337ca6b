"""gpt2 (Radford et al. 2019) against transformers' GPT2LMHeadModel built from its config (no
weights downloaded): every preset's parameter count, the reference's state dict renamed by the
spec's `reference.keys` and checked by import-weights, copied-weights logits equality, and the
signature behaviour: the tiny preset's validation bits per character on CPython's help topics fall
well below the corpus' unigram entropy within a short run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.runtime.cli import main as nnspec
from nnspec.runtime.import_weights import rename
from nnspec.runtime.train.rundir import read_metrics
from nnspec.targets.torch.build import build_module
from nnspec.targets.weights import check_weights

torch.set_num_threads(1)

transformers = pytest.importorskip("transformers")


def hf_config(preset: str):
    """The GPT2Config of a preset, read from the spec's own params."""
    p = c.load("gpt2", preset).spec.params
    return transformers.GPT2Config(vocab_size=p["vocab"], bos_token_id=0, eos_token_id=0, n_positions=p["n_ctx"], n_embd=p["d_model"],
                                   n_layer=p["layers"], n_head=p["heads"], n_inner=p["d_ff"],
                                   layer_norm_epsilon=p["eps"], resid_pdrop=p["dropout"],
                                   embd_pdrop=p["dropout"], attn_pdrop=p["dropout"],
                                   activation_function="gelu_new", tie_word_embeddings=True)


def hf_model(preset: str):
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(hf_config(preset)).eval()


def unique_params(m: torch.nn.Module) -> int:
    return sum(t.numel() for t in m.parameters())  # parameters() yields a tied tensor once


@pytest.mark.parametrize("preset", ["tiny", "small", "medium"])
def test_count_equals_gpt2lmheadmodel(preset):
    """small: 124,439,808 (the released "gpt2" counted by HF, lm_head tied to wte, counted once);
    medium: 354,823,168 ("gpt2-medium")."""
    with torch.device("meta"):  # shapes only: nothing is drawn
        ref = transformers.GPT2LMHeadModel(hf_config(preset))
    assert cost_report(c.load("gpt2", preset)).params == unique_params(ref)


def test_small_count_closed_form():
    """12 layers of 12 d^2 + 13 d (c_attn 3d^2 + 3d, c_proj d^2 + d, c_fc 4d^2 + 4d, c_proj 4d^2 + d,
    two layer norms 4d), the token table V d, the position table n_ctx d and ln_f 2d."""
    V, n, d, L = 50257, 1024, 768, 12
    closed = L * (12 * d * d + 13 * d) + V * d + n * d + 2 * d
    assert closed == 124_439_808 == cost_report(c.load("gpt2", "small")).params


def renamed_state(ref) -> dict:
    keys = dict(c.load("gpt2", "tiny").spec.model.reference.keys)
    return {rename(k, keys): v.detach().numpy().copy() for k, v in ref.state_dict().items()}


def test_reference_keys_cover_the_state_dict():
    """Every GPT2LMHeadModel key, renamed by `reference.keys`, is one of the spec's (lm_head.weight
    is the spec's tied key), with the same shape: Conv1D's [in, out] layout needs no transpose."""
    program = c.load("gpt2", "tiny")
    state = renamed_state(hf_model("tiny"))
    check_weights(program, state, "GPT2LMHeadModel's state dict")
    module = build_module(program, seed=0)
    assert set(state) == set(module.state_dict())


def test_logits_equal_gpt2lmheadmodel():
    ref = hf_model("tiny")
    program = c.load("gpt2", "tiny")
    module = build_module(program, seed=1).eval()
    ours = module.state_dict()
    theirs = {k: torch.from_numpy(v) for k, v in renamed_state(ref).items()}
    assert not torch.allclose(ours["h.0.attn.c_attn.weight.weight"], theirs["h.0.attn.c_attn.weight.weight"])
    module.load_state_dict(theirs)
    ids = torch.randint(0, 96, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        got = module(ids)
        got = got["logits"] if isinstance(got, dict) else got
    assert got.shape == want.shape == (3, 40, 96)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    # causal: logits at position t do not change when later tokens do
    ids2 = ids.clone()
    ids2[:, 20:] = (ids2[:, 20:] + 1) % 96
    with torch.no_grad():
        got2 = module(ids2)
        got2 = got2["logits"] if isinstance(got2, dict) else got2
    assert torch.allclose(got2[:, :20], got[:, :20], atol=1e-6)
    assert not torch.allclose(got2[:, 20:], got[:, 20:], atol=1e-3)


def test_head_is_tied_to_the_token_embedding():
    module = build_module(c.load("gpt2", "tiny"), seed=0)
    assert module.lm_head.weight is module.wte.weight


def unigram_bits() -> float:
    """Bits per character of the best context-free model: the training split's character frequencies
    (add-one smoothed) scored on the validation split, with the tiny preset's 96-symbol vocabulary."""
    from nnspec.runtime.tasks.text import CharCorpus, CharOptions

    task = CharCorpus(CharOptions(seq_len=64, vocab_size=96))
    counts = np.bincount(task.train, minlength=96) + 1.0
    p = counts / counts.sum()
    return float(-np.mean(np.log2(p[task.valid])))


def train_tiny(run, steps: int) -> list[dict]:
    assert nnspec(["train", "gpt2", "--preset", "tiny", "--steps", str(steps),
                   "--set", f"train.schedule.total={steps}", "--set", f"train.eval.every={steps}",
                   "--set", f"train.checkpoint.every={steps}",
                   "--out", str(run), "--threads", "1", "--no-progress"]) == 0
    return [r for r in read_metrics(run) if r["split"] == "valid"]


def test_signature_bits_per_char_below_unigram(tmp_path):
    """150 steps of 32 windows of 64 characters (about 20 s of one core): the tiny GPT-2 reads
    context, so its held-out bits per character fall well below the unigram entropy (4.67 bits on
    this corpus). Measured 3.52 (300 steps: 3.32)."""
    h1 = unigram_bits()
    assert 4.5 < h1 < 4.9
    valid = train_tiny(tmp_path / "run", 150)
    assert valid[-1]["bits_per_char"] < h1 - 0.7, (valid[-1], h1)


@pytest.mark.slow
def test_signature_bits_per_char_recipe(tmp_path):
    """The spec's recipe as written, 1000 steps (about 4 minutes of one core): below unigram - 1.5 bits."""
    assert nnspec(["train", "gpt2", "--preset", "tiny", "--out", str(tmp_path / "run"),
                   "--threads", "1", "--no-progress"]) == 0
    valid = [r for r in read_metrics(tmp_path / "run") if r["split"] == "valid"]
    assert valid[-1]["bits_per_char"] < unigram_bits() - 1.5


def test_import_weights_reads_save_pretrained(tmp_path):
    """What GPT2LMHeadModel.save_pretrained writes (the tied lm_head left out) imports with the spec's
    key map alone, and the imported weights give the reference's logits."""
    from nnspec.targets.weights import complete_tied, load_weights

    ref = hf_model("tiny")
    ref.save_pretrained(tmp_path / "hf")
    out = tmp_path / "ours.safetensors"
    assert nnspec(["import-weights", "gpt2", "-p", "tiny", "--from", str(tmp_path / "hf" / "model.safetensors"),
                   "-o", str(out)]) == 0
    program = c.load("gpt2", "tiny")
    module = build_module(program, seed=1).eval()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in complete_tied(program, load_weights(out)).items()})
    ids = torch.arange(24).reshape(2, 12) % 96
    with torch.no_grad():
        assert torch.allclose(module(ids), ref(input_ids=ids).logits, atol=1e-5)
