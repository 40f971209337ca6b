"""Goldens of the whole zoo: for every bundled spec, at its default params and at each preset, the
generated `model.py` and the IR text equal the files under tests/golden/zoo/<spec>/.

A change to code generation, to a pass or to a bundled spec shows up here as a readable diff of
what users get. Rewrite the goldens after an intended change:

    NNSPEC_UPDATE_GOLDEN=1 python -m pytest tests/test_zoo_goldens.py -q
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnspec.compiler import load
from nnspec.compiler.spec.load import bundled_specs, load_spec
from nnspec.targets.torch.codegen import generate_source

from test_codegen import GOLDEN, golden

ZOO = GOLDEN / "zoo"
CASES = [(p.stem, preset) for p in bundled_specs() for preset in [None, *load_spec(str(p)).model.presets]]
_LOC = re.compile(r"  # (.+):(\d+):(\d+)$")


def ir_text(program) -> str:
    """`program.dump()` with each `  # file:line:col` suffix's file made relative to the spec's folder
    (`blocks/resnet.yaml`), so the text does not depend on the working directory."""
    root = Path(program.spec.file).resolve().parent

    def rel(m: re.Match) -> str:
        path = Path(m.group(1)).resolve()
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        return f"  # {name}:{m.group(2)}:{m.group(3)}"

    return "\n".join(_LOC.sub(rel, line) for line in program.dump().splitlines()) + "\n"


@pytest.mark.parametrize("spec, preset", CASES, ids=[f"{s}-{p or 'default'}" for s, p in CASES])
def test_zoo_golden(spec, preset):
    program = load(spec, preset)
    src, _ = generate_source(program)
    where = ZOO / spec / (preset or "default")
    golden(where.with_suffix(".py"), src, "tests/test_zoo_goldens.py")
    golden(where.with_suffix(".ir.txt"), ir_text(program), "tests/test_zoo_goldens.py")


def test_every_golden_belongs_to_a_case():
    """A golden whose spec or preset is gone would otherwise linger unchecked."""
    wanted = {f"{s}/{p or 'default'}{ext}" for s, p in CASES for ext in (".py", ".ir.txt")}
    present = {f.relative_to(ZOO).as_posix() for f in ZOO.rglob("*") if f.is_file()}
    assert present <= wanted, f"stale goldens: {sorted(present - wanted)}; delete them"
