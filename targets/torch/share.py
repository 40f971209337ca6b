"""One class per block structure: block instances that differ only in constants share a class.

The generator renders every block instance as a `Unit` with literal constants (targets/torch/
pieces.py keeps its lines as pieces). `Sharing.run` then decides the classes bottom-up, children
before the blocks that hold them:

1. Instances of a block whose pieces are equal with the constants set aside form a group.
2. Groups that differ only in optional submodules merge: a group whose class lacks the
   `self.downsample = ...` line (and its call, whose value another variable then stands for)
   joins the one that has it; the class takes a flag, `self.downsample = Projection(...) if
   downsample else None`, and forward `downsample = self.downsample(x) if self.downsample is not
   None else x` (torchvision's Optional submodule). `when:` makes such instances.
3. Every constant that varies across a group becomes an expression over constructor parameters,
   the first that reproduces it in every instance: a block arg (`planes`), a dim of a block input
   (`in_channels`: a module is built before it sees its input, so the instance's input shape
   becomes a parameter), an arg times an integer (`planes * 4`), or a product of two of those
   (`in_channels * t`). Where none does, the group is split by that constant's value, so
   each class still reproduces its instances exactly.
4. A constant in `forward` reads the parameter from an attribute `__init__` stores (`self.heads`).

Each instance is then constructed as `Bottleneck(256, 64, stride=2, downsample=True)`: required
parameters positionally, parameters with a default as keywords unless at their default. Comments
of shared classes name the varying dims the same way (`f32[N,planes*4,?,?]`, `?` where no
parameter gives them).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from nnspec.compiler.spec.names import MODULE_MEMBERS

from .pieces import NO, Call, Const, consts, child_uids, key, render, same, substitute


@dataclass(frozen=True)
class Note:
    """A forward line's comment: the types it binds and the spec location it comes from."""

    types: tuple  # TensorTypes
    where: str


@dataclass
class Line:
    code: tuple  # pieces; with `lhs`, the value assigned
    lhs: str = ""  # `self.conv1`, `conv1`, `a, b`: the assignment's target
    note: object = None  # Note | str | None
    attr: str = ""  # the submodule attribute the line belongs to (init) or calls (forward)
    call: bool = False  # forward: `lhs = self.<attr>(...)`, binding one value


@dataclass
class Unit:
    """One class as rendered for one block instance (or a scan cell, or the root module)."""

    uid: int
    kind: str  # "block" | "cell" | "root"
    base: str  # the class name it asks for
    doc: str
    init: list  # [Line]
    methods: list  # [(name, [arg names], [Line])]
    block: str = ""
    args: dict = field(default_factory=dict)  # the instance's evaluated block args
    inputs: list = field(default_factory=list)  # [(name, TensorType)] of the instance's inputs
    call: Call | None = None  # how its class is constructed, once decided


@dataclass
class ClassDef:
    name: str
    doc: str
    signature: str  # __init__'s parameters after self: ", in_channels, planes, stride=1"
    init_lines: list  # [str] (a statement may span several lines)
    methods: list  # [(name, [args], [str])]

    def body(self) -> str:
        return repr((self.doc, self.signature, self.init_lines, self.methods))


@dataclass
class Member:
    unit: Unit
    slots: list  # per constant of the group's template: the instance's Const, or None where it lacks the line
    notes: list  # per template line: the instance's note, or None
    absent: frozenset = frozenset()  # optional submodules this instance does not have


@dataclass
class Group:
    lines: list  # template lines: __init__'s, then each method's
    sections: list  # [(method name, args, number of lines)], "__init__" first
    members: list
    optional: dict = field(default_factory=dict)  # attr -> (its forward variable, what stands for it when absent)


@dataclass(frozen=True)
class Expr:
    """The product of `terms` (parameters: ("arg", name) or ("dim", input index, axis)) and `k`."""

    terms: tuple
    k: int = 1


def _is_int(v) -> bool:
    return type(v) is int


