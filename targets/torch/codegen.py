"""PyTorch code generation: the IR -> one readable, standalone Python file.

The template (`model.py.j2`) holds the frame only; each op renders its own constructor and forward
expression (`Op.to_torch`). Every block instance is first rendered as a class of its own; instances
whose classes differ only in constants then share one parameterised class, torchvision's way
(`Bottleneck(in_channels, planes, stride=1, downsample=False)`; targets/torch/share.py decides
which, targets/torch/pieces.py holds the line representation that makes them comparable). A chained
`repeat` becomes an `nn.Sequential` (other repeats an `nn.ModuleList`), a scan's body a cell class
called in a loop, and `forward` is straight-line code whose variables are the spec's node names,
each line annotated with its type and spec location. State-dict keys equal IR node ids
(`layer1.0.conv1.weight`). Output is deterministic: same program, same bytes.
"""
from __future__ import annotations

import builtins
import gc
import io
import keyword
import re
import textwrap
import tokenize
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from nnspec.compiler.errors import LoweringError
from nnspec.compiler.ir.graph import Graph, Node

from . import checkpoint, folding
from .pieces import NO, Child, Items, ctor, lex, module_names
from .share import Line, Note, Sharing, Unit

RESERVED = {"self", "torch", "nn", "F", "math"} | set(dir(builtins))
TORCH_INIT = {
    "zeros": "nn.init.zeros_({p})",
    "ones": "nn.init.ones_({p})",
    "identity": "nn.init.eye_({p}) if {p}.dim() == 2 else nn.init.dirac_({p})",
    "normal": "nn.init.normal_({p}, mean={mean}, std={std})",
    "uniform": "nn.init.uniform_({p}, a={a}, b={b})",
    "constant": "nn.init.constant_({p}, {value})",
    "xavier_uniform": "nn.init.xavier_uniform_({p}, gain={gain})",
    "xavier_normal": "nn.init.xavier_normal_({p}, gain={gain})",
    "kaiming_normal": "nn.init.kaiming_normal_({p}, mode='fan_out', nonlinearity='relu')",
    "kaiming_uniform": "nn.init.kaiming_uniform_({p}, a=math.sqrt(5))",
    "orthogonal": "nn.init.orthogonal_({p}, gain={gain})",
    "trunc_normal": "nn.init.trunc_normal_({p}, mean={mean}, std={std}, a={a}, b={b})",
    "group_identity": "group_identity_({p}, groups={groups}, std={std})",
}
# Initialisers torch has no function for: the helper each one's TORCH_INIT line calls, written
# once into the file that uses it.
INIT_SNIPPETS = {"group_identity_": '''
def group_identity_(weight, groups, std):
    """Yu & Koltun's identity across widths: N(0, std^2) everywhere, then output channel b reads
    input channel a at the kernel centre with weight groups / out wherever
    floor(a * groups / in) == floor(b * groups / out) (the same of `groups` channel groups)."""
    out, inp, groups = weight.shape[0], weight.shape[1], int(groups)
    same = torch.arange(out)[:, None] * groups // out == torch.arange(inp) * groups // inp
    centre = (..., *[k // 2 for k in weight.shape[2:]])
    with torch.no_grad():
        nn.init.normal_(weight, std=std)
        weight[centre].masked_fill_(same, groups / out)
    return weight
'''}
INIT_HELPER = {"group_identity": "group_identity_"}  # initialiser -> the INIT_SNIPPETS entry it calls


@lru_cache(maxsize=1 << 16)
def ident(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    if keyword.iskeyword(name) or name in RESERVED or name[0].isdigit():
        name += "_"
    return name


def modpath(node_id: str) -> str:
    """Python attribute path of a node's module from the root: layer1.0.conv1 -> layer1[0].conv1."""
    return re.sub(r"\.(\d+)", r"[\1]", node_id)


def camel(name: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[_\W]+", name) if p) or "Block"


# Names a generated class must never take: the file's imports, keywords, builtins (block `none`
# would otherwise become `class None`), and the helpers ops add (`PositionalEncoding`, ...).
def taken_class_names() -> set:
    from nnspec.compiler.spec.names import helper_names
    return RESERVED | set(keyword.kwlist) | set(helper_names())


def class_ident(base: str, taken: set) -> str:
    """`base` made a fresh class name: an identifier not in `taken` (`Block1x`, `F_2`)."""
    name = base if base.isidentifier() and base.isascii() else "Block" + re.sub(r"\W", "", base)
    stem, k = name, 2
    while name in taken:
        name, k = f"{stem}_{k}", k + 1
    return name


# -- free text into code: only ever as inert data --------------------------------------------------
_DOC_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def docstring(text: str, indent: str = "") -> str:
    """`text` as a triple-quoted string literal whose value is exactly `text`: backslashes and quotes
    escaped, control and bidirectional-override characters written as escapes, lines indented."""
    body = text.replace("\\", "\\\\").replace('"', '\\"')
    body = _DOC_UNSAFE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), body)
    return '"""' + body.replace("\n", "\n" + indent) + '"""'


