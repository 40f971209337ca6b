"""Artifact folders written and read safely, shared by every target and the runtime.

Artifacts (folders written by `nnspec compile` and `nnspec deploy`) may come from anyone, so:

  * Names. Every file nnspec writes or reads inside an artifact folder is a plain file name (no
    `/`, `\\`, `..`, NUL or control character, not starting with `.`), joined to the folder and
    checked to stay inside it after resolving symlinks: `plain_name`, `inside`.
  * Writing a folder. `staged_folder(dest)` holds a lock beside `dest` (`.NAME.nnspec-lock`, an
    flock, so a second writer fails at once), builds the whole folder in a fresh sibling temp folder
    (`.NAME.nnspec-tmp-*`) and swaps it in with one `renameat2(RENAME_EXCHANGE)`: a reader sees the
    old folder or the new one, never a mix, and a killed run leaves only a temp folder that the next
    run removes. New files only ever go into that fresh folder, so a symlink planted in `dest` is
    never written through. A non-empty `dest` that nnspec did not write is never replaced.
  * Reading. `read_manifest_json` bounds and parses manifest.json; `read_verified` / `verified_path`
    open only files the manifest lists and whose bytes match the sha256 recorded for them.
  * Single files. `atomic_write` (unique temp file, fsync, os.replace) for files outside artifact
    folders and inside a staged folder.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from nnspec.compiler.errors import NnspecError, quote

try:  # POSIX only; elsewhere the lock is skipped (see _lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

MANIFEST = "manifest.json"
MAX_MANIFEST = 16 << 20  # bytes of manifest.json read at most: a manifest is a few KiB
TMP_TAG = ".nnspec-tmp-"
LOCK_TAG = ".nnspec-lock"
_SHA = re.compile(r"[0-9a-f]{64}\Z")
_TMP_SUFFIX = re.compile(r"[A-Za-z0-9_]+\Z")  # what mkdtemp appends; anything else is not ours
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # POSIX


class ArtifactError(NnspecError):
    """An artifact folder or a file in it cannot be used (unsafe name, modified, corrupt, in use)."""

    kind = "artifact error"


class ArtifactLocked(ArtifactError):
    """Another nnspec process is writing the same folder."""


# -- names and paths ----------------------------------------------------------------------------
def name_problem(name) -> str | None:
    """Why `name` is not a plain file name nnspec may use inside a folder (None when it is)."""
    if not isinstance(name, str):
        return f"a file name must be a string, not {type(name).__name__}"
    if not name or len(name) > 255:
        return "a file name has 1 to 255 characters"
    if any(c in name for c in "/\\\0"):
        return "a plain file name has no '/', '\\' or NUL"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a plain file name has no control characters"
    if name.startswith("."):
        return "a plain file name does not start with '.' (this excludes '..' and hidden files)"
    return None


def plain_name(name, what: str = "file name") -> str:
    """`name` when it is a plain file name, else an ArtifactError saying why."""
    why = name_problem(name)
    if why:
        raise ArtifactError(f"{what} {quote(name)} is refused: {why}",
                            expected="a file name inside the artifact folder, such as model.onnx")
    return name


def inside(root, name, what: str = "file name") -> Path:
    """`root/name` resolved, after checking `name` is plain and the result stays inside `root`."""
    plain_name(name, what)
    base = Path(root).resolve()
    path = (base / name).resolve()
    # A plain name can still be a symlink pointing elsewhere; the resolved path must stay inside.
    if not path.is_relative_to(base):
        raise ArtifactError(f"{name} in '{root}' resolves to '{path}', outside the folder",
                            expected="files inside the artifact folder (no symlinks leading out of it)")
    return path


# -- single files -----------------------------------------------------------------------------
def atomic_write(path, data: bytes | str) -> Path:
    """Write `data` to `path` atomically (unique temp file in the same folder, fsync, os.replace).

    os.replace replaces a symlink at `path` itself; it never writes through it."""
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


def _fsync_dir(folder) -> None:
    # A rename is durable only once the folder entry is flushed (POSIX); not possible on Windows.
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


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- writing whole folders ----------------------------------------------------------------------
@contextmanager
def staged_folder(dest, replace: str = "artifact", force: bool = False):
    """Yield a fresh temp folder beside `dest`; when the block succeeds it becomes `dest` atomically.

    replace="artifact": an existing `dest` is replaced only when it is empty or an nnspec artifact
    folder (compile); replace="empty": only when it is empty, or with `force` (deploy). The lock is
    held from before the check until the swap. On an error the temp folder is removed and `dest`
    is left as it was.
    """
    dest = Path(dest).resolve()  # `-o` given as a symlink: the folder it names is replaced, the link stays
    if not dest.name or dest.parent == dest:
        raise ArtifactError(f"cannot write a folder at '{dest}'", expected="a folder path with a parent")
    if _cwd().is_relative_to(dest):
        # The folder is replaced as a whole: a shell sitting in it would be left in a deleted folder.
        raise ArtifactError(f"'{dest}' is or holds the current folder, and would be replaced as a whole",
                            hint="run nnspec from outside it, or write to another folder")
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _lock(parent, dest):
        _remove_leftovers(parent, dest.name)  # from killed runs; nobody else writes them while we hold the lock
        _check_replaceable(dest, replace, force)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{dest.name}{TMP_TAG}"))
        try:
            yield tmp
            _fsync_tree(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders; artifacts are meant to be shared
            _swap_in(tmp, dest)
        except BaseException:
            _remove(tmp)
            raise


def _cwd() -> Path:
    try:
        return Path.cwd().resolve()
    except OSError:  # the current folder was deleted
        return Path("/nonexistent-nnspec-cwd")


@contextmanager
def _lock(parent: Path, dest: Path):
    if fcntl is None:  # no flock on this platform: concurrent writers are not detected
        yield
        return
    path = parent / f".{dest.name}{LOCK_TAG}"
    try:
        # O_NOFOLLOW: a symlink planted at the lock's name is refused, never opened (and never truncated).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ArtifactError(f"lock file '{path}' is a symbolic link; refusing to use it",
                                hint="remove it; nnspec creates it as a plain file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"lock file '{path}' is not a regular file", hint="remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactLocked(f"another nnspec is writing {dest}",
                                 hint="wait for it to finish, or write to another folder") from None
        # The lock file stays: unlinking it would let a third process lock a new file while we hold the old.
        yield
    finally:
        os.close(fd)  # releases the flock (a killed process releases it too)


def _remove_leftovers(parent: Path, name: str) -> None:
    prefix = f".{name}{TMP_TAG}"
    for entry in os.scandir(parent):
        if entry.name.startswith(prefix) and _TMP_SUFFIX.match(entry.name[len(prefix):]):
            _remove(Path(entry.path))


def _remove(path: Path) -> None:
    """Remove a folder of ours; a symlink in its place is unlinked, never followed."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)  # rmtree does not follow symlinks inside the tree
    except FileNotFoundError:
        pass


