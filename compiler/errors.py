"""The one error hierarchy of nnspec and the rendering of source locations.

Every error a user can trigger carries a `Location` (file, line, column, YAML path) and renders as

    specs/resnet.yaml:12:7: error: unknown op 'conv3x'
       12 |   c1: {op: conv3x, in: x}
          |            ^^^^^^
      expected: one of conv1d, conv2d, ...
      in block 'bottleneck' instantiated at specs/resnet.yaml:30:5 (layer1.0)

so the CLI can print it without a traceback. Several errors can be collected into one `SpecErrors`.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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

    def render(self) -> str:
        head = f"{self.loc}: " if self.loc else ""
        out = [f"{head}{self.kind}: {self.message}"]
        if self.loc is not None:
            text = source_line(self.loc)
            if text is not None:
                num = str(self.loc.line)
                out.append(f"  {num:>4} | {text}")
                width = max(1, min(self.loc.length, max(1, len(text) - self.loc.col + 1)))
                out.append(f"  {'':>4} | {' ' * (self.loc.col - 1)}{'^' * width}")
            if self.loc.path:
                out.append(f"  at: {self.loc.yaml_path()}")
        if self.expected:
            out.append(f"  expected: {self.expected}")
        if self.hint:
            out.append(f"  hint: {self.hint}")
        for fr in reversed(self.chain):
            where = f" at {fr.loc}" if fr.loc else ""
            out.append(f"  in block '{fr.block}' instantiated{where} ({fr.instance})")
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

    def render(self) -> str:
        body = "\n".join(e.render() for e in self.errors)
        n = len(self.errors)
        return f"{body}\n{n} error{'s' if n != 1 else ''}"
