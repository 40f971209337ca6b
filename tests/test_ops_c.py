"""Group C ops (hard activations and clamping, constants, casts, comparisons and bool masks, arange,
triangles, resampling, transposed convolutions, argmax, one_hot, cumsum) against torch.

Each case compiles a one-op spec and checks, at two sizes of its symbolic dims:
  * the generated module equals the torch reference function (torch / torch.nn.functional, with the
    module's own weights) and the inferred shapes and dtypes: within 1e-5, exactly for int and bool;
  * one ONNX model under onnxruntime equals torch at both sizes (dynamic dims stay dynamic);
  * the TensorRT lint's verdict (`lint(program, target="trt-rtx")`), and where TensorRT-RTX is
    installed, that an ahead-of-time engine build agrees with it.
Then: attribute errors located at the attribute, dtype refusals as shape errors, the FLOPs of the
transposed convolutions against FlopCounterMode, masks built in the graph (GPT-2's causal mask,
BERT's padding mask) end to end, and every op's representative spec fed bool and int inputs.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import compile_nodes, declared_inputs, flop_counter_total
from nnspec.compiler.cost import cost_report
from nnspec.compiler.errors import NnspecError, ShapeError, SpecError
from nnspec.compiler.ir.dims import resolve
from nnspec.targets.inputs import example_inputs
from nnspec.targets.torch.build import build_module
from test_registry import OPS, representative

torch.set_num_threads(1)
_TMP = Path(tempfile.mkdtemp(prefix="nnspec-ops-c-"))
SIZES = [{"N": 1, "T": 5, "H": 6, "W": 4}, {"N": 3, "T": 2, "H": 3, "W": 7}]


def _compile(inputs, nodes, outputs=None):
    return compile_nodes(_TMP, inputs, nodes, outputs)


def i64(shape, lo=-4, hi=5):
    return {"shape": shape, "dtype": "int64", "range": [lo, hi]}


def i32(shape, lo=-4, hi=5):
    return {"shape": shape, "dtype": "int32", "range": [lo, hi]}


def b8(shape):
    return {"shape": shape, "dtype": "bool"}


def W(m):
    """The state dict of the node `n` of a generated module."""
    return {k[2:]: v for k, v in m.state_dict().items() if k.startswith("n.")}


# case -> (inputs, node attributes with `op`, reference (module, *inputs) -> tensor)
CASES = {
    "relu6": ({"x": ["N", 3, "H"]}, {"op": "relu6"}, lambda m, x: F.relu6(x)),
    "relu6_int": ({"x": i64(["N", "T"], -9, 10)}, {"op": "relu6"}, lambda m, x: F.relu6(x)),
    "hardswish": ({"x": ["N", 3, "H"]}, {"op": "hardswish"}, lambda m, x: F.hardswish(x)),
    "hardsigmoid": ({"x": ["N", "T"]}, {"op": "hardsigmoid"}, lambda m, x: F.hardsigmoid(x)),
    "clamp": ({"x": ["N", "T"]}, {"op": "clamp", "min": -0.5, "max": 0.25}, lambda m, x: torch.clamp(x, -0.5, 0.25)),
    "clamp_min": ({"x": ["N", "T"]}, {"op": "clamp", "min": 0}, lambda m, x: torch.clamp(x, min=0.0)),
    "clamp_int": ({"x": i32(["N", "T"])}, {"op": "clamp", "min": -1, "max": 2}, lambda m, x: torch.clamp(x, -1, 2)),
    "hardtanh": ({"x": ["N", "T"]}, {"op": "hardtanh"}, lambda m, x: F.hardtanh(x)),
    "hardtanh_wide": ({"x": ["N", "T"]}, {"op": "hardtanh", "min_val": -0.5, "max_val": 2},
                      lambda m, x: F.hardtanh(x, -0.5, 2.0)),
    "constant": ({}, {"op": "constant", "value": [[0.5, -1.0], [2.0, 1e-3]]},
                 lambda m: torch.tensor([[0.5, -1.0], [2.0, 1e-3]])),
    "constant_scalar_int": ({}, {"op": "constant", "value": 7, "dtype": "int32"},
                            lambda m: torch.tensor(7, dtype=torch.int32)),
    "constant_bool": ({}, {"op": "constant", "value": [True, False, True], "dtype": "bool"},
                      lambda m: torch.tensor([True, False, True])),
    "constant_half": ({}, {"op": "constant", "value": [1.5, -2], "dtype": "float16"},
                      lambda m: torch.tensor([1.5, -2.0], dtype=torch.float16)),
    "cast_float_int": ({"x": ["N", "T"]}, {"op": "cast", "dtype": "int64"}, lambda m, x: x.to(torch.int64)),
    "cast_float_bool": ({"x": ["N", "T"]}, {"op": "cast", "dtype": "bool"}, lambda m, x: x.to(torch.bool)),
    "cast_float_half": ({"x": ["N", "T"]}, {"op": "cast", "dtype": "float16"}, lambda m, x: x.to(torch.float16)),
    "cast_bool_float": ({"x": b8(["N", "T"])}, {"op": "cast", "dtype": "float32"}, lambda m, x: x.float()),
    "cast_int_int32": ({"x": i64(["N", "T"])}, {"op": "cast", "dtype": "int32"}, lambda m, x: x.to(torch.int32)),
    "cast_int_bool": ({"x": i64(["N", "T"])}, {"op": "cast", "dtype": "bool"}, lambda m, x: x != 0),
    "where": ({"c": b8(["N", 1, "T"]), "a": ["N", 3, "T"], "b": [1, 3, 1]}, {"op": "where"},
              lambda m, c, a, b: torch.where(c, a, b)),
    "where_int": ({"c": b8(["N", "T"]), "a": i64(["N", "T"]), "b": i64([1, "T"])}, {"op": "where"},
                  lambda m, c, a, b: torch.where(c, a, b)),
    "where_bool": ({"c": b8(["N", "T"]), "a": b8(["N", "T"]), "b": b8(["N", 1])}, {"op": "where"},
                   lambda m, c, a, b: torch.where(c, a, b)),
    "equal_int": ({"a": i64(["N", "T"], 0, 3), "b": i64([1, "T"], 0, 3)}, {"op": "equal"}, lambda m, a, b: a == b),
    "equal_bool": ({"a": b8(["N", "T"]), "b": b8(["N", "T"])}, {"op": "equal"}, lambda m, a, b: a == b),
    "less": ({"a": ["N", "T"], "b": ["N", 1]}, {"op": "less"}, lambda m, a, b: a < b),
    "less_bool": ({"a": b8(["N", "T"]), "b": b8(["N", "T"])}, {"op": "less"}, lambda m, a, b: a < b),
    "less_equal_int": ({"a": i32(["N", "T"], 0, 3), "b": i32(["N", "T"], 0, 3)}, {"op": "less_equal"},
                       lambda m, a, b: a <= b),
    "greater": ({"a": ["N", "T"], "b": ["T"]}, {"op": "greater"}, lambda m, a, b: a > b),
    "greater_equal_int": ({"a": i64(["T", 1]), "b": i64([1, "T"])}, {"op": "greater_equal"}, lambda m, a, b: a >= b),
    "logical_and": ({"a": b8(["N", "T"]), "b": b8([1, "T"])}, {"op": "logical_and"}, lambda m, a, b: a & b),
    "logical_or": ({"a": b8(["N", "T"]), "b": b8(["N", 1])}, {"op": "logical_or"}, lambda m, a, b: a | b),
    "logical_xor": ({"a": b8(["N", "T"]), "b": b8(["N", "T"])}, {"op": "logical_xor"}, lambda m, a, b: a ^ b),
    "logical_not": ({"a": b8(["N", "T"])}, {"op": "logical_not"}, lambda m, a: ~a),
    "arange": ({}, {"op": "arange", "start": 2, "end": 11, "step": 3}, lambda m: torch.arange(2, 11, 3)),
    "arange_down": ({}, {"op": "arange", "start": 5, "end": -4, "step": -2, "dtype": "int32"},
                    lambda m: torch.arange(5, -4, -2, dtype=torch.int32)),
    "arange_float": ({}, {"op": "arange", "start": 0.5, "end": 2, "step": 0.25, "dtype": "float32"},
                     lambda m: torch.arange(0.5, 2, 0.25)),
    "arange_length": ({"x": ["N", "T", 3]}, {"op": "arange", "length_of": 1}, lambda m, x: torch.arange(x.shape[1])),
    "arange_length_affine": ({"x": ["N", "T", 3]}, {"op": "arange", "length_of": -2, "start": 3, "step": -2},
                             lambda m, x: torch.arange(x.shape[1]) * -2 + 3),
    "arange_length_float": ({"x": ["T"]}, {"op": "arange", "length_of": 0, "step": 0.5, "start": -1.0,
                                           "dtype": "float32"}, lambda m, x: torch.arange(x.shape[0]) * 0.5 - 1.0),
    "tril": ({"x": ["N", "T", "T"]}, {"op": "tril"}, lambda m, x: torch.tril(x)),
    "tril_bool_k": ({"x": b8(["T", "H"])}, {"op": "tril", "diagonal": -1}, lambda m, x: torch.tril(x, -1)),
    "triu": ({"x": i64(["N", "T", "H"])}, {"op": "triu", "diagonal": 1}, lambda m, x: torch.triu(x, 1)),
    "interpolate_nearest": ({"x": ["N", 2, "H", "W"]}, {"op": "interpolate", "scale_factor": 2},
                            lambda m, x: F.interpolate(x, scale_factor=2, mode="nearest")),
    "interpolate_nearest_1d": ({"x": ["N", 2, "T"]}, {"op": "upsample", "scale_factor": 3},
                               lambda m, x: F.interpolate(x, scale_factor=3, mode="nearest")),
    "interpolate_nearest_axes": ({"x": ["N", 2, "H", "W"]}, {"op": "interpolate", "scale_factor": [1, 3]},
                                 lambda m, x: F.interpolate(x, scale_factor=(1.0, 3.0), mode="nearest")),
    # sizes whose ratio Resize's out/in arithmetic maps differently from torch's in/out (14 -> 2, 20 -> 12)
    "interpolate_nearest_size": ({"x": ["N", 2, "H", 20]}, {"op": "interpolate", "size": [2, 12]},
                                 lambda m, x: F.interpolate(x, size=(2, 12), mode="nearest")),
    "interpolate_bilinear": ({"x": ["N", 2, "H", "W"]}, {"op": "interpolate", "scale_factor": 2, "mode": "bilinear"},
                             lambda m, x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)),
    "interpolate_bilinear_size": ({"x": ["N", 2, "H", "W"]}, {"op": "upsample", "size": [5, 3], "mode": "bilinear"},
                                  lambda m, x: F.interpolate(x, size=(5, 3), mode="bilinear", align_corners=False)),
    "interpolate_bilinear_corners": ({"x": ["N", 2, "H", "W"]}, {"op": "interpolate", "size": [7, 9],
                                                                "mode": "bilinear", "align_corners": True},
                                     lambda m, x: F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=True)),
    "conv_transpose1d": ({"x": ["N", 4, "T"]}, {"op": "conv_transpose1d", "out": 6, "kernel": 3, "stride": 2,
                                                 "padding": 1, "output_padding": 1, "groups": 2},
                         lambda m, x: F.conv_transpose1d(x, W(m)["weight"], W(m)["bias"], 2, 1, 1, 2)),
    "conv_transpose2d": ({"x": ["N", 3, "H", "W"]}, {"op": "conv_transpose2d", "out": 4, "kernel": [3, 2],
                                                      "stride": [2, 1], "padding": [1, 0], "bias": False},
                         lambda m, x: F.conv_transpose2d(x, W(m)["weight"], None, (2, 1), (1, 0))),
    "conv_transpose2d_dilated": ({"x": ["N", 2, "H", "W"]}, {"op": "conv_transpose2d", "out": 3, "kernel": 2,
                                                              "dilation": [2, 3], "padding": 1},
                                 lambda m, x: F.conv_transpose2d(x, W(m)["weight"], W(m)["bias"], 1, 1, 0, 1, (2, 3))),
    "conv_transpose2d_strided_dilated": (
        {"x": ["N", 2, "H", "W"]}, {"op": "conv_transpose2d", "out": 2, "kernel": 3, "stride": 2, "dilation": 2,
                                    "output_padding": 1},
        lambda m, x: F.conv_transpose2d(x, W(m)["weight"], W(m)["bias"], 2, 0, 1, 1, 2)),
    "pixel_shuffle": ({"x": ["N", 8, "H", "W"]}, {"op": "pixel_shuffle", "upscale_factor": 2},
                      lambda m, x: F.pixel_shuffle(x, 2)),
    "argmax": ({"x": ["N", "T", 5]}, {"op": "argmax"}, lambda m, x: torch.argmax(x, -1)),
    "argmax_int_ties": ({"x": i32(["N", 4, "T"], 0, 3)}, {"op": "argmax", "axis": 1, "keepdim": True},
                        lambda m, x: torch.argmax(x, 1, keepdim=True)),
    "one_hot": ({"ids": i64(["N", "T"], 0, 6)}, {"op": "one_hot", "num_classes": 6}, lambda m, i: F.one_hot(i, 6)),
    "one_hot_float": ({"ids": i64(["T"], 0, 4)}, {"op": "one_hot", "num_classes": 5, "dtype": "float32"},
                      lambda m, i: F.one_hot(i, 5).float()),
    "one_hot_bool": ({"ids": i64(["N", "T"], 0, 3)}, {"op": "one_hot", "num_classes": 3, "dtype": "bool"},
                     lambda m, i: F.one_hot(i, 3).bool()),
    "cumsum": ({"x": ["N", "T", 3]}, {"op": "cumsum", "axis": 1}, lambda m, x: torch.cumsum(x, 1)),
    "cumsum_int32": ({"x": i32(["N", "T"])}, {"op": "cumsum", "axis": -1}, lambda m, x: torch.cumsum(x, -1)),
    "cumsum_bool": ({"x": b8(["N", "T"])}, {"op": "cumsum", "axis": 0}, lambda m, x: torch.cumsum(x, 0)),
}
# The one case TensorRT(-RTX) cannot build, and why (its op's trt_support says so).
TRT_REFUSED = {"conv_transpose2d_strided_dilated": "both strided and dilated"}


def _program(case):
    inputs, node, _ = CASES[case]
    return _compile(inputs, {"n": {**node, **({"in": list(inputs)} if inputs else {})}})


def _inputs(program, values, seed=0) -> dict:
    return example_inputs(program, values, seed)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch_reference(case):
    inputs, node, reference = CASES[case]
    program = _program(case)
    module = build_module(program, seed=3).eval()
    want_type = program.forward.output_type("out")
    for values in SIZES:
        arrays = _inputs(program, values, seed=values["N"])
        xs = [torch.from_numpy(arrays[n.attrs.name]) for n in program.forward.inputs()]
        with torch.no_grad():
            got, want = module(*xs), reference(module, *xs)
        assert got.dtype == want.dtype, (case, got.dtype, want.dtype)
        assert str(got.dtype).replace("torch.", "") == want_type.dtype
        assert tuple(got.shape) == tuple(resolve(d, values) for d in want_type.shape) == tuple(want.shape)
        if got.dtype.is_floating_point:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(got, want), case


def _ort_equals_torch(program, module, values, seed=0, for_trt=False, model=None):
    from nnspec.targets.onnx import ort_session, run_ort, to_onnx_model
    from nnspec.targets.onnx.runner import torch_outputs

    if model is None:
        model = to_onnx_model(program, {k: v.numpy() for k, v in module.state_dict().items()}, for_trt=for_trt)
    x = _inputs(program, values, seed)
    got, want = run_ort(ort_session(model), x), torch_outputs(module, program, x)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=1e-5, atol=1e-5)
        else:
            assert np.array_equal(g, w), (name, g, w)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_matches_torch(case):
    from nnspec.targets.onnx import to_onnx_model

    program = _program(case)
    module = build_module(program, seed=3).eval()
    model = to_onnx_model(program, {k: v.numpy() for k, v in module.state_dict().items()})
    for values in SIZES:  # one model at two sizes: no symbolic dim was baked in
        _ort_equals_torch(program, module, values, seed=values["N"] + 1, model=model)


def test_cast_to_bfloat16_round_trips_through_onnx():
    # numpy has no bfloat16, so the value is cast back to float32 inside the graph and compared there
    program = _compile({"x": ["N", "T"]}, {"h": {"op": "cast", "in": "x", "dtype": "bfloat16"},
                                           "n": {"op": "cast", "in": "h", "dtype": "float32"}})
    module = build_module(program).eval()
    x = torch.randn(3, 5)
    assert torch.equal(module(x), x.to(torch.bfloat16).float())
    for values in SIZES:
        _ort_equals_torch(program, module, values)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tensorrt_lint_verdict(case):
    from nnspec.targets.tensorrt.lint import lint

    program = _program(case)
    report = lint(program, target="trt-rtx")
    if case in TRT_REFUSED:
        assert report.nodes("error") == ["n"] and TRT_REFUSED[case] in report.errors[0].why, report.render()
        assert report.errors[0].alternatives
    else:
        assert report.ok and not report.errors, report.render()


def test_tensorrt_rtx_builds_what_the_lint_passes(tmp_path):
    """Ahead-of-time TensorRT-RTX builds (no GPU needed) agree with every lint verdict above."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip install 'nnspec[trt-rtx]')")
    from nnspec.targets.onnx.export import compile_onnx
    from nnspec.targets.tensorrt import TensorRTBuildError, build_engine

    wrong = []
    for case in sorted(CASES):
        program = _program(case)
        folder = tmp_path / case
        model = compile_onnx(program, folder, for_trt=True)["model"]
        try:
            build_engine(model, folder, program=program, backend="trt-rtx", run_lint=False, progress=False,
                         opt_level=0)
            built = True
        except TensorRTBuildError:
            built = False
        if built == (case in TRT_REFUSED):
            wrong.append(case)
    assert not wrong, f"TensorRT-RTX disagrees with the lint for {wrong}"


