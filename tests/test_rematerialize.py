"""The `rematerialize` pass and its torch lowering (checkpointed segments in model.py).

* The chain policy's dynamic program equals a brute-force optimum over every set of segments on
  small random chains; the MILP agrees with it on chains and keeps to the budget on DAGs.
* On bundled zoo specs and on hypothesis-built random graphs, the module generated with a budget
  gives outputs AND gradients bit-identical to the module without (CPU, same weights; dropout
  replays its RNG state in the recomputation), and the bytes the plan predicts are within 5% of
  what `saved_tensors_hooks` counts on it (plus the inputs each checkpoint keeps).
* Golden IR text after the pass and golden model.py; bad budgets are clear errors naming the
  smallest feasible one; the CLI takes --remat-budget / --remat-policy on compile and inspect.
* A scan's steps checkpointed in chunks (`@checkpoint_steps=k @stored_steps=s`, the LSTM cell of
  benchmarks/specs/scan_lstm.yaml and a reverse GRU scan over two inputs): gradients bit-identical,
  bytes within 5%, golden IR and model.py, budgets far below checkpointing the scan whole; the
  planners' options (chain DP and MILP) equal a brute force over every plan.

Rewrite the goldens after an intended change:

    NNSPEC_UPDATE_GOLDEN=1 python -m pytest tests/test_rematerialize.py -q
"""
from __future__ import annotations

import itertools
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from nnspec.compiler.errors import PassError
from nnspec.compiler.passes import compile_spec
from nnspec.compiler.passes.rematerialize import parse_budget
from nnspec.compiler.remat.policies import (Chain, Dag, Infeasible, Value, dag_memory, evaluate, plan_chain,
                                            plan_dag)
from nnspec.compiler.spec.load import parse_overrides
from nnspec.targets.registry import get
from nnspec.targets.torch.build import build_module
from nnspec.targets.torch.codegen import generate_source

from conftest import declared_inputs, write_spec
from test_codegen import GOLDEN, golden
from test_random_graphs import cnn, sequence_model
from test_saved_bytes import module_state
from test_zoo_goldens import ir_text

torch.set_num_threads(1)
HERE = "tests/test_rematerialize.py"


def program(spec, preset=None, overrides=None, **options):
    """`spec` through the torch pipeline with rematerialize's options (remat_budget, remat_policy)."""
    return compile_spec(spec, preset, parse_overrides(overrides or []), passes=list(get("torch").pipeline),
                        target="torch", options=options)


# -- the planners --------------------------------------------------------------------------------


def brute_force(chain: Chain, budget: float):
    """The least recompute over every set of disjoint segments within `budget` (segments' own saves
    within it too): (cost, bytes) or None."""
    n = len(chain)
    best = None
    for cuts in itertools.product(range(3), repeat=n):  # 0: stored, 1: start a segment, 2: continue one
        if cuts and cuts[0] == 2:
            continue
        if any(c == 2 and p == 0 for p, c in zip(cuts, cuts[1:])):
            continue
        segs, start = [], None
        for k, c in enumerate(cuts + (0,)):
            if start is not None and c != 2:
                segs.append((start, k))
                start = None
            if c == 1:
                start = k
        plan = evaluate(chain, segs)
        if plan.saved <= budget and plan.peak <= budget:
            key = (plan.recompute, plan.saved)
            best = key if best is None or key < best else best
    return best


def random_chain(rng: random.Random, n: int) -> Chain:
    return Chain([rng.choice([0.5, 1, 2, 3]) for _ in range(n)], [rng.randrange(0, 40) for _ in range(n)],
                 [rng.randrange(1, 20) for _ in range(n + 1)], [rng.random() < 0.6 for _ in range(n)],
                 [rng.random() < 0.4 for _ in range(n)])


