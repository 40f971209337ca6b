"""Pipeline stages in the torch target: one `nn.Module` class per stage, written after the whole
model's class in the same model.py.

The stages are the forward graph's `graph.stages` (recorded by the split_stages pass from the
`stage` marks partition_pipeline left). For each stage the file gets a class whose `forward` takes
the tensors the stage receives as keyword-able arguments, named by the tensors (`layer1_2_relu3`
for IR value `layer1.2.relu3`; stage 0 takes the model's own inputs), and returns a dict of the
tensors it sends on under the same names, so `stage1(**stage0(image=x))` runs the first two; the
last stage returns what the whole model's forward returns. Each class also lists `inputs`,
`outputs` and `prefixes` (the state-dict key prefixes of its modules); `STAGES` lists the classes
in order and `split_state_dict(state_dict)` splits the whole model's state dict among them by
those prefixes, keys unchanged, since every module sits at its whole-model path:

1. A block instance wholly inside the stage is built by the whole model's own class for it
   (`Bottleneck(256, 64)`); a repeat wholly inside it and chained as in the whole model is one
   `nn.Sequential`, as there.
2. A block instance a cut goes through is opened up: its nodes in this stage are written one by
   one, as the whole model's forward would run them, their modules at the same paths inside
   `nn.Module()` containers (`nn.ModuleDict()` for a repeat's numbered instances).
3. A tie between two modules of one stage is kept; a parameter tied to one in another stage is a
   copy of its own (the stages' gradients for it then add up to the whole model's).
4. The recompute `--memory` / `--remat-budget` planned for a stage (partition_pipeline's
   `marks["stage_remat"] = k`) runs: the lines of segment k go into a method `segment<k>` of the
   stage, which `forward` calls through torch.utils.checkpoint.checkpoint(..., use_reentrant=False),
   as the whole-model lowering does for the rematerialize pass's segments (checkpoint.py), with its
   `RecomputeKeepsBuffers` context when the segment holds buffers. A block instance (or a chained
   repeat) whose nodes are not all in one segment, or all outside any, is written node by node as
   in rule 2, so a segment is exactly the nodes the plan marked.
"""
from __future__ import annotations

from nnspec.compiler.errors import LoweringError
from nnspec.compiler.partition import instance_keys

from .checkpoint import CALL, IMPORT, KEEP, SNIPPETS
from .codegen import Codegen, class_ident, docstring, fmt_note, ident, init_line
from .pieces import Items, consts, ctor, render
from .share import Note

STAGE_NAMES = ("STAGES", "split_state_dict")  # module-level names the stage section defines


def generate_source(program, class_name: str | None = None) -> tuple[str, str]:
    """(source, whole-model class name) of the program's model.py: the whole model, then one class per
    pipeline stage when the forward graph has stages (else exactly `codegen.generate_source`)."""
    if not program.forward.stages:
        from .codegen import generate_source as whole
        return whole(program, class_name)
    import gc

    cg = StageCodegen(program)
    enabled = gc.isenabled()
    gc.disable()  # as codegen.generate_source: many small objects, no cyclic garbage
    try:
        src = cg.generate(class_name)
    finally:
        if enabled:
            gc.enable()
    return src, cg.root_name


def build_stages(program, seed: int | None = 0):
    """(whole module, [stage modules]) from the program's model.py with its stages: the whole model
    with the IR's initial weights for `seed` (as build.build_module), each stage loaded strictly with
    its part of the whole model's state dict (`split_state_dict`, keys unchanged)."""
    import hashlib

    import torch

    from .build import load_arrays, load_source
    from nnspec.targets.initialise import initial_weights

    src, cls = generate_source(program)
    mod = load_source(src, f"nnspec_stages_{program.spec.name}_{hashlib.sha256(src.encode()).hexdigest()[:12]}")
    if seed is not None:
        torch.manual_seed(seed)
    whole = getattr(mod, cls)()
    if seed is not None:
        load_arrays(whole, program, initial_weights(program, seed))
    stages = [c() for c in mod.STAGES]
    for stage, part in zip(stages, mod.split_state_dict(whole.state_dict())):
        stage.load_state_dict(part, strict=True)
    return whole, stages


