"""The zoo against independent implementations: torchvision's ResNets and AlexNet, torch's
TransformerEncoder and hand-written torch models. Parameter counts must be equal, and with the
reference's weights (randomly initialised, never downloaded) copied in through a short explicit
name map, eval-mode outputs must agree to 1e-5."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.runtime.import_weights import rename
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

def renamed(state: dict, program) -> dict:
    """`state` renamed by the spec's own `reference.keys` map (what `nnspec import-weights` applies)."""
    keys = program.spec.model.reference.keys if program.spec.model.reference else {}
    return {rename(k, keys): v for k, v in state.items()}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def randomise_norms(model: nn.Module, seed: int) -> None:
    """Give batch norms non-trivial affine params and running stats, so a wrong eps, a swapped
    or missing norm, or stats that do not load would change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c_ = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(c_, generator=g))
                mod.bias.copy_(0.1 * torch.randn(c_, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(c_, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c_, generator=g))


def ours_with(ref: nn.Module, spec: str, preset=None, **overrides):
    """The generated module for `spec`, holding `ref`'s weights (renamed by the spec's reference key
    map); both in eval mode."""
    prog = c.load(spec, preset, overrides)
    ours = build_module(prog)
    assert n_params(ours) == n_params(ref) == cost_report(prog).params
    ours.load_state_dict(renamed(ref.state_dict(), prog), strict=True)
    return ours.eval(), ref.eval()


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- ImageNet ResNets: batch 2; smaller images for the deep nets keep CPU time down -------------------
RESNETS = [("resnet18", 224), ("resnet34", 128), ("resnet50", 160), ("resnet101", 96), ("resnet152", 64)]


@pytest.mark.parametrize("preset,size", RESNETS, ids=[p for p, _ in RESNETS])
def test_resnet_equals_torchvision(preset, size):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, preset)()
    randomise_norms(ref, 1)
    ours, ref = ours_with(ref, "resnet", preset, image_size=size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y = ours(x)
        assert y.shape == (2, 1000)
        assert_same(y, ref(x))


def test_resnet_default_params_are_resnet50():
    assert cost_report(c.load("resnet")).params == n_params(torchvision.models.resnet50()) == 25_557_032


# -- CIFAR ResNets with `shortcut: B` against a hand-assembled reference (torchvision's BasicBlock) ----
# (option A, the presets' default, has its own reference in tests/test_resnet_cifar.py)
class CifarResNet(nn.Module):
    """6n+2 layers: 3x3 stem (16), stages of n basic blocks with 16/32/64 filters, avgpool, fc 10."""

    def __init__(self, n: int):
        super().__init__()
        from torchvision.models.resnet import BasicBlock
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, w in enumerate((16, 32, 64)):
            stride = 1 if s == 0 else 2
            proj = None
            if stride != 1 or cin != w:
                proj = nn.Sequential(nn.Conv2d(cin, w, 1, stride=stride, bias=False), nn.BatchNorm2d(w))
            blocks = [BasicBlock(cin, w, stride, proj)] + [BasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            cin = w
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("preset,n", [("resnet20", 3), ("resnet56", 9), ("resnet110", 18)])
def test_cifar_resnet_equals_reference(preset, n):
    torch.manual_seed(0)
    ref = CifarResNet(n)
    randomise_norms(ref, 2)
    ours, ref = ours_with(ref, "resnet", preset, shortcut="B")  # the presets' default is option A
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same(ours(x), ref(x))


def test_cifar_resnet_train_mode_matches_reference():
    """Train mode uses batch statistics and updates the running ones, as the reference does."""
    torch.manual_seed(0)
    ref = CifarResNet(3)
    ours, ref = ours_with(ref, "resnet", "resnet20", shortcut="B")
    ours.train(), ref.train()
    x = torch.randn(4, 3, 32, 32)
    assert_same(ours(x), ref(x))
    theirs = renamed(ref.state_dict(), c.load("resnet", "resnet20", {"shortcut": "B"}))
    for k, v in ours.state_dict().items():
        assert torch.allclose(v.float(), theirs[k].float(), rtol=1e-5, atol=1e-6), k


# -- AlexNet ----------------------------------------------------------------------------------------
def test_alexnet_equals_torchvision():
    torch.manual_seed(0)
    ref = torchvision.models.alexnet()
    ours, ref = ours_with(ref, "alexnet", "torchvision")
    assert n_params(ours) == 61_100_840
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert_same(ours(x), ref(x))


class PaperAlexNet(nn.Module):
    """The paper's Figure 2 written out: two towers as groups=2, LRN after conv1 and conv2."""

    def __init__(self):
        super().__init__()
        lrn = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.lrn = nn.LocalResponseNorm(**lrn)
        self.fc6, self.fc7, self.fc8 = nn.Linear(9216, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000)

    def forward(self, x):
        pool = lambda t: nn.functional.max_pool2d(t, 3, 2)  # noqa: E731
        x = pool(self.lrn(torch.relu(self.conv1(x))))
        x = pool(self.lrn(torch.relu(self.conv2(x))))
        x = torch.relu(self.conv3(x))
        x = pool(torch.relu(self.conv5(torch.relu(self.conv4(x)))))
        x = torch.relu(self.fc6(torch.flatten(x, 1)))
        return self.fc8(torch.relu(self.fc7(x)))