@pytest.mark.parametrize("seed", range(40))
def test_chain_equals_brute_force(seed):
    rng = random.Random(seed)
    chain = random_chain(rng, rng.randrange(2, 8))
    full = evaluate(chain, []).saved
    for frac in (0.2, 0.35, 0.5, 0.7, 0.9):
        budget = int(full * frac)
        want = brute_force(chain, budget)
        try:
            plan = plan_chain(chain, None, budget)
        except Infeasible as e:
            assert want is None
            assert brute_force(chain, e.smallest) is not None and brute_force(chain, e.smallest - 1) is None
            continue
        assert want is not None
        assert plan.recompute == pytest.approx(want[0])
        assert plan.saved <= budget and plan.peak <= budget


def chain_dag(chain: Chain) -> Dag:
    """A chain as a DAG: the values between stages, kept by the stages that keep them."""
    n = len(chain)
    values = [Value(chain.boundary[0], -1, (0,), (0,) if chain.keeps_input[0] else ())]
    for t in range(1, n + 1):
        savers = tuple(s for s, keep in ((t - 1, chain.keeps_output[t - 1]), (t, t < n and chain.keeps_input[t]))
                       if keep)
        values.append(Value(chain.boundary[t], t - 1, (t,) if t < n else (), savers))
    return Dag(list(chain.compute), list(chain.saved), values)


@pytest.mark.parametrize("seed", range(8))
def test_milp_matches_chain_on_chains(seed):
    rng = random.Random(100 + seed)
    chain = random_chain(rng, rng.randrange(3, 9))
    dag = chain_dag(chain)
    full = dag_memory(dag, [])[0]
    assert full == evaluate(chain, []).saved
    budget = int(full * 0.5)
    try:
        want = plan_chain(chain, None, budget).recompute
    except Infeasible:
        return
    segments, _, status = plan_dag(dag, budget, time_limit=10)
    kept, cost, peak = dag_memory(dag, segments)
    assert status == "optimal" and kept <= budget and peak <= budget
    assert cost == pytest.approx(want)


@pytest.mark.parametrize("seed", range(12))
def test_options_chain_and_milp_equal_brute_force(seed):
    """Stages with other ways to run (a scan checkpointing its steps in chunks): the chain DP and the
    MILP both find the least recompute over every set of segments and every choice of option."""
    rng = random.Random(300 + seed)
    n = rng.randrange(2, 6)
    base = random_chain(rng, n)
    options = [[(rng.randrange(0, 20), rng.choice([0.5, 1, 2]), rng.random() < 0.7, rng.random() < 0.3)
                for _ in range(rng.randrange(0, 3))] for _ in range(n)]
    chain = Chain(base.compute, base.saved, base.boundary, base.keeps_input, base.keeps_output, options)
    dag = chain_dag(chain)
    dag.options = [list(o) for o in options]
    full = dag_memory(dag, [])[0]
    assert full == evaluate(chain, []).saved
    for frac in (0.3, 0.5, 0.8):
        budget = int(full * frac)
        best = None
        for segs in segment_sets(n):
            free = [u for u in range(n) if not any(a <= u < b for a, b in segs)]
            for picks in itertools.product(*[[None] + list(range(len(options[u]))) for u in free]):
                choices = {u: j for u, j in zip(free, picks) if j is not None}
                plan = evaluate(chain, segs, choices)
                kept, cost, peak = dag_memory(dag, segs, choices)
                assert (kept, peak) == (plan.saved, plan.peak) and cost == pytest.approx(plan.recompute)
                if kept <= budget and peak <= budget:
                    best = cost if best is None else min(best, cost)
        if best is None:
            with pytest.raises(Infeasible):
                plan_chain(chain, None, budget)
            continue
        plan = plan_chain(chain, None, budget)
        assert plan.recompute == pytest.approx(best) and plan.saved <= budget
        segments, choices, status = plan_dag(dag, budget, time_limit=10)
        kept, cost, peak = dag_memory(dag, segments, choices)
        assert status == "optimal" and kept <= budget and peak <= budget
        assert cost == pytest.approx(best)


