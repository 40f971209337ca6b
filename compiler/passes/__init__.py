"""Compiler passes and the pass manager (see `manager.py`); importing registers the passes."""
from .manager import PASSES, Program, compile_spec, run_passes  # noqa: F401
from . import core  # noqa: F401  (registration)
