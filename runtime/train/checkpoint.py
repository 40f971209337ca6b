"""Training checkpoints: atomic folders of safetensors and JSON that resume a run exactly, no pickle.

A run folder holds RUN_DIR/checkpoints/step-000000100/ with

  * weights.safetensors    the model's state_dict (tied parameters saved once per key, as copies);
  * optimizer.safetensors  every tensor of optimizer.state_dict()['state'], keyed `state.<index>.<name>`;
  * state.json             the step, param_groups and non-tensor optimizer state, the scheduler's
                           state_dict, the torch CPU / python / numpy RNG states as JSON lists, the
                           caller's `extra`, and the sha256 of both safetensors files.

Each checkpoint folder is written whole through `targets.files.staged_folder` (temp folder, fsync,
rename, fsync parent) under a lock on the run's checkpoints folder, so a process killed mid-save
leaves the previous checkpoints untouched plus a temp folder the next save removes. Only the last
`keep` checkpoints stay. `latest_checkpoint` returns the newest folder whose files match their
sha256; `load_checkpoint` checks every key, shape and dtype against the live model and optimizer
before it changes anything, so a tampered or foreign checkpoint is a CheckpointError, not a
traceback. A pipeline run writes the same layout from its gathered stages (`save_state`) and each
stage loads its slice of one (`load_checkpoint(..., part=Part(...))`). Nothing here pickles: tensors go through safetensors, everything else through JSON.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from nnspec.compiler.errors import quote
from nnspec.targets import files as _files
from nnspec.targets.files import ArtifactError, inside, sha256_bytes, staged_folder
from nnspec.targets.weights import check_state

CHECKPOINTS = "checkpoints"
WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
FORMAT = "nnspec-checkpoint"
VERSION = 1
MAX_STATE = 16 << 20  # bytes of state.json read at most (RNG states and param_groups: tens of KiB)
MAX_HEADER = 100 << 20  # bytes of safetensors JSON header accepted (safetensors' own limit)
MAX_STEP = 10**9 - 1  # step folders have nine digits, so names sort by step
_STEP_DIR = re.compile(r"step-(\d{9})\Z")
_OPT_KEY = re.compile(r"state\.(0|[1-9]\d{0,8})\.([A-Za-z_][A-Za-z0-9_]{0,63})\Z")


class CheckpointError(ArtifactError):
    """A checkpoint cannot be written or used (missing, modified, foreign to this model, unsafe)."""

    kind = "checkpoint error"


@dataclass
class Checkpoint:
    """What `load_checkpoint` restored: the folder, its step, the RNG states and the caller's extra."""

    path: Path
    step: int
    rng: dict
    extra: dict = field(default_factory=dict)


def step_dir_name(step: int) -> str:
    return f"step-{_check_step(step):09d}"


def _check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise CheckpointError(f"step {quote(step)} is not an integer from 0 to {MAX_STEP}")
    return step


# -- RNG states ---------------------------------------------------------------------------------
def capture_rng(numpy_generator=None) -> dict:
    """The torch CPU, python `random` and (when given) numpy Generator states, as JSON-safe values."""
    import torch

    state = {"torch": torch.get_rng_state().tolist(), "python": _python_rng_json(random.getstate()), "numpy": None}
    if numpy_generator is not None:
        state["numpy"] = _jsonable(numpy_generator.bit_generator.state)
    return state


def restore_rng(rng: dict, numpy_generator=None) -> None:
    """Set the global torch CPU and python RNGs (and `numpy_generator`, when given) to `rng`."""
    import torch

    rng = _check_rng(rng)
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    if numpy_generator is not None:
        if rng["numpy"] is None:
            raise CheckpointError("the checkpoint holds no numpy Generator state",
                                  hint="save with rng_state=capture_rng(generator), or do not pass a generator")
        want = numpy_generator.bit_generator.state.get("bit_generator")
        if rng["numpy"].get("bit_generator") != want:
            raise CheckpointError(f"the checkpoint's numpy state is for {quote(rng['numpy'].get('bit_generator'))}, "
                                  f"the generator given is {quote(want)}")
        try:
            numpy_generator.bit_generator.state = rng["numpy"]
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise CheckpointError(f"state.json: the numpy generator state is invalid: {quote(str(e))}") from None


def _python_rng_json(st) -> list:
    version, internal, gauss = st
    return [version, list(internal), gauss]


