"""The op registry: importing this package registers every op definition."""
from __future__ import annotations

from ..errors import SpecError
from . import conv, elementwise, structural  # noqa: F401  (registration)
from . import linear, norm, pool, reduce, stochastic, tensor  # noqa: F401  (registration: group A)
from . import attention, indexing, positional, recurrent  # noqa: F401  (registration: group B)
from . import axis, construct, logic, resample  # noqa: F401  (registration: group C)
from . import memory  # noqa: F401  (registration: the NTM's addressing)
from .base import Op, registry


def get_op(name: str) -> Op:
    try:
        return registry()[name]
    except KeyError:
        raise SpecError(f"unknown op '{name}'") from None


def op_names() -> list[str]:
    return sorted(registry())