# -- attribute errors, located at the attribute --------------------------------------------------
F4 = {"x": ["N", 3, 8, 8]}
BAD_ATTRS = [
    (F4, {"op": "clamp", "min": None}, "min", "needs min or max"),
    (F4, {"op": "clamp", "min": 2, "max": 1}, "max", "below min"),
    (F4, {"op": "clamp", "min": 3.5e38}, "min", "float32"),
    (F4, {"op": "hardtanh", "min_val": 1, "max_val": -1}, "max_val", "below min_val"),
    ({}, {"op": "constant", "value": [[1.0, 2.0], [3.0]]}, "value", "rectangular"),
    ({}, {"op": "constant", "value": 0.5, "dtype": "int64"}, "value", "not a int64 value"),
    ({}, {"op": "constant", "value": 1, "dtype": "bool"}, "value", "not a bool value"),
    ({}, {"op": "constant", "value": [70000.0], "dtype": "float16"}, "value", "not a float16 value"),
    ({}, {"op": "constant", "value": []}, "value", "rectangular"),
    ({}, {"op": "constant", "value": [0.0] * 70000}, "value", "more than 65536"),
    (F4, {"op": "cast", "dtype": "float64"}, "dtype", "float32"),
    ({}, {"op": "arange", "end": 5, "step": 0}, "step", "is 0"),
    ({}, {"op": "arange", "start": 5, "end": 1}, "end", "give 0 values"),
    ({}, {"op": "arange", "end": 2**40}, "end", "values"),
    ({}, {"op": "arange", "end": 4.5}, "end", "not a int64 value"),
    ({}, {"op": "arange", "length_of": None}, "length_of", "exactly one of end and length_of"),
    ({"x": ["N", 4]}, {"op": "arange", "end": 3, "length_of": 1}, "end", "exactly one of end and length_of"),
    ({}, {"op": "arange", "start": 2**31, "end": 2**31 + 2, "dtype": "int32"}, "start", "not a int32 value"),
    ({"x": ["N", 4, 4]}, {"op": "tril", "diagonal": True}, "diagonal", "integer"),
    (F4, {"op": "interpolate", "scale_factor": 2, "size": 4}, "size", "exactly one of size and scale_factor"),
    (F4, {"op": "interpolate", "scale_factor": None}, "scale_factor", "exactly one of size and scale_factor"),
    (F4, {"op": "interpolate", "scale_factor": 1.5}, "scale_factor", "whole number"),
    (F4, {"op": "upsample", "scale_factor": 0.5}, "scale_factor", "greater than or equal to 1"),
    (F4, {"op": "interpolate", "scale_factor": 2, "align_corners": True}, "align_corners", "bilinear"),
    (F4, {"op": "interpolate", "scale_factor": 2, "mode": "bicubic"}, "mode", "nearest"),
    (F4, {"op": "interpolate", "size": 0}, "size", "greater than or equal to 1"),
    (F4, {"op": "conv_transpose2d", "out": 2, "kernel": 3, "stride": 2, "output_padding": 2}, "output_padding",
     "not smaller than the stride"),
    (F4, {"op": "conv_transpose2d", "out": 2, "kernel": 3, "padding": "same"}, "padding", "integer"),
    (F4, {"op": "conv_transpose2d", "out": 2, "kernel": [3, 3, 3]}, "kernel", "3 values for 2 spatial"),
    (F4, {"op": "conv_transpose1d", "out": 0, "kernel": 3}, "out", "greater than or equal to 1"),
    (F4, {"op": "pixel_shuffle", "upscale_factor": 0}, "upscale_factor", "greater than or equal to 1"),
    ({"i": i64(["N"], 0, 3)}, {"op": "one_hot", "num_classes": 0}, "num_classes", "greater than or equal to 1"),
    ({"i": i64(["N"], 0, 3)}, {"op": "one_hot", "num_classes": 3, "dtype": "float64"}, "dtype", "int64"),
    (F4, {"op": "argmax", "axis": 100}, "axis", "less than or equal to 63"),
    (F4, {"op": "cumsum", "axis": "x"}, "axis", "integer"),
]


