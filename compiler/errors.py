"""The one error hierarchy of nnspec and the rendering of source locations.

Every error a user can trigger carries a `Location` (file, line, column, YAML path) and renders as

    specs/resnet.yaml:12:7: error: unknown op 'conv3x'
       12 |   c1: {op: conv3x, in: x}
          |            ^^^^^^
      expected: one of conv1d, conv2d, ...
      in block 'bottleneck' instantiated at specs/resnet.yaml:30:5 (layer1.0)

so the CLI can print it without a traceback. Several errors can be collected into one `SpecErrors`.

Spec text is untrusted, and messages quote it: every rendered piece escapes control characters
(a spec cannot fake lines in a CI log) and is truncated (a spec cannot make a message huge).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_QUOTE = 200  # characters of a quoted value or source line in a message
MAX_PART = 2000  # characters of a message, an `expected` or a hint
MAX_ERRORS = 50  # errors rendered by one SpecErrors

# C0/C1 controls, DEL, Unicode line/paragraph separators and bidirectional overrides: anything that
# could start a new line or reorder what a terminal shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def clean(text: str, limit: int = MAX_PART) -> str:
    """`text` with unsafe characters escaped (\\n, \\x1b, \\u2028) and cut to `limit` characters."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return _UNSAFE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def quote(value, limit: int = MAX_QUOTE) -> str:
    """repr() of a spec value for a message, cut to `limit` characters."""
    text = repr(value) if not isinstance(value, str) else repr(value[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: tuple = ()  # YAML path inside the file, e.g. ("nodes", "c1", "op")
    length: int = 1  # caret width

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def yaml_path(self) -> str:
        return ".".join(str(p) for p in self.path)


# Source text of every loaded file, so an error can quote its offending line.
_SOURCES: dict[str, list[str]] = {}


def register_source(file: str, text: str) -> None:
    _SOURCES[file] = text.splitlines()


def source_line(loc: Location) -> str | None:
    lines = _SOURCES.get(loc.file)
    if lines is None or not (1 <= loc.line <= len(lines)):
        return None
    return lines[loc.line - 1]


def _quoted_line(text: str, loc: Location) -> list[str]:
    """The source line (a window of it around the column when long) and the caret under `loc`."""
    start = 0
    if len(text) > MAX_QUOTE:
        start = max(0, min(loc.col - 1 - MAX_QUOTE // 2, len(text) - MAX_QUOTE))
    shown = text[start:start + MAX_QUOTE]
    prefix = "..." if start else ""
    col = loc.col - 1 - start
    # Escapes widen the line; count them so the caret stays under the right character.
    lead = len(clean(shown[:max(0, col)], MAX_QUOTE))
    width = max(1, min(loc.length, max(1, len(shown) - col)))
    body = prefix + clean(shown, MAX_QUOTE) + ("..." if start + MAX_QUOTE < len(text) else "")
    return [f"  {loc.line:>4} | {body}", f"  {'':>4} | {' ' * (len(prefix) + lead)}{'^' * width}"]


@dataclass
class Frame:
    """One block instantiation on the way to an error: `block` instantiated as `instance` at `loc`."""

    block: str
    instance: str
    loc: Location | None


class NnspecError(Exception):
    """Base of every error nnspec reports to a user."""

    kind = "error"

    def __init__(self, message: str, loc: Location | None = None, expected: str | None = None,
                 hint: str | None = None, chain: list[Frame] | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.expected = expected
        self.hint = hint
        self.chain = list(chain or [])
        self.notes: list[str] = []  # extra context lines, e.g. "included from spec.yaml:3:11"

    def render(self) -> str:
        head = f"{clean(self.loc, MAX_QUOTE)}: " if self.loc else ""
        out = [f"{head}{self.kind}: {clean(self.message)}"]
        if self.loc is not None:
            text = source_line(self.loc)
            if text is not None:
                out += _quoted_line(text, self.loc)
            if self.loc.path:
                out.append(f"  at: {clean(self.loc.yaml_path(), MAX_QUOTE)}")
        if self.expected:
            out.append(f"  expected: {clean(self.expected)}")
        if self.hint:
            out.append(f"  hint: {clean(self.hint)}")
        for fr in reversed(self.chain):
            where = f" at {clean(fr.loc, MAX_QUOTE)}" if fr.loc else ""
            out.append(f"  in block '{clean(fr.block, MAX_QUOTE)}' instantiated{where} ({clean(fr.instance, MAX_QUOTE)})")
        for note in self.notes:
            out.append(f"  {clean(note)}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class SpecError(NnspecError):
    """The spec text or structure is wrong (YAML, schema, expressions, references)."""


class ShapeError(SpecError):
    """Shapes or dtypes do not fit an op."""


class PassError(NnspecError):
    """A compiler pass failed or left an invalid graph (a bug in nnspec, or a pass precondition)."""

    kind = "pass error"


class LoweringError(NnspecError):
    """An op cannot be lowered to a target."""

    kind = "lowering error"


class VerifyError(NnspecError):
    """Targets disagree numerically."""

    kind = "verify error"


@dataclass
class SpecErrors(SpecError):
    """Several spec errors found in one run."""

    errors: list[NnspecError] = field(default_factory=list)

    def __post_init__(self):
        Exception.__init__(self, self.render())
        self.message, self.loc, self.expected, self.hint, self.chain = self.render(), None, None, None, []
        self.notes = []

    def render(self) -> str:
        body = "\n".join(e.render() for e in self.errors[:MAX_ERRORS])
        n = len(self.errors)
        more = f"\n... and {n - MAX_ERRORS} more errors not shown" if n > MAX_ERRORS else ""
        return f"{body}{more}\n{n} error{'s' if n != 1 else ''}"
