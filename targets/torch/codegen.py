"""PyTorch code generation: the IR -> one readable, standalone Python file.

The template (`model.py.j2`) holds the frame only; each op renders its own constructor and forward
expression (`Op.to_torch`). Every block instance becomes a submodule class (identical instances
share one class; a `repeat` becomes an `nn.ModuleList`), a scan's body becomes a cell class called
in a loop, and `forward` is straight-line code whose variables are the spec's node names, each line
annotated with its type and spec location. State-dict keys equal IR node ids (`layer1.0.conv1.weight`).
Output is deterministic: same program, same bytes.
"""
from __future__ import annotations

import builtins
import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from nnspec.compiler.errors import LoweringError
from nnspec.compiler.ir.graph import Graph, Node

RESERVED = {"self", "torch", "nn", "F", "math"} | set(dir(builtins))
# How each initialiser of the vocabulary (nnspec.compiler.init) is written in torch; `{p}` is the
# parameter, other fields are its arguments, always rendered as float literals.
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
}


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


@dataclass
class Method:
    name: str
    args: list
    lines: list = field(default_factory=list)
    ret: str = "None"


@dataclass
class ClassDef:
    name: str
    doc: str
    init_lines: list
    methods: list

    def body(self) -> str:
        return repr((self.doc, self.init_lines, [(m.name, m.args, m.lines, m.ret) for m in self.methods]))

    @property
    def doc_literal(self) -> str:
        return docstring(self.doc, "    ")