def is_artifact(folder: Path) -> bool:
    """Whether `folder` holds a manifest.json written by nnspec (a regular file with nnspec_version)."""
    p = Path(folder) / MANIFEST
    try:
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST:
            return False
        data = json.loads(p.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "nnspec_version" in data


def _check_replaceable(dest: Path, replace: str, force: bool) -> None:
    if not os.path.lexists(dest):
        return
    if dest.is_symlink() or not dest.is_dir():
        raise ArtifactError(f"'{dest}' exists and is not a folder", expected="a new or empty folder")
    with os.scandir(dest) as it:
        empty = next(it, None) is None
    if empty:
        return
    if replace == "artifact":
        # Never swap away a user's unrelated folder (`-o .`, `-o ~`): only one nnspec wrote.
        if not is_artifact(dest):
            raise ArtifactError(f"refusing to replace '{dest}': it is not empty and is not an nnspec artifact "
                                "folder (no manifest.json written by nnspec)",
                                expected="a new or empty folder, or one written by `nnspec compile`")
    elif not force:
        raise ArtifactError(f"'{dest}' already exists and is not empty",
                            hint="pass --force to replace it as a whole, or choose another name")


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(folder, f), os.O_RDONLY | _NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(folder)


def _swap_in(new: Path, dest: Path) -> None:
    """Make `new` appear at `dest` in one step and remove what was there."""
    parent = dest.parent
    if not os.path.lexists(dest):
        os.rename(new, dest)
        _fsync_dir(parent)
        return
    if _exchange(new, dest):  # dest is now the new folder; `new` names the old one
        _fsync_dir(parent)
        _remove(new)
        return
    # No renameat2 here: move the old folder away, then the new one in. A reader may briefly find
    # no folder, never a mixed one; a kill in between leaves the old one under a temp name (removed next run).
    old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{dest.name}{TMP_TAG}"))
    os.rename(dest, old)  # onto the empty folder mkdtemp made: POSIX rename replaces an empty folder
    os.rename(new, dest)
    _fsync_dir(parent)
    _remove(old)


_RENAMEAT2 = []  # [function or None], looked up once


def _renameat2():
    if not _RENAMEAT2:
        fn = None
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.5
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel or filesystem lacks it
        return False
    raise OSError(err, os.strerror(err), str(b))


# -- reading artifact folders -------------------------------------------------------------------
def read_manifest_json(folder, name: str = MANIFEST) -> dict:
    """The parsed manifest of an artifact folder: bounded in size, a JSON object, else ArtifactError."""
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"no artifact folder '{folder}'", expected="a folder written by `nnspec compile`")
    path = inside(root, name)
    if not path.is_file():
        raise ArtifactError(f"'{folder}' has no {name}", expected="a folder written by `nnspec compile`")
    with open(path, "rb") as f:
        data = f.read(MAX_MANIFEST + 1)
    if len(data) > MAX_MANIFEST:
        raise ArtifactError(f"{name} in '{folder}' is larger than {MAX_MANIFEST >> 20} MiB",
                            expected="a manifest written by `nnspec compile` (a few KiB)")
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ArtifactError(f"{name} in '{folder}' is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{name} in '{folder}' is not valid JSON: {e.msg} at line {e.lineno} "
                            f"column {e.colno}", hint="recompile the artifact with `nnspec compile`") from None
    except (ValueError, RecursionError) as e:  # too deeply nested, an integer too long to convert
        raise ArtifactError(f"{name} in '{folder}' cannot be read: {quote(str(e))}") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{name} in '{folder}' is not a JSON object", expected="a manifest written by `nnspec compile`")
    return obj


