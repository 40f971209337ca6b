"""Attribute types in words, for messages (`expected: int >= 1`) and the op reference.

    Size                      -> "int >= 1"
    Union[Size, list[Size]]   -> "int >= 1 | list of 1 to 8 (int >= 1)"
    Optional[float] gt 0      -> "float > 0 | null"
"""
from __future__ import annotations

import typing

import annotated_types as at

from ..limits import MAX_DIM


def _bounds(metadata) -> str:
    parts = []
    for m in metadata:
        if isinstance(m, at.Ge):
            parts.append(f">= {m.ge:g}" if isinstance(m.ge, float) else f">= {m.ge}")
        elif isinstance(m, at.Gt):
            parts.append(f"> {m.gt}")
        elif isinstance(m, at.Le) and m.le != MAX_DIM:  # the generic dim bound is noise in a message
            parts.append(f"<= {m.le}")
        elif isinstance(m, at.Lt):
            parts.append(f"< {m.lt}")
    return " ".join(parts)


def _lengths(metadata) -> str:
    lo = next((m.min_length for m in metadata if isinstance(m, at.MinLen)), None)
    hi = next((m.max_length for m in metadata if isinstance(m, at.MaxLen)), None)
    if lo is not None and hi is not None:
        return f"{lo} to {hi} "
    if hi is not None:
        return f"up to {hi} "
    return ""


def type_text(ann, metadata=()) -> str:
    """A type annotation (with its pydantic constraints) in words."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        inner, *meta = args
        field_meta = [x for m in meta for x in (getattr(m, "metadata", None) or [m])]
        return type_text(inner, list(metadata) + field_meta)
    if origin is typing.Union:
        alts = [type_text(a, metadata) for a in args if a is not type(None)]
        return " | ".join(alts) + (" | null" if type(None) in args else "")
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is list:
        inner = type_text(args[0]) if args else "values"
        return f"list of {_lengths(metadata)}({inner})" if " " in inner else f"list of {_lengths(metadata)}{inner}"
    name = getattr(ann, "__name__", str(ann).replace("typing.", ""))
    bounds = _bounds(metadata)
    return f"{name} {bounds}" if bounds else name


def field_text(field) -> str:
    """A pydantic field's type and constraints in words."""
    return type_text(field.annotation, field.metadata)