class Codegen:
    def __init__(self, program):
        self.program = program
        self.classes: list[ClassDef] = []
        self.by_body: dict[str, str] = {}
        self.helpers: dict[str, str] = {}  # snippet name -> code, from the ops' `torch_snippets`
        self._loop_vars: set = set()
        self.taken: set = taken_class_names()  # class names in use or never to be used
        self.reserved_vars: set = RESERVED | set(self.taken)  # local names forward must not rebind

    # -- classes ------------------------------------------------------------------------------
    def add_class(self, base: str, cls: ClassDef) -> str:
        key = cls.body()
        if key in self.by_body:
            return self.by_body[key]
        cls.name = class_ident(base, self.taken)
        self.taken.add(cls.name)
        self.classes.append(cls)
        self.by_body[key] = cls.name
        return cls.name

    def unit(self, graphs: list[tuple[str, Graph, list, list]], depth: int, doc: str) -> tuple[list, list]:
        """Init lines and methods of one class holding the nodes at scope depth `depth`.

        `graphs` lists (method name, graph, this class's nodes in topological order, argument
        (ref, name) pairs). Each node is visited once per nesting level, so generation stays linear
        in the graph size.
        """
        init: dict[str, object] = {}
        methods = []
        for mname, g, nodes, args in graphs:
            m = Method(mname, [a for _, a in args])
            names = {ref: a for ref, a in args}
            used = set(m.args) | self.reserved_vars
            groups: dict[str, list] = {}  # child instance key -> its nodes, in order
            for n in nodes:
                if len(n.scope) > depth:
                    groups.setdefault(_child_key(n, depth), []).append(n)
            emitted: set[str] = set()
            for n in nodes:
                if len(n.scope) > depth:
                    key = _child_key(n, depth)
                    if key in emitted:
                        continue
                    emitted.add(key)
                    sc = n.scope[depth]
                    sub_depth = depth + (2 if sc.kind == "list" else 1)
                    chain = self.chained_list(g, key) if sc.kind == "list" and key.endswith(".0") else None
                    if chain:
                        emitted.update(chain)
                        self.loop_call(g, chain, sub_depth, sc, groups, init, m, names, used)
                    else:
                        self.instance_call(g, key, sub_depth, sc, groups[key], init, m, names, used)
                    continue
                self.node_lines(g, n, init, m, names, used)
            outs = [names[ref] for ref in self.returns(g, mname)]
            m.ret = outs[0] if len(outs) == 1 else "(" + ", ".join(outs) + ")"
            methods.append(m)
        lines = []
        for attr, val in init.items():
            if isinstance(val, list) and val and val[0] == "__list__":
                classes = val[1:]
                if len(set(classes)) == 1 and len(classes) > 2:
                    lines.append(f"self.{attr} = nn.ModuleList([{classes[0]}() for _ in range({len(classes)})])")
                else:
                    lines.append(f"self.{attr} = nn.ModuleList([{', '.join(c + '()' for c in classes)}])")
            else:
                lines.extend(val if isinstance(val, list) else [val])
        return lines, methods

    def returns(self, g: Graph, mname: str) -> list:
        return self._returns[(id(g), mname)]

    def fresh(self, base: str, used: set) -> str:
        name, k = ident(base), 2
        while name in used:
            name, k = f"{ident(base)}_{k}", k + 1
        used.add(name)
        return name

    def chained_list(self, g: Graph, first: str) -> list | None:
        """Keys of a repeat's instances when they form a simple chain (one input, one output, each
        instance feeding only the next), so forward can loop over the ModuleList; else None."""
        base = first[:-2]
        keys = []
        while f"{base}.{len(keys)}" in g.instances:
            keys.append(f"{base}.{len(keys)}")
        insts = [g.instances[k] for k in keys]
        if len(keys) < 2 or any(len(i.in_refs) != 1 or len(i.out_refs) != 1 for i in insts):
            return None
        outputs = set(g.outputs.values())
        for k, (a, b) in enumerate(zip(insts, insts[1:])):
            if b.in_refs != a.out_refs or a.out_refs[0] in outputs:
                return None
            src, port = a.out_refs[0]
            if any(not dst.startswith(keys[k + 1] + ".") for dst, _, p in g.users(src) if p == port):
                return None
        return keys

    def loop_call(self, g, keys, depth, sc, groups, init, m, names, used):
        """`h = x; for block in self.layers: h = block(h)` for a chained repeat."""
        for key in keys:  # classes and ModuleList entries, as for separate calls
            self.instance_call(g, key, depth, sc, groups.get(key, []), init, m, names, used, emit=False)
        first, last = g.instances[keys[0]], g.instances[keys[-1]]
        attr = ident(keys[0].split(".")[-2])
        var = self.fresh(attr, used)
        # One loop variable per method: reuse it across loops unless a value took the name first.
        item = "block" if "block" not in used or ("block", id(m)) in self._loop_vars else self.fresh("block", used)
        used.add(item)
        self._loop_vars.add((item, id(m)))
        m.lines.append(f"{var} = {names[first.in_refs[0]]}")
        m.lines.append(f"for {item} in self.{attr}:  # {len(keys)} x block {first.block}")
        m.lines.append(f"    {var} = {item}({var})")
        names[last.out_refs[0]] = var

    def instance_call(self, g, key, depth, sc, nodes, init, m, names, used, emit: bool = True):
        inst = g.instances[key]
        args = [(ref, ident(n)) for ref, n in zip(inst.in_refs, inst.in_names)]
        self._returns[(id(g), "forward@" + key)] = inst.out_refs
        lines, methods = self.unit([("forward@" + key, g, nodes, args)], depth, "")
        methods[0].name = "forward"
        cname = self.add_class(camel(inst.block), ClassDef("", f"Block '{inst.block}'.", lines, methods))
        parts = key.split(".")
        if sc.kind == "list":
            attr = ident(parts[-2])
            lst = init.setdefault(attr, ["__list__"])
            lst.append(cname)
            target = f"self.{attr}[{parts[-1]}]"
            base = f"{parts[-2]}_{parts[-1]}"
        else:
            attr = ident(parts[-1])
            init[attr] = f"self.{attr} = {cname}()"
            target = f"self.{attr}"
            base = parts[-1]
        if not emit:
            return
        call = f"{target}({', '.join(names[r] for r in inst.in_refs)})"
        self.bind(inst.out_refs, inst.out_names, base, call, m, names, used, f"block {inst.block}")

    def bind(self, refs, out_names, base, expr, m, names, used, comment):
        if len(refs) == 1:
            var = self.fresh(base, used)
            m.lines.append(f"{var} = {expr}  # {comment}")
            names[refs[0]] = var
            return
        vars_ = [self.fresh(f"{base}_{o}", used) for o in out_names]
        m.lines.append(f"{', '.join(vars_)} = {expr}  # {comment}")
        for r, v in zip(refs, vars_):
            names.setdefault(r, v)

    def node_lines(self, g: Graph, n: Node, init: dict, m: Method, names: dict, used: set) -> None:
        if n.op == "input":
            return
        attr = ident(n.local)
        ins = [names[ref] for ref in g.inputs_of(n.id)]
        where = f"{self.spec_path(n.loc.file)}:{n.loc.line}" if n.loc else ""
        types = ", ".join(str(t) for t in n.outputs)
        if n.body is not None:  # a node with a body (scan) holds it as a submodule class
            init[attr] = f"self.{attr} = {self.body_class(n)}()"
        try:
            code = n.opdef.to_torch(n.attrs, ins, f"self.{attr}", n)
        except LoweringError as e:
            e.loc = e.loc or n.loc
            raise
        if code.temps:  # fresh names for the op's temporaries ($name in its statements)
            code = code.with_temps({t: self.fresh(f"{n.local}_{t}", used) for t in code.temps})
        if code.init is not None:
            lines = [f"self.{attr} = {code.init}"]
            for pname, init_ in n.init.items():
                lines.append(init_line(f"self.{attr}.{pname}", init_))
            init[attr] = lines
        self.helpers.update({h: n.opdef.torch_snippets[h] for h in code.helpers})
        m.lines.extend(code.stmts)
        outs = [(n.id, i) for i in range(len(n.outputs))]
        names_ = n.out_names if len(n.outputs) > 1 else ["out"]
        self.bind(outs, names_, n.local, code.expr, m, names, used, comment(f"{types}  {where}".strip()))

    def body_class(self, n: Node) -> str:
        """The class of a node's body graph (a scan's cell): forward takes the body's inputs in
        order and returns its outputs in order."""
        body = n.body
        args = [((f"{n.id}.{k}", 0), ident(k)) for k in n.attrs.inputs]
        self._returns[(id(body), "forward")] = list(body.outputs.values())
        lines, methods = self.unit([("forward", body, body.topo(), args)], 0, "")
        block = n.attrs.block
        name = camel(block) if camel(block).endswith("Cell") else camel(block) + "Cell"
        return self.add_class(name, ClassDef("", f"One step of block '{block}' (run by '{n.id}').",
                                                               lines, methods))

    # -- the file -----------------------------------------------------------------------------
    def generate(self, class_name: str | None = None) -> str:
        p = self.program
        spec = p.spec
        self._returns = {}
        # The root's name first, so no block class can take it.
        name = class_ident(class_name or class_name_for(spec.name, spec.preset), self.taken)
        self.taken.add(name)
        self.reserved_vars.add(name)
        entries = []
        for gname, g in p.graphs.items():
            args = [((n.id, 0), n.attrs.name) for n in g.inputs()]  # validated names, kept as written
            self._returns[(id(g), gname)] = list(g.outputs.values())
            entries.append((gname, g, g.topo(), args))
        lines, methods = self.unit(entries, 0, "")
        for n in p.all_nodes():
            for pname, target in sorted(n.ties.items()):
                tid, _, tp = target.rpartition(".")
                lines.append(f"self.{modpath(n.id)}.{pname} = self.{modpath(tid)}.{tp}  # tied")
        ins, outs = self._io_doc()
        root = ClassDef(name, f"{spec.name}: ({ins}) -> ({outs})", lines, methods)
        self.classes.append(root)
        env = Environment(loader=FileSystemLoader(str(Path(__file__).parent)), undefined=StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=False)
        text = env.get_template("model.py.j2").render(
            module_doc=docstring(self.module_doc()),
            helpers=[self.helpers[h].strip() for h in sorted(self.helpers)],
            classes=self.classes)
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


def generate_source(program, class_name: str | None = None) -> tuple[str, str]:
    """(source text, class name) of the program's PyTorch module."""
    cg = Codegen(program)
    src = cg.generate(class_name)
    return src, cg.classes[-1].name
