"""The cost model on the whole zoo: FLOPs equal torch's FlopCounterMode on the generated module for
every bundled spec and preset (N=1 at the declared shapes), the parameter count equals the module's,
and every spec passes `nnspec check`."""
from __future__ import annotations

import pytest
import torch

import nnspec.compiler as c
from nnspec.compiler.cost import cost_report
from nnspec.compiler.spec.load import bundled_specs, load_spec
from nnspec.runtime.cli import main
from nnspec.targets.torch.build import build_module

from conftest import declared_inputs, flop_counter_total
from test_targets_zoo import NARROWED

CASES = [(p.stem, preset) for p in bundled_specs() for preset in (list(load_spec(p).model.presets) or [None])]
# Deep ImageNet nets at 224x224 cost seconds per forward on 2 cores; their layers are the same
# ops as resnet18/50, so they are checked at a smaller image (the cost model is shape-generic).
SMALLER = {("resnet", "resnet101"): {"image_size": 64}, ("resnet", "resnet152"): {"image_size": 64},
           ("transformer", "big"): {"layers": 1}, ("transformer", "encoder_big"): {"layers": 1},
           **NARROWED}  # tens of millions of weights to draw for the same ops as at a smaller width


@pytest.mark.parametrize("spec,preset", CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_flops_equal_flop_counter(spec, preset):
    program = c.load(spec, preset, SMALLER.get((spec, preset)))
    module = build_module(program, seed=0).eval()
    # parameters: every entry graph's nodes, ties and nodes shared between graphs counted once
    assert cost_report(program).params == sum(p.numel() for p in module.parameters())
    ours = cost_report(program).flops
    theirs = flop_counter_total(module, declared_inputs(program))
    uncounted = {n.op for n in program.all_nodes() if getattr(n.opdef, "flop_counter_counts", True) is False}
    if uncounted:
        # ops whose work FlopCounterMode does not see: the cost model must still count at least it
        assert ours >= theirs, (ours, theirs, uncounted)
    else:
        assert ours == theirs


def test_resnet50_flops_known_value():
    # torchvision resnet50 at 224x224, FlopCounterMode: 8,178,368,512 per image
    assert cost_report(c.load("resnet", "resnet50")).flops == 8_178_368_512


@pytest.mark.parametrize("spec", sorted({s for s, _ in CASES}))
def test_every_bundled_spec_passes_check(spec, capsys):
    presets = list(load_spec(spec).model.presets) or [None]
    for preset in presets:
        assert main(["check", spec] + (["--preset", preset] if preset else [])) == 0
    assert capsys.readouterr().out.count("ok  ") == len(presets)


def test_torch_not_needed_for_cost():
    assert torch  # imported by this module for the FLOPs checks; the CLI test covers torch-free use