def _jsonable(value):
    """numpy bit_generator states hold ndarrays (MT19937's key) and numpy ints: plain lists and ints."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # ndarray, numpy scalar
        return value.tolist()
    return value


def _is_int(v, lo=None, hi=None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) and (hi is None or v <= hi)


def _check_rng(rng) -> dict:
    import torch

    if not isinstance(rng, dict) or not {"torch", "python"} <= set(rng):
        raise CheckpointError("the RNG state is not an object with 'torch' and 'python' entries",
                              expected="what capture_rng() returns")
    t = rng["torch"]
    n = torch.get_rng_state().numel()  # the CPU generator's state size is fixed (mt19937 + extras)
    if not isinstance(t, list) or len(t) != n or not all(_is_int(b, 0, 255) for b in t):
        raise CheckpointError(f"the torch RNG state is not a list of {n} bytes (integers 0..255)",
                              expected="torch.get_rng_state() as a list")
    p = rng["python"]
    if not (isinstance(p, list) and len(p) == 3 and _is_int(p[0]) and isinstance(p[1], list)
            and len(p[1]) == 625 and all(_is_int(x, 0, 2**32) for x in p[1])
            and (p[2] is None or isinstance(p[2], float))):
        raise CheckpointError("the python RNG state is not [version, 625 integers, gauss or null]",
                              expected="random.getstate() as a list")
    np_state = rng.get("numpy")
    if np_state is not None and not (isinstance(np_state, dict) and isinstance(np_state.get("bit_generator"), str)):
        raise CheckpointError("the numpy RNG state is not a bit_generator state object",
                              expected="Generator.bit_generator.state")
    return {"torch": t, "python": p, "numpy": np_state}


# -- saving ---------------------------------------------------------------------------------------
def _tensor_bytes(tensors: dict, what: str) -> bytes:
    from safetensors.torch import save

    # clone(): safetensors refuses tensors sharing storage (tied weights) and views; copies are plain.
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in sorted(tensors.items())}
    try:
        return save(plain, metadata={"format": FORMAT})
    except Exception as e:  # unsupported dtype (complex), ...
        raise CheckpointError(f"cannot write {what}: {quote(str(e))}") from None


def _split_optimizer(sd: dict) -> tuple[dict, dict, list]:
    """(tensors keyed state.<i>.<name>, non-tensor state {i: {name: value}}, param_groups) of an
    optimizer's state_dict()."""
    import torch

    tensors, scalars = {}, {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            key = f"state.{index}.{name}"
            if not _OPT_KEY.match(key):
                raise CheckpointError(f"optimizer state key {quote(key)} cannot be saved",
                                      expected="state.<parameter index>.<identifier>")
            if isinstance(value, torch.Tensor):
                tensors[key] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    for group in sd["param_groups"]:
        for k, v in group.items():
            if isinstance(v, torch.Tensor):
                raise CheckpointError(f"optimizer param_groups entry {quote(k)} is a tensor; checkpoints store "
                                      "param_groups as JSON", hint="pass lr and other hyperparameters as floats")
    return tensors, scalars, sd["param_groups"]


def _json_bytes(obj, what: str) -> bytes:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot write {what} as JSON: {quote(str(e))}",
                              expected="strings, numbers, booleans, null, lists and objects") from None


def save_checkpoint(run_dir, step: int, model, optimizer=None, scheduler=None, rng_state: dict | None = None,
                    extra: dict | None = None, keep: int | None = 3) -> Path:
    """Write RUN_DIR/checkpoints/step-NNNNNNNNN atomically and keep only the newest `keep` checkpoints.

    rng_state: what `capture_rng()` returns; None captures the torch and python RNGs now (pass
    `capture_rng(generator)` to include a numpy Generator). extra: any JSON object (data-loader
    position, best metric). keep: None keeps every checkpoint. Returns the checkpoint folder."""
    return save_state(run_dir, step, model.state_dict(),
                      None if optimizer is None else optimizer.state_dict(),
                      None if optimizer is None else type(optimizer).__name__, scheduler, rng_state, extra, keep)


