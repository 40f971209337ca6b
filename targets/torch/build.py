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


def build_module(program, seed: int | None = 0, class_name: str | None = None, device=None):
    """Instantiate the program's generated nn.Module with the IR's initial weights for `seed`
    (`nnspec.targets.initialise`: the weights every target gets for that seed). seed=None keeps
    the module's own torch initialisation.

    device="meta" builds the module with parameters and buffers on torch's meta device: shapes and
    dtypes without storage, so a 7B-parameter spec is built in well under a second and no memory
    (no weights are drawn; `module.to_empty(device="cpu")` + `load_arrays` gives it real ones)."""
    import torch

    src, cls = generate_source(program, class_name)
    digest = hashlib.sha256(src.encode()).hexdigest()[:12]
    mod = load_source(src, f"nnspec_generated_{program.spec.name}_{digest}")
    if device is not None and str(device) == "meta":
        with torch.device("meta"):
            return getattr(mod, cls)()
    if seed is not None:
        torch.manual_seed(seed)
    if device is not None:
        with torch.device(device):
            module = getattr(mod, cls)()
    else:
        module = getattr(mod, cls)()
    if seed is not None:
        load_arrays(module, program, initial_weights(program, seed))
    return module


def is_meta(module) -> bool:
    """True when any of `module`'s parameters or buffers lives on the meta device (no storage)."""
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def load_arrays(module, program, arrays: dict) -> None:
    """Copy {state-dict key: numpy array} into `module` (tied parameters filled from their owners)."""
    import torch

    from nnspec.targets.weights import complete_tied

    state = {k: torch.from_numpy(v) for k, v in complete_tied(program, arrays).items()}
    module.load_state_dict(state, strict=True)
