"""Turning generated source into a live module, and the torch target's artifact (model.py)."""
from __future__ import annotations

import hashlib
import sys
import types

from .codegen import generate_source


def load_source(src: str, module_name: str):
    """Execute generated source as a fresh module (registered in sys.modules so pickling-free
    tooling like torch.fx and inspect can find its classes)."""
    mod = types.ModuleType(module_name)
    mod.__file__ = f"<nnspec:{module_name}>"
    sys.modules[module_name] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # our own generated code, not spec text
    return mod


def build_module(program, seed: int | None = 0, class_name: str | None = None):
    """Instantiate the program's generated nn.Module; parameters initialised from `seed`."""
    import torch

    src, cls = generate_source(program, class_name)
    digest = hashlib.sha256(src.encode()).hexdigest()[:12]
    mod = load_source(src, f"nnspec_generated_{program.spec.name}_{digest}")
    if seed is not None:
        torch.manual_seed(seed)
    return getattr(mod, cls)()