def save_state(run_dir, step: int, weights: dict, optimizer_state: dict | None = None,
               optimizer_class: str | None = None, scheduler=None, rng_state: dict | None = None,
               extra: dict | None = None, keep: int | None = 3) -> Path:
    """save_checkpoint from plain values: a state dict `weights`, an optimizer's `state_dict()` and
    its class name. A pipeline run assembles these from its stages (whole-model keys and parameter
    order), so its checkpoint is the single-process one."""
    name = step_dir_name(step)
    if keep is not None and not _is_int(keep, 1):
        raise CheckpointError(f"keep {quote(keep)} is not a positive integer", hint="or None to keep every checkpoint")
    rng = _check_rng(capture_rng() if rng_state is None else rng_state)
    if extra is not None and not isinstance(extra, dict):
        raise CheckpointError("extra must be a JSON object (a dict)")
    # Everything is serialised before anything is written: a bad value fails with no folder touched.
    files = {WEIGHTS: _tensor_bytes(weights, WEIGHTS)}
    opt_json = None
    if optimizer_state is not None:
        tensors, scalars, groups = _split_optimizer(optimizer_state)
        files[OPTIMIZER] = _tensor_bytes(tensors, OPTIMIZER)
        opt_json = {"class": optimizer_class, "param_groups": groups, "state": scalars}
    sched_json = None
    if scheduler is not None:
        sched_json = {"class": type(scheduler).__name__, "state": scheduler.state_dict()}
    state = {"format": FORMAT, "version": VERSION, "step": step, "optimizer": opt_json, "scheduler": sched_json,
             "rng": rng, "extra": extra or {}, "files": {n: sha256_bytes(b) for n, b in files.items()}}
    files[STATE] = _json_bytes(state, STATE)

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    if root.is_symlink() or not root.is_dir():
        raise CheckpointError(f"'{root}' is not a folder")
    root = root.resolve()
    # One writer per run: the run lock also makes removing temp leftovers and pruning safe.
    with _files._lock(root.parent, root):
        with staged_folder(root / name, replace="empty", force=True) as tmp:
            for fname, data in files.items():
                with open(tmp / fname, "xb") as f:
                    f.write(data)
        _prune(root, keep)
    return root / name


def _step_folders(root: Path) -> list[tuple[int, Path]]:
    out = []
    for entry in os.scandir(root):
        m = _STEP_DIR.match(entry.name)
        if m and entry.is_dir(follow_symlinks=False):
            out.append((int(m.group(1)), Path(entry.path)))
    return sorted(out)


def _prune(root: Path, keep: int | None) -> None:
    steps = _step_folders(root)
    doomed = steps[:-keep] if keep is not None else []
    for _step, path in doomed:
        _files._remove(path)
    live = {p.name for _s, p in steps[len(doomed):]}
    for entry in os.scandir(root):  # temp folders of killed saves, lock files of pruned steps
        n = entry.name
        if n.startswith(".step-") and (_files.TMP_TAG in n or
                                       (n.endswith(_files.LOCK_TAG) and n[1:-len(_files.LOCK_TAG)] not in live)):
            _files._remove(Path(entry.path))
    _files._fsync_dir(root)


# -- finding and loading --------------------------------------------------------------------------
def _inside(folder: Path, name: str) -> Path:
    try:
        return inside(folder, name)  # a symlink leading out of the checkpoint folder is refused here
    except CheckpointError:
        raise
    except ArtifactError as e:
        raise CheckpointError(e.message, expected="files inside the checkpoint folder (no symlinks leading out of it)") from None


