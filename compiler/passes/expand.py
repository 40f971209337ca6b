"""The `expand` pass: spec -> graph IR.

Rules, applied to each graph of the spec (the main `inputs/nodes/outputs` is graph `forward`,
each entry of `graphs:` another):
  1. `${...}` expressions are evaluated with the names in scope: params, block args, repeat index `i`.
  2. `when: false` drops a node (or an input, or an entry graph); an output whose expression gives
     null is dropped.
  3. `{op: ...}` becomes one node; its attributes are validated by the op's `Attrs` model.
  4. `{block: B, repeat: k}` inlines k instances of block B, chained (outputs of instance j feed
     instance j+1); node ids are `name.j.local` and each node records its block scope, so code
     generation can rebuild the module hierarchy.
  5. `{scan: B, over/carry/const}` becomes one `scan` node whose body is block B as a nested graph.
Errors are collected (a failed node poisons its name so one mistake is reported once) and raised
together. Sizes are bounded: `repeat` and the total node count.

    before:  layer1: {block: bottleneck, repeat: 2, args: {planes: 64}}
    after:   %layer1.0.conv1 = conv2d(%x) ...   %layer1.1.conv1 = conv2d(%layer1.0.relu3) ...
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from pydantic import ValidationError

from ..errors import Frame, Location, NnspecError, SpecError, SpecErrors, quote
from ..init import InitError, parse_init
from ..ir.dims import TensorType
from ..ir.graph import Graph, Instance, Node, Scope
from ..ops import registry
from ..ops.describe import field_text
from ..spec.expr import ExprError, evaluate, names_in
from ..spec.load import LoadedSpec
from ..spec.names import problem
from .inference import infer_now
from .templates import Templates
from ..spec.models import BLOCK_NODE_KEYS, COMMON_NODE_KEYS, SCAN_NODE_KEYS, ArgSpec, BlockNode, ScanNode

from ..limits import MAX_BLOCK_DEPTH, MAX_COLLECTED_ERRORS, MAX_DIM, MAX_LOOP_STEPS, MAX_NODES, MAX_REPEAT


class _Poison:
    """Stands for the outputs of a node that failed; uses of it fail silently (already reported)."""


POISON = _Poison()


@dataclass
class Dropped:
    """Stands for a node that `when:` removed, so a reference to it can say why it is missing."""

    when: object  # Location of its `when:`


@dataclass
class Binding:
    refs: list  # [(node_id, port)]
    names: list  # output names, parallel to refs


@dataclass
class Ctx:
    path: tuple  # YAML path of the node mapping being expanded (for locations)
    prefix: str  # node id prefix ("" at the root, "layer1.0." inside an instance)
    scope: tuple
    chain: list
    names: dict  # expression names
    env: dict  # value name -> Binding | POISON
    depth: int = 0
    last: str | None = None  # the previous value: the input of a node that omits `in`
    graph: Graph | None = None  # the graph the nodes go into (tensor names read their types from it)


class _Skip(Exception):
    """This node failed (its error is recorded); expansion goes on with the next one."""


class _Stop(Exception):
    """Expansion cannot usefully go on (a recursive block, too many errors): report what was found."""


class Expander:
    def __init__(self, spec: LoadedSpec):
        self.spec = spec
        self.errors: list[NnspecError] = []
        self.count = 0
        self.added: list[Node] = []  # every node added, in order (templates record slices of it)
        self.templates = Templates(spec.model.blocks)
        self.use_templates = True
        self._locs: dict = {}


    # -- helpers ------------------------------------------------------------------------------
    def loc(self, path: tuple, key: bool = False) -> Location | None:
        # Every instance of a repeated block asks for the same places: look each up once.
        k = (path, key)
        if k not in self._locs:
            self._locs[k] = self.spec.loc(path, key)
        return self._locs[k]

    def fail(self, msg: str, path: tuple, ctx: Ctx | None, key: bool = False, fatal: bool = False, **kw) -> None:
        err = SpecError(msg, self.loc(path, key), chain=list(ctx.chain) if ctx else [], **kw)
        self.errors.append(err)
        if fatal or len(self.errors) >= MAX_COLLECTED_ERRORS:
            raise _Stop
        raise _Skip

    def ev(self, value, path: tuple, ctx: Ctx):
        try:
            return evaluate(value, self.names_for(value, ctx, path))
        except ExprError as e:
            self.fail(str(e), path, ctx)

    def names_for(self, value, ctx: Ctx, path: tuple) -> dict:
        """`ctx.names`, plus each tensor (input or node) the expressions in `value` read by name,
        as {shape, dtype, rank}: `${x.shape[1]}`, `${channels(x)}`. Params and args win over
        tensors of the same name."""
        if not (isinstance(value, (list, dict)) or (isinstance(value, str) and "${" in value)):
            return ctx.names
        tensors = [n for n in (names_in(value) or ()) if n not in ctx.names and isinstance(ctx.env.get(n), Binding)]
        if not tensors:
            return ctx.names
        names = dict(ctx.names)
        for n in tensors:
            t = self.type_of(ctx, ctx.env[n].refs[0], n, path)
            names[n] = {"shape": list(t.shape), "dtype": t.dtype, "rank": t.rank}
        return names

    def input_types(self, ctx: Ctx, refs: list, path: tuple) -> list:
        try:
            return [infer_now(ctx.graph, r) for r in refs]
        except NnspecError:
            raise TypeError from None  # untypeable inputs: no template key (expansion reports the error)

    def type_of(self, ctx: Ctx, ref: tuple, name: str, path: tuple) -> TensorType:
        """The type of value `ref` while expanding: shape inference run on demand over the nodes it
        depends on (infer_shapes types every node again afterwards)."""
        try:
            return infer_now(ctx.graph, ref)
        except NnspecError as e:
            self.fail(f"cannot read the shape of '{name}': {e.message}", path, ctx,
                      hint="shapes can be read from inputs and from nodes whose own inputs have known shapes")

    def resolve(self, ref, path: tuple, ctx: Ctx):
        if not (type(ref) is str and "${" not in ref):  # most references are plain names
            ref = self.ev(ref, path, ctx)
        if not isinstance(ref, str):
            self.fail(f"input reference must be a name, got {ref!r}", path, ctx, expected="a node or input name")
        name, _, sub = ref.partition(".")
        if name not in ctx.env:
            close = difflib.get_close_matches(name, list(ctx.env), n=3)
            self.fail(f"unknown name '{name}'", path, ctx, expected=f"one of: {', '.join(ctx.env) or '(nothing yet)'}"
                      if not close else None, hint=f"did you mean {', '.join(close)}?" if close else
                      "a node can only use inputs and nodes defined before it")
        b = ctx.env[name]
        if isinstance(b, Dropped):
            where = f" (at {b.when})" if b.when else ""
            self.fail(f"'{name}' is not in the graph here: its `when:` condition is false{where}", path, ctx,
                      hint="make this reference conditional too, e.g. in: \"${'a' if cond else 'b'}\"")
        if b is POISON:
            raise _Skip
        if not sub:
            return b.refs[0]
        if sub in b.names:
            return b.refs[b.names.index(sub)]
        if sub.isdigit() and int(sub) < len(b.refs):
            return b.refs[int(sub)]
        self.fail(f"'{name}' has no output '{sub}'", path, ctx, expected=f"one of: {', '.join(b.names)}")

    def refs(self, raw, path: tuple, ctx: Ctx, implicit: int = 0) -> list:
        if raw is None:
            # Like nn.Sequential: a node without `in` reads the value defined just before it.
            return [self.resolve(ctx.last, path, ctx)] if implicit and ctx.last else []
        items = raw if isinstance(raw, list) else [raw]
        return [self.resolve(r, path + ((i,) if isinstance(raw, list) else ()), ctx) for i, r in enumerate(items)]

    def bump(self, n: int, path: tuple, ctx: Ctx, planned: bool = False) -> None:
        """Count `n` new nodes (or, `planned`, check that `n` more would still fit) against MAX_NODES."""
        total = self.count + n
        if total > MAX_NODES:
            self.fail(f"spec expands to more than {MAX_NODES:,} nodes" + (f" (this repeat alone needs at least "
                      f"{n:,} more)" if planned else ""), path, ctx, fatal=True,
                      expected="fewer repeats; nnspec bounds the size of expanded graphs")
        if not planned:
            self.count = total

    def min_size(self, bname: str, names: dict, seen: tuple = ()) -> int:
        """A lower bound on the nodes one instance of block `bname` expands to, from its op nodes and
        the repeats of nested blocks that evaluate with `names` (others count once). It lets a
        repeat be refused before any of it is built."""
        if bname in seen or len(seen) >= MAX_BLOCK_DEPTH:
            return 1
        total = 0
        for raw in self.spec.model.blocks[bname].nodes.values():
            if not isinstance(raw, dict):
                continue
            inner = raw.get("block") if "block" in raw else raw.get("scan")
            if not isinstance(inner, str) or inner not in self.spec.model.blocks:
                total += 1
                continue
            try:
                n = evaluate(raw.get("repeat", 1), names)
            except ExprError:
                n = 1
            n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
            total += min(n, MAX_NODES) * self.min_size(inner, names, seen + (bname,)) + ("scan" in raw)
            if total > MAX_NODES:
                break
        return max(total, 1)

    # -- graphs -------------------------------------------------------------------------------
    def graph(self, name: str, inputs: dict, nodes: dict, outputs, base: tuple) -> Graph:
        g = Graph(name)
        g.symbols = {k: v.model_dump() for k, v in self.spec.model.dims.items()}
        env: dict = {}
        for iname, ispec in inputs.items():
            ipath = base + ("inputs", iname)
            ctx = Ctx(ipath, "", (), [], dict(self.spec.params), env)
            # `when:` on an input: a spec whose presets take different inputs (the transformer's
            # encoder stack reads embeddings, the whole model token ids) drops the others
            if ispec.when is not None and not self.ev(ispec.when, ipath + ("when",), ctx):
                env[iname] = Dropped(self.loc(ipath + ("when",)))
                continue
            try:
                shape = tuple(self.ev(d, ipath + ("shape", j), ctx) for j, d in enumerate(ispec.shape))
                for j, d in enumerate(shape):
                    if not (isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM) and \
                            not (isinstance(d, str) and problem(d) is None):
                        self.fail(f"dim {d!r} of input '{iname}'", ipath + ("shape", j), ctx,
                                  expected="a positive int or a symbol such as N or T")
                rng = self.ev(ispec.range, ipath + ("range",), ctx) if ispec.range else None
                syms = {d for i in inputs.values() for d in i.shape if isinstance(d, str)} | set(self.spec.model.dims)
                if rng is not None and (not isinstance(rng, list) or len(rng) != 2 or any(
                        isinstance(b, bool) or not (isinstance(b, (int, float)) or b in syms) for b in rng)):
                    self.fail(f"range {quote(rng)} of input '{iname}'", ipath + ("range",), ctx,
                              expected="[low, high): numbers or dim symbols, e.g. [0, 256] or [0, V]")
                if rng is not None and all(isinstance(b, (int, float)) for b in rng) and not rng[0] < rng[1]:
                    self.fail(f"range {quote(rng)} of input '{iname}' is empty or reversed", ipath + ("range",), ctx,
                              expected="[low, high) with low < high, e.g. [0, 256]")
                node = Node(iname, "input", attrs=registry()["input"].Attrs(name=iname, range=rng),
                            outputs=[TensorType(shape, ispec.dtype)], out_names=["out"],
                            loc=self.loc(ipath, key=True))
                g.add(node)
                env[iname] = Binding([(iname, 0)], ["out"])
            except _Skip:
                env[iname] = POISON
        ctx = Ctx(base + ("nodes",), "", (), [], dict(self.spec.params), env, last=next(iter(inputs), None), graph=g)
        self.nodes(g, nodes, ctx)
        out_items = outputs.items() if isinstance(outputs, dict) else [(o, o) for o in outputs]
        for oname, ref in out_items:
            opath = base + ("outputs", oname) if isinstance(outputs, dict) else base + ("outputs",)
            # an output whose expression gives null is not an output of this variant:
            # `logits: "${'head' if decoder else None}"`
            if type(ref) is str and "${" in ref and self.ev(ref, opath, ctx) is None:
                continue
            try:
                g.outputs[oname.replace(".", "_")] = self.resolve(ref, opath, ctx)
            except _Skip:
                pass
        if not g.outputs and not self.errors:
            self.fail(f"graph '{name}' has no outputs for these params: every output's expression gives null",
                      base + ("outputs",), ctx, expected="at least one output per variant")
        return g

    def nodes(self, g: Graph, nodes: dict, ctx: Ctx) -> None:
        for local, raw in nodes.items():
            path = ctx.path + (local,)
            try:
                if not local.isidentifier():
                    self.fail(f"node name '{local}' is not an identifier", path, ctx, key=True,
                              expected="letters, digits and underscores, not starting with a digit")
                if not isinstance(raw, dict):
                    self.fail(f"node '{local}' must be a mapping", path, ctx, expected="{op: ..., in: ...}")
                if "when" in raw and not self.ev(raw["when"], path + ("when",), ctx):
                    ctx.env[local] = Dropped(self.loc(path + ("when",)))
                    continue
                if "op" in raw:
                    ctx.env[local] = self.op_node(g, local, raw, path, ctx)
                elif "block" in raw:
                    ctx.env[local] = self.block_node(g, local, raw, path, ctx)
                elif "scan" in raw:
                    ctx.env[local] = self.scan_node(g, local, raw, path, ctx)
                else:
                    self.fail(f"node '{local}' has none of 'op', 'block', 'scan'", path, ctx, key=True,
                              expected="an op node {op: conv2d, ...}, a block {block: name} or a scan {scan: name}")
            except _Skip:
                ctx.env[local] = POISON
            ctx.last = local

    # -- node kinds ---------------------------------------------------------------------------
    def op_node(self, g: Graph, local: str, raw: dict, path: tuple, ctx: Ctx) -> Binding:
        opname = self.ev(raw["op"], path + ("op",), ctx)
        ops = registry()
        if not isinstance(opname, str) or opname not in ops or opname == "input":
            close = difflib.get_close_matches(str(opname), list(ops), n=3)
            self.fail(f"unknown op '{opname}'", path + ("op",), ctx,
                      hint=f"did you mean {', '.join(close)}?" if close else "`nnspec schema` lists every op",
                      expected=None if close else f"one of: {', '.join(sorted(ops))}")
        op = ops[opname]
        attrs = {}
        for k, v in raw.items():
            if k in COMMON_NODE_KEYS:
                continue
            # Numbers, bools and plain strings are what they say; only text with ${ or containers vary.
            attrs[k] = self.ev(v, path + (k,), ctx) if type(v) in (str, list, dict) else v
        try:
            model = op.Attrs(**attrs)
        except ValidationError as e:
            # An unknown key is the likeliest root cause (a typo), so report it before "missing".
            # Union attributes give one error per alternative: a value error (`kernel: [3, -1]` breaks
            # `>= 1` inside the list alternative) says more than "not an int".
            order = {"extra_forbidden": 0, "missing": 3}
            err = sorted(e.errors(), key=lambda x: (order.get(x["type"], 2 if x["type"].endswith("_type") else 1),
                                                    -len(x["loc"])))[0]
            key = err["loc"][0] if err["loc"] else None
            if err["type"] == "nnspec_attr":  # a check across attributes names the one at fault
                key = err["ctx"]["field"]
            if err["type"] == "extra_forbidden":
                allowed = sorted(set(op.Attrs.model_fields) | COMMON_NODE_KEYS)
                close = difflib.get_close_matches(str(key), allowed, n=1)
                self.fail(f"op '{opname}' has no attribute '{key}'", path + (key,), ctx, key=True,
                          expected=f"one of: {', '.join(allowed)}", hint=f"did you mean '{close[0]}'?" if close else None)
            if err["type"] == "missing":
                self.fail(f"op '{opname}' needs attribute '{key}'", path, ctx, key=True,
                          expected=f"{key}: {field_text(op.Attrs.model_fields[key])}")
            self.fail(f"attribute '{key}' of op '{opname}': {err['msg']}", path + ((key,) if key else ()), ctx,
                      expected=field_text(op.Attrs.model_fields[key]) if key in op.Attrs.model_fields else None)
        ins = self.refs(raw.get("in"), path + ("in",), ctx, implicit=op.arity[0])
        lo, hi = op.arity
        if len(ins) < lo or (hi is not None and len(ins) > hi):
            want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
            self.fail(f"op '{opname}' takes {want} input{'s' if hi != 1 else ''}, got {len(ins)}",
                      path + ("in",) if "in" in raw else path, ctx, key="in" not in raw, expected=f"in: with {want} names")
        node = Node(ctx.prefix + local, opname, attrs=model, loc=self.loc(path, key=True),
                    chain=ctx.chain, scope=ctx.scope, out_names=op.outputs(model))  # chain: shared, never mutated
        if "tie" in raw:
            tie = self.ev(raw["tie"], path + ("tie",), ctx)
            if not isinstance(tie, dict) or not tie:
                self.fail("tie must map own params to 'node.param'", path + ("tie",), ctx,
                          expected="e.g. tie: {weight: embed.weight}")
            for k, v in tie.items():
                why = problem(k, "path") or problem(v, "path") or (None if isinstance(v, str) and "." in v else
                                                            "a parameter of another node is 'node.param'")
                if why:
                    self.fail(f"tie {quote(k)}: {quote(v)}: {why}", path + ("tie", k), ctx,
                              expected="e.g. tie: {weight: embed.weight}")
            node.ties = dict(tie)
        if "share" in raw:
            share = self.ev(raw["share"], path + ("share",), ctx)
            why = problem(share, "path")
            if why:
                self.fail(f"share: {quote(share)}: {why}", path + ("share",), ctx, expected="the id of a node, e.g. encoder.embed")
            node.ties = {"*": share}
        if "init" in raw:
            init = self.ev(raw["init"], path + ("init",), ctx)
            if not isinstance(init, dict) or not init:
                self.fail("init must map param names to initialisers", path + ("init",), ctx,
                          expected="e.g. init: {weight: identity, bias: zeros}")
            for pname, spec in init.items():
                why = problem(pname)
                if why:
                    self.fail(f"init names parameter {quote(pname)}: {why}", path + ("init", pname), ctx, key=True)
                try:
                    node.init[pname] = parse_init(spec)
                except InitError as e:
                    self.fail(f"init of '{pname}': {e.message}", path + ("init", pname), ctx, expected=e.expected)
            node.init_loc = self.loc(path + ("init",), key=True)
        self.bump(1, path, ctx)
        g.add(node)
        self.added.append(node)
        for slot, (src, port) in enumerate(ins):
            g.connect(src, port, node.id, slot)
        names = node.out_names
        return Binding([(node.id, i) for i in range(len(names))], names)

    def _block(self, raw: dict, key: str, path: tuple, ctx: Ctx, allowed: set):
        for k in raw:
            if k not in allowed:
                self.fail(f"unknown key '{k}' in a {key} node", path + (k,), ctx, key=True,
                          expected=f"one of: {', '.join(sorted(allowed))}")
        try:
            (BlockNode if key == "block" else ScanNode).model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            where = tuple("in" if p == "in_" else p for p in err["loc"])
            self.fail(f"{key} node '{path[-1]}': {'.'.join(map(str, where))}: {err['msg']}", path + where[:1], ctx)
        bname = self.ev(raw[key], path + (key,), ctx)
        blocks = self.spec.model.blocks
        if not isinstance(bname, str) or bname not in blocks:
            close = difflib.get_close_matches(str(bname), list(blocks), n=3)
            self.fail(f"unknown block '{bname}'", path + (key,), ctx,
                      expected=f"one of: {', '.join(blocks) or '(no blocks defined)'}",
                      hint=f"did you mean {', '.join(close)}?" if close else None)
        if ctx.depth >= MAX_BLOCK_DEPTH:
            recursive = any(fr.block == bname for fr in ctx.chain)
            self.fail(f"blocks nest deeper than {MAX_BLOCK_DEPTH}" + (f": block '{bname}' instantiates itself"
                      if recursive else ""), path, ctx, fatal=True,
                      expected="a block that does not (directly or through others) contain itself")
        return bname, blocks[bname]

    def _args(self, bname: str, block, raw_args, path: tuple, ctx: Ctx, extra: dict) -> dict:
        names = {**ctx.names, **extra}
        given = {k: self.ev(v, path + ("args", k), Ctx(path, "", (), ctx.chain, names, ctx.env, graph=ctx.graph))
                 for k, v in (raw_args or {}).items()}
        out = dict(self.spec.params)
        for k in given:
            if k not in block.args:
                self.fail(f"block '{bname}' has no arg '{k}'", path + ("args", k), ctx, key=True,
                          expected=f"one of: {', '.join(block.args) or '(no args)'}")
        for k, decl in block.args.items():
            decl = decl if isinstance(decl, ArgSpec) else ArgSpec(type=decl)
            if k not in given:
                if decl.default is None:
                    self.fail(f"block '{bname}' needs arg '{k}'", path, ctx, key=True, expected=f"args: {{{k}: <{decl.type}>}}")
                given[k] = self.ev(decl.default, ("blocks", bname, "args", k), Ctx(path, "", (), ctx.chain, out, {}))
            v = given[k]
            ok = {"int": isinstance(v, int) and not isinstance(v, bool), "float": isinstance(v, (int, float)) and not isinstance(v, bool),
                  "bool": isinstance(v, bool), "str": isinstance(v, str), "list": isinstance(v, list), "any": True}[decl.type]
            if not ok:
                self.fail(f"arg '{k}' of block '{bname}' is {v!r}", path + ("args", k), ctx, expected=decl.type)
            out[k] = v
        return out

    def _instance(self, g: Graph, bname: str, block, inputs: list, args: dict, prefix: str, scope: tuple,
                  path: tuple, ctx: Ctx, inst: str) -> Binding:
        in_names = [block.in_] if isinstance(block.in_, str) else list(block.in_)
        if len(inputs) != len(in_names):
            self.fail(f"block '{bname}' takes {len(in_names)} inputs ({', '.join(in_names)}), got {len(inputs)}",
                      path + ("in",), ctx, key=True, expected=f"in: [{', '.join(in_names)}]")
        key = self.templates.key(bname, args, lambda: self.input_types(ctx, inputs, path)) if self.use_templates else None
        template = self.templates.made.get(key) if key is not None else None
        if template is not None:  # an earlier instance read the same values: stamp a copy of it
            self.bump(len(template.nodes), path, ctx)
            refs, names = self.templates.stamp(template, g, prefix, list(inputs), scope, ctx.chain,
                                               self.loc(path, key=True))
            g.instances[prefix[:-1]] = Instance(bname, in_names, list(inputs), names, refs, args)
            return Binding(refs, names)
        env = {n: Binding([r], ["out"]) for n, r in zip(in_names, inputs)}
        chain = ctx.chain + [Frame(bname, inst, self.loc(path, key=True))]
        bctx = Ctx(("blocks", bname, "nodes"), prefix, scope, chain, args, env, ctx.depth + 1,
                   last=in_names[0] if in_names else None, graph=ctx.graph)
        mark, errors = len(self.added), len(self.errors)
        self.nodes(g, block.nodes, bctx)
        outs = block.out
        items = [(outs, outs)] if isinstance(outs, str) else [(o, o) for o in outs] if isinstance(outs, list) else list(outs.items())
        refs, names = [], []
        for oname, ref in items:
            refs.append(self.resolve(ref, ("blocks", bname, "out"), bctx))
            names.append(oname.split(".")[0] if oname == ref else oname)
        if key is not None and len(self.errors) == errors:
            self.templates.record(key, g, self.added[mark:], prefix, list(inputs), scope, len(ctx.chain), refs, names)
        g.instances[prefix[:-1]] = Instance(bname, in_names, list(inputs), names, refs, args)
        return Binding(refs, names)

    def block_node(self, g: Graph, local: str, raw: dict, path: tuple, ctx: Ctx) -> Binding:
        bname, block = self._block(raw, "block", path, ctx, BLOCK_NODE_KEYS)
        in_names = [block.in_] if isinstance(block.in_, str) else list(block.in_)
        # `const: {mask: mask}` binds block inputs to one value for every instance of a repeat; the
        # other inputs chain from one instance's outputs to the next.
        const = {}
        for k, v in (raw.get("const") or {}).items():
            if k not in in_names:
                self.fail(f"'{k}' is not an input of block '{bname}'", path + ("const", k), ctx, key=True,
                          expected=f"one of: {', '.join(in_names)}")
            const[k] = self.resolve(v, path + ("const", k), ctx)
        chained = [k for k in in_names if k not in const]
        inputs = self.refs(raw.get("in"), path + ("in",), ctx, implicit=1 if chained else 0)
        repeated = "repeat" in raw
        n = self.ev(raw.get("repeat", 1), path + ("repeat",), ctx)
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_REPEAT:
            self.fail(f"repeat is {n!r}", path + ("repeat",), ctx, expected=f"an int from 0 to {MAX_REPEAT}")
        if n > 1:  # bound the whole repeat before building any of it (single instances count as they go)
            self.bump(n * self.min_size(bname, {**self.spec.params, **ctx.names}), path + ("repeat",), ctx, planned=True)
        binding = Binding(inputs, ["out"] * len(inputs))
        for i in range(n):
            args = self._args(bname, block, raw.get("args"), path, ctx, {"i": i})
            if repeated:
                args["i"] = i
                scope = ctx.scope + (Scope(local, "", "list"), Scope(str(i), bname))
                prefix = f"{ctx.prefix}{local}.{i}."
            else:
                scope = ctx.scope + (Scope(local, bname),)
                prefix = f"{ctx.prefix}{local}."
            fed = iter(binding.refs)
            full = [const[k] if k in const else next(fed, None) for k in in_names] if const else binding.refs
            if any(r is None for r in full):
                self.fail(f"block '{bname}' needs inputs {', '.join(chained)} besides its const ones, got "
                          f"{len(binding.refs)}", path + ("in",), ctx, key=True, expected=f"in: [{', '.join(chained)}]")
            binding = self._instance(g, bname, block, full, args, prefix, scope, path, ctx, prefix[:-1])
            if repeated and i + 1 < n and len(binding.refs) != len(inputs):
                self.fail(f"block '{bname}' is repeated but has {len(inputs)} chained inputs and {len(binding.refs)} "
                          "outputs", path + ("repeat",), ctx,
                          expected="as many outputs as inputs that are not const, so instances chain")
        return binding

    def scan_node(self, g: Graph, local: str, raw: dict, path: tuple, ctx: Ctx) -> Binding:
        bname, block = self._block(raw, "scan", path, ctx, SCAN_NODE_KEYS)
        in_names = [block.in_] if isinstance(block.in_, str) else list(block.in_)
        roles: dict = {}
        for role in ("over", "carry", "const"):
            for k in (raw.get(role) or {}):
                if k not in in_names:
                    self.fail(f"'{k}' is not an input of block '{bname}'", path + (role, k), ctx, key=True,
                              expected=f"one of: {', '.join(in_names)}")
                roles[k] = role
        missing = [k for k in in_names if k not in roles]
        if missing:
            self.fail(f"scan does not feed block input(s) {', '.join(missing)}", path, ctx, key=True,
                      expected="each block input in exactly one of over / carry / const")
        steps = None
        if raw.get("steps") is not None:
            if raw.get("over"):
                self.fail("a scan runs over its 'over' inputs or a fixed number of 'steps', not both",
                          path + ("steps",), ctx, key=True, expected="either over: {...} or steps: K")
            steps = self.ev(raw["steps"], path + ("steps",), ctx)
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_LOOP_STEPS:
                self.fail(f"steps is {steps!r}", path + ("steps",), ctx,
                          expected=f"an integer from 1 to {MAX_LOOP_STEPS:,}")
            if raw.get("reverse"):
                self.fail("a loop of fixed steps has no direction", path + ("reverse",), ctx, key=True,
                          expected="reverse only on a scan over inputs")
        elif not raw.get("over"):
            self.fail("scan needs at least one per-step input under 'over', or a number of 'steps'", path, ctx,
                      key=True, expected="over: {block input: sequence} or steps: K")
        ins = [self.resolve(raw[roles[k]][k], path + (roles[k], k), ctx) for k in in_names]
        args = self._args(bname, block, raw.get("args"), path, ctx, {})
        prefix = f"{ctx.prefix}{local}."
        body = Graph(f"{prefix}body")
        benv = {}
        for k in in_names:
            body.add(Node(f"{prefix}{k}", "input", attrs=registry()["input"].Attrs(name=k), out_names=["out"],
                          loc=self.loc(("blocks", bname, "in"))))
            benv[k] = Binding([(f"{prefix}{k}", 0)], ["out"])
        chain = ctx.chain + [Frame(bname, prefix[:-1], self.loc(path, key=True))]
        bctx = Ctx(("blocks", bname, "nodes"), prefix, (), chain, args, benv, ctx.depth + 1,
                   last=in_names[0] if in_names else None, graph=body)
        self.nodes(body, block.nodes, bctx)
        outs = block.out
        items = [(outs, outs)] if isinstance(outs, str) else [(o, o) for o in outs] if isinstance(outs, list) else list(outs.items())
        for oname, ref in items:
            body.outputs[oname] = self.resolve(ref, ("blocks", bname, "out"), bctx)
        carry = list((raw.get("carry") or {}).keys())
        for c in carry:
            if c not in body.outputs:
                self.fail(f"carried state '{c}' is not an output of block '{bname}'", ("blocks", bname, "out"), ctx,
                          expected=f"block out to include '{c}' (its value for the next step)")
        axis = self.ev(raw.get("axis", 1), path + ("axis",), ctx)
        reverse = self.ev(raw.get("reverse", False), path + ("reverse",), ctx)
        attrs = registry()["scan"].Attrs(block=bname, inputs=in_names, roles=[roles[k] for k in in_names],
                                         carry=carry, axis=axis, reverse=bool(reverse), steps=steps)
        node = Node(f"{ctx.prefix}{local}", "scan", attrs=attrs, loc=self.loc(path, key=True), chain=list(ctx.chain),
                    scope=ctx.scope, body=body)
        node.out_names = carry + [o for o in body.outputs if o not in carry]
        # The body's nodes have their own scopes (from the body's root), so the block instances in
        # it are keyed like those scopes, without the scan's id in front (as code generation reads them).
        body.instances = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in body.instances.items()}
        self.bump(1, path, ctx)
        g.add(node)
        self.added.append(node)
        for slot, (src, port) in enumerate(ins):
            g.connect(src, port, node.id, slot)
        return Binding([(node.id, i) for i in range(len(node.out_names))], node.out_names)


def expand(spec: LoadedSpec) -> dict[str, Graph]:
    ex = Expander(spec)
    m = spec.model
    graphs = {}
    try:
        graphs["forward"] = ex.graph("forward", m.inputs, m.nodes, m.outputs, ())
        for gname, gs in m.graphs.items():
            path = ("graphs", gname, "when")
            if gs.when is not None and not ex.ev(gs.when, path, Ctx(path, "", (), [], dict(spec.params), {})):
                continue  # an entry graph only some variants have (the transformer's greedy decoder)
            graphs[gname] = ex.graph(gname, gs.inputs, gs.nodes, gs.outputs, ("graphs", gname))
    except _Stop:
        pass
    if ex.errors:
        raise ex.errors[0] if len(ex.errors) == 1 else SpecErrors(ex.errors)
    return graphs
