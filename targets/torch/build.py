"""Turning generated source into a live module, and the torch target's artifact (model.py)."""
from __future__ import annotations

import hashlib
import sys
import types

from nnspec.targets.initialise import initial_weights

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
    """Instantiate the program's generated nn.Module with the IR's initial weights for `seed`
    (`nnspec.targets.initialise`: the weights every target gets for that seed). seed=None keeps
    the module's own torch initialisation."""
    import torch

    src, cls = generate_source(program, class_name)
    digest = hashlib.sha256(src.encode()).hexdigest()[:12]
    mod = load_source(src, f"nnspec_generated_{program.spec.name}_{digest}")
    if seed is not None:
        torch.manual_seed(seed)
    module = getattr(mod, cls)()
    if seed is not None:
        load_arrays(module, program, initial_weights(program, seed))
    return module


def load_arrays(module, program, arrays: dict) -> None:
    """Copy {state-dict key: numpy array} into `module` (tied parameters filled from their owners)."""
    import torch

    from nnspec.targets.weights import complete_tied

    state = {k: torch.from_numpy(v) for k, v in complete_tied(program, arrays).items()}
    module.load_state_dict(state, strict=True)
