"""mtp (Gloeckle et al. 2024, multi-token prediction) against transformers' Llama.

Counts: with n = 1 the spec is LlamaForCausalLM (untied embeddings); each extra head adds one
decoder layer and nothing else, since the final norm and the unembedding are shared. Outputs: with
copied weights the n = 1 logits equal LlamaForCausalLM's, and head k of an n-head model equals one
more LlamaDecoderLayer run on the trunk's output (the hidden state entering the last layer) through
the shared norm and lm_head (rotary embeddings included: they hold no weights).
"""
import json

import numpy as np
import pytest
import torch

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.runtime.tasks import make_task
from nnspec.targets.torch.build import build_module

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

torch.set_num_threads(1)

TINY = dict(vocab=16, dim=64, layers=2, heads=4, ffn=172, eps=1e-5)


def llama_config(vocab, dim, layers, heads, ffn, eps):
    return LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=ffn, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, rms_norm_eps=eps,
                       tie_word_embeddings=False, attention_dropout=0.0)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_closed_form(dim, ffn) -> int:
    # q, k, v, o projections d x d each (no biases), SwiGLU gate / up d x ffn and down ffn x d,
    # two RMSNorm scales of d
    return 4 * dim * dim + 3 * dim * ffn + 2 * dim


def mtp_closed_form(vocab, dim, layers, ffn, n_future) -> int:
    # embedding V x d, the trunk's layers - 1 layers, n one-layer heads, the shared final norm (d)
    # and the shared unembedding d x V
    return vocab * dim + (layers - 1 + n_future) * layer_closed_form(dim, ffn) + dim + dim * vocab


@pytest.mark.parametrize("layers", [2, 3])
def test_count_n1_equals_llama(layers):
    sizes = {**TINY, "layers": layers}
    program = c.load("mtp", "tiny_n1", {"layers": layers, "eps": sizes["eps"]})
    ref = LlamaForCausalLM(llama_config(**sizes))
    assert cost_report(program).params == n_params(ref)
    assert n_params(ref) == mtp_closed_form(16, 64, layers, 172, 1)


@pytest.mark.parametrize("preset,n", [("tiny_n2", 2), ("tiny_n4", 4)])
def test_count_n_heads(preset, n):
    # trunk minus its last layer + n one-layer heads + shared norm and unembedding, i.e. the n = 1
    # model plus n - 1 decoder layers, each counted from a LlamaDecoderLayer
    ref = LlamaForCausalLM(llama_config(**TINY))
    layer = n_params(ref.model.layers[0])
    assert layer == layer_closed_form(64, 172)
    assert cost_report(c.load("mtp", preset)).params == n_params(ref) + (n - 1) * layer


@pytest.mark.parametrize("preset,n", [("llama7b_n1", 1), ("llama7b_n4", 4)])
def test_count_7b(preset, n):
    # Llama 2 7B: the closed form holds LlamaForCausalLM's count at tiny sizes (above), and at 7B
    # gives 6,738,415,616, Llama 2 7B's published count (the HF checkpoint's, untied)
    program = c.load("mtp", preset)
    expected = mtp_closed_form(32000, 4096, 32, 11008, n)
    assert cost_report(program).params == expected
    if n == 1:
        assert expected == 6_738_415_616


