"""The `split_stages` pass: from the `stage` marks partition_pipeline left, record each stage's
boundary on the graph (`graph.stages`, a list of compiler/partition.StageIO) for targets to lower;
the torch target writes one nn.Module class per stage (targets/torch/stages.py).

Rules:
1. A graph none of whose nodes has a stage is left as it is (the pass is a no-op without --stages).
2. The marks are checked: every non-input node has one, no stage is empty, and no tensor is read by
   a stage before the one that makes it.
3. Stage 0 receives the graph inputs and the last stage returns the graph outputs; between them,
   stage k sends stage k+1 every tensor made in stage k or before and read in stage k+1 or after
   (so a skip connection is carried, stage by stage, to the stage that reads it), ordered by where
   it is made.
"""
from __future__ import annotations

from ..errors import PassError
from .. import partition as P
from .manager import PassContext, PassResult, Program, register_pass


@register_pass("split_stages", requires=("partition_pipeline",), changes=(), on_request=True)
def split_stages(program: Program, ctx: PassContext) -> PassResult:
    """Record each pipeline stage's received and sent tensors on its graph (rules in the module docstring)."""
    recorded = {}
    for name, g in program.graphs.items():
        g.stages = []
        if not any(n.stage is not None for n in g.nodes() if n.op != "input"):
            continue
        try:
            g.stages = P.stage_boundaries(g)
        except P.BadStages as e:
            node = g.node(e.node) if e.node else None
            raise PassError(f"split_stages: {e}", node.loc if node is not None else None,
                            expected="stage marks from partition_pipeline") from None
        recorded[name] = [s.to_json() for s in g.stages]
        for s in g.stages:
            if s.index < len(g.stages) - 1:
                ctx.note(f"stage {s.index} sends {len(s.outputs)} tensor(s) to stage {s.index + 1}: "
                         + ", ".join(f"{nid}" + (f":{p}" if p else "") for nid, p in s.outputs[:6])
                         + (", ..." if len(s.outputs) > 6 else ""))
    return PassResult(summary={"graphs": recorded})
