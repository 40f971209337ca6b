"""Loading a spec: find it, parse it safely, merge included block libraries, validate its structure,
and resolve `params` from defaults, a preset and `--set` overrides."""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ..errors import Location, SpecError, SpecErrors, quote, register_source
from .expr import ExprError, evaluate
from .models import SpecModel
from .names import problem
from .yaml_source import MAX_FILE_BYTES, Source, load_yaml

BUNDLED = Path(__file__).resolve().parent.parent.parent / "specs"


def bundled_dir() -> Path:
    """Folder of the bundled specs (the `nnspec.specs` package data)."""
    try:
        import importlib.resources as ir
        p = Path(str(ir.files("nnspec.specs")))
        if p.is_dir():
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    return BUNDLED


def bundled_specs() -> list[Path]:
    return sorted(p for p in bundled_dir().glob("*.yaml"))


def find_spec(spec: str) -> Path:
    """A path to a spec file, or the name of a bundled spec (`resnet`, `resnet.yaml`)."""
    p = Path(spec)
    if p.is_file():
        return p
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if p.parent == Path(".") and re.fullmatch(r"[A-Za-z0-9_]+", stem):
        cand = bundled_dir() / f"{stem}.yaml"
        if cand.is_file():
            return cand
    names = ", ".join(q.stem for q in bundled_specs())
    raise SpecError(f"no spec file '{spec}' and no bundled spec of that name",
                    expected=f"a path to a .yaml file or one of: {names}")


