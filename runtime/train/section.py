"""A loaded spec's training recipe: its `train:` section, a preset's `train:` over it, `--set train.*`
and the command line's shortcuts over both, `${...}` expressions evaluated, validated as a TrainSpec.

Layering: the compiler keeps `train:` as a plain mapping (it never reads it); this module gives it
meaning. Every value remembers where it was written (the spec file, the preset, the `--set` item),
so a bad learning rate set on the command line is reported at `--set:1:22` with a caret, and one in
the spec at its `file:line:col`.

Merging: mappings merge key by key; anything else replaces. A mapping that names its kind
(`schedule: {name: step, ...}`) is a whole new value, not a change to the old one; renaming a kind
(`--set train.optimizer.name=adam` over an SGD recipe) drops the old kind's options, since SGD's
momentum means nothing to Adam: the new name's own defaults apply. `steps` and `epochs` are
alternatives: setting one removes the other.
"""
from __future__ import annotations

import copy
from typing import Any

from nnspec.compiler.errors import Location, SpecError, quote
from nnspec.compiler.spec.expr import ExprError, evaluate
from nnspec.compiler.spec.load import TRAIN

from .config import TrainSpec, train_schema, validate_train

LENGTH = {"steps": "epochs", "epochs": "steps"}
MAX_DEPTH = 8  # train: sections are shallow (train.task.options.seq_len is 4 deep)


def recipe(loaded, steps: int | None = None, batch_size: int | None = None, task: str | None = None,
           seed: int | None = None) -> TrainSpec:
    """The TrainSpec a run of `loaded` (a LoadedSpec: its preset and train overrides) uses; the
    keyword arguments are the `nnspec train` flags (--steps, --batch, --task, --seed), applied last."""
    origin: dict[tuple, Location | None] = {}
    base = loaded.model.train
    data = copy.deepcopy(base) if base is not None else {}
    if loaded.preset and loaded.model.presets[loaded.preset].train:
        ppath = ("presets", loaded.preset, TRAIN)
        for key, value in loaded.model.presets[loaded.preset].train.items():
            _set(data, origin, (key,), value, lambda p, key=key: loaded.loc((*ppath, key, *p)))
    if base is None and not data and not loaded.train_overrides:
        raise SpecError(f"spec '{loaded.name}' has no train: section"
                        + (f" and preset '{loaded.preset}' adds none" if loaded.preset else ""),
                        loaded.loc(()), expected="a train: mapping with task, loss, optimizer, batch_size and steps",
                        hint="see `nnspec schema` (its train property) or a bundled spec such as char_rnn")
    locs = getattr(loaded.train_overrides, "locs", {})
    for key, value in loaded.train_overrides.items():
        path = tuple(key.split("."))[1:]
        if not path:
            raise SpecError("--set train=... would replace the whole section", locs.get(key, (None,))[0],
                            expected="a key inside it, e.g. --set train.optimizer.lr=0.5")
        loc = locs.get(key, (None, None))[1]
        _set(data, origin, path, value, lambda p, loc=loc: loc)
    flags = {("steps",): steps, ("batch_size",): batch_size, ("task",): {"name": task} if task else None,
             ("seed",): seed}
    for path, value in flags.items():
        if value is not None:
            _set(data, origin, path, value, lambda p: None)

    def where(path: tuple) -> Location | None:
        for i in range(len(path), -1, -1):
            if path[:i] in origin:
                return origin[path[:i]]
        return loaded.loc((TRAIN, *path))

    data = _evaluate(data, loaded.params, (), where)
    return validate_train(data, where)


def _set(data: dict, origin: dict, path: tuple, value, loc_of) -> None:
    """Merge `value` at `path` of `data`, recording the Location of every path it sets."""
    if len(path) > MAX_DEPTH:
        raise SpecError(f"train.{'.'.join(path)}: nested deeper than {MAX_DEPTH} keys", loc_of(()))
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if isinstance(child, str) and part in ("task", "loss", "schedule"):
            child = {"name": child}  # `loss: sequence_ce` is short for {name: sequence_ce}
        if not isinstance(child, dict):
            if child is not None:
                raise SpecError(f"train.{'.'.join(path[:i + 1])} is {quote(child)}, not a mapping",
                                loc_of(()), expected=f"--set train.{'.'.join(path[:i + 1])}=VALUE")
            child = {}
        node[part] = child = dict(child)
        node = child
    key = path[-1]
    old = node.get(key)
    if isinstance(old, str) and key in ("task", "loss", "schedule") and isinstance(value, dict):
        old = {"name": old}
    if isinstance(old, dict) and isinstance(value, dict) and not _renamed(old, value):
        merged = dict(old)
        node[key] = merged
        for k, v in value.items():
            _set(data, origin, (*path, str(k)), v, lambda p, k=k: loc_of((k, *p)))
        return
    if key == "name" and isinstance(old, str) and old != value and len(path) > 1:
        # a tagged mapping renamed: the old name's options are meaningless under the new one
        parent = _walk(data, path[:-1])
        for k in [k for k in parent if k != "name"]:
            del parent[k]
    node[key] = copy.deepcopy(value)
    if len(path) == 1 and key in LENGTH:
        node.pop(LENGTH[key], None)  # the run's length is given one way
    for p in [p for p in origin if p[:len(path)] == path]:
        del origin[p]
    origin[path] = loc_of(())


def _renamed(old: dict, new: dict) -> bool:
    return "name" in new  # a mapping naming its kind replaces the old one whole


def _walk(data: dict, path: tuple) -> dict:
    for part in path:
        data = data[part]
    return data


def _evaluate(value: Any, params: dict, path: tuple, where) -> Any:
    """`${...}` in the section evaluated over the spec's resolved params (`d_model: "${d_model}"`)."""
    if isinstance(value, dict):
        return {k: _evaluate(v, params, (*path, k), where) for k, v in value.items()}
    if isinstance(value, list):
        return [_evaluate(v, params, (*path, i), where) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        try:
            return evaluate(value, params)
        except ExprError as e:
            raise SpecError(f"train.{'.'.join(map(str, path))}: {e}", where(path)) from None
    return value


def spec_schema() -> dict:
    """`nnspec schema`: the spec's JSON Schema with its `train` property (and a preset's) typed."""
    from nnspec.compiler.spec.models import json_schema

    schema = json_schema()
    train = train_schema()
    defs = schema.setdefault("$defs", {})
    for name, sub in train.pop("$defs", {}).items():
        defs.setdefault(name, sub)
    defs["TrainSpec"] = train
    ref = {"$ref": "#/$defs/TrainSpec"}
    schema["properties"]["train"] = {"anyOf": [ref, {"type": "null"}], "default": None,
                                     "description": "how the model trains (nnspec train)"}
    if "Preset" in defs:
        defs["Preset"]["properties"]["train"] = {"type": "object", "description": "keys of train: this preset "
                                                 "changes (merged over the spec's)"}
    return schema


__all__ = ["recipe", "spec_schema"]