def _read_state(folder: Path) -> dict:
    path = _inside(folder, STATE)
    if not path.is_file():
        raise CheckpointError(f"'{folder}' has no {STATE}", expected="a folder written by save_checkpoint")
    with open(path, "rb") as f:
        data = f.read(MAX_STATE + 1)
    if len(data) > MAX_STATE:
        raise CheckpointError(f"{STATE} in '{folder}' is larger than {MAX_STATE >> 20} MiB")
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{STATE} in '{folder}' is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{STATE} in '{folder}' is not valid JSON: {e.msg} at line {e.lineno} "
                              f"column {e.colno}") from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{STATE} in '{folder}' cannot be read: {quote(str(e))}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != VERSION:
        raise CheckpointError(f"{STATE} in '{folder}' is not an nnspec checkpoint (format {FORMAT!r}, version {VERSION})")
    if not _is_int(obj.get("step"), 0, MAX_STEP) or step_dir_name(obj["step"]) != folder.name:
        raise CheckpointError(f"{STATE} in '{folder}' records step {quote(obj.get('step'))}, not the folder's step")
    fl = obj.get("files")
    if not isinstance(fl, dict) or WEIGHTS not in fl or not set(fl) <= {WEIGHTS, OPTIMIZER} \
            or not all(isinstance(s, str) and re.fullmatch(r"[0-9a-f]{64}", s) for s in fl.values()):
        raise CheckpointError(f"{STATE} in '{folder}' has no valid 'files' map of sha256 digests")
    for key in ("optimizer", "scheduler", "extra"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise CheckpointError(f"{STATE} in '{folder}': {key!r} is not an object")
    return obj


def _read_file(folder: Path, state: dict, name: str) -> bytes:
    path = _inside(folder, name)
    if not path.is_file():
        raise CheckpointError(f"'{folder}' has no {name}, which {STATE} lists")
    data = path.read_bytes()  # read once: what is checked is what is loaded
    if sha256_bytes(data) != state["files"][name]:
        raise CheckpointError(f"{name} in '{folder}' does not match the sha256 recorded in {STATE}; "
                              "the checkpoint was modified or is corrupt", hint="resume from an earlier checkpoint")
    return data


def _open_folder(path) -> Path:
    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        raise CheckpointError(f"no checkpoint folder '{path}' (or it is a symbolic link)",
                              expected="RUN_DIR/checkpoints/step-NNNNNNNNN written by save_checkpoint")
    p = p.resolve()
    if not _STEP_DIR.match(p.name):
        raise CheckpointError(f"'{path}' is not a checkpoint folder", expected="a folder named step-NNNNNNNNN")
    return p


def verify_checkpoint(path) -> dict:
    """The parsed state.json of a checkpoint folder whose files all match their sha256 (else CheckpointError)."""
    folder = _open_folder(path)
    state = _read_state(folder)
    for name in state["files"]:
        _read_file(folder, state, name)
    return state


def read_weights_bytes(path) -> tuple[bytes, dict]:
    """(the bytes of a checkpoint folder's weights file, its parsed state.json): read once and
    checked against the sha256 state.json records, so what is checked is what the caller parses."""
    folder = _open_folder(path)
    state = _read_state(folder)
    return _read_file(folder, state, WEIGHTS), state


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of a run (temp leftovers and folders failing their sha256 skipped)."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_symlink() or not root.is_dir():
        return None
    for _step, path in reversed(_step_folders(root.resolve())):
        try:
            verify_checkpoint(path)
        except (ArtifactError, OSError):
            continue
        return path
    return None


def _load_tensors(data: bytes, name: str) -> dict:
    from safetensors.torch import load

    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else None
    if n is None or n > len(data) - 8 or n > MAX_HEADER:
        raise CheckpointError(f"{name} is not a safetensors file (its header length does not fit its {len(data)} bytes)")
    try:
        return load(data)
    except Exception as e:  # SafetensorError, bad header JSON: the file's fault
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read {name}: {quote(first)}") from None


def _check_against(expected: dict, arrays: dict, source: str) -> None:
    try:
        check_state(expected, arrays, source=source)
    except Exception as e:  # LoweringError listing every mismatch: keep its lines, say "model", not "spec"
        notes = [n.replace("the spec has no such", "the model has no such") for n in getattr(e, "notes", [])]
        err = CheckpointError(f"{source} does not fit this model ({len(notes)} problem{'s' if len(notes) != 1 else ''})",
                              expected="the keys, shapes and dtypes of the model's state_dict",
                              hint="build the model from the spec the run was started with")
        err.notes = notes
        raise err from None


def _same_kind(got, want) -> bool:
    """Whether a param_groups value read from JSON can stand for the live one (a tampered lr of
    "0.1" or [1] would otherwise only fail inside optimizer.step)."""
    if isinstance(want, bool) or want is None or isinstance(want, str):
        return type(got) is type(want) or (want is None and got is None)
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and not isinstance(got, bool)
    if isinstance(want, (list, tuple)):
        return isinstance(got, list) and len(got) == len(want) and all(_same_kind(a, b) for a, b in zip(got, want))
    return True  # anything else JSON could hold: the optimizer's own load_state_dict judges


def _optimizer_state_dict(optimizer, recorded: dict, tensors: dict) -> dict:
    """The state_dict to hand to optimizer.load_state_dict, after checking it fits `optimizer`."""
    if recorded.get("class") != type(optimizer).__name__:
        raise CheckpointError(f"the checkpoint's optimizer is {quote(recorded.get('class'))}, "
                              f"this run's is {type(optimizer).__name__}")
    live = optimizer.state_dict()
    groups = recorded.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(live["param_groups"]):
        raise CheckpointError(f"the checkpoint has {len(groups) if isinstance(groups, list) else 'no'} optimizer "
                              f"param groups, this optimizer has {len(live['param_groups'])}")
    fixed = []
    for i, (got, want) in enumerate(zip(groups, live["param_groups"])):
        # A scheduler made after the optimizer was saved adds initial_lr; nothing else may differ.
        if not isinstance(got, dict) or not set(want) <= set(got) <= set(want) | {"initial_lr"} \
                or got.get("params") != want["params"]:
            raise CheckpointError(f"optimizer param group {i} does not match this optimizer's "
                                  "(different keys or parameters)")
        for k, v in got.items():
            if k != "params" and k in want and not _same_kind(v, want[k]):
                raise CheckpointError(f"optimizer param group {i}: {quote(k)} is {quote(v)}, this optimizer's is "
                                      f"{quote(want[k])} (a {type(want[k]).__name__})")
        # JSON has no tuples: give back the type the live optimizer uses (Adam's betas).
        fixed.append({k: tuple(v) if isinstance(want[k], tuple) and isinstance(v, list) else v
                      for k, v in got.items()})
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict = {}
    for key, t in tensors.items():
        m = _OPT_KEY.match(key)
        if not m or int(m.group(1)) >= len(params):
            raise CheckpointError(f"{OPTIMIZER}: unexpected key {quote(key)}",
                                  expected=f"state.<index below {len(params)}>.<name>")
        p = params[int(m.group(1))]
        if t.numel() > 1 or t.dim() > 1:  # per-parameter buffers (momentum, exp_avg) must look like it
            if tuple(t.shape) != tuple(p.shape) or t.dtype != p.dtype:
                raise CheckpointError(f"{OPTIMIZER}: {key!r} is {str(t.dtype).replace('torch.', '')} "
                                      f"{list(t.shape)}; its parameter is {str(p.dtype).replace('torch.', '')} "
                                      f"{list(p.shape)}")
        state.setdefault(int(m.group(1)), {})[m.group(2)] = t
    scalars = recorded.get("state")
    if not isinstance(scalars, dict):
        raise CheckpointError(f"{STATE}: optimizer.state is not an object")
    for index, entries in scalars.items():
        if not (isinstance(index, str) and index.isdigit() and int(index) < len(params) and isinstance(entries, dict)):
            raise CheckpointError(f"{STATE}: optimizer state entry {quote(index)} is not a parameter index")
        for name, v in entries.items():
            if not _OPT_KEY.match(f"state.{index}.{name}") or isinstance(v, (dict, list)):
                raise CheckpointError(f"{STATE}: optimizer state {quote(index)}.{quote(name)} is not a plain value")
            state.setdefault(int(index), {})[name] = v
    return {"state": state, "param_groups": fixed}


@dataclass(frozen=True)
class Part:
    """The piece of a whole-model checkpoint that one pipeline stage loads: `keys` are every key of
    the whole model's state dict (the checkpoint must hold exactly these; the stage takes its own),
    `params[j]` is the whole-model index of the stage optimizer's parameter j, and `whole_params`
    the whole model's parameter count (the checkpoint's optimizer must cover exactly these)."""

    keys: tuple
    params: tuple
    whole_params: int


def _take_part(weights: dict, part: Part, live: dict, folder: Path) -> dict:
    missing = sorted(set(part.keys) - set(weights))
    extra = sorted(set(weights) - set(part.keys))
    if missing or extra:
        err = CheckpointError(f"{WEIGHTS} in '{folder}' does not fit this model "
                              f"({len(missing)} missing, {len(extra)} unexpected keys)",
                              expected="the keys of the whole model's state_dict",
                              hint="build the model from the spec the run was started with")
        err.notes = [f"missing: {quote(k)}" for k in missing[:20]] + [f"unexpected: {quote(k)}" for k in extra[:20]]
        raise err
    return {k: weights[k] for k in live if k in weights}


def _part_optimizer(recorded: dict, tensors: dict, part: Part) -> tuple[dict, dict]:
    """The checkpoint's whole-model optimizer state cut to the stage's parameters, renumbered."""
    groups = recorded.get("param_groups")
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict) \
            or groups[0].get("params") != list(range(part.whole_params)):
        raise CheckpointError(f"the checkpoint's optimizer does not hold one parameter group over the whole "
                              f"model's {part.whole_params} parameters")
    local = {str(w): str(j) for j, w in enumerate(part.params)}
    out_tensors = {}
    for key, t in tensors.items():
        m = _OPT_KEY.match(key)
        if m and m.group(1) in local:
            out_tensors[f"state.{local[m.group(1)]}.{m.group(2)}"] = t
    scalars = recorded.get("state")
    if not isinstance(scalars, dict):
        raise CheckpointError(f"{STATE}: optimizer.state is not an object")
    out = {**recorded, "param_groups": [{**groups[0], "params": list(range(len(part.params)))}],
           "state": {local[i]: v for i, v in scalars.items() if i in local}}
    return out, out_tensors


