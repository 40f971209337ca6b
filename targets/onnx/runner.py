"""Running lowered models with onnxruntime and comparing them with the generated torch module.

`ort_session` / `run_ort` run a model on the CPU provider (one intra-op thread by default, so results
are reproducible); `example_inputs` draws inputs for concrete symbol values (int inputs inside their
declared `range`); `torch_outputs` runs the same entry on the torch module; `parity` reports the
largest difference per output. The zoo-wide parity test builds on these.

`onnx_value_names` / `onnx_values` give every IR value as onnxruntime computes it (each node output
exposed as an extra graph output, found by the names the lowering walk gives it), which `nnspec
verify` compares with the torch interpreter's to name the first diverging node.
"""
from __future__ import annotations

from nnspec.targets.inputs import example_inputs  # noqa: F401  (part of this module's API)


def ort_session(model_or_path, threads: int = 1, providers: tuple = ("CPUExecutionProvider",)):
    """An onnxruntime InferenceSession for a ModelProto, serialized bytes or a file path."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model_or_path
    if hasattr(model_or_path, "SerializeToString"):
        src = model_or_path.SerializeToString()
    return ort.InferenceSession(src if isinstance(src, bytes) else str(src), opts, providers=list(providers))


def run_ort(session, inputs: dict) -> dict:
    """Run `session` on {input name: numpy array}; returns {output name: numpy array}."""
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(names, feed)))


def torch_outputs(module, program, inputs: dict, graph: str = "forward") -> dict:
    """Outputs of the torch module's entry `graph` (eval mode, no grad) as numpy arrays."""
    import torch

    g = program.graphs[graph]
    module.eval()
    args = [torch.from_numpy(inputs[n.attrs.name]) for n in g.inputs()]
    with torch.no_grad():
        res = getattr(module, graph)(*args)
    res = res if isinstance(res, (tuple, list)) else (res,)
    return {name: r.detach().cpu().numpy() for name, r in zip(g.outputs, res)}


def parity(program, values: dict | None = None, seed: int = 0, graph: str = "forward", module=None,
           model=None, for_trt: bool = False) -> dict:
    """{output: max abs difference} between onnxruntime and the torch module on random inputs.

    Integer/bool outputs report the count of differing elements instead (exactness is expected).
    """
    import numpy as np

    from nnspec.targets.torch.build import build_module

    from .export import to_onnx_model

    module = module if module is not None else build_module(program, seed)
    if model is None:
        weights = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        model = to_onnx_model(program, weights, seed, for_trt, graph)
    inputs = example_inputs(program, values, seed, graph)
    got = run_ort(ort_session(model), inputs)
    want = torch_outputs(module, program, inputs, graph)
    diff = {}
    for name, w in want.items():
        o = got[name]
        if o.shape != w.shape:
            raise AssertionError(f"output '{name}': onnxruntime shape {o.shape} != torch shape {w.shape}")
        if np.issubdtype(w.dtype, np.floating):
            diff[name] = float(np.max(np.abs(o.astype(np.float64) - w.astype(np.float64)))) if w.size else 0.0
        else:
            diff[name] = int(np.count_nonzero(o != w))
    return diff


def onnx_value_names(program, weights: dict, for_trt: bool = False, graph: str = "forward") -> dict:
    """{(node id, port): ONNX value name} of the top-level graph: the names of the model
    `to_onnx_model` builds for the same program (the ONNX target's own lowering walk)."""
    from .lower import lower_values

    return lower_values(program, graph, weights, for_trt)[1]


def expose_values(model, names: list):
    """A copy of `model` whose graph also outputs each value in `names` (typed from value_info)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output} | {i.name for i in m.graph.input}
    typed = {vi.name: vi for vi in m.graph.value_info}
    for nm in names:
        if nm in have:
            continue
        if nm in typed:
            m.graph.output.append(typed[nm])
        else:
            m.graph.output.append(onnx.helper.ValueInfoProto(name=nm))
        have.add(nm)
    return m


def onnx_values(model, value_names: dict, inputs: dict, threads: int = 1) -> dict:
    """{(node id, port): np.ndarray} from onnxruntime with every mapped value exposed."""
    produced = {o for nd in model.graph.node for o in nd.output} | {i.name for i in model.graph.input}
    wanted = {k: v for k, v in value_names.items() if v in produced}
    m = expose_values(model, sorted(set(wanted.values())))
    sess = ort_session(m, threads=threads)
    outs = [o.name for o in sess.get_outputs()]
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    got = dict(zip(outs, sess.run(outs, feed)))
    return {k: got[v] for k, v in wanted.items() if v in got}


__all__ = ["ort_session", "run_ort", "example_inputs", "torch_outputs", "parity", "onnx_value_names",
           "expose_values", "onnx_values"]