@pytest.mark.parametrize("inputs,node,attr,message", BAD_ATTRS,
                         ids=[f"{b[1]['op']}-{b[2]}-{i}" for i, b in enumerate(BAD_ATTRS)])
def test_bad_attributes_are_located_at_the_attribute(inputs, node, attr, message):
    with pytest.raises(SpecError) as e:
        _compile(inputs, {"n": {**node, **({"in": list(inputs)} if inputs else {})}})
    text = e.value.render()
    assert message in text and e.value.loc is not None and e.value.loc.path[-1] == attr, text


# -- dtype and shape refusals (the node is located; `expected:` says what to do) ----------------
BAD_TYPES = [
    ({"a": b8(["N", 4]), "b": b8(["N", 4])}, {"op": "mul"}, "use logical_and"),
    ({"a": b8(["N", 4]), "b": b8(["N", 4])}, {"op": "add"}, "use logical_or"),
    ({"a": b8(["N", 4]), "b": b8(["N", 4])}, {"op": "maximum"}, "use logical_or"),
    ({"a": ["N", 4], "b": i64(["N", 4])}, {"op": "add"}, "different dtypes"),
    ({"x": i64(["N", 4])}, {"op": "sigmoid"}, "floating-point"),
    ({"x": b8(["N", 4])}, {"op": "relu6"}, "numeric"),
    ({"x": i64(["N", 4])}, {"op": "clamp", "min": 0.5}, "whole-number bounds"),
    ({"x": i32(["N", 4])}, {"op": "clamp", "max": 2**40}, "does not fit int32"),
    ({"a": ["N", 4], "b": b8(["N", 4])}, {"op": "logical_and"}, "comparison, or cast to bool"),
    ({"x": ["N", 4]}, {"op": "logical_not"}, "comparison, or cast to bool"),
    ({"c": ["N", 4], "a": ["N", 4], "b": ["N", 4]}, {"op": "where"}, "a bool condition"),
    ({"c": b8(["N", 4]), "a": ["N", 4], "b": i64(["N", 4])}, {"op": "where"}, "different dtypes"),
    ({"a": ["N", 4], "b": ["N", 5]}, {"op": "less"}, "do not broadcast"),
    ({"x": ["N", 4]}, {"op": "arange", "length_of": 2}, "out of range"),
    ({"x": ["N"]}, {"op": "tril"}, "rank >= 2"),
    ({"x": {"shape": ["N", 4, 4], "dtype": "uint8"}}, {"op": "triu"}, "float32/float16"),
    ({"x": ["N", 3, 8]}, {"op": "interpolate", "scale_factor": 2, "mode": "bilinear"}, "4-d input"),
    ({"x": ["N", 3, 8, 8]}, {"op": "interpolate", "size": [2, 3, 4]}, "3 values for 2 spatial axes"),
    ({"x": i64(["N", 3, 8, 8])}, {"op": "interpolate", "scale_factor": 2}, "floating-point"),
    ({"x": ["N", 3, 3]}, {"op": "conv_transpose1d", "out": 2, "kernel": 2, "padding": 2}, "padding smaller"),
    ({"x": ["N", 3, 5]}, {"op": "conv_transpose1d", "out": 2, "kernel": 2, "groups": 2}, "does not divide"),
    ({"x": ["N", 6, 4, 4]}, {"op": "pixel_shuffle", "upscale_factor": 2}, "divisible by 4"),
    ({"x": b8(["N", 4])}, {"op": "argmax"}, "cast to int32"),
    ({"i": ["N", 4]}, {"op": "one_hot", "num_classes": 3}, "int64 class ids"),
    ({"x": ["N", 4]}, {"op": "cumsum", "axis": 2}, "out of range"),
]


