"""`nnspec profile`: every top-level node's forward and backward time, measured on this machine.

    nnspec profile SPEC [--preset P] [--set k=v] [--dim N=8] [--device cpu|cuda] [--repeat R]
                   [--warmup W] [--threads T] -o profile.json

The program is the one the torch target's passes plan on (its pipeline up to partition_pipeline),
with real weights (the IR's initial weights for --seed) and example inputs at the dims (N=1 and
each other symbol's opt unless --dim says). One forward pass in train mode gives every node its
input values; then each node runs alone, as its op's torch lowering (the reference interpreter's
`node_function`, bound to the generated module's submodule), on fresh leaf copies of those inputs
(float ones requiring grad, the cost model's training case): forward timed, then backward with ones
as the outputs' gradients, W warmup runs and the median of R timed ones (CUDA synchronised around
each). A scan node is timed whole, its body inside it.

The JSON (`compiler/cost.read_profile` reads it back, `--profile` on `plan` and `compile`):
    {"nnspec_profile": 1, "spec", "preset", "graph", "dims", "device", "threads", "repeat", "warmup",
     "torch", "flop_rate", "nodes": [{id, op, forward_s, backward_s, flops, bwd_flops}], "disagree": [...]}
`flop_rate` is the graph's overall measured rate (FLOPs forward + backward over the seconds of the
nodes that have FLOPs); a node's predicted time is its FLOPs at that rate, and `disagree` lists the
nodes whose measured time is more than 3x off it either way, plus the FLOP-free nodes taking 1% of
the measured time or more (a FLOP-only planner prices them at zero): what planners that balance
stages by FLOPs alone get wrong.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

from nnspec.compiler.cost import PROFILE_FORMAT, ProfileError, cost_report, dim_values
from nnspec.compiler.errors import clean

DISAGREE = 3.0  # measured vs FLOPs-predicted time, either way
FREE_SHARE = 0.01  # a FLOP-free node is listed from this share of the measured time
MAX_REPEAT = 10_000
MAX_THREADS = 1024


class DeviceUnavailable(ProfileError):
    """The device asked for is not there (no CUDA GPU): the machine's toolchain, exit 3."""

    kind = "device error"
    exit_code = 3


def profile_pipeline() -> list[str]:
    """The passes a profile is measured after: the torch target's, up to the planning passes (so the
    node ids are the ones partition_pipeline and rematerialize see)."""
    from nnspec.targets.registry import get
    pipeline = list(get("torch").pipeline)
    return pipeline[:pipeline.index("partition_pipeline")] if "partition_pipeline" in pipeline else pipeline


def check_dims(graph, given: dict) -> dict:
    """The dim values to profile at: `given` (each a symbol of `graph`'s inputs, within its declared
    range) over the cost model's defaults."""
    vals = dim_values(graph)
    for sym, v in given.items():
        if sym not in vals:
            raise ProfileError(f"--dim {sym}: no such symbolic dim in the inputs",
                               expected=f"one of {', '.join(sorted(vals)) or '(none: the inputs are concrete)'}")
        rng = graph.symbols.get(sym, {})
        lo, hi = rng.get("min") or 1, rng.get("max")
        if v < lo or (hi is not None and v > hi):
            raise ProfileError(f"--dim {sym}={v} is outside the spec's range",
                               expected=f"{lo} <= {sym} <= {hi if hi is not None else 'inf'}")
    return {**vals, **given}


def _device(name: str):
    import torch
    if name == "cpu":
        return torch.device("cpu"), "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable("--device cuda: torch sees no CUDA GPU on this machine",
                                    expected="--device cpu, or a machine with an NVIDIA GPU and a CUDA build of torch")
        return torch.device("cuda"), f"cuda ({torch.cuda.get_device_name(0)})"
    raise ProfileError(f"--device {name!r} is not a device", expected="cpu or cuda")


