"""The torch lowering of the `rematerialize` pass's marks: checkpointed segments in `model.py`.

The pass (compiler/passes/rematerialize.py) marks every node of a checkpointed segment with
`remat` and `marks["segment"] = k`. The generator writes the root's `forward` as usual, except that
the lines of segment k go into a method of their own, `segment<k>(self, <its inputs>)`, returning
the values read after it, and `forward` calls it as

    layer1 = torch.utils.checkpoint.checkpoint(self.segment2, maxpool, use_reentrant=False)  # segment 2: ...

so in backward the segment runs a second time instead of keeping what its nodes saved. The
non-reentrant form keeps gradients exact (the recomputation is the same code on the same inputs,
and `preserve_rng_state` replays the RNG state, so dropout draws the same masks), works with
inputs that do not require grad, and nests. A chained repeat that a segment starts or ends inside
is called in slices of its `nn.Sequential` (`self.stack[0:100](x)`), which share its modules.
A segment holding buffers passes `context_fn=RecomputeKeepsBuffers(self)`: recomputed in train
mode, batch norm would otherwise update its running statistics twice per step.

Only the top level of an entry graph is segmented: the units the planner cuts at are top-level
nodes, block instances and repeat items (compiler/remat/model.py), which are exactly the calls of
the root's `forward`.

A scan marked `@checkpoint_steps=k` (`@stored_steps=s`) has its steps checkpointed in chunks
instead (`scan_code`, `steps_method`): its cell class gets a `steps` method running the cell over
one chunk of the sequence from the carried state, and the scan's loop in `forward` goes over the
chunks (`x.split(k, 1)`), calling `torch.utils.checkpoint.checkpoint(self.rnn.steps, ...)` on each;
the last s steps run after it without a checkpoint. Backward keeps the carried state at each
chunk's start and recomputes one chunk at a time. A scan fused into one nn.LSTM / nn.GRU kernel is
never marked so (the planner keeps it one unit).
"""
from __future__ import annotations

from nnspec.compiler.errors import LoweringError

from .pieces import lex
from .share import Line

CALL = "torch.utils.checkpoint.checkpoint"
IMPORT = "import torch.utils.checkpoint"
KEEP = "RecomputeKeepsBuffers"
# A segment with buffers (batch norm's running statistics) would update them a second time when it
# is recomputed in train mode; this `context_fn` puts them back as the forward pass left them.
SNIPPETS = {KEEP: '''
class RecomputeKeepsBuffers:
    """`context_fn` of torch.utils.checkpoint.checkpoint: the recomputation in backward leaves the
    module's buffers (batch norm's running statistics) as the forward pass left them, instead of
    updating them a second time."""

    def __init__(self, module, restore=False):
        self.module, self.restore = module, restore

    def __call__(self):
        return RecomputeKeepsBuffers(self.module), RecomputeKeepsBuffers(self.module, restore=True)

    def __enter__(self):
        self.kept = [(b, b.clone()) for b in self.module.buffers()] if self.restore else []

    def __exit__(self, *exc):
        with torch.no_grad():  # only what the recomputation changed: a write bumps a saved buffer's version
            for b, v in self.kept:
                if not torch.equal(b, v):
                    b.copy_(v)
'''}


def segment_of(nodes) -> int | None:
    """The segment number of an item of `forward` (a node, a block instance, a repeat item), from
    its nodes' marks (one unit's nodes share one)."""
    for n in nodes:
        k = n.marks.get("segment") if n.remat else None
        if k is not None:
            return k
    return None


def has_segments(graph) -> bool:
    return any(n.remat and n.marks.get("segment") is not None for n in graph.nodes())


def uses_checkpoint(graph) -> bool:
    """Whether the module calls torch.utils.checkpoint: segments, or a scan checkpointing its steps."""
    return has_segments(graph) or any(chunk_steps(n) for n in graph.nodes())


