"""The TensorRT target-support lint: which nodes will not run under TensorRT, why, and what to use.

It runs before every TensorRT build and reads two things:

1. the IR (`lint_program`): each op's `trt_support(a, ins)` (the op's own knowledge, compiler/ops)
   plus generic checks that hold for every op:
     - dtypes TensorRT has no kernels for (float64; int8/uint8 without quantisation scales),
     - inputs whose dtype kind (float / int / bool) is not the one the op's input port declares
       (`Port.dtype`): an int tensor into conv2d or matmul, a float one into logical_and. The op's
       lowerings are written for the declared kinds (ONNX Conv has no int kernels, TensorRT's
       MatMul takes no int32/int64, ReduceMax no bool), so the build would fail at parse time,
     - shapes baked into the graph (a reshape-like node whose input has a symbolic dim but whose
       output is fully concrete: the engine would only accept the example size),
     - ops with no ONNX lowering at all.
   In the `trt` form (what the TensorRT build feeds), an op that declares a `to_trt` form is lowered
   through it, so its `trt_support` verdict on the plain ONNX form becomes a note; in the `onnx` form
   (plain `to_onnx` everywhere) it stays an error.
2. the ONNX model about to be parsed (`lint_onnx`): patterns TensorRT(-RTX) was measured to reject
   (ScatterElements/ScatterND with a reduction, DOUBLE tensors, Reshape to a constant shape from a
   dynamic input, a Loop whose carried value grows by concatenation). ONNX nodes are named after
   their IR node, so each finding names the IR node.

Parser errors at build time are turned into findings the same way (`from_parser_errors`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from nnspec.compiler.ir.dims import symbols

UNSUPPORTED_DTYPES = {
    "float64": ("TensorRT has no float64 kernels", ["declare the tensor as float32"]),
}
QUANT_DTYPES = {
    "int8": "int8 tensors need quantisation scales (Q/DQ nodes) in TensorRT",
    "uint8": "uint8 is accepted only as a network input/output that is cast right away",
}
NUMEL_PRESERVING = {"reshape", "flatten", "transpose", "swap", "view"}
DTYPE_KINDS = ("float", "int", "bool")
SEVERITIES = ("error", "warning", "note")


@dataclass
class Finding:
    node: str  # IR node id ("" when the ONNX node could not be traced to one)
    op: str
    why: str
    alternatives: list = field(default_factory=list)
    severity: str = "error"
    loc: object = None  # compiler.errors.Location of the spec line, when known
    source: str = "ir"  # ir | onnx | parser

    def line(self) -> str:
        where = f"  # {self.loc}" if self.loc else ""
        alt = f" (instead: {'; '.join(self.alternatives)})" if self.alternatives else ""
        return f"{self.severity}: {self.node or '?'} ({self.op}): {self.why}{alt}{where}"


@dataclass
class LintReport:
    target: str = "trt"
    form: str = "trt"
    findings: list = field(default_factory=list)

    @property
    def errors(self) -> list:
        return [f for f in self.findings if f.severity == "error"]

    # A report reads as the sequence of its blocking findings: `if report:` means "will not run".
    def __len__(self) -> int:
        return len(self.errors)

    def __iter__(self):
        return iter(self.errors)

    @property
    def ok(self) -> bool:
        return not self.errors

    def nodes(self, severity: str = "error") -> list[str]:
        return [f.node for f in self.findings if f.severity == severity]

    def render(self) -> str:
        if not self.findings:
            return f"{self.target} lint: every node is supported"
        order = {s: i for i, s in enumerate(SEVERITIES)}
        lines = [f.line() for f in sorted(self.findings, key=lambda f: (order[f.severity], f.node))]
        n = len({f.node for f in self.errors})
        head = f"{self.target} lint: {n} node{'s' if n != 1 else ''} will not run" if n else f"{self.target} lint: ok"
        return "\n".join([head] + ["  " + ln for ln in lines])

    def to_json(self) -> dict:
        return {"target": self.target, "form": self.form, "ok": self.ok,
                "findings": [{"node": f.node, "op": f.op, "severity": f.severity, "why": f.why,
                              "alternatives": list(f.alternatives), "source": f.source,
                              "loc": str(f.loc) if f.loc else None} for f in self.findings]}

    def extend(self, findings) -> "LintReport":
        seen = {(f.node, f.why) for f in self.findings}
        for f in findings:
            if (f.node, f.why) not in seen:
                self.findings.append(f)
                seen.add((f.node, f.why))
        return self


# -- the IR --------------------------------------------------------------------------------------
def _overrides_to_trt(op) -> bool:
    from nnspec.compiler.ops.base import Op
    return getattr(type(op), "to_trt", Op.to_trt) is not Op.to_trt


def _has_onnx(op) -> bool:
    from nnspec.compiler.ops.base import Op
    return getattr(type(op), "to_onnx", Op.to_onnx) is not Op.to_onnx or op.name in ("scan", "input")


def _walk(graph):
    for n in graph.topo():
        yield graph, n
        if n.body is not None:
            yield from _walk(n.body)


def _kind(dtype: str) -> str:
    return "bool" if dtype == "bool" else "float" if dtype.startswith(("float", "bfloat")) else "int"


def _port_kinds(op, slot: int) -> tuple:
    """(port, the dtype kinds it declares) of input `slot` of `op`; kinds empty where the port
    declares none (`any`, `a's dtype`)."""
    ports = op.in_ports
    port = ports[slot] if slot < len(ports) else ports[-1] if ports and ports[-1].repeated else None
    if port is None or "any" in port.dtype or "dtype" in port.dtype:
        return port, set()
    return port, {w for w in re.findall(r"[a-z]+", port.dtype) if w in DTYPE_KINDS}


def _dtype_findings(n, ins: list) -> list[Finding]:
    out = []
    for slot, t in enumerate(ins):
        port, kinds = _port_kinds(n.opdef, slot)
        if not kinds or _kind(t.dtype) in kinds:
            continue
        want = " or ".join(k for k in DTYPE_KINDS if k in kinds)
        to = "float32" if "float" in kinds else "int64" if "int" in kinds else "bool"
        alternatives = [f"cast it first (op: cast, dtype: {to})"]
        if t.dtype == "bool":
            alternatives.append("combine bool masks with logical_and / logical_or, and apply them with where")
        out.append(Finding(n.id, n.op, f"input '{port.name}' is {t}, but {n.op} takes {want} tensors there (its torch, "
                           "ONNX and TensorRT forms are written for those)", alternatives, "error", n.loc))
    return out


def _node_findings(g, n, form: str) -> list[Finding]:
    out = []
    op = n.opdef
    ins = g.input_types(n.id) if n.op != "input" else []
    for t in n.outputs + [p for p in n.params.values()]:
        dt = t.dtype
        if dt in UNSUPPORTED_DTYPES:
            why, alt = UNSUPPORTED_DTYPES[dt]
            out.append(Finding(n.id, n.op, f"{why} ({dt})", alt, "error", n.loc))
            break
    for t in n.outputs:
        if t.dtype in QUANT_DTYPES:
            out.append(Finding(n.id, n.op, QUANT_DTYPES[t.dtype], ["cast to float32 or int32 first"], "warning", n.loc))
            break
    if n.op == "input":
        return out
    if not _has_onnx(op):
        out.append(Finding(n.id, n.op, f"op {n.op} has no ONNX lowering, so TensorRT cannot see it", [], "error", n.loc))
    out += _dtype_findings(n, ins)
    try:
        sup = op.trt_support(n.attrs, ins)
    except NotImplementedError:
        sup = None
    # `trt_support` judges what the TensorRT build feeds: the op's `to_trt` form where it has one.
    special = _overrides_to_trt(op)
    if sup is not None and not sup.ok:
        out.append(Finding(n.id, n.op, sup.why or "not supported by TensorRT", list(sup.alternatives), "error", n.loc))
    elif special and form == "onnx":
        why = f"has a TensorRT-specific form that this plain ONNX lowering does not use{': ' + sup.why if sup and sup.why else ''}"
        out.append(Finding(n.id, n.op, why, ["build with the TensorRT form (the default of --target trt / trt-rtx)"],
                           "warning", n.loc))
    elif special and sup is not None and sup.why:
        out.append(Finding(n.id, n.op, f"lowered through its TensorRT form: {sup.why}", list(sup.alternatives), "note", n.loc))
    if n.op in NUMEL_PRESERVING and ins:
        lost = set().union(*(set().union(*(symbols(d) for d in t.shape)) for t in ins))
        kept = set().union(*(symbols(d) for t in n.outputs for d in t.shape)) if n.outputs else set()
        if lost and not kept:
            out.append(Finding(n.id, n.op, f"the output shape {', '.join(str(t) for t in n.outputs)} is fixed although the "
                               f"input has dynamic dims ({', '.join(sorted(lost))}): the engine would accept only one size",
                               ["use 0 (copy the input dim) or -1 (infer) for the dynamic axes of the target shape"],
                               "error", n.loc))
    if op.train_dependent:
        out.append(Finding(n.id, n.op, "exported in its inference (eval) form", [], "note", n.loc))
    return out


def lint_program(program, form: str = "trt", graphs: list[str] | None = None, target: str = "trt") -> LintReport:
    """Lint the IR of `program` (every graph unless `graphs` names some)."""
    rep = LintReport(target=target, form=form)
    for gname, g in program.graphs.items():
        if graphs and gname not in graphs:
            continue
        for sub, n in _walk(g):
            rep.extend(_node_findings(sub, n, form))
    return rep


# -- the ONNX model ------------------------------------------------------------------------------
def node_owner(onnx_name: str, ids) -> str:
    """The IR node id an ONNX node name belongs to (the longest id it starts with), or ""."""
    best = ""
    for i in ids:
        if (onnx_name == i or onnx_name.startswith(i) and onnx_name[len(i)] in "/:._-#") and len(i) > len(best):
            best = i
    return best


def _ir_ids(program) -> dict:
    return {n.id: n for n in program.all_nodes()} if program is not None else {}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx
            return onnx.helper.get_attribute_value(a)
    return default


def _dynamic_value_names(model) -> set:
    """Names of values whose inferred shape has a symbolic or unknown dim."""
    import onnx
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    dyn = set()
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and any(d.HasField("dim_param") or not d.HasField("dim_value") for d in tt.shape.dim):
            dyn.add(vi.name)
    return dyn


def lint_onnx(model, program=None, target: str = "trt") -> list[Finding]:
    """Findings for ONNX patterns TensorRT rejects, named by the IR node each ONNX node came from."""
    import onnx
    from onnx import TensorProto

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    ids = _ir_ids(program)
    owner = lambda nm: node_owner(nm, ids) if ids else nm  # noqa: E731
    loc = lambda nid: ids[nid].loc if nid in ids else None  # noqa: E731
    out: list[Finding] = []
    consts = {init.name: init for init in model.graph.initializer}
    dynamic = _dynamic_value_names(model)

    def visit(graph, depth: int):
        for init in graph.initializer:
            if init.data_type == TensorProto.DOUBLE:
                out.append(Finding(owner(init.name), "initializer", "TensorRT has no float64 kernels (DOUBLE initializer)",
                                   ["store the parameter as float32"], "error", loc(owner(init.name)), "onnx"))
        for vi in list(graph.input) + list(graph.output):
            if vi.type.tensor_type.elem_type == TensorProto.DOUBLE:
                out.append(Finding(owner(vi.name), "io", f"graph input/output '{vi.name}' is float64",
                                   ["declare it as float32"], "error", loc(owner(vi.name)), "onnx"))
        for node in graph.node:
            nid = owner(node.name)
            what = f"{node.op_type}" + (f" '{node.name}'" if node.name else "")
            if node.op_type in ("ScatterElements", "ScatterND"):
                red = _attr(node, "reduction", b"none")
                red = red.decode() if isinstance(red, bytes) else red
                if red not in ("none", None):
                    out.append(Finding(nid, node.op_type, f"{what} with reduction='{red}' is rejected by TensorRT(-RTX)",
                                       ["use the op's TensorRT form (`--target trt` lowers scatter_add as a one-hot "
                                        "matmul)", "or run this graph on onnxruntime"], "error", loc(nid), "onnx"))
            if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in consts and node.input[0] in dynamic:
                shape = onnx.numpy_helper.to_array(consts[node.input[1]]).tolist()
                if all(int(s) > 0 for s in shape):
                    out.append(Finding(nid, "Reshape", f"{what} reshapes a dynamic tensor to the constant shape {shape}: "
                                       "the shape is baked into the graph", ["use 0 or -1 for the dynamic axes"],
                                       "error", loc(nid), "onnx"))
            if node.op_type == "Loop":
                body = _attr(node, "body")
                if body is not None and _loop_carry_grows(body):
                    out.append(Finding(nid, "Loop", f"{what}: a loop-carried value grows every iteration (concatenated "
                                       "onto itself); TensorRT needs loop-carried shapes fixed",
                                       ["collect per-step values as scan outputs (stacked once at the end)"],
                                       "error", loc(nid), "onnx"))
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g, depth + 1)

    visit(model.graph, 0)
    return out


def _loop_carry_grows(body) -> bool:
    # Loop body inputs: (iteration, cond, *carried); outputs: (cond, *carried, *scan outputs).
    carried_in = [vi.name for vi in body.input[2:]]
    carried_out = [vi.name for vi in body.output[1:1 + len(carried_in)]]
    producers = {o: n for n in body.node for o in n.output}
    for cin, cout in zip(carried_in, carried_out):
        n = producers.get(cout)
        if n is not None and n.op_type == "Concat" and cin in n.input:
            return True
    return False


def from_parser_errors(parser, program=None, model=None) -> list[Finding]:
    """Findings from a TensorRT OnnxParser that failed, naming the IR node of each failed ONNX node
    (by the error's node name, else by its node index in `model`'s top-level graph)."""
    ids = _ir_ids(program)
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        name = e.node_name() if hasattr(e, "node_name") else ""
        idx = e.node() if hasattr(e, "node") else -1
        if not name and model is not None and 0 <= idx < len(model.graph.node):
            name = model.graph.node[idx].name
        nid = node_owner(name, ids) if ids and name else name
        opname = e.node_operator() if hasattr(e, "node_operator") else ""
        out.append(Finding(nid, opname or "?", f"TensorRT parser: {e.desc()} ({e.code()})", [], "error",
                           ids[nid].loc if nid in ids else None, "parser"))
    return out


def lint(program, onnx_model=None, form: str = "trt", target: str = "trt") -> LintReport:
    """The full lint: the IR, then the ONNX model that will be parsed (when given)."""
    rep = lint_program(program, form=form, target=target)
    if onnx_model is not None:
        rep.extend(lint_onnx(onnx_model, program, target))
    return rep


def render(report) -> str:
    """Text of a report (or of a list of findings)."""
    if isinstance(report, LintReport):
        return report.render()
    return LintReport(findings=list(report)).render()


def check_program(program, form: str = "trt", target: str = "trt") -> LintReport:
    """Lint the IR and raise a LoweringError listing every node that will not run (returns the report,
    notes included, when all nodes are supported)."""
    from nnspec.compiler.errors import LoweringError

    rep = lint_program(program, form=form, target=target)
    if not rep.ok:
        first = rep.errors[0]
        raise LoweringError(rep.render(), first.loc if len(rep.errors) == 1 else None,
                            hint="see the alternatives listed per node, or use --target onnx")
    return rep
