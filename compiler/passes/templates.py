"""Block-instance templates: expand a block once per distinct set of values it reads, then stamp copies.

The instances of a repeated block usually differ only in their node ids (`layer.3.fc`) and inputs:
every expression in the body reads the same values. Expanding each from scratch repeats the
expression evaluation, attribute validation and reference resolution for every node. Instead the
first instance is recorded relative to its id prefix and scope, and later instances whose block
reads equal values (`key`) are stamped from the record: new ids, the same validated attributes.

    key = (block, ((name, value) for each name the block's own expressions read))

Only what the block body itself reads matters: nested blocks get their values through the args the
body passes them, and the spec's params are the same everywhere. Instances are not templated when
their expansion reported errors, held a scan (whose body graph would need copying), or read a
value from outside their inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import Frame
from ..ir.graph import Instance, Node
from ..spec.expr import names_in

_INPUT, _LOCAL = 0, 1  # where an edge comes from: the instance's k-th input, or a node of the instance


@dataclass
class Template:
    nodes: list  # [(proto Node, relative id, [(where, ref, port)] per slot, frames index, relative scope)]
    frames: list  # distinct instantiation chains below the instance, as [(block, relative instance, loc)]
    instances: list  # [(relative key, block, in_names, in_refs, out_names, out_refs, args)], refs as (where, ref, port)
    out_refs: list  # [(where, ref, port)]
    out_names: list


def _freeze(v):
    """A hashable form of a value read by expressions (plain data); types kept (1 vs 1.0 vs True)."""
    if isinstance(v, dict):
        return ("d",) + tuple((k, _freeze(x)) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ("l",) + tuple(_freeze(x) for x in v)
    return (type(v).__name__, v)


class Templates:
    def __init__(self, blocks: dict):
        self.blocks = blocks
        self.reads: dict = {}  # block -> names its body's expressions read (None: unknown, never templated)
        self.made: dict = {}  # key -> Template (None: this key cannot be templated)

    def key(self, bname: str, names: dict, input_types):
        """The template key of an instance of `bname` expanded with `names`; `input_types()` gives
        its inputs' types, which join the key when the body reads tensors (`${channels(x)}`)."""
        if bname not in self.reads:
            block = self.blocks[bname]
            self.reads[bname] = names_in([block.nodes, block.out])
        reads = self.reads[bname]
        if reads is None:
            return None
        try:
            key = (bname,) + tuple((n, _freeze(names[n])) for n in sorted(reads) if n in names)
            if any(n not in names for n in reads):  # a tensor's shape, or an undefined name (an error)
                key += (tuple(str(t) for t in input_types()),)
            hash(key)
        except TypeError:
            return None
        return key

    def record(self, key, g, added: list, prefix: str, inputs: list, scope: tuple, chain_len: int,
               out_refs: list, out_names: list) -> None:
        """Remember how the instance at `prefix` expanded (`added`: its nodes, in order)."""
        if key in self.made:
            return
        ids = {n.id for n in added}
        index = {ref: k for k, ref in enumerate(inputs)}

        def rel(ref):
            src, port = ref
            if src in ids:
                return (_LOCAL, src[len(prefix):], port)
            if ref in index:
                return (_INPUT, index[ref], None)
            raise LookupError(ref)  # read from outside the instance's inputs: not templatable

        try:
            nodes, frame_ids = [], {}
            for n in added:
                if n.body is not None or n.id not in g or not n.id.startswith(prefix):
                    raise LookupError(n.id)  # a scan, or a node of a scan's body graph
                frames = frame_ids.setdefault(id(n.chain), len(frame_ids))  # nodes of one instance share a chain
                nodes.append((n, n.id[len(prefix):], [rel(r) for r in g.inputs_of(n.id)], frames,
                              n.scope[len(scope):]))
            chains = {i: n.chain for n in added for i in [frame_ids[id(n.chain)]]}
            frames = [[(fr.block, fr.instance[len(prefix):] if fr.instance.startswith(prefix) else None, fr.loc)
                       for fr in chains[i][chain_len:]] for i in range(len(frame_ids))]
            insts = [(k[len(prefix):], i.block, i.in_names, [rel(r) for r in i.in_refs], i.out_names,
                      [rel(r) for r in i.out_refs], i.args)
                     for k, i in g.instances.items() if k.startswith(prefix)]
            self.made[key] = Template(nodes, frames, insts, [rel(r) for r in out_refs], list(out_names))
        except LookupError:
            self.made[key] = None

    def stamp(self, template: Template, g, prefix: str, inputs: list, scope: tuple, base_chain: list, loc) -> tuple:
        """Add a copy of `template` at `prefix`; returns (out_refs, out_names) like an expansion.
        `base_chain` is the chain of block instantiations above this instance, `loc` where this
        instance is written (the recorded instance may be another node of the same block)."""
        def ref(r):
            where, x, port = r
            return (prefix + x, port) if where == _LOCAL else inputs[x]

        # one chain list per nested instance, shared by its nodes
        chains = [base_chain + [Frame(b, prefix[:-1], loc) if i is None else Frame(b, prefix + i, at)
                                for b, i, at in frames]
                  for frames in template.frames]
        for proto, rid, ins, frames, rscope in template.nodes:
            n = Node(prefix + rid, proto.op, attrs=proto.attrs, out_names=proto.out_names,
                     ties=dict(proto.ties) if proto.ties else {}, init=dict(proto.init) if proto.init else {},
                     init_loc=proto.init_loc, loc=proto.loc, chain=chains[frames], scope=scope + rscope)
            g.add(n)
            for slot, r in enumerate(ins):
                src, port = ref(r)
                g.connect(src, port, n.id, slot)
        for rkey, block, in_names, in_refs, out_names, out_refs, args in template.instances:
            g.instances[prefix + rkey] = Instance(block, list(in_names), [ref(r) for r in in_refs], list(out_names),
                                                  [ref(r) for r in out_refs], args)
        return [ref(r) for r in template.out_refs], list(template.out_names)