def segment_sets(n: int):
    """Every set of disjoint [start, stop) segments over n units, in order."""
    for marks in itertools.product(range(3), repeat=n):  # 0: stored, 1: start a segment, 2: continue one
        if any(c == 2 and (k == 0 or marks[k - 1] == 0) for k, c in enumerate(marks)):
            continue
        segs, start = [], None
        for k, c in enumerate(marks + (0,)):
            if start is not None and c != 2:
                segs.append((start, k))
                start = None
            if c == 1:
                start = k
        yield segs


@pytest.mark.parametrize("seed", range(6))
def test_milp_is_optimal_on_small_dags(seed):
    """Skip connections two and three units long (no articulation points): the MILP's plan is the
    least-recompute one over every set of segments, by `dag_memory`'s count."""
    rng = random.Random(200 + seed)
    m = 7
    values = [Value(rng.randrange(5, 30), -1, (0, 1), (0,))]
    values += [Value(rng.randrange(5, 30), u, tuple(sorted({u + 1, min(m - 1, u + rng.choice([2, 3]))})),
                     (u,) if rng.random() < 0.6 else ()) for u in range(m - 1)]
    dag = Dag([rng.choice([1.0, 2.0, 3.0]) for _ in range(m)], [rng.randrange(0, 20) for _ in range(m)], values)
    full = dag_memory(dag, [])[0]
    budget = 0.5 * full
    best = min((dag_memory(dag, segs)[1] for segs in segment_sets(m)
                if dag_memory(dag, segs)[0] <= budget and dag_memory(dag, segs)[2] <= budget), default=None)
    if best is None:
        with pytest.raises(Infeasible):
            plan_dag(dag, budget, time_limit=10)
        return
    segments, _, status = plan_dag(dag, budget, time_limit=10)
    kept, cost, peak = dag_memory(dag, segments)
    assert status == "optimal" and kept <= budget and peak <= budget
    assert cost == pytest.approx(best)


def test_budget_forms():
    assert parse_budget("0.33") == ("fraction", 0.33)
    assert parse_budget("33%") == ("fraction", 0.33)
    assert parse_budget("200MB") == ("bytes", 200e6)
    assert parse_budget("1GiB") == ("bytes", float(2 ** 30))
    assert parse_budget("123456") == ("bytes", 123456.0)
    assert parse_budget("2.5e8") == ("bytes", 2.5e8)  # the byte sizes `nnspec plan --memory` takes too
    assert parse_budget("24G") == ("bytes", 24e9)
    for bad in ("abc", "0", "1.5", "-3MB", "150%", "12 parsecs", "1e999", "0.5B", "__import__('os')"):
        with pytest.raises(PassError):
            parse_budget(bad)


# -- measured on the generated module ------------------------------------------------------------


def kept_by_torch(module, inputs, monkeypatch) -> int:
    """Bytes kept for backward over one forward: every storage a saved tensor lives in (the
    `saved_tensors_hooks` count of tests/test_saved_bytes.py) and every tensor a checkpoint keeps to
    recompute its segment from, each once, module state out."""
    state = module_state(module)
    held = []  # keeps every counted tensor alive, so no address is reused during the forward
    original = torch.utils.checkpoint.checkpoint

    def recording(fn, *args, **kw):
        held.extend(a for a in args if isinstance(a, torch.Tensor))
        return original(fn, *args, **kw)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", recording)

    def pack(t):
        held.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*inputs)
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", original)
    sizes = {}
    for t in held:
        s = t.untyped_storage()
        if s.data_ptr() not in state:
            sizes[s.data_ptr()] = s.nbytes()
    del out
    return sum(sizes.values())


def step(module, program, seed: int = 3):
    """Outputs, input gradients and parameter gradients of one training step (loss: a fixed random
    projection of every float output), the RNG seeded so dropout draws the same masks."""
    inputs = [x.requires_grad_() if x.is_floating_point() else x for x in declared_inputs(program, seed=1)]
    module.train()
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    outs = module(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs if o.is_floating_point())
    loss.backward()
    grads = {k: p.grad for k, p in module.named_parameters()}
    grads.update({k: b.clone() for k, b in module.named_buffers()})  # batch norm's statistics: updated once
    return [o.detach() for o in outs], [x.grad for x in inputs if x.is_floating_point()], grads


