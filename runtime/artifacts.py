"""Artifact directories: stable JSON manifests, their checked reading, file digests and safetensors weights.

Writing goes through `nnspec.targets.files` (a whole folder staged and swapped in, or one file
written atomically), re-exported here for the runtime's callers. Reading an artifact folder that
may come from anyone goes through `load_manifest`: the manifest is parsed with bounds and every field
the runtime uses is type-checked, each error naming the field; names that reach generated code, a
Triton config or a file path pass `nnspec.compiler.spec.names.problem`. `check_inputs` holds the
arrays given to `nnspec run` to the manifest's names, dtypes, ranks and shapes.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from nnspec.compiler.errors import quote
from nnspec.targets.files import (MANIFEST, ArtifactError, atomic_write, name_problem, read_manifest_json,  # noqa: F401
                                  sha256_bytes, sha256_file)
from nnspec.targets.inputs import InputError, check_inputs  # noqa: F401  (they moved there; runners use them)
from nnspec.targets.registry import names as target_names
from nnspec.targets.tensorrt.backends import BACKENDS

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool", "uint8", "int8")
_DIM_EXPR = re.compile(r"[A-Za-z0-9_+\-*/() ]{1,1000}\Z")  # symbolic output dims: `(T-1)//2+1`


def stable_json(obj) -> str:
    """JSON with sorted keys and fixed separators: equal data gives equal bytes."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, default=_jsonable) + "\n"


def _jsonable(v):
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "to_json"):
        return v.to_json()
    raise TypeError(f"cannot write {type(v).__name__} to a manifest")


def write_manifest(folder, fields: dict, name: str = MANIFEST) -> Path:
    """Write `fields` as `folder/manifest.json` (sorted keys, stable bytes), atomically."""
    return atomic_write(Path(folder) / name, stable_json(fields))


def read_manifest(folder, name: str = MANIFEST) -> dict:
    """The manifest of an artifact folder ({} when there is none), parsed with bounds but not checked."""
    if not (Path(folder) / name).is_file():
        return {}
    return read_manifest_json(folder, name)


def update_manifest(folder, fields: dict, name: str = MANIFEST) -> dict:
    """Merge `fields` into the folder's manifest (nested dicts one level deep) and rewrite it."""
    cur = read_manifest(folder, name)
    for k, v in fields.items():
        if isinstance(v, dict) and isinstance(cur.get(k), dict):
            cur[k] = {**cur[k], **v}
        else:
            cur[k] = v
    write_manifest(folder, cur, name)
    return cur


