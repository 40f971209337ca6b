"""The pass manager: named passes, run in order, each checked before and after.

A pass is one function `(program, ctx: PassContext) -> PassResult` registered with
`@register_pass(name, requires=..., changes=...)`. `requires` names passes that must have run
before; the manager checks that, verifies the graphs after each pass for what it may have changed,
keeps its result in `program.results[name]` and can print the IR after any pass
(`nnspec inspect --dump-after infer_shapes`).

The context is one object for the whole pipeline: the target being compiled for (None when no
target is involved, as in `nnspec check`), free-form options, and the diagnostics passes leave for
the user (notes and warnings that are not errors: "rule X declined at node Y because ..."). The
result says what a pass changed: nodes added, removed and rewritten in place, plus a summary dict
of whatever else is worth reporting (ties resolved, rules fired).

Each target names its own pipeline (`nnspec.targets.registry`); `DEFAULT_PIPELINE` is the core
every pipeline starts with and what a bare `compile_spec` runs. Adding a pass means writing one
function in one module and naming it in a pipeline.
"""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from typing import Callable

from ..errors import Location, PassError
from ..ir.graph import Graph
from ..spec.load import LoadedSpec, load_spec

PASSES: dict[str, "PassInfo"] = {}
DEFAULT_PIPELINE = ["expand", "infer_shapes", "resolve_ties", "eliminate_dead_code"]
SEVERITIES = ("note", "warning")  # errors are raised, not collected


@dataclass
class PassInfo:
    name: str
    fn: Callable
    requires: tuple = ()
    doc: str = ""
    changes: tuple = ("structure",)  # what the pass may change: structure, types, params
    on_request: bool = False  # does nothing unless its options ask (partition_pipeline without --stages)


@dataclass(frozen=True)
class Diagnostic:
    """Something a pass wants the user to know that is not an error."""

    pass_name: str
    message: str
    severity: str = "note"  # note | warning
    node: str | None = None  # the IR node it is about, when there is one
    loc: Location | None = None

    def render(self) -> str:
        where = f"  # {self.loc}" if self.loc else ""
        at = f" at '{self.node}'" if self.node else ""
        return f"{self.severity}: {self.pass_name}{at}: {self.message}{where}"