def assert_identical(a, b):
    (oa, ia, ga), (ob, ib, gb) = a, b
    assert all(torch.equal(x, y) for x, y in zip(oa, ob))
    assert all(torch.equal(x, y) for x, y in zip(ia, ib))
    assert ga.keys() == gb.keys()
    for k in ga:
        assert (ga[k] is None) == (gb[k] is None), k
        assert ga[k] is None or torch.equal(ga[k], gb[k]), f"gradient (or buffer) {k} differs"


def check_parity_and_bytes(base, remat, monkeypatch):
    """`remat` (planned with a budget) against `base` (no budget): same outputs and gradients bit for
    bit, and the plan's predicted bytes within 5% of the measured ones."""
    m0 = build_module(base, seed=0)
    m1 = build_module(remat, seed=0)
    m1.load_state_dict(m0.state_dict())
    assert_identical(step(m0, base), step(m1, remat))
    s = remat.results["rematerialize"].summary
    inputs = [x.requires_grad_() if x.is_floating_point() else x for x in declared_inputs(remat, seed=1)]
    torch.manual_seed(0)
    measured_full = kept_by_torch(m0.train(), inputs, monkeypatch)
    torch.manual_seed(0)
    measured = kept_by_torch(m1.train(), inputs, monkeypatch)
    assert abs(s["saved_before"] - measured_full) <= 0.05 * measured_full, (s["saved_before"], measured_full)
    assert abs(s["saved_after"] - measured) <= 0.05 * measured, (s["saved_after"], measured)
    return measured_full, measured


ZOO = [  # (spec, preset, overrides, budget, policy)
    ("resnet", "resnet18", [], "0.3", None),
    ("resnet", "resnet18", [], "0.5", None),  # stored batch norms run backward after a recomputation
    ("resnet", "resnet18", [], "0.5", "sqrt"),
    ("transformer", None, ["d_model=32", "heads=2", "layers=4"], "0.4", None),  # dropout: RNG replayed
    ("transformer", None, ["d_model=32", "heads=2", "layers=4"], "0.5", "milp"),
    ("alexnet", "torchvision", [], "0.5", None),  # dropout in the classifier
]


@pytest.mark.parametrize("spec, preset, overrides, budget, policy", ZOO,
                         ids=[f"{s}-{p or 'default'}-{b}-{pol or 'chain'}" for s, p, _, b, pol in ZOO])
def test_zoo_parity_and_predicted_bytes(spec, preset, overrides, budget, policy, monkeypatch):
    base = program(spec, preset, overrides)
    opts = {"remat_budget": budget, **({"remat_policy": policy} if policy else {})}
    remat = program(spec, preset, overrides, **opts)  # every budget here is feasible: a PassError fails
    s = remat.results["rematerialize"].summary
    assert s["segments"] and s["saved_after"] <= s["budget_bytes"]
    assert "torch.utils.checkpoint.checkpoint(self.segment1" in generate_source(remat)[0]
    check_parity_and_bytes(base, remat, monkeypatch)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cnn())
def test_random_graph_parity(tmp_path_factory, monkeypatch, graph):
    channels, nodes, outputs, _ = graph
    path = write_spec(tmp_path_factory.mktemp("remat") / "spec.yaml", {"x": ["N", channels, "S", "S"]}, nodes,
                      outputs, dims={"N": {"min": 1, "opt": 2, "max": 8}, "S": {"min": 8, "opt": 8, "max": 32}})
    base = program(str(path))
    try:
        remat = program(str(path), remat_budget="0.5")
    except PassError as e:  # small graphs often cannot keep half: plan at the smallest budget that works
        assert "smallest feasible budget" in e.message
        remat = program(str(path), remat_budget=e.expected.split()[1])
    check_parity_and_bytes(base, remat, monkeypatch)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence_model())
