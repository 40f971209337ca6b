"""Weights files: read without pickle and checked against the spec before any target uses them.

A weights file is safetensors keyed by state-dict names (`node_id.param`, as the generated torch
module names them). `expected_state` derives those keys with their shapes and dtypes from the IR
alone (no torch import), so `nnspec compile --weights` checks a file for every target before it
writes anything, and `check_weights` reports every mismatch in one error instead of the first
(or, for a byte-copied file, none until `nnspec run`). Parameters tied to another (`tie:`/`share:`)
may be left out of a file: torch's state_dict lists them, the ONNX target reads the owner.
"""
from __future__ import annotations

from pathlib import Path

from nnspec.compiler.errors import LoweringError, quote

MAX_LINES = 50  # mismatches listed in one error
MAX_HEADER = 100 << 20  # bytes of safetensors JSON header accepted (safetensors' own limit)
EXPECTED = "a .safetensors file keyed by state-dict names (node id + '.' + parameter)"


def expected_state(program) -> dict:
    """{state-dict key: (shape tuple, dtype str)} of every parameter and buffer, tied ones included."""
    return {f"{node.id}.{name}": (tuple(spec.shape), spec.dtype)
            for node in program.all_nodes() for name, spec in node.params.items()}


def tied_state(program) -> dict:
    """{state-dict key: owner's key} of the parameters that share another's storage (optional in a file)."""
    return {f"{node.id}.{name}": node.ties[name]
            for node in program.all_nodes() for name in node.params if name in node.ties}


def _dtype(arr) -> str:
    return str(arr.dtype).replace("torch.", "")  # numpy arrays, or torch tensors (state_dict values)


def check_state(expected: dict, arrays: dict, tied: dict | None = None, source: str = "weights") -> None:
    """Raise one LoweringError listing every difference between `arrays` and `expected`.

    `tied`: {key: owner key} of keys that may be missing; when present they must look like their
    owner and hold the same values (torch and ONNX would otherwise run different weights)."""
    import numpy as np

    tied = tied or {}
    problems = []
    for key, (shape, dtype) in expected.items():
        if key not in arrays:
            if key not in tied:
                problems.append(f"missing {key!r}: expected {dtype} {list(shape)}")
            continue
        if key in tied and tied[key] in expected:
            shape, dtype = expected[tied[key]]  # a tied parameter must look like its owner
        arr = arrays[key]
        got = tuple(getattr(arr, "shape", ()))
        if got != tuple(shape):
            problems.append(f"{key!r} has shape {list(got)}; expected shape {list(shape)}")
        if _dtype(arr) != dtype:
            problems.append(f"{key!r} has dtype {_dtype(arr)}; expected {dtype}")
    for key in arrays:
        if key not in expected:
            problems.append(f"unexpected {quote(key)}: the spec has no such parameter or buffer")
    for key, owner in tied.items():
        a, b = arrays.get(key), arrays.get(owner)
        if a is not None and b is not None and getattr(a, "shape", None) == getattr(b, "shape", None) \
                and not np.array_equal(np.asarray(a), np.asarray(b)):
            problems.append(f"{key!r} is tied to {owner!r} but holds different values")
    if problems:
        raise _mismatch(source, problems)


def _mismatch(source: str, problems: list) -> LoweringError:
    n = len(problems)
    lines = problems[:MAX_LINES] + ([f"... and {n - MAX_LINES} more"] if n > MAX_LINES else [])
    e = LoweringError(f"{source} do not match the spec ({n} problem{'s' if n != 1 else ''})",
                      expected=EXPECTED + ", with the shapes and dtypes of the spec's parameters")
    e.notes = lines  # rendered one per line, escaped, under the message
    return e


def check_weights(program, arrays: dict, source: str = "weights") -> None:
    """Check {state-dict key: array} against the program's parameters (LoweringError listing all)."""
    check_state(expected_state(program), arrays, tied_state(program), source)


def complete_tied(program, arrays: dict) -> dict:
    """`arrays` with every tied key present (the owner's array), as torch's strict load_state_dict wants."""
    out = dict(arrays)
    for key, owner in tied_state(program).items():
        if key not in out and owner in out:
            out[key] = out[owner]
    return out


def load_weights(path, what: str = "weights file") -> dict:
    """{state-dict key: numpy array} from a safetensors file; every failure is a LoweringError.

    safetensors never unpickles, and refuses a header that claims more data than the file holds; the
    length check first gives pickles, torch.save zips and truncated files a message of their own."""
    p = Path(path)
    if not p.is_file():
        raise LoweringError(f"{what} '{path}' does not exist", expected="a .safetensors file")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise LoweringError(f"cannot read {what} '{path}': {e.strerror or e}", expected=EXPECTED) from None
    n = int.from_bytes(head, "little") if len(head) == 8 else None
    if n is None or n > size - 8 or n > MAX_HEADER:
        raise LoweringError(f"cannot read {what} '{path}': it is not a safetensors file (its first 8 bytes do not "
                            f"give a header length that fits its {size} bytes; a pickle or torch.save file, or truncated)",
                            expected=EXPECTED)
    from safetensors.numpy import load_file

    try:
        return load_file(str(p))
    except Exception as e:  # SafetensorError, dtypes numpy lacks (bf16), bad JSON: all the file's fault
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LoweringError(f"cannot read {what} '{path}': {first}", expected=EXPECTED) from None


def save_weights(arrays: dict) -> bytes:
    """safetensors bytes of {key: array}, keys sorted (deterministic), no pickle."""
    import numpy as np
    from safetensors.numpy import save

    # np.asarray(order="C"), not ascontiguousarray: that one turns 0-d arrays (num_batches_tracked) into 1-d
    return save({k: np.asarray(v, order="C") for k, v in sorted(arrays.items())}, metadata={"format": "nnspec"})