def file_digests(folder, names=None) -> dict:
    """{file name: sha256} for `names` (default: every regular file but the manifest), sorted."""
    folder = Path(folder)
    if names is None:
        names = [p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")]
    return {n: sha256_file(folder / n) for n in sorted(names) if (folder / n).is_file()}


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> Path:
    """Write {name: torch tensor} as safetensors atomically (tensors made contiguous; shared storage
    is written once per name, as safetensors requires distinct buffers)."""
    from safetensors.torch import save

    flat = {k: v.detach().contiguous().clone() if _shares(v, tensors) else v.detach().contiguous()
            for k, v in sorted(tensors.items())}
    meta = {str(k): str(v) for k, v in sorted((metadata or {}).items())}
    return atomic_write(path, save(flat, metadata=meta or None))


def _shares(t, tensors: dict) -> bool:
    ptr = t.untyped_storage().data_ptr() if hasattr(t, "untyped_storage") else None
    return ptr is not None and sum(1 for v in tensors.values()
                                   if hasattr(v, "untyped_storage") and v.untyped_storage().data_ptr() == ptr) > 1


def read_safetensors(path) -> dict:
    from safetensors.torch import load

    return load(Path(path).read_bytes())


# -- reading a manifest that may come from anyone -------------------------------------------------
def _bad(field: str, what: str) -> ArtifactError:
    return ArtifactError(f"manifest.json: field '{field}' {what}", expected="a manifest written by `nnspec compile`",
                         hint="recompile the artifact with `nnspec compile`")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(man: dict, key: str, kind, field: str | None = None, optional: bool = False):
    field = field or key
    if key not in man or man[key] is None:
        if optional:
            return None
        raise _bad(field, "is missing")
    v = man[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise _bad(field, f"is {type(v).__name__}, not {names}")
    return v


def _ident(v, field: str) -> str:
    from nnspec.compiler.spec.names import problem

    why = problem(v)
    if why:
        raise _bad(field, f"is {quote(v)}, which is refused: {why}")
    return v


def _io(item, field: str, is_input: bool) -> dict:
    if not isinstance(item, dict):
        raise _bad(field, f"is {type(item).__name__}, not an object")
    _ident(_need(item, "name", str, f"{field}.name"), f"{field}.name")
    shape = _need(item, "shape", list, f"{field}.shape")
    for i, d in enumerate(shape):
        if _int(d):
            if d < 0:
                raise _bad(f"{field}.shape[{i}]", f"is {d}, a negative size")
        elif isinstance(d, str):
            # input dims are symbols the spec declared; output dims may be arithmetic over them
            if is_input:
                _ident(d, f"{field}.shape[{i}]")
            elif not _DIM_EXPR.match(d):
                raise _bad(f"{field}.shape[{i}]", f"is {quote(d)}, not a size or a dim expression")
        else:
            raise _bad(f"{field}.shape[{i}]", f"is {type(d).__name__}, not an int or a symbol")
    dtype = _need(item, "dtype", str, f"{field}.dtype")
    if dtype not in DTYPES:
        raise _bad(f"{field}.dtype", f"is {quote(dtype)}, not one of {', '.join(DTYPES)}")
    dims = _need(item, "dims", dict, f"{field}.dims", optional=True) or {}
    for sym, rng in dims.items():
        if not isinstance(rng, dict):
            raise _bad(f"{field}.dims.{sym}", f"is {type(rng).__name__}, not an object")
        for k in ("min", "opt", "max"):
            if rng.get(k) is not None and not _int(rng[k]):
                raise _bad(f"{field}.dims.{sym}.{k}", f"is {quote(rng[k])}, not an int")
    return item


def load_manifest(folder) -> dict:
    """The manifest of artifact folder `folder`, with every field the runtime reads checked
    (ArtifactError naming the field otherwise). Files are not read here; see targets.files."""
    man = read_manifest_json(folder)
    files = _need(man, "files", dict)
    for name, sha in files.items():
        why = name_problem(name)
        if why:
            raise _bad(f"files.{quote(name)}", f"is not a plain file name: {why}")
        if not isinstance(sha, str):
            raise _bad(f"files.{name}", "is not a sha256 digest")
    target = _need(man, "target", str)
    if target not in target_names():
        raise _bad("target", f"is {quote(target)}, not one of {', '.join(target_names())}")
    for key in ("inputs", "outputs"):
        items = _need(man, key, list)
        if not items:
            raise _bad(key, "is empty")
        for i, item in enumerate(items):
            _io(item, f"{key}[{i}]", key == "inputs")
        names = [io["name"] for io in items]
        if len(set(names)) != len(names):
            raise _bad(key, "names the same tensor twice")
    _need(man, "spec", str, optional=True)  # a name only where it is used as one (deploy checks it)
    weights = _need(man, "weights", dict, optional=True) or {}
    if weights.get("seed") is not None and not _int(weights["seed"]):
        raise _bad("weights.seed", f"is {quote(weights['seed'])}, not an int")
    torch = _need(man, "torch", dict, optional=True)
    if torch is not None:
        fname = _need(torch, "file", str, "torch.file")
        why = name_problem(fname)
        if why or fname not in files:
            # model.py is code: only a plain name the manifest lists (and whose sha256 it records) is run.
            raise _bad("torch.file", f"is {quote(fname)}, which is refused: {why or 'not listed in files'}")
        _ident(_need(torch, "class", str, "torch.class"), "torch.class")
    onnx = _need(man, "onnx", dict, optional=True)
    if onnx is not None and onnx.get("file") is not None:
        why = name_problem(onnx["file"])
        if why:
            raise _bad("onnx.file", f"is {quote(onnx['file'])}, which is refused: {why}")
    trt = _need(man, "tensorrt", dict, optional=True)
    if trt is not None:
        _check_tensorrt(trt)
    return man


def _check_tensorrt(trt: dict) -> None:
    if trt.get("engine") is not None:
        why = name_problem(trt["engine"])
        if why:
            raise _bad("tensorrt.engine", f"is {quote(trt['engine'])}, which is refused: {why}")
    if trt.get("backend") is not None and trt["backend"] not in BACKENDS:
        raise _bad("tensorrt.backend", f"is {quote(trt['backend'])}, not {' or '.join(BACKENDS)}")
    profiles = _need(trt, "profiles", dict, "tensorrt.profiles", optional=True) or {}
    for inp, pr in profiles.items():
        if not isinstance(pr, dict):
            raise _bad(f"tensorrt.profiles.{quote(inp)}", "is not an object")
        for k in ("min", "opt", "max"):
            v = pr.get(k)
            if v is not None and not (isinstance(v, list) and all(_int(x) for x in v)):
                raise _bad(f"tensorrt.profiles.{quote(inp)}.{k}", "is not a list of ints")
