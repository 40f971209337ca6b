"""rag (Lewis et al. 2020) against transformers' DPRQuestionEncoder and BartForConditionalGeneration
built from their configs (no weights downloaded): every preset's parameter count equals the two HF
modules' (BART's tied embeddings counted once, its final_logits_bias a buffer), the generator's
logits equal BART's with the weights copied over, and the two marginalisations of
runtime/losses/rag.py equal a direct computation on a tiny example."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.runtime.losses import make_loss
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

transformers = pytest.importorskip("transformers")


def hf_modules(preset: str):
    p = c.load("rag", preset).spec.params
    torch.manual_seed(0)
    q = transformers.DPRQuestionEncoder(transformers.DPRConfig(
        vocab_size=p["vocab"], hidden_size=p["d_model"], num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"], intermediate_size=p["d_ff"], max_position_embeddings=p["max_pos"],
        type_vocab_size=p["type_vocab"], layer_norm_eps=p["eps"], projection_dim=0))
    bart = transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=p["gen_vocab"], max_position_embeddings=p["gen_max_pos"], d_model=p["gen_d_model"],
        encoder_layers=p["gen_layers"], decoder_layers=p["gen_layers"], encoder_attention_heads=p["gen_heads"],
        decoder_attention_heads=p["gen_heads"], encoder_ffn_dim=p["gen_d_ff"], decoder_ffn_dim=p["gen_d_ff"],
        dropout=p["gen_dropout"], attention_dropout=0.0, activation_dropout=0.0, pad_token_id=p["gen_pad"],
        scale_embedding=False, tie_word_embeddings=True))
    return q.eval(), bart.eval()


def unique_params(m: torch.nn.Module) -> int:
    return sum(t.numel() for t in m.parameters())  # tied tensors once; buffers (final_logits_bias) not


@pytest.mark.parametrize("preset", ["tiny", "large"])
def test_count_equals_dpr_question_encoder_plus_bart(preset):
    q, bart = hf_modules(preset)
    assert cost_report(c.load("rag", preset)).params == unique_params(q) + unique_params(bart)


def test_large_generator_closed_form():
    """BART-large: the shared table V d, two position tables of 1024 + 2 rows (the offset of 2),
    two embedding layer norms, 12 encoder layers of 4 (d^2 + d) + 2 d f + f + d + 4 d and 12
    decoder layers with the cross-attention's 4 (d^2 + d) + 2 d more."""
    V, d, f, L = 50265, 1024, 4096, 12
    enc = 4 * (d * d + d) + 2 * d * f + f + d + 4 * d
    dec = enc + 4 * (d * d + d) + 2 * d
    bart = V * d + 2 * 1026 * d + 4 * d + L * (enc + dec)
    dpr_q = (30522 + 512 + 2) * 768 + 2 * 768 + 12 * (12 * 768 * 768 + 13 * 768)
    assert bart == 406_291_456
    assert cost_report(c.load("rag", "large")).params == bart + dpr_q


def hf_name(ours: str) -> str:
    if ours == "lm_head.weight":
        return "lm_head.weight"
    name = ours.replace("encoder_attn_q_proj", "encoder_attn.q_proj").replace("encoder_attn_k_proj", "encoder_attn.k_proj")
    name = name.replace("encoder_attn_v_proj", "encoder_attn.v_proj").replace("encoder_attn_out_proj", "encoder_attn.out_proj")
    return "model." + name