class Segments:
    """Collects the lines of one entry graph's `forward` segment by segment (the generator calls
    `lines_for` before each item and `finish` before the return line)."""

    def __init__(self, graph, mname: str, names: dict, taken: set):
        self.g = graph
        self.mname = mname
        self.names = names  # the generator's ref -> variable map, shared
        self.taken = taken  # attribute and method names of the root class: never a segment's name
        self.current = None  # (k, [Line], [node]) of the open segment
        self.methods: list = []  # (name, [args], [Line]) of the segments written so far
        self.count: dict = {}  # segment number -> groups written (a segment written in two parts)
        self.helpers: dict = {}  # snippets the segments need (SNIPPETS)

    @classmethod
    def of(cls, graph, mname: str, depth: int, names: dict, taken):
        """The collector for `forward` of an entry graph with segments, else None; `taken()` gives
        the root's attribute names (called only then)."""
        if depth != 0 or "@" in mname or not has_segments(graph):
            return None
        return cls(graph, mname, names, taken())

    def lines_for(self, k: int | None, nodes: list, lines: list) -> list:
        """Where the lines of the next item (of segment `k`, or None) go: the open segment's list,
        or `lines` (forward's own) once any open segment is closed."""
        if self.current is not None and self.current[0] != k:
            self.close(lines)
        if k is None:
            return lines
        if self.current is None:
            self.current = (k, [], [])
        self.current[2].extend(nodes)
        return self.current[1]

    def finish(self, lines: list) -> list:
        """Close the open segment; the segments' methods, in order."""
        if self.current is not None:
            self.close(lines)
        return self.methods

    def close(self, lines: list) -> None:
        k, body, nodes = self.current
        self.current = None
        g, names = self.g, self.names
        inside = {n.id for n in nodes}
        args, outs = [], []
        for n in nodes:
            for ref in g.inputs_of(n.id):
                var = names.get(ref)  # none: a constant folded into __init__ (passed as None)
                if ref[0] not in inside and var is not None and var not in args:
                    args.append(var)
        returned = set(g.outputs.values())
        for n in nodes:
            for port in range(len(n.outputs)):
                ref = (n.id, port)
                read_after = ref in returned or any(dst not in inside for dst, _, p in g.users(n.id) if p == port)
                var = names.get(ref)
                if read_after and var is not None and var not in outs and var not in args:
                    outs.append(var)
        part = self.count.get(k, 0) + 1
        self.count[k] = part
        name = self._name(f"segment{k}" if part == 1 else f"segment{k}_{part}")
        first, last = nodes[0], nodes[-1]
        span = _where(first) if _where(first) == _where(last) else f"{_where(first)} .. {_where(last)}"
        body = body + [Line(lex("return " + ", ".join(outs)))]
        self.methods.append((name, args, body))
        if not outs:  # dead code elimination leaves no node unread
            raise LoweringError(f"checkpointed segment {k} ({span}) has no value read after it")
        buffers = any(p.buffer for n in nodes for p in n.params.values())
        if buffers:
            self.helpers[KEEP] = SNIPPETS[KEEP]
        context = f", context_fn={KEEP}(self)" if buffers else ""
        call = f"{CALL}(self.{name}, {''.join(a + ', ' for a in args)}use_reentrant=False{context})"
        note = f"segment {k}: {span}, recomputed in backward"
        lines.append(Line(lex(call), ", ".join(outs), note))

    def _name(self, base: str) -> str:
        name, i = base, 2
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def _where(node) -> str:
    """The unit a node belongs to, as the planner names it (`layer1.0`, `fc`)."""
    from nnspec.compiler.remat.model import unit_key
    return unit_key(node)


def chain_runs(keys: list, groups: dict) -> list:
    """A chained repeat's instance keys cut where their segment changes: [(start, stop, segment)]."""
    runs = []
    for i, key in enumerate(keys):
        k = segment_of(groups.get(key, []))
        if runs and runs[-1][2] == k:
            runs[-1] = (runs[-1][0], i + 1, k)
        else:
            runs.append((i, i + 1, k))
    return runs


# -- a scan with its steps checkpointed in chunks (`@checkpoint_steps=k`) -----------------------------
# The scan's cell class gets a method running the cell over one chunk of the sequence from the
# carried state; the scan's loop in `forward` goes over the chunks and checkpoints that method, so
# backward keeps only the carried state at each chunk's start and recomputes one chunk at a time.


def chunk_steps(node) -> int | None:
    """The steps per checkpointed chunk of a scan node (rematerialize's mark), or None."""
    k = node.marks.get("checkpoint_steps") if node.op == "scan" else None
    return int(k) if k else None


def steps_name(node, ident) -> str:
    """The cell method that runs a chunk: `steps`, unless a node of the cell takes that name."""
    taken = {ident(b.local) for b in node.body.nodes()} | {"forward"}
    name = "steps"
    while name in taken:
        name = "run_" + name
    return name


def steps_method(node, ident) -> tuple:
    """(name, args, lines) of the cell's method over one chunk: its `over` inputs are the chunk's
    slices (the whole chunk along the scan axis), its carried states the state at the chunk's start;
    it returns what the cell's forward returns, per-step outputs stacked over the chunk."""
    a = node.attrs
    outs = list(node.body.outputs)
    args = [ident(k) for k in a.inputs]
    used = set(args)

    def fresh(base):
        name = base
        while name in used:
            name += "_"
        used.add(name)
        return name

    state = {c: args[a.inputs.index(c)] for c in a.carry}
    stacked = {o: fresh(f"{ident(o)}_steps") for o in outs if o not in a.carry}
    t, step = fresh("t"), fresh("step")
    over = [v for v, r in zip(args, a.roles) if r == "over"]
    steps = f"range({over[0]}.shape[{a.axis}])"
    call = ", ".join(f"{v}.select({a.axis}, {t})" if r == "over" else v for v, r in zip(args, a.roles))
    code = [f"{v} = []" for v in stacked.values()]
    code.append(f"for {t} in {f'reversed({steps})' if a.reverse else steps}:")
    code.append(f"    {step} = self({call})")
    for i, o in enumerate(outs):
        value = f"{step}[{i}]" if len(outs) > 1 else step
        code.append(f"    {state[o]} = {value}" if o in a.carry else f"    {stacked[o]}.append({value})")
    code += [f"{v}.reverse()" for v in stacked.values()] if a.reverse else []
    code.append("return " + ", ".join(state[o] if o in a.carry else f"torch.stack({stacked[o]}, {a.axis})"
                                      for o in outs))
    note = f"one chunk of scan '{node.local}'s steps: backward runs it again (torch.utils.checkpoint)"
    lines = [Line(lex(s), note=note if i == 0 else None) for i, s in enumerate(code)]
    return steps_name(node, ident), args, lines