def comment(text: str) -> str:
    """`text` safe inside a `#` comment: one line, printable ASCII (everything else escaped)."""
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in str(text))


def _child_key(n: Node, depth: int) -> str:
    """Instance key (`layer1.0`, `enc`) of the child of the class at `depth` that holds node `n`."""
    levels = depth + (2 if n.scope[depth].kind == "list" else 1)
    return ".".join(s.name for s in n.scope[:levels])


def class_name_for(spec: str, preset: str | None) -> str:
    """resnet/resnet50 -> Resnet50, alexnet/paper -> AlexnetPaper, mlp -> Mlp."""
    if not preset:
        return camel(spec)
    return camel(preset) if preset.lower().startswith(spec.lower()) else camel(spec) + camel(preset)


def init_line(target: str, init) -> str:
    """`nn.init...` call for a parsed initialiser (`nnspec.compiler.init.Init`) of `target`."""
    args = {k: repr(float(v)) for k, v in init.args}  # numbers only, whatever the spec held
    return TORCH_INIT[init.name].format(p=target, **args)


def fmt_note(note) -> str:
    """A line's comment: `f32[N,64,56,56]  blocks/resnet.yaml:52`, ASCII-escaped."""
    if isinstance(note, Note):
        return comment(f"{', '.join(str(t) for t in note.types)}  {note.where}".strip())
    return comment(note) if note else ""


