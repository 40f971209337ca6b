"""The CIFAR ResNets of He et al. (2015, section 4.2) with the paper's option A shortcuts, and
their plain twins: parameter counts derived here from the layer list equal nnspec's and the
paper's Table 6; a torch reference written here (option A: x[:, :, ::2, ::2] with zero channels
appended) holding the same weights computes what the generated module computes, in eval and
train mode; onnxruntime agrees; the shortcut param switches between A, B and none."""
from __future__ import annotations

import pytest
import torch
from test_zoo_reference import randomise_norms
from torch import nn

import nnspec.compiler as c
from nnspec.compiler.cost import compare_reported, cost_report
from nnspec.compiler.errors import NnspecError
from nnspec.runtime.compile import program_for
from nnspec.targets.onnx.runner import parity
from nnspec.targets.torch.build import build_module
from nnspec.targets.torch.interpret import evaluate

torch.set_num_threads(1)

# preset -> (blocks per stage n, Table 6's parameter count)
CIFAR = {"resnet20": (3, "0.27M"), "resnet32": (5, "0.46M"), "resnet44": (7, "0.66M"),
         "resnet56": (9, "0.85M"), "resnet110": (18, "1.7M")}
PLAIN = {"plain20": 3, "plain56": 9}
WIDTHS = (16, 32, 64)
PROJECTIONS = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # option B: two 1x1 convs + BNs


def closed_form_params(n: int) -> int:
    """6n+2 layers: stem 3x3 conv (3 -> 16) + BN; per basic block two 3x3 convs and two BNs (weight and
    bias each); option A shortcuts have no parameters; fc 64 -> 10 with bias."""
    total = 9 * 3 * 16 + 2 * 16
    cin = WIDTHS[0]
    for w in WIDTHS:
        for b in range(n):
            total += 9 * (cin if b == 0 else w) * w + 9 * w * w + 2 * 2 * w
        cin = w
    return total + 64 * 10 + 10


def test_closed_form_is_the_layer_table():
    assert closed_form_params(3) == 269_722  # spelled out: 0.27M
    assert closed_form_params(18) == 1_727_962  # 1.7M


@pytest.mark.parametrize("preset", [*CIFAR, *PLAIN])
def test_param_count_is_the_closed_form_and_the_papers(preset):
    n = CIFAR[preset][0] if preset in CIFAR else PLAIN[preset]
    program = c.load("resnet", preset)
    assert cost_report(program).params == closed_form_params(n)
    paper = CIFAR[preset][1] if preset in CIFAR else CIFAR[f"resnet{6 * n + 2}"][1]
    (row,) = compare_reported({"params": paper}, {"params": closed_form_params(n)})
    assert row["match"], row  # within the paper's rounding


def test_option_b_adds_exactly_two_projections():
    a = cost_report(c.load("resnet", "resnet56")).params
    b = cost_report(c.load("resnet", "resnet56", {"shortcut": "B"})).params
    assert b - a == PROJECTIONS == 2752