@pytest.mark.parametrize("inputs,node,message", BAD_TYPES, ids=[f"{b[1]['op']}-{i}" for i, b in enumerate(BAD_TYPES)])
def test_bad_types_are_shape_errors(inputs, node, message):
    with pytest.raises(ShapeError) as e:
        _compile(inputs, {"n": {**node, "in": list(inputs)}})
    text = e.value.render()
    assert message in text and "expected:" in text and e.value.loc is not None, text


def test_one_hot_ids_range_is_held_to_num_classes():
    with pytest.raises(SpecError, match="indexes one_hot"):
        _compile({"i": i64(["N"], 0, 10)}, {"n": {"op": "one_hot", "in": "i", "num_classes": 4}})


# -- FLOPs of the transposed convolutions (FlopCounterMode counts them over the input's size) ----
DECONV_FLOPS = {
    "strided_grouped": ({"x": ["N", 4, 7]}, {"op": "conv_transpose1d", "out": 6, "kernel": 3, "stride": 2,
                                             "groups": 2, "output_padding": 1}),
    "padded_dilated": ({"x": ["N", 3, 5, 6]}, {"op": "conv_transpose2d", "out": 4, "kernel": [3, 2], "padding": 1,
                                               "dilation": 2, "bias": False}),
    "symbolic": ({"x": ["N", 2, "H", 5]}, {"op": "conv_transpose2d", "out": 3, "kernel": 4, "stride": [2, 3]}),
}