@dataclass
class PassContext:
    """What every pass of one pipeline run receives (the same object for all of them)."""

    target: str | None = None  # the target the program is compiled for ("torch", "onnx", ...), or None
    options: dict = field(default_factory=dict)  # free-form, e.g. {"precision": "fp16"}
    diagnostics: list = field(default_factory=list)  # list[Diagnostic], in the order they were made
    current: str = ""  # the pass running now (set by the manager, so `note` need not be told)

    def note(self, message: str, node=None, severity: str = "note") -> Diagnostic:
        """Record a diagnostic of the running pass; `node` is an IR Node or a node id."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")
        nid = getattr(node, "id", node)
        d = Diagnostic(self.current, message, severity, nid, getattr(node, "loc", None))
        self.diagnostics.append(d)
        return d

    def warn(self, message: str, node=None) -> Diagnostic:
        return self.note(message, node, "warning")


@dataclass
class PassResult:
    """What a pass changed. Counts are nodes, over every graph the pass touched (scan bodies too)."""

    added: int = 0
    removed: int = 0
    rewritten: int = 0  # changed in place: attributes, types, parameters, ties or marks
    summary: dict = field(default_factory=dict)  # anything else worth reporting, JSON-ready

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.rewritten)

    def to_json(self) -> dict:
        return {"added": self.added, "removed": self.removed, "rewritten": self.rewritten, "summary": self.summary}


@dataclass
class Program:
    """The compile unit: the loaded spec and one graph per entry (`forward`, `decode_step`, ...)."""

    spec: LoadedSpec
    graphs: dict = field(default_factory=dict)  # name -> Graph
    done: list = field(default_factory=list)  # passes run so far
    results: dict = field(default_factory=dict)  # pass name -> its PassResult (the last run's)
    context: PassContext | None = None  # the context of the last pipeline run over it

    @property
    def forward(self) -> Graph:
        return self.graphs["forward"]

    def dump(self) -> str:
        return "\n".join(g.dump() for g in self.graphs.values())

    def all_graphs(self):
        """Every graph: the entries, then (depth first) the bodies nested in them."""
        def walk(g):
            yield g
            for n in g.topo():
                if n.body is not None:
                    yield from walk(n.body)
        for g in self.graphs.values():
            yield from walk(g)

    def all_nodes(self):
        """Every node of every graph, scan bodies included, in a stable order."""
        def walk(g):
            for n in g.topo():
                yield n
                if n.body is not None:
                    yield from walk(n.body)
        for g in self.graphs.values():
            yield from walk(g)


def register_pass(name: str, requires: tuple = (), changes: tuple = ("structure",), on_request: bool = False):
    """Register `fn` as pass `name`. `changes` says what it may alter ("structure": nodes and edges,
    "types": output types, "params": parameters and ties); the graphs are verified after it for
    what it could have broken. An `on_request` pass acts only when its options ask for it, so a
    program that skipped it is what running it would have made (compile_artifacts accepts that)."""
    def deco(fn):
        PASSES[name] = PassInfo(name, fn, tuple(requires), (fn.__doc__ or "").strip(), tuple(changes), on_request)
        return fn
    return deco


def verify(program: Program, after: str) -> None:
    """Structural invariants every pass must keep: slots contiguous, outputs exist, types set once typed."""
    typed = "infer_shapes" in program.done

    def check(g: Graph):
        for n in g.nodes():
            srcs = g.in_edges(n.id)  # [(slot, producer, port)], sorted by slot
            k = len(srcs)
            # sorted slots are 0..k-1 iff the first is 0 and the last k-1, for k <= 2 (most nodes)
            if k and (srcs[0][0] != 0 or srcs[-1][0] != k - 1 or
                      (k > 2 and any(slot != i for i, (slot, _, _) in enumerate(srcs)))):
                raise PassError(f"after {after}: node '{n.id}' has input slots out of order", n.loc)
            if typed:
                if not n.outputs:
                    raise PassError(f"after {after}: node '{n.id}' has no type", n.loc)
                for _, src, port in srcs:
                    if port >= len(g.node(src).outputs):
                        raise PassError(f"after {after}: '{n.id}' reads missing output {port} of '{src}'", n.loc)
            if n.body is not None:
                check(n.body)
        for name, (nid, _) in g.outputs.items():
            if nid not in g:
                raise PassError(f"after {after}: output '{name}' refers to missing node '{nid}'")

    for g in program.graphs.values():
        check(g)


def run_passes(program: Program, names: list[str], dump_after: str | None = None,
               dump: Callable[[str], None] | None = None, ctx: PassContext | None = None) -> Program:
    """Run passes `names` in order over `program`, with one context for all of them (a fresh one
    unless given); each result lands in `program.results`."""
    if dump_after and dump_after not in names:  # before any work: a typo should not cost a compile
        raise PassError(f"--dump-after {dump_after}: no such pass in the pipeline", expected=f"one of: {', '.join(names)}")
    ctx = ctx if ctx is not None else PassContext()
    program.context = ctx
    for name in names:
        if name not in PASSES:
            raise PassError(f"unknown pass '{name}'", expected=f"one of: {', '.join(PASSES)}")
        info = PASSES[name]
        missing = [r for r in info.requires if r not in program.done]
        if missing:
            raise PassError(f"pass '{name}' needs {', '.join(missing)} to run first")
        ctx.current = name
        result = info.fn(program, ctx)
        if result is None:
            result = PassResult()
        elif not isinstance(result, PassResult):  # the contract, said once where it is broken
            raise PassError(f"pass '{name}' returned a {type(result).__name__}",
                            expected="a PassResult (compiler/passes/manager.py), or None when it changed nothing")
        ctx.current = ""
        program.results[name] = result
        program.done.append(name)
        if {"structure", "types"} & set(info.changes):
            verify(program, name)
        if dump_after == name and dump is not None:
            dump(program.dump())
    return program


@contextlib.contextmanager
def _no_cyclic_gc():
    """Pause the cyclic garbage collector: compiling allocates millions of long-lived objects, and
    collections triggered by them cost ~40% of a 100k-node check without freeing anything."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def compile_spec(spec, preset: str | None = None, overrides: dict | None = None,
                 passes: list[str] | None = None, dump_after: str | None = None, dump=None,
                 target: str | None = None, options: dict | None = None) -> Program:
    """Load `spec` (path, bundled name or LoadedSpec) and run the pass pipeline over it.

    `passes` defaults to DEFAULT_PIPELINE (a target's own pipeline is `registry.get(name).pipeline`);
    `target` and `options` reach every pass through its PassContext."""
    with _no_cyclic_gc():
        loaded = spec if isinstance(spec, LoadedSpec) else load_spec(spec, preset, overrides)
        ctx = PassContext(target=target, options=dict(options or {}))
        return run_passes(Program(loaded), list(passes or DEFAULT_PIPELINE), dump_after, dump, ctx)
