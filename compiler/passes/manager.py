"""The pass manager: named passes, run in order, each checked before and after.

A pass is one function `(program, ctx) -> dict` (a small result for `--dump-after` and tests)
registered with `@register_pass(name, requires=..., doc=...)`. `requires` names passes that must
have run before; the manager checks that, verifies the graphs after each pass, and can print the IR
after any pass (`nnspec inspect --dump-after infer_shapes`). Adding a pass means writing one
function in one module and naming it in a pipeline.
"""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from typing import Callable

from ..errors import PassError
from ..ir.graph import Graph
from ..spec.load import LoadedSpec, load_spec

PASSES: dict[str, "PassInfo"] = {}
DEFAULT_PIPELINE = ["expand", "infer_shapes", "resolve_ties", "eliminate_dead_code"]


@dataclass
class PassInfo:
    name: str
    fn: Callable
    requires: tuple = ()
    doc: str = ""
    changes: tuple = ("structure",)  # what the pass may change: structure, types, params


@dataclass
class Program:
    """The compile unit: the loaded spec and one graph per entry (`forward`, `decode_step`, ...)."""

    spec: LoadedSpec
    graphs: dict = field(default_factory=dict)  # name -> Graph
    done: list = field(default_factory=list)  # passes run so far
    results: dict = field(default_factory=dict)  # pass name -> its result

    @property
    def forward(self) -> Graph:
        return self.graphs["forward"]

    def dump(self) -> str:
        return "\n".join(g.dump() for g in self.graphs.values())

    def all_nodes(self):
        """Every node of every graph, scan bodies included, in a stable order."""
        def walk(g):
            for n in g.topo():
                yield n
                if n.body is not None:
                    yield from walk(n.body)
        for g in self.graphs.values():
            yield from walk(g)


def register_pass(name: str, requires: tuple = (), changes: tuple = ("structure",)):
    """Register `fn` as pass `name`. `changes` says what it may alter ("structure": nodes and edges,
    "types": output types, "params": parameters and ties); the graphs are verified after it for
    what it could have broken."""
    def deco(fn):
        PASSES[name] = PassInfo(name, fn, tuple(requires), (fn.__doc__ or "").strip(), tuple(changes))
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
               dump: Callable[[str], None] | None = None) -> Program:
    for name in names:
        if name not in PASSES:
            raise PassError(f"unknown pass '{name}'", expected=f"one of: {', '.join(PASSES)}")
        info = PASSES[name]
        missing = [r for r in info.requires if r not in program.done]
        if missing:
            raise PassError(f"pass '{name}' needs {', '.join(missing)} to run first")
        program.results[name] = info.fn(program, {}) or {}
        program.done.append(name)
        if {"structure", "types"} & set(info.changes):
            verify(program, name)
        if dump_after == name and dump is not None:
            dump(program.dump())
    if dump_after and dump_after not in names:
        raise PassError(f"--dump-after {dump_after}: no such pass in the pipeline", expected=f"one of: {', '.join(names)}")
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
                 passes: list[str] | None = None, dump_after: str | None = None, dump=None) -> Program:
    """Load `spec` (path, bundled name or LoadedSpec) and run the pass pipeline over it."""
    with _no_cyclic_gc():
        loaded = spec if isinstance(spec, LoadedSpec) else load_spec(spec, preset, overrides)
        return run_passes(Program(loaded), passes or DEFAULT_PIPELINE, dump_after, dump)