def test_logits_equal_bart_with_copied_weights():
    _, bart = hf_modules("tiny")
    module = build_module(c.load("rag", "tiny"), seed=1).eval()
    theirs = bart.state_dict()
    state = dict(module.state_dict())
    for k in state:
        if not k.startswith("question_encoder."):
            state[k] = theirs[hf_name(k)]
    assert not torch.equal(module.state_dict()["encoder.layers.0.fc1.weight"], state["encoder.layers.0.fc1.weight"])
    module.load_state_dict(state)
    g = torch.Generator().manual_seed(0)
    N, k, S, T = 2, 3, 7, 5
    query = torch.randint(1, 39, (N, 4), generator=g)
    docs = torch.randn(N, k, 32, generator=g)
    context = torch.randint(2, 48, (N, k, S), generator=g)
    context[0, 1, 5:] = 1  # <pad>
    tgt = torch.randint(2, 48, (N, k, T), generator=g)
    with torch.no_grad():
        out = module(query, docs, context, tgt)
        logits = out["logits"] if isinstance(out, dict) else out[0]
        ids = context.reshape(N * k, S)
        want = bart(input_ids=ids, attention_mask=(ids != 1).long(), decoder_input_ids=tgt.reshape(N * k, T)).logits
    assert logits.shape == want.shape == (N * k, T, 48)
    assert torch.allclose(logits, want, atol=1e-5), (logits - want).abs().max()


def example():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    scores = torch.randn(2, 3, generator=g)
    targets = torch.randint(0, 5, (2, 4), generator=g)
    targets[1, 3] = -100
    return logits, scores, targets


def direct(logits, scores, targets, token: bool) -> float:
    """-log p(y|x) by explicit sums of probabilities, mean over examples."""
    total = 0.0
    for n in range(logits.shape[0]):
        pz = torch.softmax(scores[n], 0).tolist()
        steps = [t for t in range(logits.shape[2]) if targets[n, t] != -100]
        p = lambda z, t: torch.softmax(logits[n, z, t], 0)[targets[n, t]].item()  # noqa: E731
        if token:
            total -= sum(math.log(sum(pz[z] * p(z, t) for z in range(len(pz)))) for t in steps)
        else:
            total -= math.log(sum(pz[z] * math.prod(p(z, t) for t in steps) for z in range(len(pz))))
    return total / logits.shape[0]


@pytest.mark.parametrize("name,token", [("rag_sequence", False), ("rag_token", True)])
def test_losses_equal_direct_marginals(name, token):
    logits, scores, targets = example()
    loss, _ = make_loss(name)({"logits": logits, "doc_scores": scores, "targets": targets})
    assert abs(loss.item() - direct(logits, scores, targets, token)) < 1e-5


def test_the_two_marginals_differ_and_agree_with_one_document():
    logits, scores, targets = example()
    seq, _ = make_loss("rag_sequence")({"logits": logits, "doc_scores": scores, "targets": targets})
    tok, _ = make_loss("rag_token")({"logits": logits, "doc_scores": scores, "targets": targets})
    assert abs(seq.item() - tok.item()) > 1e-3
    one = {"logits": logits[:, :1], "doc_scores": scores[:, :1], "targets": targets}
    assert abs(make_loss("rag_sequence")(one)[0].item() - make_loss("rag_token")(one)[0].item()) < 1e-5


def test_loss_step_reaches_retriever_and_generator():
    """One optimizer step of rag_token on the tiny preset's outputs: the loss has gradients in the
    question encoder (through p(z|x)) and in the generator, and falls on the batch."""
    module = build_module(c.load("rag", "tiny"), seed=0).train()
    g = torch.Generator().manual_seed(0)
    N, k, S, T = 2, 3, 6, 4
    batch = (torch.randint(1, 39, (N, 4), generator=g), torch.randn(N, k, 32, generator=g),
             torch.randint(2, 48, (N, k, S), generator=g), torch.randint(2, 48, (N, k, T), generator=g))
    targets = torch.randint(2, 48, (N, T), generator=g)
    loss_fn = make_loss("rag_token")
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)

    def loss():
        out = module(*batch)
        logits, scores = (out["logits"], out["doc_scores"]) if isinstance(out, dict) else out
        return loss_fn({"logits": logits.reshape(N, k, T, -1), "doc_scores": scores, "targets": targets})[0]

    first = loss()
    first.backward()
    assert module.question_encoder.layer[0].attention.q.weight.grad.abs().sum() > 0
    assert module.lm_head.weight.grad.abs().sum() > 0
    opt.step()
    for _ in itertools.repeat(None, 4):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < first.item()
