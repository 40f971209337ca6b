"""Attribute values drawn across their whole domain give a located error or a module that runs.

For each op's tiny spec (tests/test_registry.py) one attribute is replaced by a value from a wide
domain: zero, negative, huge, bool, float, string, list, null, mapping. The spec must either be
refused with an error that has a location, or compile to a torch module whose forward runs on
generated inputs: accepted nonsense (`kernel: 0`, `out: true`) is caught, not only crashes.
"""
from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnspec.compiler.errors import NnspecError, SpecErrors
from nnspec.compiler.ops import registry
from nnspec.targets.inputs import example_inputs
from nnspec.targets.torch.build import build_module

from conftest import compile_nodes
from test_registry import OPS, representative

VALUES = st.one_of(
    st.sampled_from([0, -1, -3, 1, 2, 3, 7, 64, 2**31, 2**40, True, False, 0.0, 0.5, -0.5, 1.0, 1.5, 1e308,
                     "x", "same", "valid", "", "${1 / 0}", [], [0], [1], [2, 2], [1, -1], [3, 3, 3], None,
                     {"a": 1}, "sinusoidal", "learned", "tanh", "relu", "normal", "zeros"]),
    st.integers(-10, 100),
    st.floats(-10, 10, allow_nan=False),
    st.lists(st.integers(-2, 9), max_size=4),
)


def _attr_names(name: str) -> list[str]:
    return sorted(registry()[name].Attrs.model_fields) + ["bogus"]


def _located(e: NnspecError) -> bool:
    errs = e.errors if isinstance(e, SpecErrors) else [e]
    return all(x.loc is not None for x in errs)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(OPS), st.integers(0, 1000), VALUES)
def test_attribute_values_give_a_located_error_or_a_module_that_runs(tmp_path, name, which, value):
    inputs, nodes = representative(name)
    attrs = _attr_names(name)
    key = attrs[which % len(attrs)]
    nodes["n"] = dict(nodes["n"], **{key: value})
    try:
        program = compile_nodes(tmp_path, inputs, nodes)
    except NnspecError as e:
        assert _located(e), e.render()
        assert "internal error" not in e.render(), e.render()
        return
    model = build_module(program, seed=0).eval()
    arrays = example_inputs(program, {"N": 2}, 0)
    args = [torch.from_numpy(arrays[n.attrs.name]) for n in program.forward.inputs()]
    with torch.no_grad():
        out = model(*args)
    outs = out if isinstance(out, tuple) else (out,)
    for got, want in zip(outs, [program.forward.output_type(o) for o in program.forward.outputs]):
        assert got.dim() == want.rank, (name, key, value, got.shape, want)
        for d, w in zip(got.shape, want.shape):
            assert not isinstance(w, int) or d == w, (name, key, value, got.shape, want)
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in [value]) or True
