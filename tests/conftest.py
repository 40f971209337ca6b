"""Shared test setup: one torch thread, `slow` tests only under `-m slow`, and helpers to compile
tiny specs, count one graph's parameters (`graph_params`) and count FLOPs.

`spec_from_nodes` (a fixture, and `write_spec` / `compile_nodes` as plain functions) turns a few
node definitions into a spec file under `tmp_path` and compiles it; `flop_counter_total` is
torch's FlopCounterMode total for one forward call, the reference the cost model is held to.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

_COUNTER = itertools.count()


def pytest_collection_modifyitems(config, items):
    """`slow` tests (minutes on one core) run only when asked for: `pytest -m slow`."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def graph_params(g) -> int:
    """Trainable parameters the nodes of one graph hold, scan bodies included, ties counted once
    (an entry graph sharing another's weights by node id holds all of them too)."""
    total = 0
    for n in g.topo():
        total += sum(q.numel() for k, q in n.params.items() if k not in n.ties and not q.buffer)
        if n.body is not None:
            total += graph_params(n.body)
    return total


def write_spec(path: Path, inputs: dict, nodes: dict, outputs=None, dims: dict | None = None,
               name: str = "t", **extra) -> Path:
    """Write a spec to `path` (JSON is YAML) and return the path.

    `inputs` maps a name to a shape list, or to {shape, dtype, range}; symbolic dims listed in no
    `dims` entry get the range 1..64 (opt 2). `outputs` defaults to the last node.
    """
    ins = {}
    syms = set()
    for k, v in inputs.items():
        v = {"shape": list(v)} if isinstance(v, (list, tuple)) else dict(v)
        ins[k] = v
        syms |= {d for d in v["shape"] if isinstance(d, str)}
    dims = dict(dims or {})
    for s in sorted(syms - set(dims)):
        dims[s] = {"min": 1, "opt": 2, "max": 64}
    spec = {"nnspec": 1, "name": name, "dims": dims, "inputs": ins, "nodes": nodes,
            "outputs": outputs if outputs is not None else {"out": list(nodes)[-1]}, **extra}
    path = Path(path)
    path.write_text(json.dumps(spec, indent=1))
    return path


def compile_nodes(tmp_path: Path, inputs: dict, nodes: dict, outputs=None, **kw):
    """Write a tiny spec into `tmp_path` (a fresh file per call) and compile it to a Program."""
    import nnspec.compiler as c

    path = write_spec(Path(tmp_path) / f"spec{next(_COUNTER)}.yaml", inputs, nodes, outputs, **kw)
    return c.load(str(path))


@pytest.fixture
def spec_from_nodes(tmp_path):
    """`spec_from_nodes(inputs, nodes, outputs=None, dims=None, name="t")` -> compiled Program."""
    def make(inputs, nodes, outputs=None, **kw):
        return compile_nodes(tmp_path, inputs, nodes, outputs, **kw)
    return make


def flop_counter_total(module, inputs, method: str = "forward") -> int:
    """FLOPs torch's FlopCounterMode counts for one call of `module.<method>(*inputs)` (no grad)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        getattr(module, method)(*inputs)
    return int(counter.get_total_flops())


def declared_inputs(program, values: dict | None = None, graph: str = "forward", seed: int = 0) -> list:
    """Torch tensors for the graph's inputs at the cost model's dim values (N=1, else `opt`)."""
    from nnspec.compiler.cost import dim_values
    from nnspec.targets.inputs import example_inputs

    g = program.graphs[graph]
    arrays = example_inputs(program, dim_values(g, values), seed, graph)
    return [torch.from_numpy(arrays[n.attrs.name]) for n in g.inputs()]