def test_alexnet_paper_equals_reference():
    torch.manual_seed(0)
    ours, ref = ours_with(PaperAlexNet(), "alexnet", "paper")
    x = 50 * torch.randn(1, 3, 227, 227)  # large activations, where LRN's constants matter
    with torch.no_grad():
        assert_same(ours(x), ref(x))


def test_alexnet_lrn_constants_are_the_papers():
    """torch divides alpha by the window size; the spec's constants must give the paper's formula
    b = a / (k + 1e-4 * sum of a^2 over 5 neighbouring channels)^0.75, with k = 2."""
    g = c.load("alexnet", "paper").forward
    a = g.node("lrn1").attrs
    lrn = nn.LocalResponseNorm(a.size, alpha=a.alpha, beta=a.beta, k=a.k)
    x = torch.randn(2, 12, 3, 3, generator=torch.Generator().manual_seed(0)) * 30
    sq = nn.functional.pad(x.pow(2), (0, 0, 0, 0, 2, 2))
    window = sum(sq[:, j:j + 12] for j in range(5))
    assert_same(lrn(x), x / (2.0 + 1e-4 * window) ** 0.75)


# -- Transformer encoder against torch.nn.TransformerEncoder ----------------------------------------
def test_transformer_encoder_equals_torch():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(512, 8, 2048, 0.1, batch_first=True)
    ref = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
    with torch.no_grad():  # LayerNorm defaults are ones/zeros; make them matter
        for mod in ref.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    ours, ref = ours_with(ref, "transformer", "encoder_base")
    assert n_params(ours) == 18_914_304
    x = torch.randn(2, 12, 512)
    with torch.no_grad():
        assert_same(ours(x), ref(x))


# -- char-rnn against nn.Embedding + nn.LSTM + nn.Linear --------------------------------------------
class CharRNN(nn.Module):
    def __init__(self, vocab, embed, hidden, layers, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, ids):
        return self.decoder(self.lstm(self.embed(ids))[0])


@pytest.mark.parametrize("preset,cfg", [("small", (65, 64, 128, 2, 0.0)), ("shakespeare", (65, 512, 512, 3, 0.5))])
def test_char_rnn_equals_reference(preset, cfg):
    torch.manual_seed(0)
    ours, ref = ours_with(CharRNN(*cfg), "char_rnn", preset)
    ids = torch.randint(0, cfg[0], (2, 16))
    with torch.no_grad():
        y = ours(ids)
        assert y.shape == (2, 16, cfg[0])
        assert_same(y, ref(ids))