def _copy_from_llama(module, ref, layers, extra_layers=()):
    """Our state dict from the reference's: layers.i / head0 = model.layers.i / model.layers[-1]."""
    theirs = ref.state_dict()
    ours = {}

    def layer_keys(prefix, layer):
        # model.layers.i.self_attn.q_proj.weight -> <prefix>q_proj.weight (and mlp.*, the norms)
        for k, v in layer.state_dict().items():
            ours[prefix + ".".join(k.split(".")[-2:])] = v

    for i in range(layers - 1):
        layer_keys(f"layers.{i}.", ref.model.layers[i])
    layer_keys("head0.", ref.model.layers[layers - 1])
    for j, extra in enumerate(extra_layers):
        layer_keys(f"extra_heads.{j}.layer.", extra)
    ours["embed_tokens.weight"] = theirs["model.embed_tokens.weight"]
    ours["norm.weight"] = theirs["model.norm.weight"]
    ours["lm_head.weight"] = theirs["lm_head.weight"]
    module.load_state_dict(ours, strict=True)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_outputs_equal_llama_with_copied_weights(n):
    torch.manual_seed(0)
    ref = LlamaForCausalLM(llama_config(**TINY)).eval()
    extras = [modeling_llama.LlamaDecoderLayer(ref.config, layer_idx=2 + j).eval() for j in range(n - 1)]
    for e in extras:  # fresh layers start with unit norms: perturb them so a mix-up shows
        for p in e.parameters():
            torch.nn.init.normal_(p, std=0.1)
    module = build_module(c.load("mtp", f"tiny_n{n}"), seed=0).eval()
    _copy_from_llama(module, ref, TINY["layers"], extras)
    ids = torch.randint(0, 16, (3, 11))
    with torch.no_grad():
        out = ref(ids, output_hidden_states=True)
        ours = module(ids)
        assert ours.shape == (n, 3, 11, 16)
        torch.testing.assert_close(ours[0], out.logits, atol=1e-5, rtol=1e-5)
        trunk = out.hidden_states[TINY["layers"] - 1]  # what enters the last layer
        pos = torch.arange(11)[None]
        emb = ref.model.rotary_emb(trunk, pos)
        for k, e in enumerate(extras, 1):
            # a causal additive mask, as LlamaForCausalLM builds for its own layers
            mask = torch.full((11, 11), float("-inf")).triu(1)[None, None]
            h = e(trunk, attention_mask=mask, position_embeddings=emb, position_ids=pos)
            h = h[0] if isinstance(h, tuple) else h
            torch.testing.assert_close(ours[k], ref.lm_head(ref.model.norm(h)), atol=1e-5, rtol=1e-5)


def test_heads_are_parallel():
    # head k reads the trunk, not head k - 1: zeroing head 1's layer leaves head 2 unchanged
    module = build_module(c.load("mtp", "tiny_n4"), seed=0).eval()
    ids = torch.randint(0, 16, (2, 9))
    with torch.no_grad():
        before = module(ids)
        for p in module.extra_heads[0].parameters():
            p.zero_()
        after = module(ids)
    assert not torch.allclose(before[1], after[1])
    torch.testing.assert_close(before[0], after[0])
    torch.testing.assert_close(before[2:], after[2:])


def test_induction_task():
    task = make_task("induction", {"vocab": 16, "segment": 8})
    b = task.batch(3, 5)
    x = np.concatenate([b["ids"], b["targets"][:, -1:]], axis=1)
    assert b["ids"].shape == b["targets"].shape == (5, 15)
    np.testing.assert_array_equal(b["ids"][:, 1:], b["targets"][:, :-1])
    np.testing.assert_array_equal(x[:, :8], x[:, 8:])
    assert all(len(set(row[:8])) == 8 for row in x.tolist())
    np.testing.assert_array_equal(task.batch(3, 5)["ids"], b["ids"])
    assert not np.array_equal(task.batch(4, 5)["ids"], b["ids"])