@pytest.mark.parametrize("case", sorted(DECONV_FLOPS))
def test_conv_transpose_flops_equal_flop_counter(case):
    inputs, node = DECONV_FLOPS[case]
    program = _compile(inputs, {"n": {**node, "in": list(inputs)}})
    module = build_module(program).eval()
    for values in ({"N": 1, "H": 4}, {"N": 3, "H": 9}):
        counted = flop_counter_total(module, declared_inputs(program, values))
        assert counted > 0 and cost_report(program, dims=values).flops == counted


def test_element_ops_count_no_flops():
    for case in ("where", "interpolate_bilinear", "cumsum", "one_hot", "argmax"):
        assert cost_report(_program(case), dims=SIZES[0]).flops == 0


# -- masks built in the graph, end to end -----------------------------------------------------------
def test_causal_mask_from_a_symbolic_length():
    """GPT-2's causal mask: positions from the run-time length, compared, applied with where."""
    nodes = {
        "pos": {"op": "arange", "in": "scores", "length_of": -1},
        "row": {"op": "reshape", "in": "pos", "shape": [-1, 1]},
        "col": {"op": "reshape", "in": "pos", "shape": [1, -1]},
        "keep": {"op": "greater_equal", "in": ["row", "col"]},
        "ninf": {"op": "constant", "value": -1e9},
        "masked": {"op": "where", "in": ["keep", "scores", "ninf"]},
        "tri": {"op": "tril", "in": "scores"},
        "out2": {"op": "softmax", "in": "masked"},
    }
    program = _compile({"scores": ["N", 2, "T", "T"]}, nodes, {"p": "out2", "t": "tri", "m": "keep"})
    assert program.forward.output_type("m").shape == ("T", "T")
    module = build_module(program).eval()
    s = torch.randn(2, 2, 6, 6)
    p, t, m = module(s)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(m, causal) and torch.equal(t, torch.tril(s))
    torch.testing.assert_close(p, torch.softmax(s.masked_fill(~causal, -1e9), -1))
    from nnspec.targets.onnx import to_onnx_model
    model = to_onnx_model(program)
    assert not any(d.HasField("dim_value") for d in model.graph.output[2].type.tensor_type.shape.dim)
    for values in ({"N": 1, "T": 3}, {"N": 2, "T": 7}):  # one model, two lengths
        _ort_equals_torch(program, module, values, model=model)