class StageCodegen(Codegen):
    """The whole model's generator, remembering which class renders each block instance and scan
    cell of the forward graph, then writing the stage classes after the model."""

    def __init__(self, program):
        super().__init__(program)
        self.instance_of: dict = {}  # (graph id, instance key) -> share.Unit
        self.cell_of: dict = {}  # (graph id, scan node id) -> unit uid
        self.taken |= set(STAGE_NAMES)

    def instance_unit(self, g, key, depth, nodes):
        u = super().instance_unit(g, key, depth, nodes)
        self.instance_of[(id(g), key)] = u
        return u

    def body_class(self, n):
        uid = super().body_class(n)
        self.cell_of[n.id] = uid
        return uid

    def generate(self, class_name: str | None = None) -> str:
        src = super().generate(class_name)
        stages = _Stages(self)
        section = stages.text().rstrip("\n")
        if stages.checkpointed:  # rule 4: the stages' recompute needs torch.utils.checkpoint
            if f"\n{IMPORT}\n" not in src:
                after = next(a for a in ("\nimport torch.nn.functional as F\n", "\nimport torch.nn as nn\n") if a in src)
                head, sep, rest = src.partition(after)
                src = head + sep + IMPORT + "\n" + rest
            if stages.keeps_buffers and f"class {KEEP}:" not in src:
                section = SNIPPETS[KEEP].strip() + "\n\n\n" + section
        return src.rstrip("\n") + "\n\n\n" + section + "\n"


def _render_call(call) -> str:
    pieces = (call,)
    return render(pieces, iter([(c.text, c.value) for c in consts(pieces, [])]))


def _render(pieces: tuple, width: int = 0) -> str:
    return render(pieces, iter([(c.text, c.value) for c in consts(pieces, [])]), None, width)


class _Tree:
    """The module containers of one stage: every path a module sits at, and how to reach it."""

    def __init__(self):
        self.made: dict = {}  # path tuple -> "obj" | "dict" (containers) | "leaf" (a module)
        self.init: list = []  # __init__ statements
        self.prefixes: list = []  # state-dict prefixes of the leaves

    def expr(self, path: tuple) -> str:
        """`self.layer2["0"].conv1`: containers are reached by key, the insides of a leaf (a block's
        class, an nn.Sequential, an op's module) by attribute and index as that class has them."""
        out, inside = "self", False
        for d, seg in enumerate(path):
            if d == 0:
                out += "." + ident(seg)
            elif inside:
                out += f"[{seg}]" if seg.isdigit() else "." + ident(seg)
            else:
                out += f'["{seg}"]' if seg.isdigit() else "." + ident(seg)
            if self.made.get(path[:d + 1]) == "leaf":
                inside = True
        return out

    def place(self, path: tuple, ctor_text: str) -> str:
        """Create the containers down to `path`, put the module there; its expression."""
        for d in range(1, len(path)):
            head = path[:d]
            if head not in self.made:
                kind = "dict" if path[d].isdigit() else "obj"
                self.made[head] = kind
                self.init.append(f"{self.expr(head)} = {'nn.ModuleDict()' if kind == 'dict' else 'nn.Module()'}")
        self.made[path] = "leaf"
        target = self.expr(path)
        lines = ctor_text.split("\n")
        self.init.append(f"{target} = {lines[0]}")
        self.init.extend(lines[1:])
        self.prefixes.append(".".join(s if s.isdigit() else ident(s) for s in path) + ".")
        return target


