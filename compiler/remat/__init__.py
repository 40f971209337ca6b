"""Rematerialization planning: which parts of a training forward pass to recompute in backward.

What each op's backward keeps is the op's own `Cost` (compiler/cost.py `saved_values` reads it).
`policies.py` holds the planners as pure functions over cost vectors (sqrt, the chain dynamic
program, the MILP on general DAGs), usable on their own (the pipeline partitioner plans
recomputation per stage with `plan_chain`); `model.py` turns a graph into those vectors. The pass that records the plan on the IR is
`compiler/passes/rematerialize.py`; the torch target lowers it (`targets/torch/checkpoint.py`).
"""
