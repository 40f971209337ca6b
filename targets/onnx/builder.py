"""The ONNX builder: the one object op lowerings (`Op.to_onnx(a, ins, b, node)`) emit ONNX through.

A `Builder` collects nodes for one ONNX graph (the model's main graph or a scan body). Value
names are derived from the IR node being lowered (`<node id>/<OpType>`), made unique across the
whole model, so the same program always yields the same names. Parameters become initializers
named by their torch state-dict key (`<owner node id>.<param>`), created once per owner even when
several nodes tie to it; small constants are initializers deduplicated by content. Both live in
the main graph: a subgraph reads them through ONNX's outer-scope references.

`OPSET` is the only place the opset is chosen.
"""
from __future__ import annotations

from typing import Any

from nnspec.compiler.errors import LoweringError

from .common import ELEM_TYPES, value_info  # noqa: F401  (value_info: part of this module's API)
from .walk import lower_subgraph

# Opset 20: the first with a native Gelu (opset 20, `approximate="tanh"` included), which gelu and
# gelu_tanh lower to; it keeps opset 18's forms op lowerings rely on (Reduce* take `axes` as an
# input, Split takes `split` as an input, Pad/Resize final) and LayerNormalization (17). onnx 1.23's
# checker, onnxruntime 1.32 and TensorRT(-RTX)'s ONNX parser all accept it. Later opsets add nothing
# the op catalog needs (RMSNormalization, 23, is not parsed by every TensorRT release).
OPSET = 20

_NUMPY = {"float32": "float32", "float16": "float16", "float64": "float64", "int64": "int64",
          "int32": "int32", "bool": "bool", "uint8": "uint8", "int8": "int8"}


class _Shared:
    """State shared by a main graph's builder and every subgraph builder under it."""

    def __init__(self, weights: dict, for_trt: bool, stored: dict | None = None):
        import onnx

        self.weights = weights
        self.for_trt = for_trt
        # key -> (file, offset, length) of weights already written to a file (the artifact's
        # weights.safetensors): their initializers are external data pointing there, not copies.
        self.stored = stored or {}
        self.used: set[str] = set()
        # The model is created up front and initializers are written straight into its graph: a
        # protobuf message appended to a repeated field is copied, and for a 100 MB model the
        # copies cost more than the whole lowering.
        self.model = onnx.ModelProto()
        self.initializers = self.model.graph.initializer  # onnx.TensorProto, in creation order
        self.param_names: dict[str, str] = {}  # state-dict key -> initializer name
        self.consts: dict[tuple, str] = {}  # (dtype, shape, bytes) -> initializer name

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name