# -- signature: every head learns its own offset. Head k is scored on the token k + 1 steps ahead
# (the multi_token loss), so on the repeated half of an induction sequence head k must copy the
# token k + 1 places after the previous occurrence. Same seed and batches for every preset.
# Measured (600-step recipe, induction accuracy of head 0 at steps 150 / 300 / 450 / 600):
#   n = 1: 0.486 0.996 0.999 1.000   n = 2: 0.492 0.985 0.998 0.997   n = 4: 0.464 0.963 0.996 0.999
# so over 16 tokens (segments of 16 distinct tokens: a permutation of the vocabulary) the extra
# heads do not make head 0 learn induction earlier: the task is learnt with no plateau.
#
# The paper's claim (section 4.1: multi-token prediction promotes induction in small models) shows
# once induction is preceded by a plateau. Head 0's induction accuracy, 4 validation batches of 64,
# checkpoints every 25 steps of the same recipe (cosine over 600 steps), steps at which it first
# exceeds 0.5 / 0.9 (25-step resolution), and the accuracy at step 300 (s = --seed; n = 1 and n = 2
# of one seed see the same batches):
#   setting                         n  seed 0      seed 1      seed 2      acc@300 (s0 s1 s2)
#   vocab 16, distinct              1  175/225     -           -           0.996
#                                   2  175/225     -           -           0.985
#                                   4  175/250     -           -           0.963
#   vocab 64, distinct              1  375/425     375/425     375/400     acc@350 0.157 0.150 0.201
#                                   2  325/375     350/375     375/425     acc@350 0.521 0.485 0.111
#                                   4  350/375     -           -           acc@350 0.331
#   vocab 64, repeats (tiny64_n*)   1  325/375     325/375     300/350     0.202 0.208 0.568
#                                   2  300/325     300/325     300/350     0.712 0.696 0.521
#                                   4  300/325     -           -           0.621
#   vocab 96, distinct              1  425/525     500/-       -/- (0.41)  acc@450 0.706 0.295 0.068
#                                   2  400/475     475/600     -/- (0.45)  acc@450 0.891 0.453 0.096
#   vocab 128, distinct (600 steps) 1  never (head 0 at 600: 0.042, 0.019)
#                                   2  never (head 0 at 600: 0.267, 0.020)
#   vocab 256, distinct (600 steps) 1, 2, 4: never (head 0 <= 0.01 at 600)
# So with a plateau, n = 2 (and n = 4) end it 25-50 steps earlier in most seeds at equal steps,
# batch and tokens (the paper's axis), and never clearly later (vocab 64 distinct, seed 2: 25 steps
# later). Compute: an extra head is one more decoder layer and one more unembedding, so n = 2 costs
# about 1.5x the FLOPs of n = 1 per step here (3 layers against 2; measured 1.4-1.5x wall time) and
# n = 4 about 2.5x. At equal FLOPs (n = 1 given 1.5x the steps) n = 1 is ahead at this size; the
# paper's heads are a small fraction of a 7B model's compute, ours are not. The same holds at equal
# parameters and FLOPs: a three-layer n = 1 model (--set layers=3, 156,864 weights like tiny64_n2)
# reaches 0.5 / 0.9 at 250 / 275 in seeds 0, 1 and 2, before tiny64_n2's 300 / 325. What reproduces is
# the paper's equal-token comparison: the extra heads' loss makes the trunk learn induction sooner.
SEGMENT = 16


def head_accuracies(run_dir, preset, step, n, vocab=16, distinct=True) -> list:
    """Each head's argmax on its own targets in the repeated half (head k: targets[:, SEGMENT + k:]),
    over 4 validation batches of 64, from checkpoint `step`."""
    from safetensors.torch import load_file
    module = build_module(c.load("mtp", preset), seed=0).eval()
    module.load_state_dict(load_file(str(run_dir / "checkpoints" / f"step-{step:09d}" / "weights.safetensors")))
    task = make_task("induction", {"vocab": vocab, "segment": SEGMENT, "distinct": distinct})
    right, total = [0] * n, [0] * n
    with torch.no_grad():
        for batch in task.eval_batches(64, 4):
            logits, targets = module(torch.from_numpy(batch["ids"])), torch.from_numpy(batch["targets"])
            length = targets.shape[1]
            for k in range(n):
                pred = logits[k, :, SEGMENT:length - k].argmax(-1)
                right[k] += int((pred == targets[:, SEGMENT + k:]).sum())
                total[k] += pred.numel()
    return [r / t for r, t in zip(right, total)]


def train(tmp_path, preset, steps, seed=None, every=None):
    """The spec's recipe (600 steps of cosine schedule, checkpoints every 150 or `every`), stopped at
    `steps`."""
    from nnspec.runtime.cli import main as nnspec
    out = tmp_path / (preset if seed is None else f"{preset}-{seed}")
    args = ["train", "mtp", "--preset", preset, "--steps", str(steps), "--out", str(out), "--threads", "1",
            "--no-progress"]
    if seed is not None:
        args += ["--seed", str(seed)]
    if every is not None:
        args += ["--set", f"train.checkpoint.every={every}", "--set", "train.checkpoint.keep=1000"]
    rc = nnspec(args)
    assert rc == 0
    return out