def recorded_sha(manifest: dict, name: str) -> str:
    """The sha256 manifest.json records for file `name` (ArtifactError when it lists none)."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError("manifest.json has no 'files' map", expected="a manifest written by `nnspec compile`")
    plain_name(name)
    if name not in files:
        raise ArtifactError(f"{name} is not listed in manifest.json's files; nnspec loads only listed files",
                            expected=f"one of: {', '.join(sorted(map(str, files))) or '(none)'}")
    sha = files[name]
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise ArtifactError(f"manifest.json: files.{name} is not a sha256 digest", expected="64 lowercase hex digits")
    return sha


def _mismatch(name: str) -> ArtifactError:
    return ArtifactError(f"{name} does not match the sha256 recorded in manifest.json; the artifact was "
                         "modified or is corrupt", hint="recompile it with `nnspec compile`")


def _listed_file(folder, manifest: dict, name: str) -> tuple[Path, str]:
    sha = recorded_sha(manifest, name)
    path = inside(folder, name)
    if not path.is_file():
        raise ArtifactError(f"'{folder}' has no {name}, which manifest.json lists", hint="recompile the artifact")
    return path, sha


def read_verified(folder, manifest: dict, name: str) -> bytes:
    """The bytes of `folder/name`, after checking they match the manifest's sha256 (read once, so
    what is checked is what is used)."""
    path, sha = _listed_file(folder, manifest, name)
    data = path.read_bytes()
    if sha256_bytes(data) != sha:
        raise _mismatch(name)
    return data


def verified_path(folder, manifest: dict, name: str) -> Path:
    """The path of `folder/name` after checking its sha256, for loaders that need a path (large
    weights, ONNX external data). The file could change between this check and the load; use
    `read_verified` where bytes will do."""
    path, sha = _listed_file(folder, manifest, name)
    if sha256_file(path) != sha:
        raise _mismatch(name)
    return path


def copy_verified(folder, manifest: dict, name: str, dst) -> Path:
    """Copy `folder/name` to the new file `dst`, hashing while copying; `dst` is removed again when the
    bytes do not match the manifest. `dst` must not exist (O_EXCL, no symlink followed)."""
    src, sha = _listed_file(folder, manifest, name)
    dst = Path(dst)
    h = hashlib.sha256()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as fo, open(src, "rb") as fi:
            for block in iter(lambda: fi.read(1 << 20), b""):
                h.update(block)
                fo.write(block)
            fo.flush()
            os.fsync(fo.fileno())
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    if h.hexdigest() != sha:
        dst.unlink(missing_ok=True)
        raise _mismatch(name)
    return dst
