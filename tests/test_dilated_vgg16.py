"""The dilated VGG-16 front end of Yu & Koltun 2016 (specs/dilated_vgg16.yaml) against torchvision's
vgg16() modified as the paper's section 4 says (pool4 and pool5 removed, conv5 dilated 2, fc6 a
7x7 convolution dilated 4, fc7 1x1, a final 1x1 to 21 classes): the same parameter count, and the
same outputs with its (randomly initialised, never downloaded) weights copied in."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.compiler.errors import NnspecError
from nnspec.targets.torch.build import build_module

torch.set_num_threads(1)

# torchvision's vgg16().features indices of the 13 convolutions, in order
CONV_INDEX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
CONV_NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
              "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
POOL4, POOL5 = 23, 30


class DilatedVGG16(nn.Module):
    """torchvision's VGG-16 adapted as the paper's front end, built from the vgg16() it is given."""

    def __init__(self, vgg: nn.Module, classes: int = 21, pad: int = 1):
        super().__init__()
        layers = []
        for i, mod in enumerate(vgg.features):
            if i in (POOL4, POOL5):
                continue  # the two poolings the paper removes
            if isinstance(mod, nn.Conv2d):
                dil = 2 if i > POOL4 else 1  # conv5_x come after the removed pool4
                conv = nn.Conv2d(mod.in_channels, mod.out_channels, 3, padding=pad * dil, dilation=dil)
                conv.load_state_dict(mod.state_dict())
                mod = conv
            layers.append(mod)
        self.features = nn.Sequential(*layers)
        fc6, fc7 = vgg.classifier[0], vgg.classifier[3]
        self.fc6 = nn.Conv2d(512, 4096, 7, dilation=4, padding=12 * pad)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        with torch.no_grad():  # the fully connected layers as convolutions over 7x7 and 1x1 windows
            self.fc6.weight.copy_(fc6.weight.reshape(4096, 512, 7, 7))
            self.fc6.bias.copy_(fc6.bias)
            self.fc7.weight.copy_(fc7.weight.reshape(4096, 4096, 1, 1))
            self.fc7.bias.copy_(fc7.bias)
        self.head = nn.Sequential(self.fc6, nn.ReLU(), nn.Dropout(0.5), self.fc7, nn.ReLU(), nn.Dropout(0.5),
                                  nn.Conv2d(4096, classes, 1))

    def forward(self, x):
        return self.head(self.features(x))


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def reference():
    # torchvision's own VGG-16, its weights random (nothing is downloaded): built on the meta device
    # and filled here with He-scaled normals, faster than torchvision's initialisation of 138M
    with torch.device("meta"):
        vgg = torchvision.models.vgg16()
    vgg = vgg.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for q in vgg.parameters():
            q.normal_(0.0, (2.0 / q[0].numel()) ** 0.5 if q.dim() > 1 else 0.1, generator=g)
    return vgg, DilatedVGG16(vgg).eval()


def test_parameter_count_equals_the_modified_torchvision_vgg16(reference):
    vgg, ref = reference
    # vgg16 without its 1000-way fc8 (4096 x 1000 + 1000) and with a 21-way 1x1 instead; the
    # poolings removed hold no parameters and fc6 / fc7 keep theirs (only reshaped)
    assert n_params(ref) == n_params(vgg) - (4096 * 1000 + 1000) + (4096 * 21 + 21)
    for preset in (None, "paper", "torchvision"):
        assert cost_report(c.load("dilated_vgg16", preset)).params == n_params(ref)
    assert n_params(ref) == 134_346_581


def test_outputs_equal_the_reference_with_its_weights(reference):
    _, ref = reference
    p = c.load("dilated_vgg16", "torchvision")
    ours = build_module(p, seed=None).eval()  # torch's own init: every tensor is replaced below
    state = {}
    features = [m for m in ref.features if isinstance(m, nn.Conv2d)]
    for name, conv in zip(CONV_NAMES, features):
        state[f"{name}.weight"], state[f"{name}.bias"] = conv.weight, conv.bias
    for name, conv in (("fc6", ref.head[0]), ("fc7", ref.head[3]), ("final", ref.head[6])):
        state[f"{name}.weight"], state[f"{name}.bias"] = conv.weight, conv.bias
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.shape == want.shape == (2, 21, 4, 4)
    scale = want.abs().max().item()
    assert scale > 0 and (got - want).abs().max().item() <= 1e-5 * max(1.0, scale)


def paper_rows(H: int) -> int:
    """Score rows of the unpadded front end: conv1_x -4, pool1 /2, conv2_x -4, pool2 /2, conv3_x -6,
    pool3 /2, conv4_x -6, conv5_x -12 (dilation 2), fc6 -24 (7x7 dilated 4): 42 after pool3."""
    return (((H - 4) // 2 - 4) // 2 - 6) // 2 - 42


@pytest.mark.parametrize("H", [380, 396, 500, 900, 901])
def test_unpadded_output_size(H):
    p = c.load("dilated_vgg16", None, {"image_size": H})
    (out,) = p.forward.outputs
    assert tuple(p.forward.output_type(out).shape) == ("N", 21, paper_rows(H), paper_rows(H))
    assert paper_rows(900) == 66


def test_unpadded_needs_380_pixels():
    assert paper_rows(379) == 0
    with pytest.raises(NnspecError):
        c.load("dilated_vgg16", None, {"image_size": 379})


def test_padded_keeps_one_eighth_of_the_input():
    for H in (8, 32, 100):
        p = c.load("dilated_vgg16", "torchvision", {"image_size": H})
        (out,) = p.forward.outputs
        assert tuple(p.forward.output_type(out).shape)[2:] == (H // 8, H // 8)