def load_checkpoint(path, model, optimizer=None, scheduler=None, numpy_generator=None,
                    restore_rng_state: bool = True, part: Part | None = None) -> Checkpoint:
    """Restore model, optimizer, scheduler and RNGs from a checkpoint folder (or a run folder: its latest).
    With `part`, `model` and `optimizer` are one pipeline stage's, taking their slice of the
    whole-model checkpoint (see Part).

    Everything is read and checked before anything is changed: on a CheckpointError the model and
    optimizer are as they were."""
    p = Path(path)
    if (p / CHECKPOINTS).is_dir() and not _STEP_DIR.match(p.name):
        found = latest_checkpoint(p)
        if found is None:
            raise CheckpointError(f"run folder '{path}' has no complete checkpoint",
                                  hint="start the run without --resume")
        p = found
    folder = _open_folder(p)
    state = _read_state(folder)
    weights = _load_tensors(_read_file(folder, state, WEIGHTS), WEIGHTS)
    live = model.state_dict()
    if part is not None:
        weights = _take_part(weights, part, live, folder)
    _check_against({k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in live.items()},
                   weights, f"{WEIGHTS} in '{folder}'")
    opt_sd = None
    if optimizer is not None:
        if state.get("optimizer") is None or OPTIMIZER not in state["files"]:
            raise CheckpointError(f"'{folder}' holds no optimizer state", hint="load without an optimizer")
        tensors = _load_tensors(_read_file(folder, state, OPTIMIZER), OPTIMIZER)
        recorded = state["optimizer"]
        if part is not None:
            recorded, tensors = _part_optimizer(recorded, tensors, part)
        opt_sd = _optimizer_state_dict(optimizer, recorded, tensors)
    sched = None
    if scheduler is not None:
        sched = state.get("scheduler")
        if sched is None or sched.get("class") != type(scheduler).__name__ or not isinstance(sched.get("state"), dict):
            raise CheckpointError(f"'{folder}' holds no {type(scheduler).__name__} scheduler state")
        if set(sched["state"]) != set(scheduler.state_dict()):
            raise CheckpointError(f"the checkpoint's scheduler state has keys {sorted(sched['state'])[:20]}, "
                                  f"this scheduler's are {sorted(scheduler.state_dict())[:20]}")
    rng = _check_rng(state.get("rng"))

    model.load_state_dict(weights, strict=True)
    if opt_sd is not None:
        try:
            optimizer.load_state_dict(opt_sd)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"the optimizer refused the checkpoint's state: {quote(str(e))}") from None
    if sched is not None:
        scheduler.load_state_dict(sched["state"])
    if restore_rng_state:
        restore_rng(rng, numpy_generator)
    return Checkpoint(path=folder, step=state["step"], rng=rng, extra=state.get("extra") or {})


def resume(run_dir, model, optimizer=None, scheduler=None, numpy_generator=None,
           part: Part | None = None) -> Checkpoint | None:
    """`--resume RUN_DIR`: load the run's latest complete checkpoint, or None when it has none."""
    found = latest_checkpoint(run_dir)
    if found is None:
        return None
    return load_checkpoint(found, model, optimizer, scheduler, numpy_generator, part=part)


__all__ = ["CHECKPOINTS", "Checkpoint", "CheckpointError", "Part", "capture_rng", "latest_checkpoint", "load_checkpoint", "read_weights_bytes",
           "restore_rng", "resume", "save_checkpoint", "save_state", "step_dir_name", "verify_checkpoint"]
