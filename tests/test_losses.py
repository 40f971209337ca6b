"""The training losses in nnspec.runtime.losses, each against a reference written here from its
formula (explicit log-sum-exp and one-hot sums, closed-form KLs, brute-force CTC alignments), for
values and gradients, plus edge cases and option validation."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from nnspec.runtime.losses import LOSSES, LossError, check_reads, make_loss

torch.set_num_threads(1)

TOL = dict(atol=1e-6, rtol=1e-6)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=gen(seed)) * scale).requires_grad_()


def log_softmax_ref(x, dim=-1):
    m = x.max(dim, keepdim=True).values.detach()
    return x - m - (x - m).exp().sum(dim, keepdim=True).log()


def ce_ref(logits, targets, ignore=-100, eps=0.0):
    """Mean over non-ignored positions of (1-eps)*nll + eps*mean_c(-logp), via one-hot sums."""
    logp = log_softmax_ref(logits)
    keep = targets != ignore
    onehot = torch.nn.functional.one_hot(torch.where(keep, targets, 0), logits.shape[-1]).to(logp.dtype)
    nll = -(onehot * logp).sum(-1)
    per = (1 - eps) * nll + eps * (-logp.sum(-1) / logits.shape[-1])
    return (per * keep).sum() / keep.sum()


def assert_matches(loss, ref, wrt):
    """Values and gradients (torch.autograd.grad) of `loss` and `ref` agree to 1e-6."""
    torch.testing.assert_close(loss, ref, **TOL)
    g1 = torch.autograd.grad(loss, wrt, retain_graph=True)
    g2 = torch.autograd.grad(ref, wrt, retain_graph=True)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **TOL)


def test_registry_names_and_contract():
    assert sorted(LOSSES) == ["binary_ce", "cross_entropy", "ctc", "description_length", "dpo", "dpo_lm", "elbo",
                              "in_batch_contrastive", "mae", "mse", "multi_token", "pointer_ce", "rag_sequence",
                              "rag_token", "sequence_ce"]
    for name, cls in LOSSES.items():
        assert cls.name == name and cls.reads and cls.__doc__
        assert cls.Options.model_config["extra"] == "forbid"
        make_loss(name)  # every loss has usable defaults


# ----- cross-entropy family

def test_cross_entropy_smoothing_and_ignore_index():
    logits = randn(6, 5, seed=1, scale=2.0)
    targets = torch.tensor([0, 4, -100, 2, 3, -100])
    loss, m = make_loss({"name": "cross_entropy", "label_smoothing": 0.2})({"logits": logits, "targets": targets})
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert_matches(loss, ce_ref(logits, targets, eps=0.2), [logits])
    keep = targets != -100
    assert m["accuracy"] == (logits.argmax(-1)[keep] == targets[keep]).float().mean()
    assert not m["accuracy"].requires_grad


def test_cross_entropy_smoothing_zero_is_plain_ce_and_custom_ignore_index():
    logits = randn(3, 4, 7, seed=2)  # extra leading dims: per-position classes on the last axis
    targets = torch.randint(0, 7, (3, 4), generator=gen(3))
    targets[0, 1] = 5
    plain, _ = make_loss({"name": "cross_entropy", "label_smoothing": 0.0, "ignore_index": 5})(
        {"logits": logits, "targets": targets})
    assert_matches(plain, ce_ref(logits, targets, ignore=5), [logits])
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(
        logits.reshape(-1, 7), targets.reshape(-1), ignore_index=5), **TOL)
    total, _ = make_loss({"name": "cross_entropy", "reduction": "sum", "ignore_index": 5})(
        {"logits": logits, "targets": targets})
    torch.testing.assert_close(total, plain * (targets != 5).sum(), **TOL)


def test_all_targets_ignored_gives_zero_loss_and_zero_grad():
    logits = randn(4, 3, seed=4)
    loss, m = make_loss("cross_entropy")({"logits": logits, "targets": torch.full((4,), -100)})
    (g,) = torch.autograd.grad(loss, [logits])
    assert loss.item() == 0.0 and m["accuracy"].item() == 0.0
    assert torch.equal(g, torch.zeros_like(g))
    loss, m = make_loss("sequence_ce")({"logits": randn(2, 3, 4), "targets": torch.full((2, 3), -100)})
    assert loss.item() == 0.0 and not math.isnan(m["bits_per_token"].item())


def test_sequence_ce_shift_and_bits_per_token():
    logits = randn(2, 5, 6, seed=5)
    tokens = torch.randint(0, 6, (2, 5), generator=gen(6))
    tokens[1, 4] = -100
    loss, m = make_loss({"name": "sequence_ce", "shift": True})({"logits": logits, "targets": tokens})
    ref = ce_ref(logits[:, :-1], tokens[:, 1:])
    assert_matches(loss, ref, [logits])
    torch.testing.assert_close(m["bits_per_token"], ref.detach() / math.log(2), **TOL)
    smooth, m2 = make_loss({"name": "sequence_ce", "label_smoothing": 0.1})({"logits": logits, "targets": tokens})
    assert_matches(smooth, ce_ref(logits, tokens, eps=0.1), [logits])
    # bits per token is the plain NLL, whatever the smoothing
    torch.testing.assert_close(m2["bits_per_token"], ce_ref(logits, tokens).detach() / math.log(2), **TOL)


def test_pointer_ce_masks_padding_inputs():
    scores = randn(2, 3, 4, seed=7)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    targets = torch.tensor([[2, 0, 1], [1, -100, 0]])
    loss, m = make_loss("pointer_ce")({"pointer_logits": scores, "targets": targets, "input_mask": mask})
    masked = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    logp = log_softmax_ref(masked)
    keep = targets != -100
    picked = torch.stack([logp[b, t, targets[b, t]] for b in range(2) for t in range(3) if keep[b, t]])
    assert_matches(loss, -picked.mean(), [scores])
    unmasked, _ = make_loss("pointer_ce")({"pointer_logits": scores, "targets": targets})
    assert_matches(unmasked, ce_ref(scores, targets), [scores])
    with pytest.raises(LossError, match="masked position"):
        make_loss("pointer_ce")({"pointer_logits": scores, "targets": torch.tensor([[3, 0, 0], [0, 0, 0]]),
                                 "input_mask": mask})


def test_pointer_ce_fully_masked_padding_rows_have_finite_grad():
    scores = randn(1, 2, 3, seed=8)
    mask = torch.tensor([[True, False, False]])
    loss, _ = make_loss("pointer_ce")({"pointer_logits": scores, "targets": torch.tensor([[0, -100]]),
                                       "input_mask": mask})
    (g,) = torch.autograd.grad(loss, [scores])
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(g).all()


def test_multi_token_averages_per_head():
    heads, b, t, v = 3, 2, 5, 4
    logits = randn(heads, b, t, v, seed=9)
    targets = torch.randint(0, v, (b, t), generator=gen(10))
    loss, m = make_loss("multi_token")({"head_logits": logits, "targets": targets})
    per_head = [ce_ref(logits[k, :, :t - k], targets[:, k:]) for k in range(heads)]
    assert_matches(loss, sum(per_head) / heads, [logits])
    for k in range(heads):
        torch.testing.assert_close(m[f"ce_head{k}"], per_head[k].detach(), **TOL)
    weighted, _ = make_loss({"name": "multi_token", "head_weights": [1.0, 0.5, 0.0]})(
        {"head_logits": logits, "targets": targets})
    assert_matches(weighted, (per_head[0] + 0.5 * per_head[1]) / 1.5, [logits])
    with pytest.raises(LossError, match="2 entries for 3 heads"):
        make_loss({"name": "multi_token", "head_weights": [1.0, 1.0]})({"head_logits": logits, "targets": targets})


def test_binary_ce_with_pos_weight_and_soft_targets():
    x = randn(4, 3, seed=11, scale=2.0)
    y = torch.rand(4, 3, generator=gen(12))
    loss, m = make_loss({"name": "binary_ce", "pos_weight": 2.5})({"logits": x, "targets": y})
    p = 1 / (1 + torch.exp(-x))
    ref = (-(2.5 * y * torch.log(p) + (1 - y) * torch.log(1 - p))).mean()
    assert_matches(loss, ref, [x])
    assert m["accuracy"] == ((x > 0) == (y > 0.5)).float().mean()
    big, _ = make_loss("binary_ce")({"logits": torch.tensor([80.0, -80.0]), "targets": torch.tensor([0.0, 1.0])})
    assert big.item() == pytest.approx(80.0)  # stable where log(sigmoid) would be log(0)


def test_mse_and_mae():
    x, y = randn(5, 2, seed=13), torch.randn(5, 2, generator=gen(14))
    mse, m = make_loss("mse")({"predictions": x, "targets": y})
    assert_matches(mse, ((x - y) ** 2).sum() / 10, [x])
    torch.testing.assert_close(m["rmse"], mse.detach().sqrt(), **TOL)
    mae, m = make_loss("mae")({"predictions": x, "targets": y})
    assert_matches(mae, torch.sqrt((x - y) ** 2).sum() / 10, [x])
    s, _ = make_loss({"name": "mae", "reduction": "sum"})({"predictions": x, "targets": y})
    torch.testing.assert_close(s, mae * 10, **TOL)


# ----- CTC

def ctc_brute_force(logp, target, blank=0):
    """-log of the sum over every alignment (classes ** time of them) that collapses to `target`."""
    time, classes = logp.shape
    terms = []
    for path in itertools.product(range(classes), repeat=time):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed == list(target):
            terms.append(sum(logp[t, c] for t, c in enumerate(path)))
    return -torch.logsumexp(torch.stack(terms), 0)


def test_ctc_against_torch_and_brute_force_alignments():
    logits = randn(2, 4, 3, seed=15)  # batch 2, time 4, classes 3 (blank 0 + 2 symbols)
    targets = torch.tensor([[1, 1], [2, 0]])  # a repeat needs a blank between; second is length 1
    in_len, tg_len = torch.tensor([4, 3]), torch.tensor([2, 1])
    inputs = {"logits": logits, "targets": targets, "input_lengths": in_len, "target_lengths": tg_len}
    per_seq = [ctc_brute_force(log_softmax_ref(logits[b, :in_len[b]]), targets[b, :tg_len[b]].tolist())
               for b in range(2)]
    loss, m = make_loss("ctc")(inputs)
    assert_matches(loss, (per_seq[0] / 2 + per_seq[1] / 1) / 2, [logits])
    torch.testing.assert_close(loss, torch.nn.functional.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1), targets, in_len, tg_len), **TOL)
    seq, _ = make_loss({"name": "ctc", "normalise": "per_sequence"})(inputs)
    assert_matches(seq, (per_seq[0] + per_seq[1]) / 2, [logits])
    torch.testing.assert_close(m["nll_per_sequence"], seq.detach(), **TOL)


def test_ctc_nonzero_blank_and_impossible_alignment():
    logits = randn(1, 3, 3, seed=16)
    inputs = {"logits": logits, "targets": torch.tensor([[0, 1]]), "input_lengths": torch.tensor([3]),
              "target_lengths": torch.tensor([2])}
    loss, _ = make_loss({"name": "ctc", "blank": 2})(inputs)
    assert_matches(loss, ctc_brute_force(log_softmax_ref(logits[0]), [0, 1], blank=2) / 2, [logits])
    short = dict(inputs, targets=torch.tensor([[1, 1]]), input_lengths=torch.tensor([2]))
    assert math.isinf(make_loss("ctc")(short)[0].item())
    assert make_loss({"name": "ctc", "zero_infinity": True})(short)[0].item() == 0.0
    with pytest.raises(LossError, match="is the blank"):
        make_loss("ctc")(dict(inputs, targets=torch.tensor([[0, 1]])))


# ----- variational

def kl_normal_ref(mu, logvar, prior_std=1.0):
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    return torch.distributions.kl_divergence(q, torch.distributions.Normal(torch.zeros_like(mu), prior_std))


def test_elbo_bernoulli_and_gaussian():
    r, x = randn(3, 2, 2, seed=17), torch.rand(3, 2, 2, generator=gen(18))
    mu, lv = randn(3, 4, seed=19), randn(3, 4, seed=20, scale=0.5)
    inputs = {"reconstruction": r, "inputs": x, "mu": mu, "logvar": lv}
    loss, m = make_loss("elbo")(inputs)
    p = torch.sigmoid(r)
    recon = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum() / 3
    kl = kl_normal_ref(mu, lv).sum() / 3
    assert_matches(loss, recon + kl, [r, mu, lv])
    torch.testing.assert_close(m["recon"], recon.detach(), **TOL)
    torch.testing.assert_close(m["kl"], kl.detach(), **TOL)
    gauss, _ = make_loss({"name": "elbo", "likelihood": "gaussian", "beta": 0.5})(inputs)
    nlp = -torch.distributions.Normal(r, 1.0).log_prob(x).sum() / 3
    assert_matches(gauss, nlp + 0.5 * kl, [r, mu, lv])


def test_elbo_free_bits_clamp_per_dimension():
    r, x = randn(2, 3, seed=21), torch.rand(2, 3, generator=gen(22))
    # dimension 0 is far from the prior (KL > 1 nat), dimension 1 close to it (KL < 0.5)
    mu = torch.tensor([[3.0, 0.1], [2.0, -0.2]], requires_grad=True)
    lv = torch.zeros(2, 2, requires_grad=True)
    inputs = {"reconstruction": r, "inputs": x, "mu": mu, "logvar": lv}
    loss, m = make_loss({"name": "elbo", "free_bits": 0.5})(inputs)
    plain, _ = make_loss("elbo")(inputs)
    kl_dim = kl_normal_ref(mu, lv).mean(0)
    assert kl_dim[0] > 0.5 > kl_dim[1]
    assert_matches(loss, plain - kl_dim[1] + 0.5, [r, mu, lv])
    (g,) = torch.autograd.grad(loss, [mu])
    assert torch.equal(g[:, 1], torch.zeros(2)) and (g[:, 0] != 0).all()
    torch.testing.assert_close(m["kl"], kl_dim.sum().detach(), **TOL)  # logged KL is unclamped


def test_description_length_of_noisy_weights():
    logits = randn(4, 3, seed=23)
    targets = torch.tensor([0, 2, 1, 1])
    wm, wls = randn(10, seed=24, scale=0.3), randn(10, seed=25, scale=0.2)
    wls_shifted = (wls - 1.0).detach().requires_grad_()
    inputs = {"logits": logits, "targets": targets, "weight_mean": wm, "weight_log_std": wls_shifted}
    loss, m = make_loss({"name": "description_length", "prior_std": 0.5, "dataset_size": 100})(inputs)
    q = torch.distributions.Normal(wm, wls_shifted.exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(torch.zeros(10), 0.5)).sum()
    data = ce_ref(logits, targets)
    assert_matches(loss, data + kl / 100, [logits, wm, wls_shifted])
    torch.testing.assert_close(m["bits"], (100 * data + kl).detach() / math.log(2), **TOL)
    y = torch.randn(4, 3, generator=gen(26))
    mse, _ = make_loss({"name": "description_length", "data": "mse"})(dict(inputs, targets=y))
    assert_matches(mse, 0.5 * ((logits - y) ** 2).mean() + kl_normal_ref(wm, 2 * wls_shifted).sum(), [logits, wm])


# ----- preference and contrastive

def test_dpo_with_beta_and_frozen_reference():
    pc, pr = randn(5, seed=27, scale=3.0), randn(5, seed=28, scale=3.0)
    rc, rr = randn(5, seed=29, scale=3.0), randn(5, seed=30, scale=3.0)
    inputs = {"policy_chosen_logps": pc, "policy_rejected_logps": pr,
              "reference_chosen_logps": rc, "reference_rejected_logps": rr}
    loss, m = make_loss({"name": "dpo", "beta": 0.3})(inputs)
    z = 0.3 * ((pc - rc.detach()) - (pr - rr.detach()))
    ref = torch.log1p(torch.exp(-z)).mean()  # -log sigmoid(z)
    assert_matches(loss, ref, [pc, pr])
    g = torch.autograd.grad(loss, [rc, rr], allow_unused=True)
    assert all(x is None or torch.equal(x, torch.zeros_like(x)) for x in g)  # the reference is frozen
    assert m["reward_accuracy"] == (z > 0).float().mean()
    torch.testing.assert_close(m["margin"], z.detach().mean(), **TOL)
    smooth, _ = make_loss({"name": "dpo", "beta": 0.3, "label_smoothing": 0.1})(inputs)
    assert_matches(smooth, (0.9 * torch.log1p(torch.exp(-z)) + 0.1 * torch.log1p(torch.exp(z))).mean(), [pc, pr])


def test_dpo_lm_sums_response_log_probs_of_paired_rows():
    """dpo_lm on (2N, T, V) logits equals dpo on the response log-probs summed by hand: rows 0..N-1
    chosen, N..2N-1 rejected, positions outside response_mask left out."""
    N, T, V = 3, 5, 7
    logits, ref_logits = randn(2 * N, T, V, seed=33), randn(2 * N, T, V, seed=34)
    targets = torch.randint(0, V, (2 * N, T), generator=torch.Generator().manual_seed(35))
    mask = torch.zeros(2 * N, T)
    mask[:, 2:] = 1.0
    lm = make_loss({"name": "dpo_lm", "beta": 0.2})
    assert lm.reference and not make_loss("dpo").reference  # the trainer keeps a frozen copy for dpo_lm only
    loss, m = lm({"logits": logits, "reference_logits": ref_logits, "targets": targets, "response_mask": mask})

    def seq(x):
        lp = torch.log_softmax(x, -1)
        return torch.stack([sum(lp[r, t, targets[r, t]] for t in range(2, T)) for r in range(2 * N)])
    pol, ref = seq(logits), seq(ref_logits)
    want, wm = make_loss({"name": "dpo", "beta": 0.2})({
        "policy_chosen_logps": pol[:N], "policy_rejected_logps": pol[N:],
        "reference_chosen_logps": ref[:N], "reference_rejected_logps": ref[N:]})
    assert_matches(loss, want, [logits])
    torch.testing.assert_close(m["margin"], wm["margin"], **TOL)
    g, = torch.autograd.grad(loss, [ref_logits], allow_unused=True)
    assert g is None or torch.equal(g, torch.zeros_like(g))  # no gradient into the reference
    with pytest.raises(LossError, match="2N"):
        lm({"logits": logits[:5], "reference_logits": ref_logits[:5], "targets": targets[:5], "response_mask": mask[:5]})


def test_in_batch_contrastive_is_ce_over_similarity_matrix():
    q, p = randn(4, 6, seed=31), randn(7, 6, seed=32)  # 3 extra hard negatives
    loss, m = make_loss("in_batch_contrastive")({"query_embeddings": q, "passage_embeddings": p})
    sim = torch.einsum("qd,pd->qp", q, p)
    assert_matches(loss, ce_ref(sim, torch.arange(4)), [q, p])
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(q @ p.T, torch.arange(4)), **TOL)
    assert m["accuracy"] == (sim.argmax(1) == torch.arange(4)).float().mean()
    cos, _ = make_loss({"name": "in_batch_contrastive", "similarity": "cosine", "temperature": 0.05})(
        {"query_embeddings": q, "passage_embeddings": p})
    cs = sim / (q.norm(dim=1, keepdim=True) * p.norm(dim=1))
    torch.testing.assert_close(cos, ce_ref(cs / 0.05, torch.arange(4)), atol=1e-5, rtol=1e-6)


# ----- determinism, validation, clear errors

def test_deterministic():
    logits = randn(8, 5, seed=33)
    targets = torch.randint(0, 5, (8,), generator=gen(34))
    a = make_loss({"name": "cross_entropy", "label_smoothing": 0.1})({"logits": logits, "targets": targets})[0]
    b = make_loss({"name": "cross_entropy", "label_smoothing": 0.1})({"logits": logits, "targets": targets})[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("config, match", [
    ({"name": "cross_entropy", "label_smoothing": 1.0}, "label_smoothing"),
    ({"name": "cross_entropy", "smoothing": 0.1}, "unknown option"),
    ({"name": "cross_entropy", "ignore_index": True}, "ignore_index"),
    ({"name": "cross_entropy", "label_smoothing": "0.1"}, "label_smoothing"),
    ({"name": "dpo", "beta": 0.0}, "beta"),
    ({"name": "dpo", "beta": float("nan")}, "beta"),
    ({"name": "elbo", "free_bits": -1.0}, "free_bits"),
    ({"name": "ctc", "reduction": "none"}, "reduction"),
    ({"name": "multi_token", "head_weights": []}, "head_weights"),
    ({"name": "in_batch_contrastive", "temperature": -1.0}, "temperature"),
    ({"name": "focal"}, "unknown loss 'focal'"),
    ({"label_smoothing": 0.1}, "a name or a mapping"),
    (3, "a name or a mapping"),
])
def test_bad_options_rejected_clearly(config, match):
    with pytest.raises(LossError, match=match) as e:
        make_loss(config)
    text = str(e.value)
    assert "loss error" in text and "Traceback" not in text


def test_missing_inputs_name_the_loss_and_the_available_tensors():
    loss = make_loss("dpo")
    with pytest.raises(LossError) as e:
        loss({"policy_chosen_logps": torch.zeros(2), "logits": torch.zeros(2)})
    text = str(e.value)
    assert "loss 'dpo' reads 'policy_rejected_logps'" in text and "available: logits, policy_chosen_logps" in text
    check_reads(LOSSES["ctc"], ["logits", "targets", "input_lengths", "target_lengths"])
    with pytest.raises(LossError, match="'target_lengths'"):
        check_reads(LOSSES["ctc"], ["logits", "targets", "input_lengths"])


@pytest.mark.parametrize("name, inputs, match", [
    ("cross_entropy", {"logits": torch.zeros(3, 4), "targets": torch.tensor([0, 4, 1])}, "outside"),
    ("cross_entropy", {"logits": torch.zeros(3, 4), "targets": torch.zeros(3)}, "integer class ids"),
    ("cross_entropy", {"logits": torch.zeros(3, 4), "targets": torch.zeros(2, dtype=torch.long)}, "do not fit"),
    ("binary_ce", {"logits": torch.zeros(3), "targets": torch.tensor([0.0, 2.0, 1.0])}, r"\[0, 1\]"),
    ("mse", {"predictions": torch.zeros(3), "targets": torch.zeros(4)}, "shaped like"),
    ("in_batch_contrastive", {"query_embeddings": torch.zeros(3, 2), "passage_embeddings": torch.zeros(2, 2)},
     "passages >= queries"),
    ("cross_entropy", {"logits": [[0.0]], "targets": torch.zeros(1, dtype=torch.long)}, "not a tensor"),
])
def test_bad_tensors_rejected_clearly(name, inputs, match):
    with pytest.raises(LossError, match=match):
        make_loss(name)(inputs)


def test_half_precision_inputs_are_computed_in_float32():
    logits = torch.randn(4, 3, generator=gen(35)).half()
    loss, _ = make_loss("cross_entropy")({"logits": logits, "targets": torch.tensor([0, 1, 2, 0])})
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ce_ref(logits.float(), torch.tensor([0, 1, 2, 0])), **TOL)


def test_importing_the_runtime_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, nnspec.runtime; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
