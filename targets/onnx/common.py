"""What the ONNX builder and the graph walker share: IR dtypes as ONNX element types, and typed
value declarations. Its own module so that `builder.py` (which lowers scan bodies through the
walker) and `walk.py` (which declares the types of what op lowerings emitted) need not import each
other. Imports onnx lazily, like the rest of the target.
"""
from __future__ import annotations

# IR dtype name -> onnx.TensorProto elem type (the enum's values, so importing this loads no onnx).
ELEM_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "int32": 6, "int64": 7, "bool": 9, "float16": 10,
              "float64": 11, "bfloat16": 16}


def value_info(name: str, t, elem_type: int | None = None):
    """An ONNX ValueInfoProto for a TensorType; symbolic dims become dim_params (expressions kept as text)."""
    from onnx import helper
    dims = [d if isinstance(d, int) else str(d) for d in t.shape]
    return helper.make_tensor_value_info(name, elem_type or ELEM_TYPES[t.dtype], dims)


__all__ = ["ELEM_TYPES", "value_info"]
