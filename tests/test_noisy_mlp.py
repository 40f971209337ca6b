"""noisy_mlp (Hinton & van Camp 1993): noisy weights with learned variances and the description
length of the weights. The count comes from the layer sizes; eval mode and ONNX are the plain net
of the mean weights; training draws the weights; training on the description length shrinks it
while the fit holds."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.compiler.spec.load import load_spec
from nnspec.runtime.cli import main as nnspec
from nnspec.runtime.compile import program_for
from nnspec.runtime.losses import make_loss
from nnspec.runtime.train.rundir import read_metrics
from nnspec.runtime.train.section import recipe
from nnspec.targets.onnx.export import to_onnx_model
from nnspec.targets.onnx.runner import ort_session, run_ort
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

# preset -> (inputs, hidden, outputs) of the one-hidden-layer net
SIZES = {None: (64, 16, 10), "digits": (64, 16, 10), "paper": (128, 4, 1)}


def noisy_params(layers: list[tuple[int, int]]) -> int:
    """Every weight and bias of each (in, out) layer is a Gaussian with two learned numbers, a mean
    and a log std: 2 * (in * out + out) per layer."""
    return sum(2 * (i * o + o) for i, o in layers)


def layers(preset) -> list[tuple[int, int]]:
    n_in, hidden, n_out = SIZES[preset]
    return [(n_in, hidden), (hidden, n_out)]


@pytest.mark.parametrize("preset", list(SIZES))
def test_param_count_from_the_layer_sizes(preset):
    p = c.load("noisy_mlp", preset)
    assert cost_report(p).params == noisy_params(layers(preset))
    # the paper's net: (128 + 1) * 4 + (4 + 1) * 1 = 521 noisy weights, 1,042 learned numbers
    if preset == "paper":
        assert noisy_params(layers(preset)) == 2 * 521
    shapes = {f"{n.id}.{k}": q.shape for n in p.forward.nodes() for k, q in n.params.items()}
    for name, (i, o) in zip(("fc1", "fc2"), layers(preset)):
        for kind in ("mean", "log_std"):
            assert shapes[f"{name}.weight_{kind}.weight"] == (i, o)
            assert shapes[f"{name}.bias_{kind}.weight"] == (o,)
    assert len(shapes) == 8


def reference(preset) -> nn.Sequential:
    """The plain net the means describe: flatten, linear, logistic hidden units, linear output."""
    (i, h), (_, o) = layers(preset)
    return nn.Sequential(nn.Flatten(), nn.Linear(i, h), nn.Sigmoid(), nn.Linear(h, o))


def copy_means(module, ref: nn.Sequential) -> None:
    """The spec stores W[in, out] (x @ W); nn.Linear stores its transpose."""
    with torch.no_grad():
        for name, lin in (("fc1", ref[1]), ("fc2", ref[3])):
            layer = getattr(module, name)
            lin.weight.copy_(layer.weight_mean.weight.T)
            lin.bias.copy_(layer.bias_mean.weight)


def noisy_module(preset, log_std: float = math.log(0.5), seed: int = 0):
    """The generated module with its log stds set to `log_std`: noise large enough to show."""
    module = build_module(c.load("noisy_mlp", preset), seed=seed)
    with torch.no_grad():
        for name, q in module.named_parameters():
            if "log_std" in name:
                q.fill_(log_std)
    return module


def image(preset, n: int = 5, seed: int = 1) -> torch.Tensor:
    shape = {"paper": (n, 1, 1, 128)}.get(preset, (n, 1, 8, 8))
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", ["digits", "paper"])
def test_eval_mode_is_the_plain_net_of_the_mean_weights(preset):
    module = noisy_module(preset).eval()
    ref = reference(preset).eval()
    copy_means(module, ref)
    x = image(preset)
    with torch.no_grad():
        logits, mean, log_std, _ = module(x)
        ref_out = ref(x)
        again = module(x)[0]
    assert torch.equal(logits, again)  # eval mode draws nothing
    # x @ W then + b against nn.Linear's addmm: equal up to float32 rounding (measured 6e-8)
    torch.testing.assert_close(logits, ref_out, rtol=0, atol=1e-6)
    # the flat means: each layer's weights (row-major [in, out]), then its biases
    expect = torch.cat([torch.cat([lin.weight.T.flatten(), lin.bias]) for lin in (ref[1], ref[3])])
    assert torch.equal(mean, expect.detach())
    assert torch.equal(log_std, torch.full_like(mean, math.log(0.5)))


def kl_closed_form(mean: torch.Tensor, log_std: torch.Tensor, prior: float) -> torch.Tensor:
    """KL(N(m, s^2) || N(0, p^2)) = log(p / s) + (s^2 + m^2) / (2 p^2) - 1/2, summed, in float64."""
    m, ls = mean.double(), log_std.double()
    return (math.log(prior) - ls + (torch.exp(2 * ls) + m * m) / (2 * prior ** 2) - 0.5).sum()


@pytest.mark.parametrize("prior", [1.0, 0.3])
def test_description_length_output_is_the_kl_per_training_case(prior):
    loaded = load_spec("noisy_mlp", None, {"prior_std": prior})
    program = c.load("noisy_mlp", None, {"prior_std": prior})
    module = build_module(program, seed=0)
    with torch.no_grad():  # spread the log stds so every term of the KL is exercised
        module.fc1.weight_log_std.weight.uniform_(-4.0, 0.0)
        module.fc2.bias_log_std.weight.uniform_(-1.0, 1.0)
    with torch.no_grad():
        _, mean, log_std, dl = module.eval()(image(None))
    cases = loaded.params["train_cases"]
    kl = kl_closed_form(mean, log_std, prior)
    assert abs(float(dl) * cases - float(kl)) < 1e-5 * float(kl)
    # and it is the term the train: section's loss adds to the misfit (the same prior, the same cases)
    cfg = recipe(loaded)
    loss = make_loss({"name": cfg.loss.name, **cfg.loss.options})
    logits = torch.zeros(3, 10)
    total, metrics = loss({"logits": logits, "targets": torch.tensor([0, 1, 2]), "weight_mean": mean,
                           "weight_log_std": log_std})
    assert abs(float(metrics["weights"]) - float(kl)) < 1e-5 * float(kl)
    assert abs(float(total) - (math.log(10) + float(dl))) < 1e-5


def test_the_recipe_codes_the_weights_once_per_digits_training_set():
    """dataset_size is the number of training cases of the task the recipe trains on."""
    from nnspec.runtime.tasks import make_task

    loaded = load_spec("noisy_mlp")
    cfg = recipe(loaded)
    task = make_task(cfg.task.name, cfg.task.options)
    assert cfg.loss.name == "description_length"
    assert cfg.loss.options["dataset_size"] == task.examples == loaded.params["train_cases"]
    assert cfg.loss.options["prior_std"] == loaded.params["prior_std"]


def test_training_draws_the_weights_once_per_forward():
    module = noisy_module("digits").train()
    layer = module.fc1
    with torch.no_grad():
        layer.weight_log_std.weight.fill_(math.log(0.2))
        layer.bias_log_std.weight.fill_(math.log(0.1))
    torch.manual_seed(0)
    x = torch.zeros(3, 64)
    x[:, 0] = 1.0  # every row is e_0: y = W[0] + b
    with torch.no_grad():
        y1, y2 = layer(x)[0], layer(x)[0]
        assert not torch.equal(y1, y2)  # a new draw each forward
        assert torch.equal(y1[0], y1[1]) and torch.equal(y1[0], y1[2])  # one net for the whole batch
        draws = torch.stack([layer(x[:1])[0][0] for _ in range(4000)])  # [4000, 16]
    mean = layer.weight_mean.weight[0] + layer.bias_mean.weight
    std = math.sqrt(0.2 ** 2 + 0.1 ** 2)  # W[0, j] + b_j: the two independent noises add
    # 4000 draws: the mean's standard error is std / 63, the std's about std / 89
    assert torch.allclose(draws.mean(0), mean.detach(), atol=5 * std / 63)
    assert torch.allclose(draws.std(0), torch.full((16,), std), atol=5 * std / 89)
    # and gradients reach the log stds through the draw
    out = module(image("digits"))[0].square().sum()
    out.backward()
    assert float(module.fc1.weight_log_std.weight.grad.abs().sum()) > 0


RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
              "Multinomial", "Dropout"}


@pytest.mark.parametrize("preset", ["digits", "paper"])
def test_onnx_carries_no_noise_and_is_the_mean_weight_net(preset):
    program = program_for("noisy_mlp", "onnx", preset=preset)
    assert not [n.id for n in program.forward.nodes() if n.op == "gaussian_sample"]  # removed for inference
    module = noisy_module(preset).eval()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    model = to_onnx_model(program, weights)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & RANDOM_OPS, ops & RANDOM_OPS
    # the CORE program (gaussian_sample still in the IR) lowers it to its mean as well
    core = to_onnx_model(c.load("noisy_mlp", preset), weights)
    assert not {n.op_type for n in core.graph.node} & RANDOM_OPS
    ref = reference(preset).eval()
    copy_means(module, ref)
    x = image(preset, n=7, seed=3)
    with torch.no_grad():
        want = ref(x).numpy()
        dl = float(module(x)[3])
    for m in (model, core):
        out = run_ort(ort_session(m), {"image": x.numpy()})
        np.testing.assert_allclose(out["logits"], want, rtol=0, atol=1e-5)
        assert abs(float(out["description_length"]) - dl) < 1e-5 * abs(dl)
    onnx.checker.check_model(model)


def train_run(tmp_path, name: str, *extra) -> list[dict]:
    run = tmp_path / name
    assert nnspec(["train", "noisy_mlp", "--set", "train.log_every=1", "--threads", "1", "--no-progress",
                   "--out", str(run), *extra]) == 0
    return read_metrics(run)


def test_signature_description_length_falls_while_the_fit_holds(tmp_path):
    """The recipe (600 steps of Adam 1e-2, batch 64, on the digits) against the same net trained on
    the misfit alone (dataset_size 1e9: the weight cost weighs nothing). Measured: the weights' KL
    falls from 5,450 nats at step 1 to 939 at step 600 (5.8x) while validation accuracy goes 0.905,
    0.939, 0.958, 0.955, 0.961, 0.955 at steps 100..600; the misfit-only net ends at 0.969 with its
    KL risen to 5,753 nats. The coded net's whole message (misfit + weights) falls from 11,976 to
    1,917 bits (means of the first and last 20 steps). About 2 s a run."""
    coded = train_run(tmp_path, "coded")
    plain = train_run(tmp_path, "plain", "--set", "train.loss.options.dataset_size=1000000000")
    kl = [r["weights"] for r in coded if r["split"] == "train"]
    kl_plain = [r["weights"] for r in plain if r["split"] == "train"]
    acc = [r["accuracy"] for r in coded if r["split"] == "valid"]
    acc_plain = [r["accuracy"] for r in plain if r["split"] == "valid"]
    assert len(kl) == 600 and len(acc) == 6
    # the description length of the weights falls by more than 4x ...
    assert kl[-1] < kl[0] / 4
    # ... and falls steadily: every 100-step stretch ends lower than it began
    assert all(kl[k + 99] < kl[k] for k in range(0, 600, 100))
    # ... while the fit holds: from the first evaluation on, accuracy stays above 0.88 and within
    # 0.03 of the net trained on the misfit alone, and it ends no lower than it was at step 100
    assert min(acc) > 0.88 and acc[-1] >= acc[0]
    assert acc[-1] >= acc_plain[-1] - 0.03
    # without the weight cost nothing shrinks the KL: it ends above where it started
    assert kl_plain[-1] > kl_plain[0] and kl_plain[-1] > 5 * kl[-1]
    # and the whole message (data + weights, in bits) is shorter for the coded net
    bits = [r["bits"] for r in coded if r["split"] == "train"]
    assert np.mean(bits[-20:]) < np.mean(bits[:20]) / 3
    # the trained net exported: ONNX without noise, the plain net of the trained means, and its
    # description_length output the run's last KL (the last step's update moves it a little)
    out = tmp_path / "onnx"
    assert nnspec(["compile", "noisy_mlp", "--target", "onnx", "--weights", str(tmp_path / "coded"),
                   "-o", str(out)]) == 0
    model = onnx.load(str(out / "model.onnx"))
    assert not {n.op_type for n in model.graph.node} & RANDOM_OPS
    from safetensors.torch import load_file

    trained = load_file(str(out / "weights.safetensors"))
    ref = reference("digits").eval()
    with torch.no_grad():
        for name, lin in (("fc1", ref[1]), ("fc2", ref[3])):
            lin.weight.copy_(trained[f"{name}.weight_mean.weight"].T)
            lin.bias.copy_(trained[f"{name}.bias_mean.weight"])
        x = image("digits", n=16, seed=5)
        want = ref(x).numpy()
    got = run_ort(ort_session(model), {"image": x.numpy()})
    np.testing.assert_allclose(got["logits"], want, rtol=0, atol=1e-5)
    cases = load_spec("noisy_mlp").params["train_cases"]
    assert abs(float(got["description_length"]) * cases - kl[-1]) < 0.01 * kl[-1]