@dataclass
class LoadedSpec:
    """A validated spec with its parameters resolved; the input of the `expand` pass."""

    file: str
    source: Source
    model: SpecModel
    params: dict
    preset: str | None = None
    overrides: dict = field(default_factory=dict)
    block_sources: dict = field(default_factory=dict)  # block name -> Source it was written in
    init_defaults: dict = field(default_factory=dict)  # op -> {param: Init}, from `init_defaults:`
    # `--set train.*` overrides: they change how the model trains, not the model (kept out of sha256)
    train_overrides: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def reported(self) -> dict:
        """The paper's figures for what is built: a preset's own, else the spec-level ones.

        Spec-level figures describe the default params, so they never leak into a preset.
        """
        if self.preset:
            return dict(self.model.presets[self.preset].reported)
        return dict(self.model.reported)

    def loc(self, path: tuple, key: bool = False) -> Location | None:
        if len(path) >= 2 and path[0] == "blocks" and path[1] in self.block_sources:
            return self.block_sources[path[1]].loc(path, key)
        return self.source.loc(path, key)

    def sha256(self) -> str:
        """Hash of the canonical spec: data with includes merged, preset and overrides applied."""
        blob = json.dumps({"spec": self.source.data, "blocks": {k: v.data.get("blocks", {}).get(k)
                                                                  for k, v in sorted(self.block_sources.items())},
                           "preset": self.preset, "overrides": self.overrides},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        bd = bundled_dir().resolve()
        try:
            return "specs/" + str(path.resolve().relative_to(bd))
        except ValueError:
            return str(path)


def _pydantic_errors(e: ValidationError, where, data) -> list[SpecError]:
    out = []
    for err in e.errors():
        raw = tuple(err["loc"])
        is_key = bool(raw) and raw[-1] == "[key]"
        path = _real_path(data, tuple("in" if p == "in_" else p for p in raw if p != "[key]"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {quote(path[-1])}"
            loc = where(path, key=True)
        elif err["type"] == "missing":
            msg = f"missing key {quote(path[-1])}"
            loc = where(path[:-1])
        elif is_key or err["type"] == "nnspec_name":
            msg = f"bad name {quote(err.get('input'))}: {msg}"
            loc = where(path, key=is_key)
        else:
            loc = where(path)
            msg = f"{'.'.join(map(str, path))}: {msg}"
        out.append(SpecError(msg, loc, expected=_expected(err)))
    return out


def _real_path(data, path: tuple) -> tuple:
    """The keys and indices of `path` that exist in `data`, plus a final missing key. pydantic adds
    tags for union members and validators ('list[str]', 'ArgSpec', 'function-after[...]'), which
    name no place in the file."""
    out, node = [], data
    for i, p in enumerate(path):
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
            node = node[p]
        elif i == len(path) - 1 and isinstance(node, dict):
            pass  # a missing key, named by the message
        else:
            continue
        out.append(p)
    return tuple(out)


def _expected(err) -> str | None:
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        return str(ctx["expected"])
    if "pattern" in ctx:
        return "an identifier (letters, digits, underscore; not starting with a digit)"
    return None


def _resolve_include(spec_path: Path, inc: str, loc) -> Path:
    """Includes resolve only inside the spec's folder or the bundled specs folder."""
    roots = [spec_path.resolve().parent, bundled_dir().resolve()]
    for root in roots:
        cand = (root / inc).resolve()
        if any(cand.is_relative_to(r) for r in roots) and cand.is_file():
            return cand
    raise SpecError(f"include {quote(inc)} not found inside the spec's folder or the bundled specs", loc,
                    expected="a relative path such as blocks/resnet.yaml, inside the spec's folder")


def read_text(path: Path, file: str, loc: Location | None = None) -> str:
    """A spec file's text: size checked before reading, at most MAX_FILE_BYTES + 1 bytes read, UTF-8."""
    where = loc or Location(file, 1, 1)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpecError(f"spec file {quote(file)} is larger than {MAX_FILE_BYTES:,} bytes ({size:,})",
                            where, expected="a spec of bounded size")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise SpecError(f"cannot read {quote(file)}: {e.strerror or e}", where) from None
    if len(data) > MAX_FILE_BYTES:  # the file grew, or stat lied (a device, a pipe)
        raise SpecError(f"spec file {quote(file)} is larger than {MAX_FILE_BYTES:,} bytes", where)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SpecError(f"{quote(file)} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}, line {line})",
                        where, expected="a UTF-8 encoded YAML file") from None


class Overrides(dict):
    """`--set` overrides: {dotted key: value}, remembering where each was written (`locs`)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.locs: dict = {}


OVERRIDES_FILE = "--set"


def parse_overrides(items: list[str]) -> Overrides:
    """`key=value` strings (Hydra style) to a dict; values are parsed as YAML scalars/lists.

    The items are registered as the lines of a source named `--set`, so errors in them are located
    like errors in a file: `--set:2:7: error: ...` with the override and a caret.
    """
    out = Overrides()
    register_source(OVERRIDES_FILE, "\n".join(str(i).replace("\n", " ") for i in items))
    for line, item in enumerate(items, 1):
        key_loc = Location(OVERRIDES_FILE, line, 1, ("--set",), max(1, len(item.partition("=")[0])))
        if "=" not in item:
            raise SpecError(f"override {quote(item)} is not key=value", key_loc, expected="e.g. --set num_classes=10")
        k, v = item.split("=", 1)
        k = k.strip()
        why = problem(k, "path")
        if why:
            raise SpecError(f"bad override key {quote(k)}: {why}", key_loc, expected="a param name, e.g. --set width=64 "
                            "or --set optim.lr=0.1")
        value_loc = Location(OVERRIDES_FILE, line, len(item) - len(v) + 1, ("--set", k), max(1, len(v)))
        try:
            src = load_yaml(v, OVERRIDES_FILE, register=False) if v.strip() else None
        except SpecError as e:
            raise SpecError(f"--set {k}: {e.message}", value_loc, expected="a YAML value: 10, 0.1, true, [2, 2], "
                            "{a: 1}") from None
        out[k] = src.data if src else ""
        out.locs[k] = (key_loc, value_loc)
    return out


def _apply(params: dict, origin: dict, overrides: dict, what: str, loc_of, spec_name: str) -> dict:
    """`params` with each dotted key of `overrides` set; `origin[head]` records where each top-level
    param's value now comes from (for errors in it). `loc_of(key, value=False)` locates an override."""
    params = dict(params)
    for key, value in overrides.items():
        head, *rest = key.split(".")
        if head not in params:
            close = difflib.get_close_matches(head, list(params), n=3)
            raise SpecError(f"{what} sets unknown param {quote(key)} of spec '{spec_name}'", loc_of(key),
                            expected=f"one of: {', '.join(params) or '(no params)'}",
                            hint=f"did you mean {', '.join(close)}?" if close else None)
        if rest:
            node = params[head] = copy.deepcopy(params[head])
            walked = head
            for j, part in enumerate(rest):
                if not isinstance(node, dict):
                    raise SpecError(f"{what} {quote(key)}: param '{walked}' is {quote(node)}, not a mapping",
                                    loc_of(key), expected=f"--set {walked}=VALUE")
                if part not in node:
                    close = difflib.get_close_matches(part, [str(k) for k in node], n=3)
                    raise SpecError(f"{what} {quote(key)}: '{walked}' has no key {quote(part)}", loc_of(key),
                                    expected=f"one of: {', '.join(map(str, node)) or '(no keys)'}",
                                    hint=f"did you mean {', '.join(close)}?" if close else None)
                if j == len(rest) - 1:
                    node[part] = value
                else:
                    node = node[part]
                walked += "." + part
        else:
            params[head] = value
        origin[head] = loc_of(key, value=True)
    return params


def load_spec(spec: str | Path, preset: str | None = None, overrides: dict | None = None) -> LoadedSpec:
    """Load and validate a spec; raise `SpecError`/`SpecErrors` (never anything else) on bad input."""
    path = find_spec(str(spec))
    file = _display(path)
    src = load_yaml(read_text(path, file), file)
    if not isinstance(src.data, dict):
        raise SpecError("a spec is a mapping at the top level", src.loc(()), expected="keys nnspec, name, inputs, nodes, outputs")
    block_sources: dict = {}
    data = src.data
    includes = data.get("include", []) or []
    for i, inc in enumerate(includes if isinstance(includes, list) else []):
        if not isinstance(inc, str):
            continue  # reported by the structure check
        inc_loc = src.loc(("include", i))
        ipath = _resolve_include(path, inc, inc_loc)
        try:
            ifile = _display(ipath)
            isrc = load_yaml(read_text(ipath, ifile, inc_loc), ifile)
            blocks = isrc.data.get("blocks", {}) if isinstance(isrc.data, dict) else {}
            if not isinstance(blocks, dict) or set(isrc.data) - {"blocks", "nnspec", "doc"}:
                raise SpecError(f"include {quote(inc)} must hold only 'blocks'", isrc.loc(()),
                                expected="nnspec: 1 and blocks: {...}")
            for name in blocks:
                if name in (data.get("blocks") or {}) or name in block_sources:
                    raise SpecError(f"block {quote(name)} is defined twice (in {quote(inc)})",
                                    isrc.loc(("blocks", name), key=True))
                block_sources[name] = isrc
        except SpecError as e:
            if e.loc is None or e.loc.file != file:
                e.notes.append(f"included from {inc_loc}")
            raise
    merged = dict(data)
    if block_sources:
        merged["blocks"] = {**{k: v.data["blocks"][k] for k, v in block_sources.items()}, **(data.get("blocks") or {})}

    def where(p, key=False):
        if len(p) >= 2 and p[0] == "blocks" and p[1] in block_sources:
            return block_sources[p[1]].loc(p, key)
        return src.loc(p, key)

    try:
        model = SpecModel.model_validate(merged)
    except ValidationError as e:
        errs = _pydantic_errors(e, where, merged)
        for err in errs:
            if err.loc is not None and err.loc.file != file:
                err.notes.append(f"included from {src.loc(('include',))}")
        raise (errs[0] if len(errs) == 1 else SpecErrors(errs)) from None
    _check_io_names(model, src)

    if preset is not None and preset not in model.presets:
        close = difflib.get_close_matches(str(preset), list(model.presets), n=3)
        raise SpecError(f"unknown preset {quote(preset)} for spec '{model.name}'", src.loc(("presets",), key=True),
                        expected=f"one of: {', '.join(model.presets) or '(this spec has no presets)'}",
                        hint=f"did you mean {', '.join(close)}?" if close else None)
    base = dict(model.params)
    origin = {k: src.loc(("params", k)) for k in base}
    # Every preset's keys are checked, not only the selected one's: a typo in any preset is an error.
    for name, pre in model.presets.items():
        _apply(base, {}, pre.params, f"preset '{name}'",
               lambda k, value=False, name=name: src.loc(("presets", name, "params", k), key=not value), model.name)
    params = base
    if preset:
        params = _apply(params, origin, model.presets[preset].params, f"preset '{preset}'",
                        lambda k, value=False: src.loc(("presets", preset, "params", k), key=not value), model.name)
    overrides, train_overrides = split_train_overrides(
        overrides if isinstance(overrides, Overrides) else Overrides(overrides or {}))
    params = _apply(params, origin, overrides, "--set",
                    lambda k, value=False: overrides.locs.get(k, (None, None))[1 if value else 0], model.name)
    # Params may be expressions over earlier params (d_ff: "${4 * d_model}").
    resolved: dict = {}
    for k, v in params.items():
        try:
            resolved[k] = evaluate(v, resolved)
        except ExprError as e:
            raise SpecError(f"param '{k}': {e}", origin.get(k)) from None
    return LoadedSpec(file, src, model, resolved, preset, dict(overrides), block_sources,
                      _init_defaults(model, src), train_overrides)


TRAIN = "train"  # `--set train.optimizer.lr=0.5` goes to the train: section, never to a param


def split_train_overrides(overrides: Overrides) -> tuple[Overrides, Overrides]:
    """(param overrides, `train.*` overrides), each keeping where its items were written."""
    parts = (Overrides(), Overrides())
    for key, value in overrides.items():
        part = parts[key == TRAIN or key.startswith(TRAIN + ".")]
        part[key] = value
        if key in overrides.locs:
            part.locs[key] = overrides.locs[key]
    return parts


def _init_defaults(model: SpecModel, src: Source) -> dict:
    """`init_defaults: {linear: {normal: {std: 0.02}}, embedding: {weight: ...}}` parsed: an op's
    initialiser (for its `weight`) or a map of its parameters to initialisers."""
    from ..init import INITIALISERS, InitError, parse_init
    from ..ops import registry

    out = {}
    for op, value in model.init_defaults.items():
        loc = src.loc(("init_defaults", op), key=True)
        if op not in registry() or op in ("input", "scan"):
            close = difflib.get_close_matches(op, list(registry()), n=3)
            raise SpecError(f"init_defaults names unknown op {quote(op)}", loc,
                            hint=f"did you mean {', '.join(close)}?" if close else "`nnspec schema` lists every op")
        is_init = isinstance(value, str) or (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in INITIALISERS)
        per_param = {"weight": value} if is_init else value
        if not isinstance(per_param, dict) or not per_param:
            raise SpecError(f"init_defaults of '{op}' is {quote(value)}", src.loc(("init_defaults", op)),
                            expected="an initialiser, e.g. {normal: {std: 0.02}}, or {weight: ..., bias: zeros}")
        out[op] = {}
        for pname, spec in per_param.items():
            why = problem(str(pname), "path")
            if why:
                raise SpecError(f"init_defaults of '{op}' names parameter {quote(pname)}: {why}", loc)
            try:
                out[op][pname] = parse_init(spec)
            except InitError as e:
                raise SpecError(f"init_defaults of '{op}', parameter '{pname}': {e.message}",
                                src.loc(("init_defaults", op) + (() if is_init else (pname,))), expected=e.expected) from None
    return out


def _check_io_names(model: SpecModel, src: Source) -> None:
    """Output names are unique after `a.b` -> `a_b` and differ from input names (ONNX needs both)."""
    graphs = [((), model.inputs, model.outputs)] + [(("graphs", g), gs.inputs, gs.outputs) for g, gs in model.graphs.items()]
    for base, inputs, outputs in graphs:
        names = output_names(outputs)
        seen: dict = {}
        for raw, name in names:
            loc = src.loc(base + ("outputs", raw) if isinstance(outputs, dict) else base + ("outputs",),
                          key=isinstance(outputs, dict))
            why = problem(name)
            if why:
                raise SpecError(f"bad output name {quote(name)}: {why}", loc)
            if name in inputs:
                raise SpecError(f"output {quote(name)} has the name of an input", loc,
                                expected="output names that differ from input names (ONNX graphs need both)")
            if name in seen:
                raise SpecError(f"two outputs are both named {quote(name)} ({quote(seen[name])} and {quote(raw)})", loc,
                                expected="unique output names")
            seen[name] = raw


def output_names(outputs) -> list[tuple[str, str]]:
    """(as written, as named in targets) for each output: `{logits: fc}` -> logits; `[lstm.h]` -> lstm_h."""
    if isinstance(outputs, dict):
        return [(k, k) for k in outputs]
    return [(o, str(o).replace(".", "_")) for o in outputs]
