"""Reading artifacts and weights that may come from anyone: `nnspec run`, `deploy` and `compile --weights`
refuse edited manifests, unlisted or modified files, unsafe names, wrong inputs and bad weights files
with a clear error (exit 1), never by running something or with an internal error."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nnspec.compiler as c
from nnspec.runtime.cli import main

SPECS = Path(__file__).parent / "specs_rt"
SPEC = str(SPECS / "mini_conv.yaml")


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """Pristine onnx and torch artifacts of mini_conv, compiled once; tests edit copies."""
    root = tmp_path_factory.mktemp("arts")
    for target in ("onnx", "torch"):
        assert main(["compile", SPEC, "--target", target, "-o", str(root / target)]) == 0
    return root


def _copy(arts, target, tmp_path) -> Path:
    dst = tmp_path / target
    shutil.copytree(arts / target, dst)
    return dst


def _edit(folder: Path, fn) -> None:
    man = json.loads((folder / "manifest.json").read_text())
    fn(man)
    (folder / "manifest.json").write_text(json.dumps(man))


def _rehash(folder: Path, name: str) -> None:
    sha = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    _edit(folder, lambda m: m["files"].__setitem__(name, sha))


def _x(tmp_path, shape=(2, 3, 16, 16), dtype=np.float32, name="image") -> str:
    path = tmp_path / f"x_{len(list(tmp_path.iterdir()))}.npy"
    np.save(path, np.zeros(shape, dtype))
    return f"{name}={path}"


def _run(folder, capsys, *inputs) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["run", str(folder), *[a for i in inputs for a in ("--input", i)]])
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    return rc, err


# -- run: code and files the manifest does not vouch for are never loaded ----------------------------
def _evil(path: Path, marker: Path) -> None:
    path.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")


def test_torch_file_outside_the_folder_is_not_run(arts, tmp_path, capsys):
    art = _copy(arts, "torch", tmp_path)
    marker = tmp_path / "MARKER"
    _evil(tmp_path / "evil.py", marker)
    _edit(art, lambda m: m["torch"].__setitem__("file", "../evil.py"))
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and "torch.file" in err and "'../evil.py'" in err and not marker.exists()
    # a plain name inside the folder that the manifest's files do not list is refused too
    _evil(art / "evil.py", marker)
    _edit(art, lambda m: m["torch"].__setitem__("file", "evil.py"))
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and "not listed in files" in err and not marker.exists()


def test_modified_model_py_is_not_run(arts, tmp_path, capsys):
    art = _copy(arts, "torch", tmp_path)
    marker = tmp_path / "MARKER"
    with open(art / "model.py", "a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and not marker.exists()
    assert "model.py does not match the sha256 recorded in manifest.json; the artifact was modified or is corrupt" in err


@pytest.mark.parametrize("cls", ["os.system", "__import__", "Module", "nn"])
def test_torch_class_must_be_a_module_class(arts, tmp_path, capsys, cls):
    art = _copy(arts, "torch", tmp_path)
    _edit(art, lambda m: m["torch"].__setitem__("class", cls))
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and ("torch.class" in err or "no nn.Module class" in err)


def test_corrupt_model_onnx(arts, tmp_path, capsys):
    art = _copy(arts, "onnx", tmp_path)
    data = bytearray((art / "model.onnx").read_bytes())
    (art / "model.onnx").write_bytes(bytes(data[: len(data) // 2]))
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and "model.onnx does not match the sha256 recorded in manifest.json" in err
    _rehash(art, "model.onnx")  # the manifest edited to match: onnx/onnxruntime must still fail cleanly
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and "model.onnx" in err and ("not a readable ONNX model" in err or "cannot load" in err)
    (art / "model.onnx").write_bytes(b"\x08\x07" + b"\xff" * 64)
    _rehash(art, "model.onnx")
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and "model.onnx" in err


def test_unlisted_and_missing_files(arts, tmp_path, capsys):
    art = _copy(arts, "onnx", tmp_path)
    _edit(art, lambda m: m["files"].pop("model.onnx"))
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and "has no model.onnx" in err
    art = _copy(arts, "torch", tmp_path / "t")
    (art / "model.py").unlink()
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and "has no model.py" in err


def test_files_linking_out_of_the_folder(arts, tmp_path, capsys):
    art = _copy(arts, "onnx", tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(art / "model.onnx", outside)
    (art / "model.onnx").symlink_to(outside)
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and "outside the folder" in err


@pytest.mark.parametrize("target", ["onnx", "torch"])
def test_wrong_inputs_name_the_input_and_what_was_expected(arts, tmp_path, capsys, target):
    art = arts / target
    want = "float32 [N, 3, 16, 16]"
    cases = [
        (_x(tmp_path, name="img"), "missing input(s) image"),
        (_x(tmp_path, shape=(2, 3, 15, 16)), "input 'image' has size 15 on axis 2"),
        (_x(tmp_path, dtype=np.float64), "input 'image' has dtype float64"),
        (_x(tmp_path, shape=(3, 16, 16)), "input 'image' has rank 3"),
        (_x(tmp_path, shape=(17, 3, 16, 16)), "input 'image' has N=17"),
    ]
    for arg, says in cases:
        rc, err = _run(art, capsys, arg)
        assert rc == 1 and says in err and want in err, err
    rc, err = _run(art, capsys, _x(tmp_path), _x(tmp_path, name="extra"))
    assert rc == 1 and "unknown input(s) 'extra'" in err
    assert _run(art, capsys, _x(tmp_path))[0] == 0


@pytest.mark.parametrize("text,says", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ("[" * 100000 + "]" * 100000, "manifest.json"),
    ("\xff\xfe", "manifest.json"),
])
def test_manifest_that_is_not_json(arts, tmp_path, capsys, text, says):
    art = _copy(arts, "onnx", tmp_path)
    (art / "manifest.json").write_bytes(text.encode("latin-1"))
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and says in err
    rc2 = main(["deploy", str(art), "--triton", str(tmp_path / "repo")])
    assert rc2 == 1 and not (tmp_path / "repo").exists()


@pytest.mark.parametrize("edit,field", [
    (lambda m: m.pop("files"), "files"),
    (lambda m: m.__setitem__("inputs", "image"), "inputs"),
    (lambda m: m["inputs"][0].__setitem__("shape", ["N", 3, "16", True]), "inputs[0].shape[2]"),
    (lambda m: m["inputs"][0].__setitem__("dtype", "object"), "inputs[0].dtype"),
    (lambda m: m["inputs"][0]["dims"]["N"].__setitem__("max", "16"), "inputs[0].dims.N.max"),
    (lambda m: m["outputs"][0].__setitem__("name", "a b"), "outputs[0].name"),
    (lambda m: m.__setitem__("target", "../x"), "target"),
    (lambda m: m["files"].__setitem__("../model.onnx", "0" * 64), "files"),
])
def test_wrongly_typed_manifest_fields_are_named(arts, tmp_path, capsys, edit, field):
    art = _copy(arts, "onnx", tmp_path)
    _edit(art, edit)
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and f"field '{field}" in err, err


def test_manifest_inputs_must_match_the_model(arts, tmp_path, capsys):
    art = _copy(arts, "onnx", tmp_path)
    _edit(art, lambda m: m["inputs"][0].__setitem__("name", "pixels"))
    rc, err = _run(art, capsys, _x(tmp_path, name="pixels"))
    assert rc == 1 and "manifest.json lists (pixels)" in err


def test_external_weights_are_loaded_only_when_they_match(tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["compile", SPEC, "--target", "onnx", "-o", str(art)]) == 0
    assert _run(art, capsys, _x(tmp_path))[0] == 0
    (art / "weights.safetensors").write_bytes(b"\0" * (art / "weights.safetensors").stat().st_size)
    rc, err = _run(art, capsys, _x(tmp_path))
    assert rc == 1 and "weights.safetensors does not match the sha256" in err


# -- deploy ---------------------------------------------------------------------------------------------
def _tree(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("how", ["--name", "spec"])
def test_deploy_name_cannot_leave_the_repository(arts, tmp_path, capsys, how):
    art = _copy(arts, "onnx", tmp_path / "a" / "b")
    repo = tmp_path / "a" / "b" / "repo"
    before = _tree(tmp_path)
    if how == "--name":
        rc = main(["deploy", str(art), "--triton", str(repo), "--name", "../../x"])
    else:
        _edit(art, lambda m: m.__setitem__("spec", "../../x"))
        before = _tree(tmp_path)
        rc = main(["deploy", str(art), "--triton", str(repo)])
    err = capsys.readouterr().err
    assert rc == 1 and "model name '../../x' cannot be used" in err
    assert _tree(tmp_path) == before  # nothing written anywhere, the repository not even created


@pytest.mark.parametrize("bad", ['feat"\nbackend: "python', "feat\\", "fe at", "..", "feat\n"])
def test_deploy_refuses_unsafe_tensor_names(arts, tmp_path, capsys, bad):
    from nnspec.runtime.deploy import triton_config

    art = _copy(arts, "onnx", tmp_path)
    _edit(art, lambda m: m["outputs"][0].__setitem__("name", bad))
    assert main(["deploy", str(art), "--triton", str(tmp_path / "repo")]) == 1
    assert "outputs[0].name" in capsys.readouterr().err and not (tmp_path / "repo" / "mini_conv").exists()
    with pytest.raises(c.NnspecError, match="output name"):  # the config writer checks names itself too
        triton_config("m", "onnxruntime_onnx", [{"name": "x", "shape": [1], "dtype": "float32"}],
                      [{"name": bad, "shape": [1], "dtype": "float32"}])


def test_pbtxt_strings_are_escaped():
    from nnspec.runtime.deploy import pbtxt_string

    assert pbtxt_string('a"b\\c\nd\x00é') == '"a\\"b\\\\c\\012d\\000\\303\\251"'
    assert "\n" not in pbtxt_string("x\ny") and pbtxt_string("plain_name") == '"plain_name"'


def test_deploy_twice_needs_force_and_replaces_the_whole_folder(arts, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["deploy", str(arts / "onnx"), "--triton", str(repo)]) == 0
    stale = repo / "mini_conv" / "2"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"old model")
    capsys.readouterr()
    assert main(["deploy", str(arts / "onnx"), "--triton", str(repo)]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err and stale.is_dir()
    assert main(["deploy", str(arts / "onnx"), "--triton", str(repo), "--force"]) == 0
    assert sorted(_tree(repo / "mini_conv")) == ["1", "1/model.onnx", "1/weights.safetensors", "config.pbtxt"]
    assert (repo / "mini_conv" / "1" / "model.onnx").read_bytes() == (arts / "onnx" / "model.onnx").read_bytes()
    assert not [p for p in repo.iterdir() if p.name.startswith(".mini_conv.nnspec-tmp-")]


def test_deploy_copies_only_verified_models(arts, tmp_path, capsys):
    art = _copy(arts, "onnx", tmp_path)
    with open(art / "model.onnx", "ab") as f:
        f.write(b"tail")
    assert main(["deploy", str(art), "--triton", str(tmp_path / "repo")]) == 1
    assert "model.onnx does not match the sha256" in capsys.readouterr().err
    assert not (tmp_path / "repo" / "mini_conv").exists()


# -- weights ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_weights(arts):
    from safetensors.numpy import load_file

    return load_file(str(arts / "onnx" / "weights.safetensors"))


def _save(path: Path, arrays: dict) -> str:
    from safetensors.numpy import save_file

    save_file(arrays, str(path))
    return str(path)


def _compile(target, weights, out) -> list:
    return ["compile", SPEC, "--target", target, "-o", str(out), "--weights", str(weights)]


TARGETS = ["torch", "onnx"]


@pytest.mark.parametrize("target", TARGETS)
def test_weights_that_are_not_safetensors(tmp_path, capsys, target, good_weights):
    import torch

    files = {"pickle": pickle.dumps({"stem.weight": np.zeros(3)}), "empty": b"", "text": b"hello world, not weights"}
    torch.save({k: torch.from_numpy(v) for k, v in good_weights.items()}, tmp_path / "torch.pt")
    files["torch.save"] = (tmp_path / "torch.pt").read_bytes()
    whole = Path(_save(tmp_path / "whole.safetensors", good_weights)).read_bytes()
    files["truncated"] = whole[: len(whole) - 100]
    files["header only"] = whole[:60]
    for what, data in files.items():
        path = tmp_path / f"{what}.bin"
        path.write_bytes(data)
        capsys.readouterr()
        assert main(_compile(target, path, tmp_path / "out")) == 1, what
        err = capsys.readouterr().err
        assert "cannot read weights file" in err and "internal error" not in err, (what, err)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", TARGETS)
def test_every_weights_mismatch_is_listed(tmp_path, capsys, target, good_weights):
    bad = dict(good_weights)
    del bad["stem.bias"]
    bad["layer1.0.c1.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    bad["layer1.1.c1.bias"] = bad["layer1.1.c1.bias"].astype(np.float64)
    bad["extra.weight"] = np.zeros(2, np.float32)
    path = _save(tmp_path / "bad.safetensors", bad)
    assert main(_compile(target, path, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "do not match the spec (4 problems)" in err
    assert "missing 'stem.bias': expected float32 [8]" in err
    assert "'layer1.0.c1.weight' has shape [8, 8, 1, 1]; expected shape [8, 8, 3, 3]" in err
    assert "'layer1.1.c1.bias' has dtype float64; expected float32" in err
    assert "unexpected 'extra.weight'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", TARGETS)
def test_single_mismatches(tmp_path, capsys, target, good_weights):
    cases = {
        "float64": {k: v.astype(np.float64) if k == "stem.weight" else v for k, v in good_weights.items()},
        "extra": {**good_weights, "head.weight": np.zeros(3, np.float32)},
        "missing": {k: v for k, v in good_weights.items() if k != "layer1.1.c1.weight"},
    }
    for what, arrays in cases.items():
        path = _save(tmp_path / f"{what}.safetensors", arrays)
        capsys.readouterr()
        assert main(_compile(target, path, tmp_path / "out")) == 1, what
        assert "do not match the spec (1 problem)" in capsys.readouterr().err, what


def test_good_weights_reach_the_torch_artifact_and_run(tmp_path, capsys, good_weights):
    from nnspec.targets.torch.build import build_module

    module = build_module(c.load(SPEC), seed=5)
    arrays = {k: v.numpy() for k, v in module.state_dict().items()}
    path = _save(tmp_path / "w.safetensors", arrays)
    out = tmp_path / "t"
    assert main(_compile("torch", path, out)) == 0
    assert (out / "weights.safetensors").is_file()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", f"image={tmp_path / 'x.npy'}", "-o", str(tmp_path / "o.npz")]) == 0
    import torch
    with torch.no_grad():
        want = module.eval()(torch.from_numpy(x)).numpy()
    assert np.array_equal(np.load(tmp_path / "o.npz")["feat"], want)
    # a weights file swapped after compile (manifest edited to match) is still checked by `run`
    _save(out / "weights.safetensors", {**arrays, "stem.weight": np.zeros((8, 3, 1, 1), np.float32)})
    _rehash(out, "weights.safetensors")
    capsys.readouterr()
    assert main(["run", str(out), "--input", f"image={tmp_path / 'x.npy'}"]) == 1
    assert "'stem.weight' has shape [8, 3, 1, 1]; expected shape [8, 3, 3, 3]" in capsys.readouterr().err


TIED = """
nnspec: 1
name: tied
dims: {N: {min: 1, opt: 2, max: 4}}
inputs: {ids: {shape: [N, 5], dtype: int64, range: [0, 10]}}
nodes:
  emb: {op: embedding, num: 10, dim: 6}
  head: {op: linear, out: 10, bias: false, tie: {weight: emb.weight}}