def scan_code(node, ins: list, m: str, ident):
    """The scan's loop over chunks of `checkpoint_steps` steps, each checkpointed (a TorchCode like
    the scan op's own, whose loop runs step by step), or None for a scan without the mark. With
    `stored_steps=s` the last s steps (at least one step is left to the chunks) run after the loop
    without a checkpoint, keeping their saves, as checkpoint_sequential's last segment does:

        rnn_h = h0
        rnn_y_chunks = []
        for rnn_x_t in x.split(50, 1):  # 50 steps at a time, recomputed in backward
            rnn_chunk = torch.utils.checkpoint.checkpoint(self.rnn.steps, rnn_x_t, rnn_h, use_reentrant=False)
            rnn_h = rnn_chunk[0]
            rnn_y_chunks.append(rnn_chunk[1])
        rnn_h, rnn_y = rnn_h, torch.cat(rnn_y_chunks, 1)
    """
    from nnspec.compiler.ops.base import TorchCode

    k = chunk_steps(node)
    if k is None:
        return None
    a = node.attrs
    outs = list(node.body.outputs)
    stacked = [o for o in outs if o not in a.carry]
    over = [(name, v) for name, v, r in zip(a.inputs, ins, a.roles) if r == "over"]
    temps = list(a.carry) + [f"{o}_chunks" for o in stacked] + [f"{name}_part" for name, _ in over]
    chunk = "chunk"
    while chunk in temps:
        chunk += "_"
    temps.append(chunk)
    last = int(node.marks.get("stored_steps") or 0) if not a.reverse else 0
    cut = "cut"
    while cut in temps:
        cut += "_"
    temps.append(cut)
    stmts = [f"${c} = {ins[a.inputs.index(c)]}" for c in a.carry] + [f"${o}_chunks = []" for o in stacked]
    length = f"{over[0][1]}.shape[{a.axis}]"
    if last:  # the chunks run over the steps before `cut`, the ones after it are stored
        stmts.append(f"${cut} = {length} - min({last}, {length} - 1)  # the last steps are stored, not recomputed")
        sources = [f"{v}.narrow({a.axis}, 0, ${cut})" for _, v in over]
    else:
        sources = [v for _, v in over]
    splits = [f"reversed({v}.split({k}, {a.axis}))" if a.reverse else f"{v}.split({k}, {a.axis})" for v in sources]
    parts = ", ".join(f"${name}_part" for name, _ in over)
    source = splits[0] if len(splits) == 1 else f"zip({', '.join(splits)})"
    stmts.append(f"for {parts} in {source}:  # each chunk is recomputed in backward (rematerialize)")
    args = [f"${name}_part" if r == "over" else f"${name}" if r == "carry" else v
            for name, v, r in zip(a.inputs, ins, a.roles)]
    method = f"{m}.{steps_name(node, ident)}"
    stmts.append(f"    ${chunk} = {CALL}({method}, {', '.join(args)}, use_reentrant=False)")
    for i, o in enumerate(outs):
        value = f"${chunk}[{i}]" if len(outs) > 1 else f"${chunk}"
        stmts.append(f"    ${o} = {value}" if o in a.carry else f"    ${o}_chunks.append({value})")
    if last:  # stored: backward needs these steps first, and keeps what they saved
        stmts.append(f"if ${cut} < {length}:  # the stored steps, without a checkpoint: backward needs them first")
        rest = [f"{v}.narrow({a.axis}, ${cut}, {length} - ${cut})" if r == "over" else f"${name}" if r == "carry" else v
                for name, v, r in zip(a.inputs, ins, a.roles)]
        stmts.append(f"    ${chunk} = {method}({', '.join(rest)})")
        for i, o in enumerate(outs):
            value = f"${chunk}[{i}]" if len(outs) > 1 else f"${chunk}"
            stmts.append(f"    ${o} = {value}" if o in a.carry else f"    ${o}_chunks.append({value})")
    stmts += [f"${o}_chunks.reverse()" for o in stacked] if a.reverse else []
    pieces = [f"${c}" for c in a.carry] + [f"torch.cat(${o}_chunks, {a.axis})" for o in stacked]
    return TorchCode(expr=", ".join(pieces), stmts=stmts, temps=tuple(temps))
