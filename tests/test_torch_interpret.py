"""The torch reference interpreter (targets/torch/interpret.py): evaluating the IR node by node with
each op's torch lowering gives what the generated module's forward gives, for every node it can see."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import nnspec.compiler as c
from nnspec.targets.inputs import example_inputs
from nnspec.targets.torch.build import build_module
from nnspec.targets.torch.interpret import evaluate, evaluate_outputs

torch.set_num_threads(1)
HERE = Path(__file__).parent

CASES = [
    (str(HERE / "specs_rt" / "mini_conv.yaml"), None, {}, {"N": 3}),
    (str(HERE / "specs_rt" / "scan_rnn.yaml"), None, {}, None),
    (str(HERE / "specs_rt" / "lstm_head.yaml"), None, {}, None),
    (str(HERE / "specs" / "bahdanau_decoder.yaml"), None, {}, None),
    (str(HERE / "specs" / "mpnn_step.yaml"), None, {}, None),
    ("transformer", None, {"d_model": 32, "heads": 4, "layers": 2}, {"N": 2, "T": 5}),
    ("resnet", "resnet20", {}, {"N": 2}),
]


@pytest.mark.parametrize("spec, preset, overrides, dims", CASES, ids=lambda v: Path(v).stem if isinstance(v, str) else None)
def test_interpreter_equals_the_generated_forward(spec, preset, overrides, dims):
    p = c.load(spec, preset, overrides)
    m = build_module(p, seed=0)
    m.train()  # evaluate runs in eval mode and puts the module's mode back
    for gname, g in p.graphs.items():
        x = example_inputs(p, dims, seed=1, graph=gname)
        got = evaluate_outputs(p, m, x, gname)
        assert m.training
        m.eval()
        with torch.inference_mode():
            res = getattr(m, gname)(*[torch.from_numpy(x[n.attrs.name]) for n in g.inputs()])
        m.train()
        res = res if isinstance(res, (tuple, list)) else (res,)
        assert list(got) == list(g.outputs)
        for name, want in zip(g.outputs, res):
            np.testing.assert_allclose(got[name], want.numpy(), rtol=1e-6, atol=1e-6, err_msg=f"{gname}.{name}")


def test_every_node_has_its_values():
    p = c.load(str(HERE / "specs_rt" / "mini_conv.yaml"))
    x = example_inputs(p, seed=0)
    vals = evaluate(p, build_module(p, seed=0), x)
    assert set(vals) == {(n.id, i) for n in p.forward.topo() for i in range(len(n.outputs))}
    assert np.array_equal(vals[("image", 0)], x["image"])
    tensors = evaluate(p, build_module(p, seed=0), x, numpy=False)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
