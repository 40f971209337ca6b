"""Artifact directories: stable JSON manifests, file digests and safetensors weights.

File writes go through `nnspec.targets.files.atomic_write` (temp file, fsync, os.replace), re-exported
here for the runtime's callers.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnspec.targets.files import atomic_write, sha256_bytes, sha256_file  # noqa: F401  (re-exported)

MANIFEST = "manifest.json"


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
    """The manifest of an artifact folder ({} when there is none)."""
    p = Path(folder) / name
    if not p.is_file():
        return {}
    return json.loads(p.read_text())


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