class Builder:
    """Emits ONNX nodes for one graph; see docs/architecture.md ("The ONNX builder contract")."""

    opset = OPSET

    def __init__(self, weights: dict | None = None, for_trt: bool = False, graph=None,
                 _shared: _Shared | None = None, stored: dict | None = None):
        self._s = _shared or _Shared(weights if weights is not None else {}, for_trt, stored)
        self.graph = graph  # the IR graph being lowered (for input types)
        self.nodes: list = []  # onnx.NodeProto of this graph, in emission order
        self.node = None  # the IR node being lowered (set by the walker through `at`)

    # -- context --------------------------------------------------------------------------------
    @property
    def for_trt(self) -> bool:
        """True when building the ONNX form fed to TensorRT (ops' `to_trt`)."""
        return self._s.for_trt

    def at(self, node) -> "Builder":
        """Make `node` the IR node whose lowering emits the next ONNX nodes (names derive from it)."""
        self.node = node
        return self

    def child(self, graph=None) -> "Builder":
        """A builder for a subgraph: its own node list, the model's names and initializers."""
        return Builder(graph=graph, _shared=self._s)

    def unique(self, base: str) -> str:
        """A model-wide unique value name starting with `base`."""
        return self._s.unique(base)

    def reserve(self, name: str) -> str:
        """Claim an exact value name (graph inputs/outputs); LoweringError if already taken."""
        if name in self._s.used:
            raise LoweringError(f"ONNX value name '{name}' is used twice",
                                expected="graph input and output names distinct from each other")
        self._s.used.add(name)
        return name

    @property
    def initializers(self) -> list:
        return self._s.initializers

    # -- emitting nodes ---------------------------------------------------------------------------
    def op(self, op_type: str, inputs: list, n_out: int = 1, domain: str = "", **attrs) -> Any:
        """Append one ONNX node; returns its output name (a list of names when n_out > 1).

        `inputs` are value names ("" for an omitted optional input); attrs are python ints, floats,
        strings, lists of those, or an `onnx.GraphProto` (subgraph). None-valued attrs are omitted.
        """
        from onnx import helper

        owner = self.node.id if self.node is not None else "graph"
        base = f"{owner}/{op_type}"
        outs = [self.unique(base) for _ in range(n_out)]
        clean = {k: _attr_value(k, v, op_type) for k, v in sorted(attrs.items()) if v is not None}
        for i, x in enumerate(inputs):
            if not isinstance(x, str):
                raise LoweringError(f"{op_type} input {i} of node '{owner}' is {x!r}",
                                    expected="a value name (str); use b.const/b.scalar for constants")
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], domain=domain or None,
                                           **clean))
        return outs[0] if n_out == 1 else outs

    def param(self, node, pname: str) -> str:
        """Initializer name of `node`'s parameter/buffer `pname`, following ties to the owner."""
        import numpy as np

        key = node.ties.get(pname, f"{node.id}.{pname}")
        if key in self._s.param_names and pname in node.params:
            return self._s.param_names[key]
        arr = self.weight(node, pname)
        name = self.reserve(key) if key not in self._s.used else self.unique(key)
        t = self._s.initializers.add()
        where = self._s.stored.get(key)
        if where is not None and where[2] == arr.nbytes:  # these very bytes are in the weights file
            _external(t, arr, name, where)
        else:
            _tensor(t, np.asarray(arr, order="C"), name)  # (ascontiguousarray makes 0-d arrays 1-d)
        self._s.param_names[key] = name
        return name

    def weight(self, node, pname: str):
        """The numpy array of `node`'s parameter/buffer `pname` (ties followed) in the weights being
        lowered: for lowerings that compute constants from weights (a batch norm folded into a conv)."""
        import numpy as np

        if pname not in node.params:
            raise LoweringError(f"node '{node.id}' has no parameter '{pname}'",
                                expected=f"one of: {', '.join(node.params) or '(none)'}")
        key = node.ties.get(pname, f"{node.id}.{pname}")
        spec = node.params[pname]
        if key not in self._s.weights:
            raise LoweringError(f"no weight '{key}' for node '{node.id}'",
                                expected="a weights dict keyed by state-dict names (node id + '.' + param)")
        arr = self._s.weights[key]
        if hasattr(arr, "detach"):  # a torch tensor (state_dict values) is accepted as well
            arr = arr.detach().cpu().numpy()
        arr = np.asarray(arr)
        want = _NUMPY.get(spec.dtype)
        if want and arr.dtype != np.dtype(want):
            arr = arr.astype(want)
        if tuple(arr.shape) != tuple(spec.shape):
            raise LoweringError(f"weight '{key}' has shape {list(arr.shape)}",
                                expected=f"shape {list(spec.shape)} (from the spec)")
        return arr

    def initializer(self, base: str, array) -> str:
        """Initializer name of an array computed at lowering time (folded weights, a constant table),
        named `base` made unique; stored in the model itself, never pointing into the weights file."""
        import numpy as np

        name = self.unique(base)
        _tensor(self._s.initializers.add(), np.asarray(array, order="C"), name)
        return name

    def detached(self) -> "Builder":
        """A builder with the same weights but a model of its own: lowerings evaluated at lowering time
        (fuse_ops' folded constants) are built there, run, and only their values kept."""
        return Builder(self._s.weights, self._s.for_trt, self.graph)

    def const(self, values, dtype: str = "int64") -> str:
        """Initializer name of a small constant tensor (deduplicated by dtype, shape and content)."""
        import numpy as np

        if dtype not in ("int64", "float32", "bool", "int32", "float16", "float64", "uint8", "int8"):
            raise LoweringError(f"constant dtype '{dtype}'", expected="int64, float32 or bool")
        arr = np.asarray(values, dtype=_NUMPY[dtype], order="C")
        key = (dtype, arr.shape, arr.tobytes())
        if key not in self._s.consts:
            name = self.unique("const")
            _tensor(self._s.initializers.add(), arr, name)
            self._s.consts[key] = name
        return self._s.consts[key]

    def scalar(self, v, dtype: str = "float32") -> str:
        """A 0-d constant."""
        import numpy as np
        return self.const(np.asarray(v), dtype)

    def shape(self, x: str) -> str:
        """The runtime shape of `x` (1-D int64)."""
        return self.op("Shape", [x])

    def dim(self, x: str, axis: int) -> str:
        """The runtime size of `x` along `axis` as a 1-D int64 tensor of length 1 (ready for Concat)."""
        end = None if axis == -1 else axis + 1
        return self.op("Shape", [x], start=axis, end=end)

    # -- types of the node being lowered ----------------------------------------------------------
    def dtype(self, node_output_index: int = 0) -> int:
        """ONNX elem type (TensorProto enum value) of the current node's output."""
        return ELEM_TYPES[self.node.outputs[node_output_index].dtype]

    def out_type(self, i: int = 0):
        """TensorType of the current node's output `i`."""
        return self.node.outputs[i]

    def in_type(self, i: int = 0):
        """TensorType of the current node's input slot `i`."""
        return self.in_types()[i]

    def in_types(self) -> list:
        """TensorTypes of all the current node's inputs, in slot order."""
        return self.graph.input_types(self.node.id)

    # -- subgraphs --------------------------------------------------------------------------------
    def subgraph(self, graph, input_types: dict, outer_names: dict | None = None,
                 outputs: list | None = None):
        """Lower IR `graph` (a scan body) to an `onnx.GraphProto`.

        `input_types` maps body input-node ids, in the ONNX body's input order, to their TensorType;
        `outer_names` maps the remaining body input-node ids to outer-scope value names (closed-over
        values, read directly); `outputs` orders the body's outputs (default: `graph.outputs` order).
        Parameters inside the body are initializers of the main graph, read via outer scope.
        """
        return lower_subgraph(self, graph, input_types, outer_names or {}, outputs)


def _tensor(t, arr, name: str) -> None:
    """Fill TensorProto `t` (already in its graph) with `arr` as little-endian raw data."""
    from onnx import helper

    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    t.raw_data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _external(t, arr, name: str, where: tuple) -> None:
    """Fill TensorProto `t` as external data: `arr`'s raw bytes at (file, offset, length)."""
    from onnx import TensorProto, helper

    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    t.data_location = TensorProto.EXTERNAL
    for key, value in zip(("location", "offset", "length"), where):
        t.external_data.add(key=key, value=str(value))


def _attr_value(key: str, v, op_type: str):
    import numpy as np
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        v = list(v)
    if isinstance(v, list):
        if not v:
            raise LoweringError(f"{op_type} attribute '{key}' is an empty list",
                                expected="a non-empty list (omit the attribute instead)")
        return [x.item() if isinstance(x, np.generic) else int(x) if isinstance(x, bool) else x for x in v]
    return v


__all__ = ["Builder", "OPSET", "ELEM_TYPES", "value_info"]