class _Bar:
    """tqdm's bar on stderr where tqdm is installed, else a one-line counter."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.n, self.enabled, self.tqdm = total, desc, 0, enabled, None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.tqdm = tqdm(total=total, desc=desc, unit="node", leave=False, file=sys.stderr)

    def update(self) -> None:
        self.n += 1
        if self.tqdm is not None:
            self.tqdm.update(1)
        elif self.enabled:
            width = 30
            done = width * self.n // max(self.total, 1)
            sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
        elif self.enabled:
            sys.stderr.write("\r" + " " * (len(self.desc) + 50) + "\r")
            sys.stderr.flush()


def _leaf(x):
    """A fresh leaf copy of value `x` (float tensors require grad, as in training)."""
    import torch
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return x.clone().requires_grad_() if x.is_floating_point() else x
    return x


def _time_node(fn, ins: list, sync, repeat: int, warmup: int) -> tuple[float, float]:
    """(median forward seconds, median backward seconds) of `fn` on leaf copies of `ins`."""
    import torch
    fwd, bwd = [], []
    for i in range(warmup + repeat):
        leaves = [_leaf(x) for x in ins]
        sync()
        t0 = time.perf_counter()
        outs = fn(*leaves)
        sync()
        t1 = time.perf_counter()
        diff = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        t2 = t3 = 0.0
        if diff:
            grads = [torch.ones_like(o) for o in diff]
            sync()
            t2 = time.perf_counter()
            torch.autograd.backward(diff, grads)
            sync()
            t3 = time.perf_counter()
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t3 - t2)
    return statistics.median(fwd), statistics.median(bwd)


def disagreements(nodes: list[dict]) -> tuple[float, list[dict]]:
    """(the graph's measured FLOP rate, the nodes its FLOPs mispredict: >3x either way, or FLOP-free
    taking 1% of the time or more), most seconds mispredicted first."""
    timed = [n for n in nodes if n["flops"] + n["bwd_flops"] > 0]
    secs = sum(n["forward_s"] + n["backward_s"] for n in timed)
    rate = sum(n["flops"] + n["bwd_flops"] for n in timed) / secs if secs > 0 else 0.0
    total = sum(n["forward_s"] + n["backward_s"] for n in nodes)
    out = []
    for n in nodes:
        measured = n["forward_s"] + n["backward_s"]
        work = n["flops"] + n["bwd_flops"]
        predicted = work / rate if rate > 0 else 0.0
        if work and predicted > 0 and measured > 0:
            ratio = measured / predicted
            if ratio > DISAGREE or ratio < 1 / DISAGREE:
                out.append({"id": n["id"], "op": n["op"], "measured_s": measured, "predicted_s": predicted,
                            "ratio": ratio})
        elif not work and total > 0 and measured >= FREE_SHARE * total:
            out.append({"id": n["id"], "op": n["op"], "measured_s": measured, "predicted_s": 0.0, "ratio": None})
    out.sort(key=lambda d: (-abs(d["measured_s"] - d["predicted_s"]), d["id"]))
    return rate, out


def profile(program, dims: dict | None = None, device: str = "cpu", repeat: int = 5, warmup: int = 2,
            threads: int = 1, seed: int = 0, graph: str = "forward", progress: bool = False) -> dict:
    """The profile of entry `graph` of `program` (a JSON-ready dict, the format above)."""
    import torch

    if not 1 <= repeat <= MAX_REPEAT or not 0 <= warmup <= MAX_REPEAT or not 1 <= threads <= MAX_THREADS:
        raise ProfileError(f"--repeat {repeat} --warmup {warmup} --threads {threads}",
                           expected=f"1 <= repeat <= {MAX_REPEAT}, 0 <= warmup <= {MAX_REPEAT}, "
                                    f"1 <= threads <= {MAX_THREADS}")
    dev, dev_name = _device(device)
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        nodes, vals = _profile_nodes(program, graph, dims, dev, seed, repeat, warmup, progress)
    finally:
        torch.set_num_threads(before)
    rate, off = disagreements(nodes)
    return {"nnspec_profile": PROFILE_FORMAT, "spec": program.spec.name, "preset": program.spec.preset,
            "graph": graph, "dims": vals, "device": dev_name, "threads": int(threads), "repeat": repeat,
            "warmup": warmup, "torch": torch.__version__, "flop_rate": rate, "nodes": nodes, "disagree": off}


def _profile_nodes(program, graph: str, dims: dict | None, dev, seed: int, repeat: int, warmup: int,
                   progress: bool) -> tuple[list, dict]:
    """(one entry per top-level node of `graph`, the dim values), measured on device `dev`."""
    import torch

    from nnspec.targets.inputs import example_inputs
    from nnspec.targets.torch.build import build_module
    from nnspec.targets.torch.interpret import _namespace, node_function

    g = program.graphs[graph]
    vals = check_dims(g, dims or {})
    rows = {r.id: r for r in cost_report(program, graph, vals).rows if r.depth == 0}
    module = build_module(program, seed).to(dev).train()
    arrays = example_inputs(program, vals, seed, graph)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ns = _namespace(g)
    values, funcs = {}, {}
    with torch.no_grad():  # every node's inputs, from one forward pass in train mode
        for n in g.topo():
            if n.op == "input":
                values[(n.id, 0)] = torch.as_tensor(arrays[n.attrs.name]).to(dev)
                continue
            funcs[n.id] = node_function(g, n, module, ns)
            for i, r in enumerate(funcs[n.id](*[values[ref] for ref in g.inputs_of(n.id)])):
                values[(n.id, i)] = r
    nodes = []
    todo = [n for n in g.topo() if n.op != "input"]
    bar = _Bar(len(todo), f"profile {program.spec.name}", progress)
    try:
        for n in todo:
            ins = [values[ref] for ref in g.inputs_of(n.id)]
            fwd, bwd = _time_node(funcs[n.id], ins, sync, repeat, warmup)
            row = rows[n.id]
            nodes.append({"id": n.id, "op": n.op, "forward_s": fwd, "backward_s": bwd,
                          "flops": int(row.flops), "bwd_flops": int(row.bwd_flops)})
            bar.update()
    finally:
        bar.close()
    module.zero_grad(set_to_none=True)
    return nodes, vals


def render_disagreements(doc: dict, limit: int = 15) -> str:
    """The table `nnspec profile` prints: the nodes FLOPs mispredict, most seconds off first."""
    off = doc["disagree"]
    rate = doc["flop_rate"]
    head = (f"{doc['spec']}: {len(doc['nodes'])} nodes on {doc['device']}, {rate / 1e9:.2f} GFLOP/s overall; "
            f"{len(off)} node(s) off their FLOPs by more than {DISAGREE:g}x")
    if not off:
        return head
    lines = [head, f"{'node':<32} {'op':<20} {'measured ms':>12} {'FLOPs ms':>10} {'ratio':>8}"]
    for d in off[:limit]:
        ratio = f"{d['ratio']:.1f}x" if d["ratio"] is not None else "no FLOPs"
        lines.append(f"{clean(d['id'], 32):<32} {d['op']:<20} {d['measured_s'] * 1e3:>12.3f} "
                     f"{d['predicted_s'] * 1e3:>10.3f} {ratio:>8}")
    if len(off) > limit:
        lines.append(f"... and {len(off) - limit} more (all under \"disagree\" in the JSON)")
    return "\n".join(lines)


def write_profile(doc: dict, path) -> None:
    """Write the profile JSON atomically (a reader never sees half a file)."""
    from nnspec.targets.files import atomic_write
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


__all__ = ["profile", "write_profile", "render_disagreements", "disagreements", "profile_pipeline",
           "DeviceUnavailable"]
