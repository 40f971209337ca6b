"""Loading a spec: find it, parse it safely, merge included block libraries, validate its structure,
and resolve `params` from defaults, a preset and `--set` overrides."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ..errors import Location, SpecError, SpecErrors
from .expr import ExprError, evaluate
from .models import SpecModel
from .yaml_source import Source, load_yaml

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


def _pydantic_errors(e: ValidationError, where) -> list[SpecError]:
    out = []
    for err in e.errors():
        path = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "union["))))
        path = tuple("in" if p == "in_" else p for p in path)
        # pydantic reports a tagged path; keep only real keys/indices.
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{path[-1]}'"
            loc = where(path, key=True)
        elif err["type"] == "missing":
            msg = f"missing key '{path[-1]}'"
            loc = where(path[:-1])
        else:
            loc = where(path)
            msg = f"{'.'.join(map(str, path))}: {msg}"
        out.append(SpecError(msg, loc, expected=_expected(err)))
    return out


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
    raise SpecError(f"include '{inc}' not found inside the spec's folder or the bundled specs", loc,
                    expected="a relative path such as blocks/resnet.yaml, inside the spec's folder")


def parse_overrides(items: list[str]) -> dict:
    """`key=value` strings (Hydra style) to a dict; values are parsed as YAML scalars/lists."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"override '{item}' is not key=value", expected="e.g. --set num_classes=10")
        k, v = item.split("=", 1)
        src = load_yaml(v, "<--set>") if v.strip() else None
        out[k.strip()] = src.data if src else ""
    return out


def _apply(params: dict, overrides: dict, what: str, loc_of) -> dict:
    params = dict(params)
    for key, value in overrides.items():
        head, *rest = key.split(".")
        if head not in params:
            raise SpecError(f"{what} sets unknown param '{key}'", loc_of(key),
                            expected=f"one of: {', '.join(params) or '(no params)'}")
        if rest:
            node = params[head] = json.loads(json.dumps(params[head]))
            for part in rest[:-1]:
                node = node[part]
            node[rest[-1]] = value
        else:
            params[head] = value
    return params


def load_spec(spec: str | Path, preset: str | None = None, overrides: dict | None = None) -> LoadedSpec:
    """Load and validate a spec; raise `SpecError`/`SpecErrors` (never anything else) on bad input."""
    path = find_spec(str(spec))
    file = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read spec: {e}", Location(file, 1, 1)) from None
    src = load_yaml(text, file)
    if not isinstance(src.data, dict):
        raise SpecError("a spec is a mapping at the top level", src.loc(()), expected="keys nnspec, name, inputs, nodes, outputs")
    block_sources: dict = {}
    data = src.data
    for i, inc in enumerate(data.get("include", []) or []):
        if not isinstance(inc, str):
            continue
        ipath = _resolve_include(path, inc, src.loc(("include", i)))
        isrc = load_yaml(ipath.read_text(encoding="utf-8"), _display(ipath))
        blocks = isrc.data.get("blocks", {}) if isinstance(isrc.data, dict) else {}
        if not isinstance(blocks, dict) or set(isrc.data) - {"blocks", "nnspec", "doc"}:
            raise SpecError(f"include '{inc}' must hold only 'blocks'", isrc.loc(()), expected="nnspec: 1 and blocks: {...}")
        for name, body in blocks.items():
            if name in data.get("blocks", {}) or name in block_sources:
                raise SpecError(f"block '{name}' is defined twice (in {inc})", isrc.loc(("blocks", name), key=True))
            block_sources[name] = isrc
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
        errs = _pydantic_errors(e, where)
        raise (errs[0] if len(errs) == 1 else SpecErrors(errs)) from None

    if preset is not None and preset not in model.presets:
        raise SpecError(f"unknown preset '{preset}' for spec '{model.name}'", src.loc(("presets",), key=True),
                        expected=f"one of: {', '.join(model.presets) or '(this spec has no presets)'}")
    params = dict(model.params)
    if preset:
        params = _apply(params, model.presets[preset].params, f"preset '{preset}'",
                        lambda k: src.loc(("presets", preset, "params", k), key=True))
    overrides = dict(overrides or {})
    params = _apply(params, overrides, "--set", lambda k: None)
    # Params may be expressions over earlier params (d_ff: "${4 * d_model}").
    resolved: dict = {}
    for k, v in params.items():
        try:
            resolved[k] = evaluate(v, resolved)
        except ExprError as e:
            raise SpecError(f"param '{k}': {e}", src.loc(("params", k))) from None
    return LoadedSpec(file, src, model, resolved, preset, overrides, block_sources)