def test_padding_mask_from_token_ids():
    """BERT's padding mask: ids == pad, negated, and-ed with a second mask, applied to scores."""
    nodes = {
        "pad": {"op": "constant", "value": 0, "dtype": "int64"},
        "is_pad": {"op": "equal", "in": ["ids", "pad"]},
        "real": {"op": "logical_not", "in": "is_pad"},
        "both": {"op": "logical_and", "in": ["real", "keep"]},
        "zero": {"op": "constant", "value": 0.0},
        "halfc": {"op": "constant", "value": 0.5},
        "scaled": {"op": "mul", "in": ["x", "halfc"]},
        "n": {"op": "where", "in": ["both", "scaled", "zero"]},
        "count": {"op": "cumsum", "in": "both", "axis": 1},
    }
    program = _compile({"ids": i64(["N", "T"], 0, 3), "keep": b8(["N", "T"]), "x": ["N", "T"]}, nodes,
                       {"y": "n", "c": "count"})
    module = build_module(program).eval()
    ids, keep, x = torch.tensor([[0, 1, 2, 0]]), torch.tensor([[True, True, False, True]]), torch.randn(1, 4)
    y, c = module(ids, keep, x)
    both = (ids != 0) & keep
    assert torch.equal(y, torch.where(both, x * 0.5, torch.zeros(()))) and torch.equal(c, torch.cumsum(both, 1))
    assert c.dtype == torch.int64
    for values in SIZES:
        _ort_equals_torch(program, module, values)
    from nnspec.targets.tensorrt.lint import lint
    assert lint(program, target="trt-rtx").ok