class _Stages:
    """The stage section of model.py for a StageCodegen that has generated the whole model."""

    def __init__(self, cg: StageCodegen):
        self.cg = cg
        self.g = cg.program.forward
        self.root = cg.root_name
        order = self.g.topo()
        self.index = {n.id: i for i, n in enumerate(order)}
        self.total: dict = {}  # instance key -> its node count
        for n in order:
            for key in instance_keys(n):
                self.total[key] = self.total.get(key, 0) + 1
        self.names = self._boundary_names()
        self.checkpointed = False  # some stage runs a recompute segment (rule 4)
        self.keeps_buffers = False  # ... holding buffers, so RecomputeKeepsBuffers is needed

    # -- names of the tensors between stages ---------------------------------------------------
    def _boundary_names(self) -> dict:
        """(node, port) -> the argument / dict key naming it; graph inputs keep their names."""
        g = self.g
        used = set(self.cg.reserved_vars) | {n.attrs.name for n in g.inputs()}
        names = {(n.id, 0): n.attrs.name for n in g.inputs()}
        refs = sorted({r for s in g.stages for r in s.inputs + s.outputs}, key=lambda r: (self.index[r[0]], r[1]))
        for nid, port in refs:
            if (nid, port) in names:
                continue
            node = g.node(nid)
            base = nid.replace(".", "_") + (f"_{node.out_names[port]}" if len(node.outputs) > 1 else "")
            names[(nid, port)] = self.cg.fresh(base, used)
        return names

    # -- the section ---------------------------------------------------------------------------
    def text(self) -> str:
        taken = self.cg.taken
        classes, out = [], []
        for s in self.g.stages:
            name = class_ident(f"{self.root}Stage{s.index}", taken)
            taken.add(name)
            classes.append(name)
            out.append(self.stage_class(s, name))
        out.append(f"STAGES = ({', '.join(classes)}{',' if len(classes) == 1 else ''})  # in pipeline order")
        out.append('def split_state_dict(state_dict):\n'
                   '    """The whole model\'s state dict as one dict per stage (keys unchanged), by each\n'
                   '    stage\'s `prefixes`."""\n'
                   '    return [{k: v for k, v in state_dict.items() if k.startswith(cls.prefixes)} for cls in STAGES]')
        return "\n\n\n".join(out) + "\n"

    def stage_class(self, s, name: str) -> str:
        cg, g = self.cg, self.g
        k = len(g.stages)
        nodes = [n for n in g.topo() if n.op != "input" and n.stage == s.index]
        here: dict = {}
        for n in nodes:
            for key in instance_keys(n):
                here[key] = here.get(key, 0) + 1
        whole = {key for key, c in here.items() if c == self.total[key]}
        # rule 4: an instance is called whole only when its nodes share one segment (or none)
        marks: dict = {}
        for n in nodes:
            for key in instance_keys(n):
                marks.setdefault(key, set()).add(_segment(n))
        whole = {key for key in whole if len(marks[key]) == 1}
        tree = _Tree()
        names = {ref: self.names[ref] for ref in s.inputs}
        args = [self.names[ref] for ref in s.inputs]
        used = set(args) | set(cg.reserved_vars)
        lines: list = []
        done: set = set()
        segments = _StageSegments(self, tree, names, used, lines)
        for n in nodes:
            if any(key in done for key in instance_keys(n)):
                continue
            before = set(done)
            item: list = []
            for key in instance_keys(n):
                if key in whole and self._instance(key, tree, names, used, item, whole, done):
                    covered = [x for x in nodes if any(kk in done and kk not in before for kk in instance_keys(x))]
                    break
            else:
                self._node(n, tree, names, used, item)
                covered = [n]
            segments.add(_segment(covered[0]), covered, item)
        segments.close()
        last = s.index == k - 1
        if last:
            outs = [names[ref] for ref in g.outputs.values()]
            lines.append("return " + ", ".join(outs))
            out_names = list(g.outputs)
        else:
            out_names = [self.names[ref] for ref in s.outputs]
            lines.append("return {" + ", ".join(f"{nm!r}: {names[ref]}" for nm, ref in zip(out_names, s.outputs)) + "}")
        ids = {x.id for x in nodes}
        for n in nodes:  # ties within the stage (rule 3)
            for pname, target in sorted(n.ties.items()):
                tid, _, tp = target.rpartition(".")
                owner = next((c for c in _prefixes(tid) if c in ids), None)
                if owner is not None:
                    tree.init.append(f"{tree.expr(tuple(n.id.split('.')))}.{pname} = {tree.expr(tuple(tid.split('.')))}.{tp}"
                                     "  # tied")
        recv = ", ".join(self.names[r] for r in s.inputs)
        doc = (f"Pipeline stage {s.index} of {k} of {self.root}: nodes {s.first} .. {s.last} ({s.nodes}).\n"
               f"Receives {recv or 'nothing'}; " +
               (f"returns what {self.root}.forward returns." if last else f"returns {{{', '.join(out_names)}}}."))
        if segments.methods:
            doc += (f"\nRecomputes {len(segments.methods)} segment(s) in backward (torch.utils.checkpoint)"
                    " to fit the memory the plan allows.")
        body = [f"class {name}(nn.Module):", f"    {docstring(doc, '    ')}", "",
                f"    inputs = {tuple(args)!r}", f"    outputs = {tuple(out_names)!r}",
                _tuple_lines("prefixes", tree.prefixes, "    "), "", "    def __init__(self):", "        super().__init__()"]
        body += ["        " + ln for stmt in tree.init for ln in stmt.split("\n")]
        body += ["", f"    def forward(self{''.join(', ' + a for a in args)}):"]
        body += ["        " + ln for stmt in lines for ln in stmt.split("\n")]
        for mname, margs, mlines, mdoc in segments.methods:
            body += ["", f"    def {mname}(self{''.join(', ' + a for a in margs)}):", f"        {docstring(mdoc, '        ')}"]
            body += ["        " + ln for stmt in mlines for ln in stmt.split("\n")]
        return "\n".join(body)

    # -- what a stage runs ---------------------------------------------------------------------
    def _instance(self, key, tree, names, used, lines, whole, done) -> bool:
        """Call block instance `key` through its whole-model class (rule 1); False when one of its
        inputs is not available here (then its nodes are written one by one)."""
        cg, g = self.cg, self.g
        inst = g.instances[key]
        if any(r not in names for r in inst.in_refs):
            return False
        parts = key.split(".")
        if parts[-1] == "0" and len(parts) > 1:
            chain = cg.chained_list(g, key)
            if chain and all(c in whole for c in chain):
                calls = tuple((cg.instance_of[(id(g), c)].call,) for c in chain)
                path = tuple(parts[:-1])
                target = tree.expr(path)
                tree.place(path, _render((Items("nn.Sequential", calls),), 8 + len(target) + 3))
                first, lastk = g.instances[chain[0]], g.instances[chain[-1]]
                note = Note((self._type(lastk.out_refs[0]),), self._where(chain[0]))
                self._bind(lastk.out_refs, ["out"], parts[-2], f"{target}({names[first.in_refs[0]]})", names, used,
                           lines, note)
                done.update(chain)
                return True
        u = cg.instance_of[(id(g), key)]
        target = tree.place(tuple(parts), _render_call(u.call))
        base = f"{parts[-2]}_{parts[-1]}" if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
        note = Note(tuple(self._type(r) for r in inst.out_refs), self._where(key))
        self._bind(inst.out_refs, inst.out_names, base, f"{target}({', '.join(names[r] for r in inst.in_refs)})",
                   names, used, lines, note)
        done.add(key)
        return True

    def _node(self, n, tree, names, used, lines) -> None:
        """One node as the whole model's forward runs it, its module at its whole-model path (rule 2)."""
        cg, g = self.cg, self.g
        path = tuple(n.id.split("."))
        m = tree.expr(path)
        ins = [names[ref] for ref in g.inputs_of(n.id)]
        code = n.opdef.to_torch(n.attrs, ins, m, n)
        if n.body is not None:
            tree.place(path, _render_call(cg.units[cg.cell_of[n.id]].call))
        elif code.init is not None:
            tree.place(path, _render(ctor(code.init), 8 + len(m) + 3))
            for pname, init_ in n.init.items():
                tree.init.append(init_line(f"{m}.{pname}", init_))
        outs = [(n.id, i) for i in range(len(n.outputs))]
        out_names = n.out_names if len(n.outputs) > 1 else ["out"]
        if code.temps:
            code = code.with_temps({t: cg.fresh(f"{n.local}_{t}", used) for t in code.temps})
        lines.extend(code.stmts)
        note = Note(tuple(n.outputs), cg.where(n.loc))
        self._bind(outs, out_names, n.local, code.expr, names, used, lines, note)

    def _bind(self, refs, out_names, base, expr, names, used, lines, note) -> None:
        cg = self.cg
        if len(refs) == 1:
            var = cg.fresh(base, used)
            targets = var
            names[refs[0]] = var
        else:
            vars_ = [cg.fresh(f"{base}_{o}", used) for o in out_names]
            targets = ", ".join(vars_)
            for r, v in zip(refs, vars_):
                names.setdefault(r, v)
        text = fmt_note(note)
        lines.append(f"{targets} = {expr}" + (f"  # {text}" if text else ""))

    def _where(self, key: str) -> str:
        """Where block instance `key` was instantiated (the frame its nodes' chains hold for it)."""
        for n in self.g.topo():
            if key in instance_keys(n):
                for fr in n.chain:
                    if fr.instance == key:
                        return self.cg.where(fr.loc)
                return ""
        return ""

    def _type(self, ref):
        nid, port = ref
        return self.g.node(nid).outputs[port]


