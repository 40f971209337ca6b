"""Artifact files written safely: atomic writes, stable JSON manifests, sha256 digests, safetensors.

Every artifact nnspec writes (model.py, model.onnx, model.engine, weights, manifest.json) goes
through `atomic_write`: the bytes land in a temporary file in the destination folder, are fsynced,
and replace the target with `os.replace`, so a reader never sees a half-written file and an
interrupted compile leaves the previous artifact intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

MANIFEST = "manifest.json"


def atomic_write(path, data: bytes | str) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the folder entry is flushed (POSIX); not possible on Windows.
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