class Codegen:
    def __init__(self, program):
        self.program = program
        self.units: list[Unit] = []  # every class as rendered, children before their parents
        self.classes: list = []  # share.ClassDef, in file order
        self.by_body: dict[str, str] = {}  # class body -> name: identical classes are one
        self.helpers: dict[str, str] = {}  # snippet name -> code, from the ops' `torch_snippets`
        self._paths: dict[str, str] = {}  # location file -> its spec-relative path
        # class names in use or never to be used
        self.taken: set = taken_class_names() | set(folding.SNIPPETS) | set(checkpoint.SNIPPETS) | set(INIT_SNIPPETS)
        self.reserved_vars: set = RESERVED | set(self.taken)  # local names forward must not rebind
        self.folded: dict = {}  # id(graph) -> fuse_ops' constants computed in __init__ (targets/torch/folding.py)

    # -- units: one class rendering each ------------------------------------------------------
    def new_unit(self, **kw) -> Unit:
        u = Unit(len(self.units), **kw)
        self.units.append(u)
        return u

    def body(self, graphs: list[tuple[str, Graph, list, list]], depth: int) -> tuple[list, list]:
        """`__init__` lines and methods of one class holding the nodes at scope depth `depth`.

        `graphs` lists (method name, graph, this class's nodes in topological order, argument
        (ref, name) pairs). Each node is visited once per nesting level, so generation stays linear
        in the graph size.
        """
        init: dict[str, object] = {}  # attr -> [Line], or (container, [child uids]) for a repeat
        methods = []
        for mname, g, nodes, args in graphs:
            lines: list[Line] = []
            names = {ref: a for ref, a in args}
            used = {a for _, a in args} | self.reserved_vars
            groups: dict[str, list] = {}  # child instance key -> its nodes, in order
            for n in nodes:
                if len(n.scope) > depth:
                    groups.setdefault(_child_key(n, depth), []).append(n)
            emitted: set[str] = set()
            # rematerialize's segments: their lines go into methods forward checkpoints (checkpoint.py)
            seg = checkpoint.Segments.of(g, mname, depth, names, lambda: self.root_attrs(nodes))
            for n in nodes:
                if len(n.scope) <= depth:
                    out = seg.lines_for(checkpoint.segment_of([n]), [n], lines) if seg and n.op != "input" else lines
                    self.node_lines(g, n, init, out, names, used)
                    continue
                key = _child_key(n, depth)
                if key in emitted:
                    continue
                emitted.add(key)
                sc = n.scope[depth]
                sub_depth = depth + (2 if sc.kind == "list" else 1)
                chain = self.chained_list(g, key) if sc.kind == "list" and key.endswith(".0") else None
                if chain:
                    emitted.update(chain)
                    self.sequential_call(g, chain, sub_depth, groups, init, lines, names, used, seg)
                else:
                    out = seg.lines_for(checkpoint.segment_of(groups[key]), groups[key], lines) if seg else lines
                    self.instance_call(g, key, sub_depth, sc, groups[key], init, out, names, used)
            segments = seg.finish(lines) if seg else []
            self.helpers.update(seg.helpers if seg else {})
            outs = [names[ref] for ref in self._returns[(id(g), mname)]]
            lines.append(Line(lex("return " + ", ".join(outs))))
            methods.append((mname, [a for _, a in args], lines))
            methods.extend(segments)
        self.shared_outputs.pop(id(init), None)  # the dict goes; its id may be reused
        init_lines = []
        for attr, val in init.items():
            if isinstance(val, tuple):
                head, uids = val
                init_lines.append(Line((Items(head, tuple((Child(u),) for u in uids)),), f"self.{attr}", attr=attr))
            else:
                init_lines.extend(val)
        return init_lines, methods

    def fresh(self, base: str, used: set) -> str:
        name, k = ident(base), 2
        while name in used:
            name, k = f"{ident(base)}_{k}", k + 1
        used.add(name)
        return name

    def chained_list(self, g: Graph, first: str) -> list | None:
        """Keys of a repeat's instances when they form a simple chain (one input, one output, each
        instance feeding only the next), so one nn.Sequential call runs them; else None."""
        base = first[:-2]
        keys = []
        while f"{base}.{len(keys)}" in g.instances:
            keys.append(f"{base}.{len(keys)}")
        insts = [g.instances[k] for k in keys]
        if any(len(i.in_refs) != 1 or len(i.out_refs) != 1 for i in insts):
            return None
        outputs = set(g.outputs.values())
        for k, (a, b) in enumerate(zip(insts, insts[1:])):
            if b.in_refs != a.out_refs or a.out_refs[0] in outputs:
                return None
            src, port = a.out_refs[0]
            if any(not dst.startswith(keys[k + 1] + ".") for dst, _, p in g.users(src) if p == port):
                return None
        return keys

    def instance_unit(self, g: Graph, key: str, depth: int, nodes: list) -> Unit:
        """The class rendering of block instance `key` (its nodes are `nodes`)."""
        inst = g.instances[key]
        args = [(ref, ident(n)) for ref, n in zip(inst.in_refs, inst.in_names)]
        self._returns[(id(g), "forward@" + key)] = inst.out_refs
        init, methods = self.body([("forward@" + key, g, nodes, args)], depth)
        block = self.program.spec.model.blocks.get(inst.block)
        doc = (block.doc or "").strip() if block is not None else ""
        return self.new_unit(kind="block", base=camel(inst.block), doc=doc or f"Block '{inst.block}'.", init=init,
                             methods=[("forward",) + tuple(methods[0][1:])], block=inst.block, args=inst.args,
                             inputs=[(nm, _type(g, r)) for nm, r in zip(inst.in_names, inst.in_refs)])

    def sequential_call(self, g, keys, depth, groups, init, lines, names, used, seg=None):
        """`layer1 = self.layer1(x)` over an nn.Sequential of a chained repeat's instances; with
        checkpointed segments (`seg`) one call per run of instances in one segment, over a slice
        (`self.layer1[0:4](x)`) where the run is not the whole repeat."""
        uids = [self.instance_unit(g, k, depth, groups.get(k, [])).uid for k in keys]
        local = keys[0].split(".")[-2]
        attr = ident(local)
        init[attr] = ("nn.Sequential", uids)
        runs = checkpoint.chain_runs(keys, groups) if seg else [(0, len(keys), None)]
        for a, b, k in runs:
            first, last = g.instances[keys[a]], g.instances[keys[b - 1]]
            run_nodes = [n for key in keys[a:b] for n in groups.get(key, [])]
            out = seg.lines_for(k, run_nodes, lines) if seg else lines
            part = "" if (a, b) == (0, len(keys)) else f"[{a}:{b}]"
            note = Note((_type(g, last.out_refs[0]),), self.where(_frame_loc(groups.get(keys[a], []), keys[a])))
            self.bind(last.out_refs, ["out"], local, f"self.{attr}{part}({names[first.in_refs[0]]})", out, names,
                      used, note, attr)

    def root_attrs(self, nodes: list) -> set:
        """Attribute names the root class's top-level nodes and instances take, and its methods'."""
        out = set(self.program.graphs) | RESERVED
        for n in nodes:
            out.add(ident(n.scope[0].name if n.scope else n.local))
        return out

    def instance_call(self, g, key, depth, sc, nodes, init, lines, names, used):
        inst = g.instances[key]
        parts = key.split(".")
        attr = ident(parts[-1])
        if sc.kind != "list" and attr in self.shared_outputs.get(id(init), {}):
            return self.shared_call(g, inst, attr, init, nodes, key, lines, names, used)
        if sc.kind == "list" and f"{ident(parts[-2])}[{parts[-1]}]" in self.shared_outputs.get(id(init), {}):
            # a repeat's instance an earlier entry graph holds (the same id): call its module
            return self.shared_call(g, inst, f"{ident(parts[-2])}[{parts[-1]}]", init, nodes, key, lines, names, used)
        uid = self.instance_unit(g, key, depth, nodes).uid
        if sc.kind == "list":  # one of a repeat's instances, called on its own
            attr = ident(parts[-2])
            init.setdefault(attr, ("nn.ModuleList", []))[1].append(uid)
            self.shared_outputs.setdefault(id(init), {})[f"{attr}[{parts[-1]}]"] = list(inst.out_names)
            target, base, calls = f"self.{attr}[{parts[-1]}]", f"{parts[-2]}_{parts[-1]}", ""
        else:
            init[attr] = [Line((Child(uid),), f"self.{attr}", attr=attr)]
            self.shared_outputs.setdefault(id(init), {})[attr] = list(inst.out_names)
            target, base, calls = f"self.{attr}", parts[-1], attr
        note = Note(tuple(_type(g, r) for r in inst.out_refs), self.where(_frame_loc(nodes, key)))
        self.bind(inst.out_refs, inst.out_names, base, f"{target}({', '.join(names[r] for r in inst.in_refs)})",
                  lines, names, used, note, calls)

    def shared_call(self, g, inst, attr, init, nodes, key, lines, names, used):
        """A block instance of a later entry graph whose module an earlier graph already holds (the same
        node ids: one module, one set of weights, e.g. `decode_step` calling forward's decoder cell):
        call that module and bind the outputs it returns by name."""
        have = self.shared_outputs[id(init)][attr]
        missing = [o for o in inst.out_names if o not in have]
        if missing:
            raise LoweringError(f"'{key}' shares its module with another entry graph, which does not return "
                                f"{', '.join(missing)}", expected="the graphs sharing a block to read outputs "
                                "the first of them keeps")
        refs = [inst.out_refs[inst.out_names.index(o)] if o in inst.out_names else (f"{key}.<unused>", i)
                for i, o in enumerate(have)]
        note = Note(tuple(_type(g, r) for r in inst.out_refs), self.where(_frame_loc(nodes, key)))
        parts = key.split(".")
        base = f"{parts[-2]}_{parts[-1]}" if parts[-1].isdigit() else parts[-1]  # encoder.0 -> encoder_0
        self.bind(refs, have, ident(base), f"self.{attr}({', '.join(names[r] for r in inst.in_refs)})",
                  lines, names, used, note, "" if "[" in attr else attr)

    def bind(self, refs, out_names, base, expr, lines, names, used, note, attr=""):
        """`var = expr` (or `a, b = expr`) into `lines`; `attr`: the submodule the line calls."""
        if len(refs) == 1:
            var = self.fresh(base, used)
            lines.append(Line(lex(expr), var, note, attr, call=bool(attr)))
            names[refs[0]] = var
            return
        vars_ = [self.fresh(f"{base}_{o}", used) for o in out_names]
        lines.append(Line(lex(expr), ", ".join(vars_), note, attr))
        for r, v in zip(refs, vars_):
            names.setdefault(r, v)

    def node_lines(self, g: Graph, n: Node, init: dict, lines: list, names: dict, used: set) -> None:
        if n.op == "input":
            return
        if folding.passes_through(n):  # a batch norm folded into the layer before it (fuse_ops)
            names[(n.id, 0)] = names[g.inputs_of(n.id)[0]]
            return
        attr = ident(n.local)
        # fuse_ops' constants computed in __init__, and the nodes only they read (targets/torch/folding.py)
        folded, skip = self.folded.get(id(g)) or self.folded.setdefault(id(g), folding.constants(g, ident))
        ins = ["None" if ref[0] in skip else names[ref] for ref in g.inputs_of(n.id)]
        shared = self.shared_outputs.setdefault(id(init), {})
        if n.body is not None and attr not in shared:  # a node with a body (scan) holds it as a submodule class
            init[attr] = [Line((Child(self.body_class(n)),), f"self.{attr}", attr=attr)]
            shared[attr] = list(n.body.outputs)
        elif n.body is not None and shared[attr] != list(n.body.outputs):
            # an earlier entry graph made this module (the same id): the loop indexes its outputs
            raise LoweringError(f"scan '{n.id}' shares its cell with another entry graph, whose module returns "
                                f"({', '.join(shared[attr])}), not ({', '.join(n.body.outputs)})",
                                n.loc, expected="graphs sharing a step block to use all of its outputs alike")
        try:
            # a node fuse_ops marked has the code of its mark
            code = folding.to_torch(n, ins, f"self.{attr}", ident, folded) or \
                checkpoint.scan_code(n, ins, f"self.{attr}", ident) or n.opdef.to_torch(n.attrs, ins, f"self.{attr}", n)
        except LoweringError as e:
            e.loc = e.loc or n.loc
            raise
        outs = [(n.id, i) for i in range(len(n.outputs))]
        out_names = n.out_names if len(n.outputs) > 1 else ["out"]
        # An op whose statements bind its outputs themselves (`$y, ($h, $c) = self.rnn(x)`, its
        # expression just `$y, $h, $c`) gets its temporaries named as its outputs, so no second line.
        direct = bool(code.stmts) and len(code.temps) == len(outs) and \
            code.expr.replace(" ", "") == ",".join("$" + t for t in code.temps)
        if code.temps:  # fresh names for the op's temporaries ($name in its statements)
            bases = [n.local if len(outs) == 1 else f"{n.local}_{o}" for o in out_names] if direct else \
                [f"{n.local}_{t}" for t in code.temps]
            code = code.with_temps({t: self.fresh(b, used) for t, b in zip(code.temps, bases)})
        if code.init is not None:
            attr_lines = [Line(ctor(code.init), f"self.{attr}", attr=attr)]
            for pname, init_ in n.init.items():
                attr_lines.append(Line(lex(init_line(f"self.{attr}.{pname}", init_)), attr=attr))
                if init_.name in INIT_HELPER:
                    self.helpers[INIT_HELPER[init_.name]] = INIT_SNIPPETS[INIT_HELPER[init_.name]]
            init[attr] = attr_lines
        self.helpers.update({h: n.opdef.torch_snippets.get(h) or folding.SNIPPETS[h] for h in code.helpers})
        if n.id in skip:  # only a constant computed in __init__ reads it: no forward line
            return
        note = Note(tuple(n.outputs), self.where(n.loc))
        if direct:
            lines.extend(Line(lex(s), attr=attr) for s in code.stmts[:-1])
            lines.append(Line(lex(code.stmts[-1]), note=note, attr=attr))
            for ref, var in zip(outs, [v.strip() for v in code.expr.split(",")]):
                names[ref] = var
            return
        lines.extend(Line(lex(s), attr=attr) for s in code.stmts)
        self.bind(outs, out_names, n.local, code.expr, lines, names, used, note, attr if code.init else "")

    def body_class(self, n: Node) -> int:
        """The unit of a node's body graph (a scan's cell): forward takes the body's inputs in order
        and returns its outputs in order."""
        body = n.body
        args = [((f"{n.id}.{k}", 0), ident(k)) for k in n.attrs.inputs]
        self._returns[(id(body), "forward")] = list(body.outputs.values())
        init, methods = self.body([("forward", body, body.topo(), args)], 0)
        if checkpoint.chunk_steps(n):  # rematerialize checkpoints its steps in chunks: the chunk's method
            methods.append(checkpoint.steps_method(n, ident))
        block = n.attrs.block
        name = camel(block) if camel(block).endswith("Cell") else camel(block) + "Cell"
        return self.new_unit(kind="cell", base=name, doc=f"One step of block '{block}' (run by scan '{n.local}').",
                             init=init, methods=methods).uid

    def where(self, loc) -> str:
        if not loc:
            return ""
        path = self._paths.get(loc.file)
        if path is None:
            path = self._paths[loc.file] = self.spec_path(loc.file)
        return f"{path}:{loc.line}"

    # -- classes --------------------------------------------------------------------------------
    def name_class(self, base: str, cls, kind: str) -> str:
        """The name of class `cls`: the root's own, an identical class's, or a fresh one from `base`."""
        if kind == "root":
            cls.name = self.root_name
            self.root = cls
            return cls.name
        body = cls.body()
        if body not in self.by_body:
            cls.name = class_ident(base, self.taken)
            self.taken.add(cls.name)
            self.by_body[body] = cls.name
            self.classes.append(cls)
        return self.by_body[body]

    def arg_decls(self) -> dict:
        """block -> [(arg, default)]: the default when it is a plain number or bool (it then becomes
        the parameter's Python default), else NO (an expression: the parameter is required)."""
        from nnspec.compiler.spec.models import ArgSpec

        out = {}
        for bname, b in self.program.spec.model.blocks.items():
            out[bname] = []
            for a, d in b.args.items():
                default = d.default if isinstance(d, ArgSpec) else None
                out[bname].append((a, default if type(default) in (int, float, bool) else NO))
        return out

    # -- the file -----------------------------------------------------------------------------
    def generate(self, class_name: str | None = None) -> str:
        p = self.program
        spec = p.spec
        self._returns = {}
        # id(init dict of a class) -> {submodule attribute: the output names its forward returns}, so
        # an entry graph reusing a module another graph made calls it as it is
        self.shared_outputs: dict = {}
        # The root's name first, so no block class can take it.
        self.root_name = class_ident(class_name or class_name_for(spec.name, spec.preset), self.taken)
        self.taken.add(self.root_name)
        self.reserved_vars.add(self.root_name)
        entries = []
        for gname, g in p.graphs.items():
            args = [((n.id, 0), n.attrs.name) for n in g.inputs()]  # validated names, kept as written
            self._returns[(id(g), gname)] = list(g.outputs.values())
            entries.append((gname, g, g.topo(), args))
        lines, methods = self.body(entries, 0)
        tied_once = set()  # a node two entry graphs share is in both: its ties are set once
        for n in p.all_nodes():
            if n.id in tied_once:
                continue
            tied_once.add(n.id)
            for pname, target in sorted(n.ties.items()):
                tid, _, tp = target.rpartition(".")
                lines.append(Line(lex(f"self.{modpath(n.id)}.{pname} = self.{modpath(tid)}.{tp}"), note="tied"))
        lines += [Line(lex(stmt)) for stmt in folding.root_lines(p)]  # batch norm folds (eval-only)
        self.helpers.update(folding.helpers_for(p))
        ins, outs = self._io_doc()
        doc = f"{spec.name}: ({ins}) -> ({outs})" + (f"\n\n{folding.EVAL_ONLY}" if folding.eval_only(p) else "")
        self.new_unit(kind="root", base=self.root_name, doc=doc, init=lines, methods=methods)
        Sharing(self.arg_decls(), self.name_class, self.taken, fmt_note, ident).run(self.units)
        self.classes.append(self.root)
        helpers = [self.helpers[h].strip() for h in sorted(self.helpers)]
        code = [ln for c in self.classes for ln in c.init_lines + [x for m in c.methods for x in m[2]]]
        used = module_names(code) | _snippet_names(helpers)
        imports = (["import math", ""] if "math" in used else []) + (["import torch"] if "torch" in used else []) \
            + ["import torch.nn as nn"] + (["import torch.nn.functional as F"] if "F" in used else [])
        if any(checkpoint.uses_checkpoint(g) for g in p.graphs.values()):  # rematerialize's segments
            imports.append(checkpoint.IMPORT)
        env = Environment(loader=FileSystemLoader(str(Path(__file__).parent)), undefined=StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=False)
        text = env.get_template("model.py.j2").render(
            module_doc=docstring(self.module_doc()), imports="\n".join(imports), helpers=helpers,
            classes=[(c, docstring(c.doc if c is self.root else _wrap(c.doc), "    ")) for c in self.classes])
        return re.sub(r"\n{3,}(?=\S)", "\n\n\n", text).rstrip("\n") + "\n"

    def module_doc(self) -> str:
        """The file's docstring: what it was generated from. Spec text (file name, paper, overrides)
        reaches the file only inside this string literal."""
        from nnspec.compiler import __version__
        from nnspec.compiler.cost import param_count

        spec = self.program.spec
        made = f"Generated by nnspec {__version__} from {Path(spec.file).name}"
        if spec.preset:
            made += f" (preset {spec.preset})"
        if spec.overrides:
            made += " with " + ", ".join(f"{k}={v!r}" for k, v in sorted(spec.overrides.items()))
        lines = [f"{spec.name}: PyTorch module generated by nnspec.", "", made + ".",
                 f"Standalone: needs only torch. Parameters: {param_count(self.program)[0]:,}. "
                 "Do not edit; change the spec and recompile."]
        if folding.eval_only(self.program):
            lines += ["", folding.eval_only_note(self.program)]
        paper = spec.model.paper
        if paper:
            lines += ["", f"Paper: {paper.title} ({', '.join(paper.authors)}, {paper.year}"
                      + (f", arXiv:{paper.arxiv}" if paper.arxiv else "") + ")"]
        return "\n".join(lines) + "\n"

    def spec_path(self, file: str) -> str:
        """A location's file relative to the main spec's folder (`resnet.yaml`, `blocks/resnet.yaml`),
        so comments point into the right file and do not depend on the working directory."""
        main = Path(self.program.spec.file).parent
        try:
            return Path(file).relative_to(main).as_posix()
        except ValueError:
            return Path(file).name

    def _io_doc(self) -> tuple[str, str]:
        g = self.program.forward
        ins = ", ".join(f"{n.attrs.name}: {n.outputs[0]}" for n in g.inputs())
        return ins, ", ".join(f"{o}: {g.output_type(o)}" for o in g.outputs)