class Sharing:
    """Decides every unit's class. `decls[block]` lists the block's args as (name, default or NO);
    `name_class(base, ClassDef)` names a class (reusing the name of an identical one); `avoid` holds
    names a parameter must not take (classes, imports, helpers)."""

    def __init__(self, decls: dict, name_class, avoid: set, fmt_note, ident):
        self.decls, self.name_class, self.avoid = decls, name_class, avoid
        self.fmt_note, self.ident = fmt_note, ident
        self.calls: dict = {}  # uid -> Call

    # -- order ---------------------------------------------------------------------------------
    def run(self, units: list) -> None:
        """Decide all `units` (children created before their parents), a block's instances together."""
        def group_of(u):
            return ("block", u.block) if u.kind == "block" else (u.kind, u.uid)

        deps, members, order, pos = {}, {}, [], {}
        uid_group = {u.uid: group_of(u) for u in units}
        for u in units:
            g = group_of(u)
            if g not in members:
                members[g], deps[g], pos[g] = [], set(), len(order)
                order.append(g)
            members[g].append(u)
            deps[g] |= {uid_group[c] for c in self._children(u)}  # itself too, for a block holding itself
        # Kahn's order over groups, earliest first; a block that (through others) holds itself is
        # left to the end, one instance at a time.
        users: dict = {}
        for g in order:
            for d in deps[g]:
                users.setdefault(d, []).append(g)
        waiting = {g: len(deps[g]) for g in order}  # groups each still waits for
        ready = [pos[g] for g in order if not waiting[g]]  # a heap of positions in `order`
        while ready:
            g = order[heapq.heappop(ready)]
            self.decide(members[g])
            for h in users.get(g, []):
                waiting[h] -= 1
                if not waiting[h]:
                    heapq.heappush(ready, pos[h])
        for u in units:
            if u.uid not in self.calls:
                self.decide([u])

    @staticmethod
    def _children(u: Unit) -> list:
        out: list = []
        for line in u.init:
            child_uids(line.code, out)
        for _, _, lines in u.methods:
            for line in lines:
                child_uids(line.code, out)
        return out

    # -- grouping ------------------------------------------------------------------------------
    def decide(self, units: list) -> list:
        """Classes for `units` (instances of one block, or one cell or root); returns the ClassDefs."""
        exact: dict = {}
        for u in units:
            lines = [Line(substitute(ln.code, self.calls), ln.lhs, ln.note, ln.attr, ln.call) for ln in u.init]
            sections = [("__init__", [], len(lines))]
            for name, args, mlines in u.methods:
                lines += [Line(substitute(ln.code, self.calls), ln.lhs, ln.note, ln.attr, ln.call) for ln in mlines]
                sections.append((name, list(args), len(mlines)))
            k = (u.doc, repr(sections), tuple((ln.lhs, ln.attr, ln.call, key(ln.code)) for ln in lines))
            member = Member(u, [c for ln in lines for c in consts(ln.code, [])], [ln.note for ln in lines])
            if k in exact:
                exact[k].members.append(member)
            else:
                exact[k] = Group(lines, sections, [member])
        kept: list[Group] = []
        for g in sorted(exact.values(), key=lambda g: -g.sections[0][2]):  # fuller classes first
            if not any(self.merge(f, g) for f in kept):
                kept.append(g)
        out = []
        for g in sorted(kept, key=lambda g: min(m.unit.uid for m in g.members)):
            g.members.sort(key=lambda m: m.unit.uid)
            out += self.solve(g, g.members)
        return out

    def _optional(self, g: Group) -> dict:
        """Submodules `g`'s class could do without: attr -> (init line, forward line) indices, for
        attrs set by one `__init__` line and used by one forward line binding one value."""
        n_init = g.sections[0][2]
        inits, uses = {}, {}
        for i, ln in enumerate(g.lines):
            if ln.attr:
                (inits if i < n_init else uses).setdefault(ln.attr, []).append(i)
        return {a: (ix[0], uses[a][0]) for a, ix in inits.items()
                if len(ix) == 1 and len(uses.get(a, ())) == 1 and g.lines[uses[a][0]].call
                and g.lines[ix[0]].lhs == f"self.{a}"}

    def merge(self, f: Group, g: Group) -> bool:
        """Merge `g` into `f` when `g`'s class is `f`'s without some optional submodules."""
        if [s[:2] for s in f.sections] != [s[:2] for s in g.sections] or f.members[0].unit.doc != g.members[0].unit.doc:
            return False
        opt = self._optional(f)
        by_line = {i: a for a, ix in opt.items() for i in ix}
        removed, line_map, j = {}, [], 0
        for i, ln in enumerate(f.lines):
            other = g.lines[j] if j < len(g.lines) else None
            if i in by_line and (other is None or not self._same(ln, other, {}, {})):
                a = by_line[i]
                removed.setdefault(a, f.lines[opt[a][1]].lhs)
                line_map.append(None)
                continue
            line_map.append(j)
            j += 1
        if j != len(g.lines) or not removed:
            return False
        if any(line_map[opt[a][0]] is not None or line_map[opt[a][1]] is not None for a in removed):
            return False  # a submodule's two lines must go together
        gone = set(removed.values())
        alt: dict = {}
        for i, jj in enumerate(line_map):
            if jj is not None and not self._same(f.lines[i], g.lines[jj], gone, alt):
                return False
        if set(alt) != gone or any(f.optional.get(a, (v, alt[v]))[1] != alt[v] for a, v in removed.items()):
            return False
        if any(alt[v] not in self._bound_before(f, opt[a][1]) for a, v in removed.items()):
            return False  # `v = self.a(x) if ... else w` needs w bound by then
        # Map g's constants and notes onto f's lines.
        counts = [len(consts(ln.code, [])) for ln in f.lines]
        starts_g = [0]
        for ln in g.lines:
            starts_g.append(starts_g[-1] + len(consts(ln.code, [])))
        for m in g.members:
            slots, notes = [], []
            for i, jj in enumerate(line_map):
                slots += [None] * counts[i] if jj is None else m.slots[starts_g[jj]:starts_g[jj + 1]]
                notes.append(None if jj is None else m.notes[jj])
            f.members.append(Member(m.unit, slots, notes, m.absent | frozenset(removed)))
        for a, v in removed.items():
            f.optional[a] = (v, alt[v])
        return True

    @staticmethod
    def _bound_before(g: Group, i: int) -> set:
        """Variables bound before line `i` of its method: the method's arguments and earlier targets."""
        start = 0
        for _, args, count in g.sections:
            if i < start + count:
                return set(args) | {v.strip("() ") for ln in g.lines[start:i] for v in ln.lhs.split(",")}
            start += count
        return set()

    @staticmethod
    def _same(a: Line, b: Line, gone: set, alt: dict) -> bool:
        """Whether lines `a` and `b` agree but for constants, reading a variable of `gone` in `a` as the
        one `b` has there (recorded in `alt`, consistently)."""
        if (a.lhs, a.attr, a.call) != (b.lhs, b.attr, b.call) or len(a.code) != len(b.code):
            return False
        for p, q in zip(a.code, b.code):
            if isinstance(p, str) and isinstance(q, str):
                if q.strip() in gone:
                    return False  # b has a variable of that name itself: reading it as another is wrong
                if p != q:
                    name = p.strip()
                    if name not in gone or not q.strip().isidentifier() or alt.setdefault(name, q.strip()) != q.strip():
                        return False
            elif isinstance(p, str) or isinstance(q, str) or key((p,)) != key((q,)):
                return False
        return True

    # -- expressions ---------------------------------------------------------------------------
    def find(self, values: list, units: list) -> Expr | None:
        """An expression giving `values[k]` in `units[k]` for every k, or None. Tried in order: an
        arg, a dim of an input (what a module reads off its input is best said so), an arg times an
        integer, a dim times an integer, a product of two of those. The first that fits every
        instance wins: a coincidence can pick an odd expression, never a wrong one."""
        args = [(("arg", a), [u.args.get(a, NO) for u in units]) for a, _ in self.decls.get(units[0].block, [])]
        for p, xs in args:
            if all(same(x, v) for x, v in zip(xs, values)):
                return Expr((p,))
        if not all(_is_int(v) for v in values):
            return None
        shapes = [[t.shape for _, t in u.inputs] for u in units]
        ins = [(("dim", j, axis), [s[j][axis] if len(s) > j and len(s[j]) == len(t.shape) else NO for s in shapes])
               for j, (_, t) in enumerate(units[0].inputs) for axis in range(t.rank)]
        ints = [(p, xs) for p, xs in args + ins if all(_is_int(x) and x > 0 for x in xs)]

        def scaled(p, xs):
            k = values[0] // xs[0]
            return Expr((p,), k) if k >= 2 and all(v == x * k for v, x in zip(values, xs)) else None

        for p, xs in ins:
            if all(same(x, v) for x, v in zip(xs, values)):
                return Expr((p,))
        for p, xs in ints:
            e = scaled(p, xs) if p[0] == "arg" else None
            if e:
                return e
        for p, xs in ints:
            e = scaled(p, xs) if p[0] == "dim" else None
            if e:
                return e
        ints.sort(key=lambda t: t[0][0] != "dim")  # `in_channels * t`, dims first
        for i, (p, xs) in enumerate(ints):
            for q, ys in ints[i + 1:]:
                if q[0] == "arg" and all(v == x * y for v, x, y in zip(values, xs, ys)):
                    return Expr((p, q))
        return None

    def solve(self, g: Group, members: list) -> list:
        """ClassDefs for `members` of group `g`: one, unless some constant has no expression."""
        exprs = []
        for s in range(len(members[0].slots)):
            active = [m for m in members if m.slots[s] is not None]
            if not active:
                exprs.append(None)
                continue
            vals = [m.slots[s].value for m in active]
            if all(same(v, vals[0]) for v in vals):
                exprs.append(active[0].slots[s])
                continue
            e = self.find(vals, [m.unit for m in active])
            if e is None:  # split by this constant's value; instances without it join the first part
                parts: dict = {}
                for m in members:
                    c = m.slots[s]
                    parts.setdefault(None if c is None else (type(c.value).__name__, repr(c.value)), []).append(m)
                split = [p for k, p in parts.items() if k is not None]
                split[0] += parts.get(None, [])
                split[0].sort(key=lambda m: m.unit.uid)
                return [c for p in split for c in self.solve(g, p)]
            exprs.append(e)
        return [self.build(g, members, exprs)]

    # -- writing a class -----------------------------------------------------------------------
    def build(self, g: Group, members: list, exprs: list) -> ClassDef:
        u0 = members[0].unit
        n_init = g.sections[0][2]
        starts = [0]
        for ln in g.lines:
            starts.append(starts[-1] + len(consts(ln.code, [])))
        absent_all = {a for a in g.optional if all(a in m.absent for m in members)}
        flags = [a for a in g.optional if a not in absent_all and any(a in m.absent for m in members)]
        rename = {g.optional[a][0]: g.optional[a][1] for a in absent_all}
        for v in list(rename):  # a stand-in may itself stand in for another
            while rename[v] in rename:
                rename[v] = rename[rename[v]]
        # The parameters, in signature order: input dims, required args, args with a default, flags.
        used = {p for e in exprs if isinstance(e, Expr) for p in e.terms}
        in_forward = {p for i in range(n_init, len(g.lines)) for s in range(starts[i], starts[i + 1])
                      if isinstance(exprs[s], Expr) for p in exprs[s].terms}
        decl = self.decls.get(u0.block, []) if u0.kind == "block" else []
        defaults = dict(decl)
        params = sorted(p for p in used if p[0] == "dim")
        params += [("arg", a) for a, d in decl if ("arg", a) in used and d is NO]
        params += [("arg", a) for a, d in decl if ("arg", a) in used and d is not NO]
        params += [("flag", a) for a in flags]
        names, taken = {}, set(self.avoid)
        for p in params:
            base = self._dim_name(u0, p) if p[0] == "dim" else p[1]
            names[p] = self._fresh(self.ident(base), taken)
        attrs_taken = {ln.attr for ln in g.lines[:n_init]} | set(MODULE_MEMBERS)
        stored = {p: self._fresh(names[p], attrs_taken) for p in params if p in in_forward}

        def text(e, forward: bool) -> tuple:
            if isinstance(e, Const) or e is None:
                return (e.text, e.value) if e is not None else ("None", NO)
            parts = [f"self.{stored[p]}" if forward else names[p] for p in e.terms] + ([str(e.k)] if e.k != 1 else [])
            return " * ".join(parts), NO

        sig = []
        for p in params:
            d = defaults.get(p[1], NO) if p[0] == "arg" else (False if p[0] == "flag" else NO)
            sig.append(names[p] if d is NO else f"{names[p]}={d!r}")
        init = [f"self.{stored[p]} = {names[p]}" for p in params if p in stored]
        methods, i = [], 0
        for sname, sargs, count in g.sections:
            out = []
            for ln in g.lines[i:i + count]:
                slots = iter([text(exprs[s], i >= n_init) for s in range(starts[i], starts[i + 1])])
                opt = ln.attr if ln.attr in g.optional else ""  # its one init line or its one forward line
                if opt in absent_all:
                    i += 1
                    continue
                lead = 8 + len(ln.lhs) + 3  # `        self.layer1 = `
                code = render(ln.code, slots, rename if i >= n_init else None, lead)
                if opt in flags:
                    code += (f" if {names[('flag', opt)]} else None" if i < n_init else
                             f" if self.{opt} is not None else {rename.get(g.optional[opt][1], g.optional[opt][1])}")
                stmt = f"{ln.lhs} = {code}" if ln.lhs else code
                note = self._note([m.notes[i] for m in members if m.notes[i] is not None], [m.unit for m in members
                                                                                          if m.notes[i] is not None])
                lines = stmt.split("\n")
                if note:
                    lines[0] += "  # " + note
                out += lines
                i += 1
            if sname == "__init__":
                init += out
            else:
                methods.append((sname, sargs, out))
        cls = ClassDef("", u0.doc, "".join(", " + s for s in sig), init, methods)
        cls.name = self.name_class(u0.base, cls, u0.kind)
        for m in members:
            args = []
            for p in params:
                if p[0] == "flag":
                    v, d, kw = p[1] not in m.absent, False, names[p]
                elif p[0] == "dim":
                    v, d, kw = m.unit.inputs[p[1]][1].shape[p[2]], NO, ""
                else:
                    v, d = m.unit.args[p[1]], defaults[p[1]]
                    kw = "" if d is NO else names[p]
                args.append((kw, (Const(repr(v), v),), d))
            self.calls[m.unit.uid] = m.unit.call = Call(cls.name, tuple(args))
        return cls

    @staticmethod
    def _fresh(name: str, taken: set) -> str:
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    @staticmethod
    def _dim_name(u: Unit, p: tuple) -> str:
        """`in_channels` (axis 1 of an [N, C, ...] input), `in_features` (the last axis), else `in_dim2`;
        prefixed with the input's name when the block has several inputs."""
        _, j, axis = p
        t = u.inputs[j][1]
        what = "channels" if axis == 1 and t.rank >= 3 else "features" if axis == t.rank - 1 else f"dim{axis}"
        return f"in_{what}" if len(u.inputs) == 1 else f"{u.inputs[j][0]}_{what}"

    def _note(self, notes: list, units: list) -> str:
        """The comment of a line shared by instances: their dims where equal, else the block arg
        expression that gives them, else `?`."""
        if not notes:
            return ""
        first = notes[0]
        if all(n == first for n in notes) or not isinstance(first, Note):
            return self.fmt_note(first)
        if any(not isinstance(n, Note) or len(n.types) != len(first.types) for n in notes):
            return ""
        types = []
        for k, t in enumerate(first.types):
            ts = [n.types[k] for n in notes]
            if any(x.rank != t.rank or x.dtype != t.dtype for x in ts):
                return ""
            dims = []
            for axis in range(t.rank):
                vals = [x.shape[axis] for x in ts]
                if all(str(v) == str(vals[0]) for v in vals):
                    dims.append(str(vals[0]))
                    continue
                e = self.find(vals, units)
                names = [self._dim_name(units[0], p) if p[0] == "dim" else p[1] for p in e.terms] if e else []
                if not e or any("_dim" in nm for nm in names):  # `in_dim2` would say less than `?`
                    dims.append("?")
                else:
                    dims.append("*".join(names + ([str(e.k)] if e.k != 1 else [])))
            types.append(t.with_shape(tuple(dims)))
        return self.fmt_note(Note(tuple(types), first.where if all(n.where == first.where for n in notes) else ""))
