"""Compiler passes and the pass manager (see `manager.py`); importing registers the passes.
`rewrite.py` is the rule mechanism rewriting passes are built on."""
from .manager import (DEFAULT_PIPELINE, PASSES, Diagnostic, PassContext, PassResult, Program,  # noqa: F401
                      compile_spec, register_pass, run_passes)
from . import core, fuse_ops  # noqa: F401  (registration)
from . import partition_pipeline, split_stages  # noqa: F401  (registration: pipeline stages)
from . import rematerialize  # noqa: F401  (registration: activation checkpointing)