def _wrap(doc: str, width: int = 92) -> str:
    """A class docstring's text with its long lines wrapped (the spec's `doc:` is usually one folded
    line), closing quotes on their own line when it spans several."""
    lines = [w for line in doc.split("\n") for w in (textwrap.wrap(line, width, break_long_words=False,
                                                                     break_on_hyphens=False) or [""])]
    return "\n".join(lines) + ("\n" if len(lines) > 1 else "")


def _type(g: Graph, ref: tuple):
    src, port = ref
    return g.node(src).outputs[port]


def _frame_loc(nodes: list, key: str):
    """Where block instance `key` was instantiated: the frame its nodes' chains hold for it."""
    for fr in (nodes[0].chain if nodes else ()):
        if fr.instance == key:
            return fr.loc
    return None


def _snippet_names(snippets: list) -> set:
    """Names the helper snippets read as `name.attr` (`torch`, `F`, `math`: what the file imports)."""
    out: set = set()
    for text in snippets:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                if t.type in (tokenize.NAME, tokenize.OP)]
        for k, t in enumerate(toks[:-1]):
            if t.type == tokenize.NAME and toks[k + 1].string == "." and (k == 0 or toks[k - 1].string != "."):
                out.add(t.string)
    return out


def generate_source(program, class_name: str | None = None) -> tuple[str, str]:
    """(source text, class name) of the program's PyTorch module."""
    cg = Codegen(program)
    enabled = gc.isenabled()
    gc.disable()  # generation makes millions of small objects and no cyclic garbage: the collector's
    try:  # passes over them would take half the time on a 100k-node graph
        src = cg.generate(class_name)
    finally:
        if enabled:
            gc.enable()
    return src, cg.classes[-1].name