def test_signature_second_head_learns_two_ahead(tmp_path):
    # 150 steps of n = 2: head 1 copies the token two places after the previous occurrence well
    # above chance (1/16); measured head 0 0.492, head 1 0.345
    acc = head_accuracies(train(tmp_path, "tiny_n2", 150), "tiny_n2", 150, 2)
    assert acc[0] > 0.4 and acc[1] > 0.25, acc


def test_signature_two_heads_learn_induction_earlier(tmp_path):
    # tiny64_n1 against tiny64_n2 (vocab 64, repeats allowed), seed 0, the same 300 steps of 32
    # sequences: head 0's induction accuracy measured n = 1 0.202, n = 2 0.712 (seeds 1 / 2: 0.208
    # against 0.696, 0.568 against 0.521); both leave chance (1/64) behind only after step 250
    acc1 = head_accuracies(train(tmp_path, "tiny64_n1", 300), "tiny64_n1", 300, 1, vocab=64, distinct=False)
    acc2 = head_accuracies(train(tmp_path, "tiny64_n2", 300), "tiny64_n2", 300, 2, vocab=64, distinct=False)
    assert acc2[0] > acc1[0] + 0.3, (acc1, acc2)
    assert acc1[0] > 0.1, acc1  # n = 1 is on its way too: the gap is timing, not a broken baseline


@pytest.mark.slow
def test_signature_every_head_copies_its_offset_slow(tmp_path):
    # the whole recipe: n = 1, 2, 4 all learn induction (head 0 >= 0.95); with n = 4 each extra
    # head copies its own offset (measured at 600 steps: all four heads above 0.9)
    curves = {}
    for preset, n in (("tiny_n1", 1), ("tiny_n2", 2), ("tiny_n4", 4)):
        run = train(tmp_path, preset, 600)
        curves[preset] = [head_accuracies(run, preset, s, n) for s in (150, 300, 450, 600)]
    print(json.dumps(curves))
    assert all(curves[p][-1][0] >= 0.95 for p in curves), curves
    assert all(a > 0.9 for a in curves["tiny_n4"][-1]), curves


def first_step_above(curve, threshold):
    return next((s for s, a in curve if a > threshold), None)


@pytest.mark.slow
def test_signature_induction_earlier_curve_slow(tmp_path):
    # tiny64_n1 / tiny64_n2, seeds 0, 1, 2, 450 steps, head 0 every 25 steps. Measured steps to
    # 0.5: n = 1 325 325 300 (mean 317), n = 2 300 300 300 (mean 300); to 0.9: n = 1 375 375 350
    # (mean 367), n = 2 325 325 350 (mean 333); mean accuracy at 300: n = 1 0.326, n = 2 0.643.
    # Both reach >= 0.99 by step 400.
    steps = range(25, 451, 25)
    curves = {}
    for preset, n in (("tiny64_n1", 1), ("tiny64_n2", 2)):
        for seed in (0, 1, 2):
            run = train(tmp_path, preset, 450, seed=seed, every=25)
            curves[preset, seed] = [(s, head_accuracies(run, preset, s, n, vocab=64, distinct=False)[0])
                                    for s in steps]
    print(json.dumps({f"{p}-{s}": v for (p, s), v in curves.items()}))

    def mean(preset, what):
        return sum(what(curves[preset, s]) for s in (0, 1, 2)) / 3

    for th in (0.5, 0.9):
        t1 = mean("tiny64_n1", lambda c: first_step_above(c, th))
        t2 = mean("tiny64_n2", lambda c: first_step_above(c, th))
        assert t2 <= t1 - 12, (th, t1, t2)
    at300 = {p: mean(p, lambda c: dict(c)[300]) for p in ("tiny64_n1", "tiny64_n2")}
    assert at300["tiny64_n2"] > at300["tiny64_n1"] + 0.15, at300
    assert all(c[-1][1] > 0.99 for c in curves.values()), curves
