"""The names a spec may give things, checked once at load time.

Every name in a spec that reaches generated code, an ONNX graph, a manifest or a file path (node
ids, block, input, output, preset, graph and dim names, block args, `init` and `tie` keys) is a
plain ASCII identifier: `[A-Za-z_][A-Za-z0-9_]*`, at most `MAX_NAME` characters, not a Python
keyword and not starting with `__`. ASCII excludes Unicode look-alikes and makes NFKC
normalisation a no-op, so two names that print alike are the same name. Some positions forbid more:

  * `attr`  names that become attributes or methods of a generated `nn.Module` (node ids, graph
    names) must not be one of `nn.Module`'s own members (`forward`, `training`, `state_dict`, ...);
  * `arg`   names that become parameters of a generated `forward` (inputs, block inputs) must not
    shadow a name the generated file itself uses (`self`, `torch`, `F`, `range`, a helper class);
  * `path`  a dotted reference to a node or parameter (`layer1.0.conv1.weight`).

`problem(name, kind)` returns why a name is refused (None when it is fine); the pydantic types
`Name`, `AttrName`, `ArgName` and `PathName` apply it inside the spec models so refusals are located.
"""
from __future__ import annotations

import keyword
import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

MAX_NAME = 100
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*\Z")

# Members of torch.nn.Module (dir() of an instance, torch 2.x); a node or graph with one of these
# names would replace it on the generated module. tests/test_names.py keeps the list complete.
MODULE_MEMBERS = frozenset("""
T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double
dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule
half ipu load_state_dict modules mtia named_buffers named_children named_modules named_parameters
parameters register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook
register_load_state_dict_pre_hook register_module register_parameter register_state_dict_post_hook
register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory state_dict to
to_empty train training type xpu zero_grad
_apply _backward_hooks _backward_pre_hooks _buffers _call_impl _compiled_call_impl _forward_hooks
_forward_hooks_always_called _forward_hooks_with_kwargs _forward_pre_hooks
_forward_pre_hooks_with_kwargs _get_backward_hooks _get_backward_pre_hooks _get_name
_is_full_backward_hook _load_from_state_dict _load_state_dict_post_hooks _load_state_dict_pre_hooks
_maybe_warn_non_full_backward_hook _modules _named_members _non_persistent_buffers_set _parameters
_register_load_state_dict_pre_hook _register_state_dict_hook _replicate_for_data_parallel
_save_to_state_dict _slow_forward _state_dict_hooks _state_dict_pre_hooks _version _wrapped_call_impl
""".split())

# Names a generated model.py refers to at module level or inside forward: its imports, `self`, and
# the builtins its lines call. A forward parameter with one of these names would shadow it.
# tests/test_names.py checks every bundled spec's generated file uses no other builtin.
GENERATED_NAMES = frozenset("""
self torch nn F math super range reversed len int float bool tuple list dict zip enumerate isinstance
getattr setattr min max sum abs slice print object
""".split())


def helper_names() -> frozenset:
    """Top-level names the ops' torch snippets define (helper classes and functions)."""
    from ..ops import registry

    return frozenset(k for op in registry().values() for k in op.torch_snippets)


def problem(name, kind: str = "name") -> str | None:
    """Why `name` cannot be used in position `kind` (name | attr | arg | path), or None."""
    if not isinstance(name, str):
        return f"a name must be a string, not {type(name).__name__}"
    if len(name) > MAX_NAME:
        return f"a name is at most {MAX_NAME} characters (this one has {len(name)})"
    if kind == "path":
        if not _PATH.match(name):
            return "a dotted reference of identifiers and indices is expected, such as layer1.0.conv1.weight"
        parts = [p for p in name.split(".") if not p.isdigit()]
        for p in parts:
            why = problem(p, "name")
            if why:
                return why
        return None
    if not _IDENT.match(name):
        return ("a plain ASCII identifier is expected: letters, digits and underscores, not starting "
                "with a digit")
    if keyword.iskeyword(name):
        return f"'{name}' is a Python keyword"
    if name.startswith("__"):
        return "names starting with '__' are reserved"
    if name == "self":  # the generated methods' own first argument, and the expression evaluator's
        return "'self' is reserved"
    if kind == "attr" and name in MODULE_MEMBERS:
        return f"'{name}' is a member of torch.nn.Module, which the generated module would lose"
    if kind == "arg" and (name in GENERATED_NAMES or name in helper_names()):
        return f"'{name}' is a name the generated model.py uses itself"
    return None


def _checker(kind: str):
    def check(value):
        why = problem(value, kind)
        if why:
            raise PydanticCustomError("nnspec_name", "{why}", {"why": why})
        return value
    return check


Name = Annotated[str, AfterValidator(_checker("name"))]
AttrName = Annotated[str, AfterValidator(_checker("attr"))]
ArgName = Annotated[str, AfterValidator(_checker("arg"))]
PathName = Annotated[str, AfterValidator(_checker("path"))]