def test_random_sequence_model_parity(tmp_path_factory, monkeypatch, model):
    """Attention, LSTM / GRU, norms, residual adds over [N, T, D]: recomputed, bit for bit."""
    width, nodes, outputs, _ = model
    if not nodes:
        return
    path = write_spec(tmp_path_factory.mktemp("remat") / "spec.yaml", {"x": ["N", "T", width]}, nodes, outputs,
                      dims={"N": {"min": 1, "opt": 2, "max": 8}, "T": {"min": 1, "opt": 5, "max": 64}})
    base = program(str(path))
    try:
        remat = program(str(path), remat_budget="0.5")
    except PassError as e:
        assert "smallest feasible budget" in e.message
        remat = program(str(path), remat_budget=e.expected.split()[1])
    check_parity_and_bytes(base, remat, monkeypatch)


# -- goldens, errors, the CLI ----------------------------------------------------------------------

CASES = [("resnet", "resnet18", "0.3"), ("transformer", None, "0.4")]


@pytest.mark.parametrize("spec, preset, budget", CASES, ids=[f"{s}-{p or 'default'}-{b}" for s, p, b in CASES])
def test_golden_ir_and_model(spec, preset, budget):
    p = program(spec, preset, **{"remat_budget": budget})
    where = GOLDEN / "rematerialize" / f"{spec}-{preset or 'default'}-budget{budget.replace('.', '_')}"
    golden(where.with_suffix(".ir.txt"), ir_text(p), HERE)
    src = generate_source(p)[0]
    golden(where.with_suffix(".py"), src, HERE)
    assert generate_source(program(spec, preset, **{"remat_budget": budget}))[0] == src  # deterministic


def test_no_budget_is_a_no_op():
    base = program("resnet", "resnet18")
    assert base.results["rematerialize"].summary == {"planned": False}
    assert not any(n.remat for n in base.forward.nodes())
    assert "checkpoint" not in generate_source(base)[0]


def test_infeasible_budget_names_the_smallest():
    with pytest.raises(PassError) as e:
        program("resnet", "resnet18", remat_budget="0.01")
    msg = e.value.message
    assert "smallest feasible budget is" in msg
    smallest = float(e.value.expected.split()[1])
    program("resnet", "resnet18", remat_budget=str(smallest))  # that budget is met


