"""Rewrite rules: small pattern -> check -> rewrite classes, applied to a graph to a fixed point.

A rule says what it looks for (`pattern`), whether one match may be rewritten (`check`, which
declines with a reason instead of raising, so "why didn't this fuse?" has an answer) and how
(`rewrite`, through the Graph API only: `add`, `connect`, `set_inputs`, `replace_all_uses`,
`remove`, `rewrite`; never networkx):

    class CollapseRelu(Rule):
        '''relu(relu(x)) -> relu(x)'''
        name = "collapse_relu"
        pattern = Chain("relu", "relu")          # producer first; the last op is the match's root

        def check(self, m, g):
            inner, outer = m.nodes
            if inner.scope != outer.scope:
                return f"'{inner.id}' and '{outer.id}' are in different block instances"
            return None

        def rewrite(self, m, g):
            inner, outer = m.nodes
            g.replace_all_uses((outer.id, 0), (inner.id, 0))
            g.remove(outer.id)

`apply_rules(graph, rules)` sweeps the graph in topological order, trying at each node the rules
whose pattern can be rooted at its op (in the order given, the first that fires wins), and sweeps
again until a sweep fires nothing or `max_iterations` sweeps have run. It returns a RewriteReport:
which rule fired at which node (and over which nodes), and which matches were declined and why.
`rewrite_program` does that for every graph of a program (scan bodies included) and returns the
PassResult; `register_rewrites(name, rules)` registers that as a pass.

A rule edits only its match and the nodes it adds (leave dead producers to eliminate_dead_code):
the driver counts nodes added and removed from the graph's size and the match, without diffing
the graph after every firing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import PassError
from ..ir.graph import Graph, Node
from .manager import PassContext, PassResult, register_pass

DEFAULT_MAX_ITERATIONS = 16  # sweeps; rules that shrink the graph settle in two or three


# -- patterns ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpPattern:
    """Matches one node by op name (one name or a tuple of names) and, optionally, its number of inputs."""

    op: str | tuple
    arity: int | None = None

    @property
    def names(self) -> tuple:
        return (self.op,) if isinstance(self.op, str) else tuple(self.op)

    def matches(self, graph: Graph, node: Node) -> bool:
        return node.op in self.names and (self.arity is None or len(graph.in_edges(node.id)) == self.arity)


@dataclass(frozen=True)
class Match:
    """The nodes a pattern matched, producer first; the last one is the root it was tried at."""

    nodes: tuple

    @property
    def root(self) -> Node:
        return self.nodes[-1]

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.nodes]

    def inputs(self, graph: Graph) -> list[tuple[str, int]]:
        """(producer, port) of every value the match reads from outside it, in node then slot order."""
        inside = set(self.ids)
        return [(s, p) for n in self.nodes for s, p in graph.inputs_of(n.id) if s not in inside]

    def escaping(self, graph: Graph) -> list[str]:
        """What reads a non-root node of the match from outside it (consumer ids, `output NAME` for a
        graph output): a rewrite that removes those nodes would change what these read."""
        inside = set(self.ids)
        out = []
        for n in self.nodes[:-1]:
            out += [dst for dst, _, _ in graph.users(n.id) if dst not in inside]
            out += [f"output {name}" for name, (nid, _) in graph.outputs.items() if nid == n.id]
        return out


class Pattern:
    """What a rule looks for. `roots` lists the op names a match's root can have (None: any op), so
    the driver tries a rule only where it can match; `match` returns a Match or None."""

    roots: tuple | None = None

    def match(self, graph: Graph, node: Node) -> Match | None:
        raise NotImplementedError


class Chain(Pattern):
    """A chain of ops, producer first: `Chain("conv2d", "relu")` matches relu(conv2d(...)). Each link
    reads the previous link's output 0 at its input `slot` (default 0). Links are op names or
    OpPatterns (to fix an arity, or allow several ops)."""

    def __init__(self, *links, slot: int = 0):
        if not links:
            raise ValueError("a Chain needs at least one op")
        self.links = tuple(x if isinstance(x, OpPattern) else OpPattern(x) for x in links)
        self.slot = slot
        self.roots = self.links[-1].names

    def match(self, graph: Graph, node: Node) -> Match | None:
        if not self.links[-1].matches(graph, node):
            return None
        nodes, cur = [node], node
        for link in reversed(self.links[:-1]):
            src = next(((s, p) for slot, s, p in graph.in_edges(cur.id) if slot == self.slot), None)
            if src is None or src[1] != 0:
                return None
            prev = graph.node(src[0])
            if not link.matches(graph, prev):
                return None
            nodes.append(prev)
            cur = prev
        return Match(tuple(reversed(nodes)))

    def __repr__(self) -> str:
        return "Chain(" + ", ".join(repr(x.op) for x in self.links) + ")"


# -- rules --------------------------------------------------------------------------------------------
class Rule:
    """One rewrite: `name`, `pattern`, `check(match, graph) -> None | reason`, `rewrite(match, graph)`."""

    name: ClassVar[str] = ""
    pattern: ClassVar[Pattern]

    def check(self, match: Match, graph: Graph) -> str | None:
        """None to go ahead, or why this match must not be rewritten (one line, naming nodes)."""
        return None

    def rewrite(self, match: Match, graph: Graph) -> None:
        raise NotImplementedError(f"rule '{self.name}' has no rewrite")


@dataclass(frozen=True)
class Fired:
    rule: str
    at: str  # the root node's id
    nodes: tuple  # ids of every matched node, producer first
    iteration: int

    def to_json(self) -> dict:
        return {"rule": self.rule, "at": self.at, "nodes": list(self.nodes), "iteration": self.iteration}


@dataclass(frozen=True)
class Declined:
    rule: str
    at: str
    reason: str
    iteration: int

    def to_json(self) -> dict:
        return {"rule": self.rule, "at": self.at, "reason": self.reason, "iteration": self.iteration}


@dataclass
class RewriteReport:
    """What `apply_rules` did to one graph."""

    graph: str
    fired: list = field(default_factory=list)  # list[Fired], in firing order
    declined: list = field(default_factory=list)  # list[Declined] still standing at the end
    iterations: int = 0  # sweeps run (the last one fired nothing when converged)
    converged: bool = False
    added: int = 0
    removed: int = 0
    rewritten: int = 0  # firings whose root was still in the graph afterwards (changed in place)

    def why_not(self, node_id: str) -> list[str]:
        """'rule: reason' for every rule that declined a match rooted at `node_id`."""
        return [f"{d.rule}: {d.reason}" for d in self.declined if d.at == node_id]


def _alive(graph: Graph, node: Node) -> bool:
    """`node` itself is still in `graph` (not removed, and its id not taken by a replacement)."""
    return node.id in graph and graph.node(node.id) is node


def _wrap(rule: Rule, what: str, node: Node, e: Exception) -> PassError:
    hint = "a bug in the rule" + (": check() declines with a reason instead of raising" if "check" in what else "")
    return PassError(f"rewrite rule '{rule.name}' failed in {what} at '{node.id}': {type(e).__name__}: {e}",
                     node.loc, hint=hint)


def _check_rules(rules: list) -> None:
    names = set()
    for r in rules:
        if not r.name or not isinstance(getattr(r, "pattern", None), Pattern):
            raise PassError(f"rewrite rule {type(r).__name__} needs a `name` and a `pattern` (a Pattern)")
        if r.name in names:
            raise PassError(f"two rewrite rules are named '{r.name}'")
        names.add(r.name)


def apply_rules(graph: Graph, rules: list, max_iterations: int = DEFAULT_MAX_ITERATIONS,
                ctx: PassContext | None = None) -> RewriteReport:
    """Apply `rules` (Rule instances, in priority order) to `graph` until none fires, at most
    `max_iterations` sweeps. A ruleset still firing after the last sweep is reported
    (`converged` False, and a warning in `ctx`), not an error: the graph is valid after every firing."""
    if max_iterations < 1:
        raise PassError(f"max_iterations is {max_iterations}", expected="at least 1 sweep")
    _check_rules(rules)
    report = RewriteReport(graph.name)
    for_op: dict = {}  # op name -> the rules that can be rooted there, in the given order
    declined: dict = {}  # (rule, root id) -> its latest Declined
    for it in range(1, max_iterations + 1):
        fired = 0
        for node in list(graph.topo()):
            if not _alive(graph, node):
                continue  # removed (or its id reused) by a rewrite earlier in this sweep
            todo = for_op.get(node.op)
            if todo is None:
                todo = for_op[node.op] = [r for r in rules if r.pattern.roots is None or node.op in r.pattern.roots]
            for rule in todo:
                try:
                    m = rule.pattern.match(graph, node)
                    reason = rule.check(m, graph) if m is not None else None
                except Exception as e:
                    raise _wrap(rule, "its pattern or check", node, e) from e
                if m is None:
                    declined.pop((rule.name, node.id), None)  # a decline that no longer applies
                    continue
                if reason:
                    declined[(rule.name, node.id)] = Declined(rule.name, node.id, str(reason), it)
                    continue
                before = len(graph)
                try:
                    rule.rewrite(m, graph)
                except Exception as e:
                    raise _wrap(rule, "rewrite", node, e) from e
                gone = sum(1 for n in m.nodes if not _alive(graph, n))
                added = len(graph) - before + gone
                report.added += max(added, 0)
                report.removed += gone + max(-added, 0)  # a rule that removed more than its match
                report.rewritten += 1 if _alive(graph, m.root) else 0
                report.fired.append(Fired(rule.name, node.id, tuple(m.ids), it))
                declined.pop((rule.name, node.id), None)
                fired += 1
                break  # this node may be gone or changed: the next sweep looks at it again
        report.iterations = it
        if not fired:
            report.converged = True
            break
    report.declined = [d for d in declined.values() if d.at in graph]
    if not report.converged and ctx is not None:
        counts: dict = {}
        for f in report.fired:
            if f.iteration == report.iterations:
                counts[f.rule] = counts.get(f.rule, 0) + 1
        ctx.warn(f"graph '{graph.name}': rules still firing after {max_iterations} sweeps "
                 f"({', '.join(f'{k} x{v}' for k, v in counts.items())}); stopped there")
    return report


def rewrite_program(program, rules: list, ctx: PassContext | None = None,
                    max_iterations: int = DEFAULT_MAX_ITERATIONS) -> PassResult:
    """`apply_rules` over every graph of `program` (entries, then scan bodies); one PassResult."""
    reports = [apply_rules(g, rules, max_iterations, ctx) for g in list(program.all_graphs())]
    return PassResult(
        added=sum(r.added for r in reports), removed=sum(r.removed for r in reports),
        rewritten=sum(r.rewritten for r in reports),
        summary={"fired": [dict(f.to_json(), graph=r.graph) for r in reports for f in r.fired],
                 "declined": [dict(d.to_json(), graph=r.graph) for r in reports for d in r.declined],
                 "iterations": {r.graph: r.iterations for r in reports},
                 "converged": all(r.converged for r in reports)})


def register_rewrites(name: str, rules: list, requires: tuple = ("infer_shapes",),
                      max_iterations: int = DEFAULT_MAX_ITERATIONS, doc: str | None = None):
    """Register pass `name` applying `rules` with `rewrite_program`; returns the pass function.
    By default it runs on typed graphs, so rules can read types and must give new nodes theirs."""
    _check_rules(rules)

    def run(program, ctx: PassContext) -> PassResult:
        return rewrite_program(program, rules, ctx, max_iterations)

    run.__name__ = name
    run.__doc__ = doc or "Rewrite rules, in priority order: " + ", ".join(r.name for r in rules) + "."
    return register_pass(name, requires=requires, changes=("structure", "types"))(run)


__all__ = ["Rule", "Pattern", "Chain", "OpPattern", "Match", "Fired", "Declined", "RewriteReport",
           "apply_rules", "rewrite_program", "register_rewrites", "DEFAULT_MAX_ITERATIONS"]