def test_fixed_tensors_stay_out_of_the_state_dict_and_follow_the_module():
    program = _compile({}, {"c": {"op": "constant", "value": [1.0, 2.0]}, "r": {"op": "arange", "end": 3},
                            "n": {"op": "cast", "in": "r", "dtype": "float32"}}, {"c": "c", "r": "n"})
    module = build_module(program)
    assert list(module.state_dict()) == [] and list(module.named_buffers()) == []
    half = module.half()
    c, r = half()
    assert c.dtype == torch.float16 and r.dtype == torch.float32  # .half() converts the float constant only
    assert torch.equal(c, torch.tensor([1.0, 2.0], dtype=torch.float16))


# -- bool and int inputs through every op ---------------------------------------------------------------
# Ops owned by other modules whose `infer` accepts bool/int inputs that their torch or ONNX forms do
# not handle (reported to the owners). The TensorRT lint's port-dtype check refuses them (below),
# so `nnspec check --target trt` does catch them; the ONNX target does not yet.
_POOLS = ["adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool1d", "avg_pool2d",
          "max_pool1d", "max_pool2d"]
# Inputs TensorRT cannot take (float-only weights ops, bool matmul): refused by infer at the node,
# and by the TensorRT lint (tested below).
REFUSED = {(op, dt) for op in _POOLS + ["conv1d", "conv2d", "linear"] for dt in ("bool", "int64", "int32")}
REFUSED.add(("matmul", "bool"))