# -- the reference ---------------------------------------------------------------------------------
class Block(nn.Module):
    """A basic block; where it changes the shape, option A: subsample, then append zero channels."""

    def __init__(self, cin: int, planes: int, stride: int, shortcut: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut, self.stride, self.extra = shortcut, stride, planes - cin

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if not self.shortcut:
            return torch.relu(y)
        s = x[:, :, ::self.stride, ::self.stride]
        if self.extra:
            s = torch.cat([s, s.new_zeros(s.shape[0], self.extra, *s.shape[2:])], 1)
        return torch.relu(y + s)


class CifarNet(nn.Module):
    def __init__(self, n: int, shortcut: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, w in enumerate(WIDTHS):
            stride = 1 if s == 0 else 2
            blocks = [Block(cin, w, stride, shortcut)] + [Block(w, w, 1, shortcut) for _ in range(n - 1)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            cin = w
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def pair(preset: str, n: int, shortcut: bool, image_size: int = 32):
    """(generated module, reference) with the reference's weights in both, through the torch
    target's own program (its pipeline, fuse_ops included)."""
    torch.manual_seed(0)
    ref = CifarNet(n, shortcut)
    randomise_norms(ref, 1)
    ours = build_module(program_for("resnet", "torch", preset=preset, overrides={"image_size": image_size}))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ours.load_state_dict(ref.state_dict(), strict=True)  # the same names: conv1, layer2.0.bn1, fc, ...
    return ours, ref


@pytest.mark.parametrize("preset,n,shortcut", [("resnet20", 3, True), ("resnet56", 9, True),
                                               ("plain20", 3, False)])
def test_generated_module_equals_reference(preset, n, shortcut):
    ours, ref = pair(preset, n, shortcut)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = ours.eval()(x), ref.eval()(x)
    assert a.shape == (2, 10)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - b).abs().max() < 1e-4 < a.std()  # the outputs are not trivially equal


def test_train_mode_and_gradients_equal_reference():
    ours, ref = pair("resnet20", 3, True, image_size=16)
    x = torch.randn(4, 3, 16, 16)
    a, b = ours.train()(x), ref.train()(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    theirs = dict(ref.named_parameters())
    for k, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[k].grad, rtol=1e-4, atol=1e-5)


def test_option_a_really_pads_with_zeros():
    """The shortcut of a widening block is the subsampled input in its first channels, 0 elsewhere."""
    program = c.load("resnet", "resnet20", {"image_size": 8})
    module = build_module(program).eval()
    values = evaluate(program, module, {"image": torch.randn(2, 3, 8, 8)})
    x = torch.as_tensor(values["layer1.2.relu2", 0])
    pad = torch.as_tensor(values["layer2.0.zeropad.wide", 0])
    assert pad.shape == (2, 32, 4, 4)
    torch.testing.assert_close(pad[:, :16], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert pad[:, 16:].abs().max() == 0 and x.abs().max() > 0


def test_plain_nets_have_no_sum():
    g = c.load("resnet", "plain20").forward
    assert not [n for n in g.nodes() if n.op == "add"]
    assert len([n for n in c.load("resnet", "resnet20").forward.nodes() if n.op == "add"]) == 9


def test_onnx_equals_torch_option_a():
    program = c.load("resnet", "resnet20", {"image_size": 16})
    module = build_module(program, seed=0).eval()
    for batch in (1, 3):
        diff = parity(program, {"N": batch}, seed=0, module=module)
        assert max(diff.values()) <= 1e-4, diff


def test_option_a_in_bottlenecks_pads_up_to_four_times():
    """ResNet-50 with option A: 64 -> 256 channels into layer1 needs three blocks of zeros."""
    program = c.load("resnet", "resnet50", {"shortcut": "A", "image_size": 32})
    with_b = cost_report(c.load("resnet", "resnet50", {"image_size": 32})).params
    projections = sum(q.numel() for n in c.load("resnet", "resnet50").forward.nodes() if ".downsample." in n.id
                      for q in n.params.values() if not q.buffer)
    assert cost_report(program).params == with_b - projections
    g = program.forward
    assert g.node("layer1.0.zeropad.wider").outputs[0].shape[1] == 256
    assert g.node("layer2.0.zeropad.wide").outputs[0].shape[1] == 512
    y = build_module(program).eval()(torch.randn(1, 3, 32, 32))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_unknown_shortcut_is_a_spec_error():
    with pytest.raises(NnspecError) as e:
        c.load("resnet", "resnet20", {"shortcut": "C"})
    assert "shortcut_must_be_A_B_or_none" in e.value.render()


@pytest.mark.parametrize("spec,preset", [("resnet", "resnet20"), ("resnet", "resnet110"), ("resnet", "plain56"),
                                         ("preact_resnet", "preact164"), ("preact_resnet", "preact1001")])
def test_cifar_recipes_divide_the_rate_at_32k_and_48k(spec, preset):
    """Section 4.2's schedule: lr 0.1, divided by 10 at 32k and again at 48k of 64k iterations."""
    from nnspec.compiler.spec.load import load_spec
    from nnspec.runtime.train.schedules import multiplier
    from nnspec.runtime.train.section import recipe

    cfg = recipe(load_spec(spec, preset))
    f = multiplier(cfg.schedule, cfg.optimizer.lr)
    assert cfg.steps == 64000 and cfg.optimizer.lr == 0.1
    assert [f(k) for k in (0, 31999)] == [1.0, 1.0]
    assert f(32000) == pytest.approx(0.1) and f(47999) == pytest.approx(0.1)
    assert f(48000) == pytest.approx(0.01) and f(63999) == pytest.approx(0.01)
