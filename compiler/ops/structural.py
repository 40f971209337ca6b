"""Structural ops: graph `input` and `scan` (recurrence over a block, like ONNX Scan or lax.scan).

`scan` runs its body graph once per step along `axis` of its `over` inputs. Inputs are fed by
role: `over` (sliced per step), `carry` (state: initial value in, the body's same-named output
becomes the next step's value) and `const` (closed over, the same every step). Outputs: the final
value of each carried state, then each other body output stacked along `axis`.

With `steps: K` instead of `over` inputs, the body runs K times (a loop with a declared length, as
greedy decoding needs: the step's output is carried into the next step); ONNX `Loop` with a constant
trip count, a Python `for` loop in torch.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from ..errors import ShapeError
from ..ir.dims import TensorType
from .base import Port, Attrs, Cost, Op, Size, TorchCode, norm_axis, register


@register
class Input(Op):
    name = "input"
    in_ports = ()
    arity = (0, 0)

    class Attrs(Attrs):
        name: str
        # [low, high) of generated values; a bound may name a dim symbol (`[0, V]`: node indices).
        range: Optional[list[Union[int, float, str]]] = None

    def infer(self, a, ins):
        raise ShapeError("graph inputs are typed by the spec")

    def to_torch(self, a, ins, m, node):
        return TorchCode(expr=a.name)

    def to_onnx(self, a, ins, b, node):
        return [a.name]


@register
class Scan(Op):
    name = "scan"
    in_ports = (Port("inputs", dtype="any", repeated=True, doc="the block's inputs, fed as over / carry / const"),)
    out_ports = (Port("outputs", dtype="any", doc="final carried states, then per-step outputs stacked along axis"),)
    arity = (1, None)

    class Attrs(Attrs):
        block: str
        inputs: list[str]
        roles: list[Literal["over", "carry", "const"]]
        carry: list[str]
        axis: int = 1
        reverse: bool = False
        steps: Optional[Size] = None  # a loop of this many steps (no `over` inputs)

    def infer_node(self, node, ins: list[TensorType], infer_graph) -> list[TensorType]:
        """Type the body's inputs from the scan's inputs, infer the body, derive the outputs."""
        a = node.attrs
        body = node.body
        steps = a.steps
        for name, role, t in zip(a.inputs, a.roles, ins):
            inp = body.node(f"{node.id}.{name}")
            if role == "over":
                ax = norm_axis(a.axis, t.rank)
                if steps is not None and str(steps) != str(t.shape[ax]):
                    raise ShapeError(f"per-step inputs disagree on the number of steps ({steps} vs {t.shape[ax]})",
                                     expected="every `over` input with the same length along the scan axis")
                steps = t.shape[ax]
                inp.outputs = [t.with_shape(t.shape[:ax] + t.shape[ax + 1:])]
            else:
                inp.outputs = [t]
        infer_graph(body)
        outs = []
        for c in a.carry:
            t_in = ins[a.inputs.index(c)]
            t_out = body.output_type(c)
            if str(t_in) != str(t_out):
                raise ShapeError(f"carried state '{c}' changes type within a step: {t_in} -> {t_out}",
                                 expected="the body to return the carried state with the type it received")
            outs.append(t_out)
        for name in body.outputs:
            if name not in a.carry:
                t = body.output_type(name)
                ax = norm_axis(a.axis, t.rank + 1)
                outs.append(t.with_shape(t.shape[:ax] + (steps,) + t.shape[ax:]))
        return outs

    def infer(self, a, ins):
        raise ShapeError("scan is typed through its body")

    def cost(self, a, ins, outs):
        return Cost()  # the body's cost, multiplied by the step count, is added by compiler/cost.py

    def to_torch(self, a, ins, m, node):
        """A Python loop over the body's class (`m`, generated from the body by the torch target):

            dec_h = h0
            dec_y_steps = []
            for dec_t in range(x.shape[1]):
                dec_step = self.dec(x.select(1, dec_t), dec_h, enc)
                dec_h = dec_step[0]
                dec_y_steps.append(dec_step[1])
            dec_h, dec_y = dec_h, torch.stack(dec_y_steps, 1)
        """
        body = node.body
        outs = list(body.outputs)
        stacked = [o for o in outs if o not in a.carry]
        over = [v for v, r in zip(ins, a.roles) if r == "over"]
        temps = list(a.carry) + [f"{o}_steps" for o in stacked]
        t, step = "t", "step"
        while t in temps or step in temps:  # a carried state may be called t or step
            t, step = t + "_", step + "_"
        temps += [t, step]
        stmts = [f"${c} = {ins[a.inputs.index(c)]}" for c in a.carry] + [f"${o}_steps = []" for o in stacked]
        steps = f"range({a.steps})" if a.steps is not None else f"range({over[0]}.shape[{a.axis}])"
        stmts.append(f"for ${t} in {f'reversed({steps})' if a.reverse else steps}:")
        args = [f"{v}.select({a.axis}, ${t})" if role == "over" else f"${k}" if role == "carry" else v
                for k, v, role in zip(a.inputs, ins, a.roles)]
        stmts.append(f"    ${step} = {m}({', '.join(args)})")
        for i, o in enumerate(outs):
            value = f"${step}[{i}]" if len(outs) > 1 else f"${step}"
            stmts.append(f"    ${o} = {value}" if o in a.carry else f"    ${o}_steps.append({value})")
        stmts += [f"${o}_steps.reverse()" for o in stacked] if a.reverse else []
        pieces = [f"${c}" for c in a.carry] + [f"torch.stack(${o}_steps, {a.axis})" for o in stacked]
        return TorchCode(expr=", ".join(pieces), stmts=stmts, temps=tuple(temps))

    def to_onnx(self, a, ins, b, node):
        if a.steps is not None:
            return self._loop(a, ins, b, node)
        return self._scan(a, ins, b, node)

    def _loop(self, a, ins, b, node):
        """ONNX `Loop` with a constant trip count and a constant true condition: the body takes (iteration, cond,
        carried states...) and returns (cond, carried states..., per-step outputs...). Loop stacks
        per-step outputs along a new axis 0; a Transpose moves it to `axis`."""
        from onnx import TensorProto, helper

        body = node.body
        stacked = [o for o in body.outputs if o not in a.carry]
        state_ids = [f"{node.id}.{c}" for c in a.carry]
        input_types = {nid: body.node(nid).outputs[0] for nid in state_ids}
        outer = {f"{node.id}.{k}": v for k, v, r in zip(a.inputs, ins, a.roles) if r == "const"}
        graph = b.subgraph(body, input_types, outer, outputs=list(a.carry) + stacked)
        it, cond, cond_out = f"{node.id}/iter", f"{node.id}/cond_in", f"{node.id}/cond_out"
        graph.input.insert(0, helper.make_tensor_value_info(cond, TensorProto.BOOL, []))
        graph.input.insert(0, helper.make_tensor_value_info(it, TensorProto.INT64, []))
        graph.node.append(helper.make_node("Identity", [cond], [cond_out], name=cond_out))
        graph.output.insert(0, helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []))
        trip = b.scalar(a.steps, dtype="int64")  # Loop's M: a 0-d int64
        # a constant true condition rather than none: TensorRT's parser binds the body's cond input
        # only when the Loop is given one
        keep_going = b.const(True, dtype="bool")
        outs = b.op("Loop", [trip, keep_going] + [ins[a.inputs.index(c)] for c in a.carry],
                    n_out=len(a.carry) + len(stacked), body=graph)
        outs = [outs] if isinstance(outs, str) else list(outs)
        for i, o in enumerate(stacked):
            rank = body.output_type(o).rank + 1
            ax = norm_axis(a.axis, rank)
            if ax:
                perm = list(range(1, rank))
                perm.insert(ax, 0)
                outs[len(a.carry) + i] = b.op("Transpose", [outs[len(a.carry) + i]], perm=perm)
        return outs

    def _scan(self, a, ins, b, node):
        """ONNX `Scan`: carried states then `over` inputs feed the body; `const` inputs are read by
        the body through outer-scope references (onnxruntime resolves them as implicit inputs)."""
        body = node.body
        over = [i for i, r in enumerate(a.roles) if r == "over"]
        stacked = [o for o in body.outputs if o not in a.carry]
        state_ids = [f"{node.id}.{c}" for c in a.carry]
        over_ids = [f"{node.id}.{a.inputs[i]}" for i in over]
        input_types = {nid: body.node(nid).outputs[0] for nid in state_ids + over_ids}
        outer = {f"{node.id}.{k}": v for k, v, r in zip(a.inputs, ins, a.roles) if r == "const"}
        graph = b.subgraph(body, input_types, outer, outputs=list(a.carry) + stacked)
        in_types = b.in_types()
        rev = [1] if a.reverse else [0]
        outs = b.op("Scan", [ins[a.inputs.index(c)] for c in a.carry] + [ins[i] for i in over],
                    n_out=len(a.carry) + len(stacked), body=graph, num_scan_inputs=len(over),
                    scan_input_axes=[norm_axis(a.axis, in_types[i].rank) for i in over],
                    scan_input_directions=rev * len(over),
                    scan_output_axes=[norm_axis(a.axis, body.output_type(o).rank + 1) for o in stacked] or None,
                    scan_output_directions=(rev * len(stacked)) or None)
        return [outs] if isinstance(outs, str) else outs