def _tuple_lines(name: str, items: list, indent: str, width: int = 100) -> str:
    """`name = ('a', 'b')`, wrapped one indented run of items per line when it is too long."""
    one = f"{indent}{name} = {tuple(items)!r}"
    if len(one) <= width:
        return one
    lines, cur = [], ""
    for text in (repr(x) + "," for x in items):
        if cur and len(indent) + 4 + len(cur) + 1 + len(text) > width:
            lines.append(cur)
            cur = text
        else:
            cur = f"{cur} {text}" if cur else text
    lines.append(cur)
    return "\n".join([f"{indent}{name} = ("] + [f"{indent}    {ln}" for ln in lines] + [f"{indent})"])


def _segment(node):
    """The stage recompute segment a node is in (partition_pipeline's `stage_remat` mark), or None."""
    return node.marks.get("stage_remat")


class _StageSegments:
    """Rule 4: collects one stage's forward item by item; the items of a recompute segment go into a
    method of the stage, and forward gets the checkpoint call in their place."""

    def __init__(self, stages: "_Stages", tree: _Tree, names: dict, used: set, lines: list):
        self.st, self.tree, self.names, self.used, self.lines = stages, tree, names, used, lines
        self.current = None  # (segment, [node], [line]) of the open segment
        self.methods: list = []  # (name, [arg], [line], docstring)

    def add(self, k, nodes: list, item: list) -> None:
        if self.current is not None and self.current[0] != k:
            self.close()
        if k is None:
            self.lines.extend(item)
            return
        if self.current is None:
            self.current = (k, [], [])
        self.current[1].extend(nodes)
        self.current[2].extend(item)

    def close(self) -> None:
        if self.current is None:
            return
        k, nodes, body = self.current
        self.current = None
        g, names = self.st.g, self.names
        inside = {n.id for n in nodes}
        args, outs = [], []
        for n in nodes:  # what the segment reads from before it: its arguments
            for ref in g.inputs_of(n.id):
                var = names.get(ref)
                if ref[0] not in inside and var is not None and var not in args:
                    args.append(var)
        here = nodes[0].stage
        returned = set(g.outputs.values())
        for n in nodes:  # what is read after it (later in this stage, or by a later stage): its results
            for port in range(len(n.outputs)):
                ref = (n.id, port)
                read_after = ref in returned or any(dst not in inside for dst, _, p in g.users(n.id) if p == port)
                var = names.get(ref)
                if read_after and var is not None and var not in outs and var not in args:
                    outs.append(var)
        span = nodes[0].id if len(nodes) == 1 else f"{nodes[0].id} .. {nodes[-1].id}"
        if not outs:  # dead code elimination leaves no node unread
            raise LoweringError(f"recompute segment {k} of pipeline stage {here} ({span}) has no value read after it")
        taken = {ident(path[0]) for path in self.tree.made} | {m[0] for m in self.methods}
        name, i = f"segment{k}", 2
        while name in taken:
            name, i = f"segment{k}_{i}", i + 1
        self.methods.append((name, args, body + ["return " + ", ".join(outs)],
                             f"Recompute segment {k}: {span}, run again in backward instead of kept."))
        self.st.checkpointed = True
        buffers = any(p.buffer for n in nodes for p in n.params.values())
        self.st.keeps_buffers |= buffers
        # in backward the segment runs again on its saved arguments instead of keeping what its nodes
        # saved; the buffer context keeps batch norm from updating its running statistics twice
        context = f", context_fn={KEEP}(self)" if buffers else ""
        self.lines.append(f"# segment {k}: {span}, recomputed in backward\n"
                          f"{', '.join(outs)} = {CALL}(\n"
                          f"    self.{name}, {''.join(a + ', ' for a in args)}use_reentrant=False{context})")


def _prefixes(dotted: str) -> list:
    """`a.b.c` -> [a.b.c, a.b, a]: the node ids a parameter path could belong to, longest first."""
    parts = dotted.split(".")
    return [".".join(parts[:d]) for d in range(len(parts), 0, -1)]


__all__ = ["generate_source", "build_stages", "StageCodegen", "STAGE_NAMES"]
