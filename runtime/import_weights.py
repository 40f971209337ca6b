"""`nnspec import-weights`: a reference implementation's weights -> a weights file for a spec.

    nnspec import-weights resnet -p resnet50 --from torchvision_r50.safetensors -o r50.safetensors
    nnspec compile resnet -p resnet50 --target onnx --weights r50.safetensors -o out/r50

The source is a safetensors file keyed by the reference's state-dict names (torchvision,
transformers, ...; never a pickle). Keys are renamed by the spec's `reference.keys` map, or a
`--map` file of the same form (YAML `{their.fragment: our.fragment}`), fragments matched at whole
dotted segments; the result is checked against the spec's parameters exactly as `--weights` is
(every missing, unexpected, mis-shaped or mis-typed key listed) and written atomically.
"""
from __future__ import annotations

from pathlib import Path

from nnspec.compiler.errors import LoweringError, SpecError, quote
from nnspec.compiler.spec.names import problem


def rename(key: str, mapping: dict) -> str:
    """`key` with every fragment of `mapping` replaced, matched at whole dotted segments
    (`features.1` does not match inside `features.10`)."""
    parts = key.split(".")
    out, i = [], 0
    items = [(k.split("."), v.split(".")) for k, v in mapping.items()]
    while i < len(parts):
        for theirs, ours in items:
            if parts[i:i + len(theirs)] == theirs:
                out += ours
                i += len(theirs)
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def read_map(path) -> dict:
    """A `--map` file: a YAML mapping of dotted key fragments (theirs -> ours), names checked."""
    from nnspec.compiler.spec.load import read_text
    from nnspec.compiler.spec.yaml_source import load_yaml

    src = load_yaml(read_text(Path(path), str(path)), str(path))
    if not isinstance(src.data, dict):
        raise SpecError("a key map is a mapping {their.key.fragment: our.key.fragment}", src.loc(()))
    for k, v in src.data.items():
        why = problem(str(k), "path") or (problem(v, "path") if isinstance(v, str) else "a dotted key fragment")
        if why:
            raise SpecError(f"key map entry {quote(k)}: {why}", src.loc((k,)))
    return {str(k): v for k, v in src.data.items()}


def import_weights(program, source, out, mapping: dict | None = None) -> dict:
    """Read `source`, rename its keys, check them against `program`, write `out`; returns {ours: theirs}."""
    from nnspec.runtime.artifacts import atomic_write
    from nnspec.targets.weights import check_weights, load_weights, save_weights

    if mapping is None:
        ref = program.spec.model.reference
        mapping = dict(ref.keys) if ref else {}
    theirs = load_weights(source, "source weights file")
    renamed, origin = {}, {}
    for key, value in theirs.items():
        new = rename(key, mapping)
        if new in renamed:
            raise LoweringError(f"keys {quote(origin[new])} and {quote(key)} both map to {quote(new)}",
                                expected="a key map that keeps keys distinct")
        renamed[new], origin[new] = value, key
    check_weights(program, renamed, f"weights in '{source}' after renaming")
    atomic_write(out, save_weights(renamed))
    return origin
