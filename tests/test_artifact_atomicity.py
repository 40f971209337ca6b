"""Writing artifact folders: whole-folder swaps, the lock, planted symlinks and foreign folders.

The kill test runs real `nnspec compile` processes and SIGKILLs them at random moments (seeded), then
requires the folder to be wholly the previous artifact or wholly the new one.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnspec.runtime.cli import main

SPEC = str(Path(__file__).parent / "specs_rt" / "mini_conv.yaml")
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TRIES = 20


def _cmd(out, seed: int, target: str = "onnx") -> list:
    return [sys.executable, "-m", "nnspec.runtime.cli", "compile", SPEC, "--target", target, "-o", str(out),
            "--seed", str(seed)]


def _whole(folder: Path) -> int:
    """The seed of the artifact in `folder`, after checking it is complete and consistent."""
    man = json.loads((folder / "manifest.json").read_text())
    assert sorted(os.listdir(folder)) == sorted(["manifest.json", *man["files"]]), os.listdir(folder)
    for name, sha in man["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha, name
    return man["weights"]["seed"]


def _temps(parent: Path, name: str = "art") -> list:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.nnspec-tmp-")]


def _forked_compile(out, seed: int) -> int:
    """Start `nnspec compile` in a forked child (this process has already imported nnspec, torch and
    onnx, so the child's time is the compile itself); returns the child's pid."""
    pid = os.fork()
    if pid == 0:  # the child: a real nnspec compile process, killed or left to finish
        try:
            code = main(["compile", SPEC, "--target", "onnx", "-o", str(out), "--seed", str(seed)])
        except BaseException:
            code = 99
        os._exit(code)
    return pid


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_sigkill_at_random_moments_leaves_old_or_new(tmp_path):
    import onnx  # noqa: F401  (imported before forking, like everything the compile uses)
    import torch  # noqa: F401

    out = tmp_path / "art"
    took = []
    for seed in (0, 1):  # the first artifact, and how long one compile takes (the faster run: this
        t0 = time.monotonic()  # machine may be busy with other work)
        assert _wait(_forked_compile(out, seed)) == 0
        took.append(time.monotonic() - t0)
    assert _whole(out) == 1
    typical = min(took)
    rng = random.Random(0)
    cur, killed, finished = 1, 0, 0
    for _ in range(TRIES):
        new = 1 - cur  # alternate, so the old and the new artifact always differ
        pid = _forked_compile(out, new)
        time.sleep(rng.uniform(0, typical))
        os.kill(pid, signal.SIGKILL)  # no-op when it has finished (it is a zombie until waited for)
        rc = _wait(pid)
        if rc == 0:
            finished += 1
        else:
            assert rc == -signal.SIGKILL, rc
            killed += 1
        got = _whole(out)
        assert got in (cur, new)
        if rc == 0:
            assert got == new and not _temps(tmp_path)  # a finished compile removed every leftover
        cur = got
    assert killed >= TRIES // 4, (killed, finished)  # the test really interrupted compiles


def test_concurrent_compiles_one_wins_or_serial(tmp_path):
    out = tmp_path / "art"
    procs = [subprocess.Popen(_cmd(out, s), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in (3, 4)]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 1]), results
    for rc, err in results:
        if rc:
            assert "another nnspec is writing" in err and "internal error" not in err and "Traceback" not in err
    assert _whole(out) in (3, 4)


def test_held_lock_is_a_clean_error(tmp_path, capsys):
    from nnspec.targets.files import staged_folder

    out = tmp_path / "art"
    assert main(["compile", SPEC, "--target", "torch", "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt), staged_folder(out):  # another writer holds the lock meanwhile
        assert main(["compile", SPEC, "--target", "torch", "-o", str(out), "--seed", "5"]) == 1
        raise KeyboardInterrupt  # that writer is interrupted: nothing of it is swapped in
    err = capsys.readouterr().err
    assert f"another nnspec is writing {out}" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and _temps(tmp_path) == []


def _victim(path: Path, text: str = "precious\n") -> Path:
    path.write_text(text)
    return path


def test_planted_symlinks_are_not_followed(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["compile", SPEC, "--target", "onnx", "-o", str(out)]) == 0
    weights = tmp_path / "w.safetensors"
    weights.write_bytes((out / "weights.safetensors").read_bytes())
    victims = {name: _victim(tmp_path / f"victim{i}") for i, name in enumerate(
        [".weights.safetensors.tmp", "model.py", "weights.safetensors", "model.onnx", ".model.onnx.data.tmp"])}
    for name, v in victims.items():
        target = out / name
        if target.exists():
            target.unlink()
        target.symlink_to(v)
    # the torch target with --weights used the fixed `.weights.safetensors.tmp` + copyfile
    assert main(["compile", SPEC, "--target", "torch", "-o", str(out), "--weights", str(weights)]) == 0
    assert all(v.read_text() == "precious\n" for v in victims.values())
    assert _whole(out) is None and not any(p.is_symlink() for p in out.iterdir())
    # deploy used a fixed `.model.onnx.data.tmp` in the version folder
    onnx_art, repo = tmp_path / "onnx", tmp_path / "repo"
    assert main(["compile", SPEC, "--target", "onnx", "-o", str(onnx_art)]) == 0
    assert main(["deploy", str(onnx_art), "--triton", str(repo)]) == 0
    version = repo / "mini_conv" / "1"
    for name in (".model.onnx.data.tmp", "model.onnx.data", "model.onnx"):
        (version / name).unlink(missing_ok=True)
        (version / name).symlink_to(victims[".model.onnx.data.tmp"])
    (repo / "mini_conv" / "config.pbtxt").unlink()
    (repo / "mini_conv" / "config.pbtxt").symlink_to(victims["model.py"])
    assert main(["deploy", str(onnx_art), "--triton", str(repo), "--force"]) == 0
    assert all(v.read_text() == "precious\n" for v in victims.values())
    assert (version / "model.onnx").read_bytes() == (onnx_art / "model.onnx").read_bytes()
    assert not (version / "model.onnx").is_symlink() and not (version / ".model.onnx.data.tmp").exists()


def test_deploy_copies_external_weights_without_following_links(tmp_path, capsys):
    from nnspec.targets.onnx.runner import ort_session

    art, repo = tmp_path / "art", tmp_path / "repo"
    assert main(["compile", SPEC, "--target", "onnx", "-o", str(art)]) == 0
    (repo / "mini_conv" / "1").mkdir(parents=True)
    victim = _victim(tmp_path / "victim")
    (repo / "mini_conv" / "1" / ".weights.safetensors.tmp").symlink_to(victim)
    (repo / "mini_conv" / "1" / "weights.safetensors").symlink_to(victim)
    assert main(["deploy", str(art), "--triton", str(repo), "--force"]) == 0
    assert victim.read_text() == "precious\n"
    data = repo / "mini_conv" / "1" / "weights.safetensors"
    assert not data.is_symlink() and data.read_bytes() == (art / "weights.safetensors").read_bytes()
    ort_session(repo / "mini_conv" / "1" / "model.onnx")  # the deployed model finds its weights


def test_foreign_folder_is_refused_and_untouched(tmp_path, capsys):
    user = tmp_path / "project"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    (user / "manifest.json").write_text('{"name": "my web app"}')  # a manifest.json nnspec did not write
    link = tmp_path / "link"
    link.symlink_to(user)
    for out in (user, link):
        assert main(["compile", SPEC, "--target", "torch", "-o", str(out)]) == 1
        assert "refusing to replace" in capsys.readouterr().err
    assert sorted(os.listdir(user)) == ["manifest.json", "notes.txt"] and (user / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    assert main(["compile", SPEC, "--target", "torch", "-o", str(tmp_path / "afile")]) == 1
    assert "is not a folder" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "x"


def test_current_folder_is_not_swapped_away(tmp_path, monkeypatch, capsys):
    out = tmp_path / "art"
    assert main(["compile", SPEC, "--target", "torch", "-o", str(out)]) == 0
    monkeypatch.chdir(out)
    assert main(["compile", SPEC, "--target", "torch", "-o", ".", "--seed", "2"]) == 1
    assert "is or holds the current folder" in capsys.readouterr().err and _whole(out) == 0


def test_symlinked_output_replaces_the_folder_it_names(tmp_path):
    real = tmp_path / "real"
    link = tmp_path / "link"
    assert main(["compile", SPEC, "--target", "torch", "-o", str(real)]) == 0
    link.symlink_to(real)
    assert main(["compile", SPEC, "--target", "torch", "-o", str(link), "--seed", "7"]) == 0
    assert link.is_symlink() and _whole(real) == 7


def test_leftovers_are_removed_by_the_next_compile(tmp_path):
    out = tmp_path / "art"
    junk = tmp_path / ".art.nnspec-tmp-abc123"
    (junk / "sub").mkdir(parents=True)
    (junk / "model.onnx").write_text("half")
    keep = tmp_path / "keep"
    keep.mkdir()
    _victim(keep / "file")
    (tmp_path / ".art.nnspec-tmp-zz9").symlink_to(keep)  # a link in a leftover's place: unlinked, not followed
    (tmp_path / ".other.nnspec-tmp-abc").mkdir()  # another folder's temp: not ours to remove
    assert main(["compile", SPEC, "--target", "torch", "-o", str(out)]) == 0
    assert _temps(tmp_path) == [] and (keep / "file").read_text() == "precious\n"
    assert (tmp_path / ".other.nnspec-tmp-abc").is_dir()


def test_failed_swap_keeps_the_old_artifact(tmp_path, monkeypatch, capsys):
    import nnspec.targets.files as files

    out = tmp_path / "art"
    assert main(["compile", SPEC, "--target", "torch", "-o", str(out)]) == 0

    def broken(new, dest):
        raise OSError(5, "Input/output error", str(dest))

    monkeypatch.setattr(files, "_swap_in", broken)
    assert main(["compile", SPEC, "--target", "torch", "-o", str(out), "--seed", "3"]) == 1
    assert _whole(out) == 0 and _temps(tmp_path) == []
    monkeypatch.undo()
    # without renameat2 (other kernels, other systems): rename the old folder away, the new one in
    monkeypatch.setattr(files, "_renameat2", lambda: None)
    assert main(["compile", SPEC, "--target", "torch", "-o", str(out), "--seed", "4"]) == 0
    assert _whole(out) == 4 and _temps(tmp_path) == []


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "a\\b", "a\0b", "", "x\ny"])
def test_plain_names(tmp_path, name):
    from nnspec.targets.files import ArtifactError, inside

    with pytest.raises(ArtifactError):
        inside(tmp_path, name)


def test_inside_refuses_links_out_of_the_folder(tmp_path):
    from nnspec.targets.files import ArtifactError, inside

    (tmp_path / "root").mkdir()
    (tmp_path / "outside").write_text("x")
    (tmp_path / "root" / "model.onnx").symlink_to(tmp_path / "outside")
    with pytest.raises(ArtifactError, match="outside the folder"):
        inside(tmp_path / "root", "model.onnx")
    assert inside(tmp_path / "root", "weights.safetensors") == (tmp_path / "root" / "weights.safetensors").resolve()
