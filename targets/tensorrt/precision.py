"""Reduced-precision ONNX for strongly typed TensorRT networks (TensorRT-RTX is always strongly typed:
precision comes from the tensors' types, not from builder flags).

`lower_precision(model, 'fp16'|'bf16')` returns a copy whose float32 initializers, constants, casts
and subgraph signatures use the lower type, while the graph's inputs and outputs stay float32 (a
Cast sits right after each float input and right before each output) so callers keep feeding and
reading float32 arrays. Values that ONNX requires to be float32 (Resize scales) are left alone.
"""
from __future__ import annotations

import numpy as np

TARGET = {"fp16": "FLOAT16", "bf16": "BFLOAT16"}
# (op type, input slot) that ONNX types as float32 whatever the data type of the network.
FLOAT32_SLOTS = {("Resize", 2), ("Upsample", 1)}


def _convert_array(arr: np.ndarray, precision: str):
    import onnx
    from onnx import TensorProto, numpy_helper

    if precision == "fp16":
        return numpy_helper.from_array(arr.astype(np.float16))
    # bfloat16: round-to-nearest-even on the float32 bit pattern, stored as raw 16-bit words.
    bits = np.asarray(arr, dtype=np.float32, order="C").view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    t = onnx.TensorProto()
    t.data_type = TensorProto.BFLOAT16
    t.dims.extend(arr.shape)
    t.raw_data = rounded.tobytes()
    return t


def _convert_tensor(t, precision: str):
    from onnx import TensorProto, numpy_helper

    if t.data_type != TensorProto.FLOAT:
        return t
    new = _convert_array(numpy_helper.to_array(t), precision)
    new.name = t.name
    return new


def lower_precision(model, precision: str):
    """A copy of `model` computing in fp16/bf16 with float32 inputs and outputs (fp32: the model itself)."""
    import onnx
    from onnx import TensorProto, helper

    if precision in (None, "fp32"):
        return model
    if precision not in TARGET:
        from nnspec.compiler.errors import LoweringError
        raise LoweringError(f"unknown precision '{precision}'", expected="fp32, fp16 or bf16")
    low = getattr(TensorProto, TARGET[precision])
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph

    keep32 = {n.input[slot] for n in g.node for (op, slot) in FLOAT32_SLOTS if n.op_type == op and len(n.input) > slot}
    inits = [init if init.name in keep32 else _convert_tensor(init, precision) for init in g.initializer]
    del g.initializer[:]
    g.initializer.extend(inits)
    _convert_nodes(g, low, precision)
    del g.value_info[:]

    new_nodes = []
    rename = {}
    for vi in g.input:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            rename[vi.name] = f"{vi.name}__{precision}"
            new_nodes.append(helper.make_node("Cast", [vi.name], [rename[vi.name]], to=low, name=f"{vi.name}/cast_{precision}"))
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in rename:
                n.input[i] = rename[x]
        _rename_in_subgraphs(n, rename)
    out_casts = []
    for vi in g.output:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            low_name = f"{vi.name}__{precision}"
            for n in g.node:
                for i, x in enumerate(n.output):
                    if x == vi.name:
                        n.output[i] = low_name
                for i, x in enumerate(n.input):
                    if x == vi.name:
                        n.input[i] = low_name
            src = rename.get(vi.name, low_name) if vi.name in rename else low_name
            out_casts.append(helper.make_node("Cast", [src], [vi.name], to=TensorProto.FLOAT, name=f"{vi.name}/cast_fp32"))
    nodes = new_nodes + list(g.node) + out_casts
    del g.node[:]
    g.node.extend(nodes)
    return m


def _rename_in_subgraphs(node, rename: dict) -> None:
    # Subgraphs may read outer-scope values by name.
    for a in node.attribute:
        if a.g is not None and a.HasField("g"):
            for n in a.g.node:
                for i, x in enumerate(n.input):
                    if x in rename:
                        n.input[i] = rename[x]
                _rename_in_subgraphs(n, rename)


def _convert_nodes(graph, low: int, precision: str) -> None:
    from onnx import AttributeProto, TensorProto

    for n in graph.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = low
            elif a.type == AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(_convert_tensor(a.t, precision))
            elif a.type == AttributeProto.GRAPH:
                _convert_subgraph(a.g, low, precision)


def _convert_subgraph(g, low: int, precision: str) -> None:
    from onnx import TensorProto

    for vi in list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = low
    inits = [_convert_tensor(t, precision) for t in g.initializer]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    _convert_nodes(g, low, precision)