def _retyped(name: str, dtype: str):
    """The representative spec of `name` with every float input declared `dtype` (None if it has none)."""
    inputs, nodes = representative(name)
    rng = {} if dtype == "bool" else {"range": [-3, 4]}
    changed = {k: {"shape": v, "dtype": dtype, **rng} for k, v in inputs.items() if isinstance(v, list)}
    return ({**inputs, **changed}, nodes) if changed else None


MASK_CASES = [(name, dtype) for name in OPS for dtype in ("bool", "int64", "int32") if _retyped(name, dtype)]


@pytest.mark.parametrize("name,dtype", MASK_CASES)
def test_bool_and_int_inputs_are_refused_or_exact_through_onnx(name, dtype):
    inputs, nodes = _retyped(name, dtype)
    try:
        program = _compile(inputs, nodes, {"out": "n"} if name != "split" else None)
    except NnspecError as e:  # refused: at the node, with what to do instead
        assert isinstance(e, ShapeError) and e.loc is not None and "expected:" in e.render(), e.render()
        return
    module = build_module(program, seed=1).eval()
    for values in ({"N": 2}, {"N": 3}):
        _ort_equals_torch(program, module, values, seed=values["N"])


@pytest.mark.parametrize("name,dtype", sorted(REFUSED))
def test_inputs_no_target_can_run_are_refused_by_check(name, dtype):
    inputs, nodes = _retyped(name, dtype)
    with pytest.raises(ShapeError) as ei:
        _compile(inputs, nodes, {"out": "n"})
    text = ei.value.render()
    assert ei.value.loc is not None and f"a {dtype} tensor" in text or "bool tensors" in text, text


def test_tensorrt_lint_refuses_int_matmul_which_tensorrt_cannot_parse():
    from nnspec.targets.tensorrt.lint import lint

    program = _compile({"a": i64(["N", 2, 3]), "b": i64([3, 4])}, {"n": {"op": "matmul", "in": ["a", "b"]}})
    report = lint(program, target="trt-rtx")
    assert set(report.nodes("error")) == {"n"} and "'a' is i64[N,2,3]" in report.render()


def test_bool_mul_fails_at_check_not_at_lowering():
    """The newcomer's case: combining masks with mul is refused when the spec is compiled, saying what to
    use, instead of passing `check --target trt` and failing in the ONNX checker."""
    with pytest.raises(ShapeError) as e:
        _compile({"a": b8(["N", "T"]), "b": b8(["N", "T"])}, {"n": {"op": "mul", "in": ["a", "b"]}})
    assert "logical_and" in e.value.render()