def test_cli(tmp_path, capsys):
    from nnspec.runtime.cli import main
    assert main(["inspect", "resnet", "-p", "resnet18", "--remat-budget", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "rematerialize: policy chain" in out and "segment 1:" in out
    assert main(["inspect", "resnet", "-p", "resnet18", "--remat-budget", "0.3", "--dump-after", "rematerialize"]) == 0
    assert "@remat @segment=1" in capsys.readouterr().out
    assert main(["compile", "resnet", "-p", "resnet18", "-t", "torch", "-o", str(tmp_path / "a"),
                 "--remat-budget", "40%", "--remat-policy", "sqrt"]) == 0
    assert "torch.utils.checkpoint.checkpoint(" in (tmp_path / "a" / "model.py").read_text()
    for bad, code in ((["--remat-budget", "lots"], 2), (["--remat-policy", "chain"], 2),
                      (["--remat-budget", "0.01"], 1), (["--remat-budget", "0.3", "--target", "onnx"], 2)):
        try:
            got = main(["inspect", "resnet", "-p", "resnet18", *bad])
        except SystemExit as e:  # argparse refuses the value
            got = e.code
        assert got == code, bad
        err = capsys.readouterr().err
        assert "Traceback" not in err and "budget" in err


# -- a scan with its steps checkpointed in chunks (`@checkpoint_steps=k`) ---------------------------

SCAN = "benchmarks/specs/scan_lstm.yaml"
REVERSE_SCAN = """\
nnspec: 1
name: scan_reverse
dims:
  N: {min: 1, opt: 2, max: 8}
inputs:
  x: {shape: [N, 12, 8], dtype: float32}
  z: {shape: [N, 12, 8], dtype: float32}
  h0: {shape: [N, 16], dtype: float32}
blocks:
  step:
    in: [x_t, z_t, h]
    nodes:
      s: {op: add, in: [x_t, z_t]}
      cell: {op: gru_cell, in: [s, h], hidden: 16}
      act: {op: tanh, in: cell}
    out: {h: cell, y: act}
nodes:
  rnn: {scan: step, over: {x_t: x, z_t: z}, carry: {h: h0}, axis: 1, reverse: true}
outputs: {y: rnn.y, h: rnn.h}
"""
SCAN_CASES = [(SCAN, "0.3", None), (SCAN, "0.15", None), (SCAN, "0.2", "milp"), ("reverse", "0.4", None)]


@pytest.mark.parametrize("spec, budget, policy", SCAN_CASES, ids=[f"{s.split('/')[-1]}-{b}-{p or 'chain'}"
                                                                  for s, b, p in SCAN_CASES])
def test_scan_steps_checkpointed(spec, budget, policy, tmp_path, monkeypatch):
    """Far below what checkpointing the scan whole allows: its steps in chunks, bit for bit."""
    if spec == "reverse":  # two `over` inputs, run backwards
        spec = str(tmp_path / "scan_reverse.yaml")
        (tmp_path / "scan_reverse.yaml").write_text(REVERSE_SCAN)
    opts = {"fuse": "none"}
    base = program(spec, None, ["steps=40"] if spec == SCAN else [], **opts)
    remat = program(spec, None, ["steps=40"] if spec == SCAN else [], remat_budget=budget,
                    **opts, **({"remat_policy": policy} if policy else {}))
    s = remat.results["rematerialize"].summary
    (scan,) = s["scans"]
    k = remat.forward.node("rnn").marks["checkpoint_steps"]
    assert scan["checkpoint_steps"] == k and 1 < k < 40 and s["saved_after"] <= s["budget_bytes"]
    assert scan["chunk_saves"] <= s["budget_bytes"]  # the cap: one chunk's saves while it is recomputed
    assert scan["stored_steps"] == remat.forward.node("rnn").marks.get("stored_steps", 0)
    src = generate_source(remat)[0]
    assert f".split({k}, 1)" in src and "torch.utils.checkpoint.checkpoint(self.rnn.steps, " in src
    if scan["stored_steps"]:  # the last steps run after the checkpointed chunks, stored
        assert f"min({scan['stored_steps']}, x.shape[1] - 1)" in src
    full, measured = check_parity_and_bytes(base, remat, monkeypatch)
    assert measured < float(budget) * full


def test_scan_golden_ir_and_model():
    opts = {"fuse": "none", "remat_budget": "0.3"}
    p = program(SCAN, None, ["steps=20"], **opts)
    where = GOLDEN / "rematerialize" / "scan_lstm-steps20-budget0_3"
    golden(where.with_suffix(".ir.txt"), ir_text(p), HERE)
    src = generate_source(p)[0]
    golden(where.with_suffix(".py"), src, HERE)
    assert generate_source(program(SCAN, None, ["steps=20"], **opts))[0] == src  # deterministic


def test_scan_infeasible_budget_names_the_smallest():
    opts = {"fuse": "none"}
    with pytest.raises(PassError) as e:
        program(SCAN, None, ["steps=40"], remat_budget="0.01", **opts)
    assert "smallest feasible budget is" in e.value.message
    smallest = e.value.expected.split()[1]
    assert float(smallest) < 0.2  # chunks reach far below checkpointing the scan whole
    p = program(SCAN, None, ["steps=40"], remat_budget=smallest, **opts)  # that budget is met
    assert p.forward.node("rnn").marks["checkpoint_steps"] > 1


def test_fused_scan_stays_one_unit():
    """`--fuse safe` (the default) runs the steps inside one nn.LSTM kernel: no chunks to checkpoint."""
    p = program(SCAN, None, ["steps=40"])
    assert p.forward.node("rnn").fused is not None
    with pytest.raises(PassError) as e:  # checkpointed whole, the kernel keeps everything again in backward
        program(SCAN, None, ["steps=40"], remat_budget="0.5")
    assert "the smallest feasible budget is 1 " in e.value.message
    assert "--fuse none so that scan 'rnn' can checkpoint its steps" in e.value.expected