outputs: {logits: head}
"""


def test_tied_weights_are_optional_but_must_agree(tmp_path, capsys):
    spec = tmp_path / "tied.yaml"
    spec.write_text(textwrap.dedent(TIED))
    emb = np.random.default_rng(1).standard_normal((10, 6)).astype(np.float32)
    only_owner = _save(tmp_path / "a.safetensors", {"emb.weight": emb})
    for target in TARGETS:
        assert main(["compile", str(spec), "--target", target, "-o", str(tmp_path / target), "--weights", only_owner]) == 0
    from safetensors.numpy import load_file
    written = load_file(str(tmp_path / "torch" / "weights.safetensors"))
    assert sorted(written) == ["emb.weight", "head.weight"] and np.array_equal(written["head.weight"], emb)
    np.save(tmp_path / "ids.npy", np.arange(10).reshape(2, 5))
    outs = []
    for target in TARGETS:
        assert main(["run", str(tmp_path / target), "--input", f"ids={tmp_path / 'ids.npy'}",
                     "-o", str(tmp_path / f"{target}.npz")]) == 0
        outs.append(np.load(tmp_path / f"{target}.npz")["logits"])
    assert np.max(np.abs(outs[0] - outs[1])) < 1e-5
    differ = _save(tmp_path / "b.safetensors", {"emb.weight": emb, "head.weight": emb + 1})
    wrong = _save(tmp_path / "c.safetensors", {"emb.weight": emb, "head.weight": emb[:, :3].copy()})
    capsys.readouterr()
    for path, says in ((differ, "'head.weight' is tied to 'emb.weight' but holds different values"),
                       (wrong, "'head.weight' has shape [10, 3]; expected shape [10, 6]")):
        assert main(["compile", str(spec), "--target", "onnx", "-o", str(tmp_path / "x"), "--weights", path]) == 1
        assert says in capsys.readouterr().err


def test_mismatch_list_is_capped():
    from nnspec.compiler.errors import LoweringError
    from nnspec.targets.weights import check_weights, expected_state

    p = c.load(SPEC)
    arrays = {f"junk{i}": np.zeros(1, np.float32) for i in range(70)}
    with pytest.raises(LoweringError) as e:
        check_weights(p, arrays)
    text = e.value.render()
    n = 70 + len(expected_state(p))  # every junk key, and every parameter of the spec missing
    assert f"({n} problems)" in text and f"... and {n - 50} more" in text
    assert len([line for line in text.splitlines() if "unexpected" in line or "missing" in line]) == 50


def test_engine_file_must_be_plain_listed_and_verified(tmp_path, monkeypatch):
    import nnspec.targets.tensorrt.engine as engine
    from nnspec.targets.files import ArtifactError

    (tmp_path / "model.engine").write_bytes(b"engine bytes")
    man = {"tensorrt": {"backend": "trt-rtx", "engine": "../model.engine"}, "files": {}}
    with pytest.raises(ArtifactError, match="tensorrt.engine"):
        engine.load_engine(tmp_path, man)
    monkeypatch.setattr(engine, "check_compatible", lambda m, d, p=None: "trt-rtx")
    man["tensorrt"]["engine"] = "model.engine"
    with pytest.raises(ArtifactError, match="not listed"):
        engine.load_engine(tmp_path, man)
    man["files"] = {"model.engine": "0" * 64}
    with pytest.raises(ArtifactError, match="model.engine does not match the sha256"):
        engine.load_engine(tmp_path, man)


@pytest.mark.parametrize("target", ["torch", "onnx"])
def test_integer_inputs_outside_their_range_are_refused(tmp_path, capsys, target):
    spec = tmp_path / "emb.yaml"
    spec.write_text("nnspec: 1\nname: emb\ndims: {N: {min: 1, opt: 2, max: 4}}\n"
                    "inputs: {ids: {shape: [N, 5], dtype: int64, range: [0, 16]}}\n"
                    "nodes: {e: {op: embedding, num: 16, dim: 4}}\noutputs: {y: e}\n")
    art = tmp_path / "art"
    assert main(["compile", str(spec), "--target", target, "-o", str(art)]) == 0
    for values, ok in ((np.arange(10).reshape(2, 5), True), (np.full((2, 5), 16), False), (np.full((2, 5), -1), False)):
        np.save(tmp_path / "ids.npy", values.astype(np.int64))
        capsys.readouterr()
        rc = main(["run", str(art), "--input", f"ids={tmp_path / 'ids.npy'}"])
        err = capsys.readouterr().err
        if ok:
            assert rc == 0, err
        else:
            assert rc == 1 and "input 'ids' holds values from" in err and "values in [0, 16)" in err, err
            assert "internal error" not in err
