"""`nnspec import-weights`: a reference's weights renamed by the spec's `reference.keys` map, checked,
and usable by every target — torchvision's resnet18 and AlexNet through ONNX equal torchvision."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from nnspec.runtime.cli import main
from nnspec.runtime.import_weights import rename


def _save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.mark.parametrize("spec,preset,ctor,size", [("resnet", "resnet18", torchvision.models.resnet18, 64),
                                                   ("alexnet", "torchvision", torchvision.models.alexnet, 224)])
def test_torchvision_weights_through_onnx_equal_torchvision(tmp_path, capsys, spec, preset, ctor, size):
    import onnxruntime as ort
    torch.manual_seed(0)
    ref = ctor().eval()
    _save(ref, tmp_path / "theirs.safetensors")
    assert main(["import-weights", spec, "-p", preset, "--set", f"image_size={size}", "--from",
                 str(tmp_path / "theirs.safetensors"), "-o", str(tmp_path / "ours.safetensors")]) == 0
    assert "tensors" in capsys.readouterr().out
    out = tmp_path / "art"
    assert main(["compile", spec, "-p", preset, "--set", f"image_size={size}", "--target", "onnx", "-o", str(out),
                 "--weights", str(tmp_path / "ours.safetensors")]) == 0
    x = torch.randn(2, 3, size, size)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        want = ref(x).numpy()
    assert np.max(np.abs(got - want)) < 1e-4
    # the same in one command: compile renames their file itself
    once = tmp_path / "once"
    assert main(["compile", spec, "-p", preset, "--set", f"image_size={size}", "--target", "onnx", "-o", str(once),
                 "--weights", str(tmp_path / "theirs.safetensors"), "--reference-keys"]) == 0
    for name in ("model.onnx", "weights.safetensors"):
        assert (once / name).read_bytes() == (out / name).read_bytes(), name


def test_reference_keys_needs_a_weights_file(tmp_path, capsys):
    assert main(["compile", "resnet", "-p", "resnet18", "--target", "onnx", "-o", str(tmp_path / "a"),
                 "--reference-keys"]) == 2
    assert "--reference-keys renames the --weights file" in capsys.readouterr().err


def test_mismatches_list_every_offending_key(tmp_path, capsys):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18()
    state = ref.state_dict()
    state.pop("fc.bias")
    state["fc.weight"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "theirs.safetensors"))
    rc = main(["import-weights", "resnet", "-p", "resnet18", "--from", str(tmp_path / "theirs.safetensors"),
               "-o", str(tmp_path / "ours.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1 and not (tmp_path / "ours.safetensors").exists()
    assert "missing 'fc.bias'" in err and "'fc.weight' has shape [3, 3]" in err and "unexpected 'extra.weight'" in err
    # without the spec's map, every downsample key is reported unmapped
    rc = main(["import-weights", "resnet", "-p", "resnet18", "--from", str(tmp_path / "theirs.safetensors"),
               "-o", str(tmp_path / "ours.safetensors"), "--map", "none"])
    assert rc == 1 and "unexpected 'layer2.0.downsample.0.weight'" in capsys.readouterr().err


def test_a_pickle_is_refused(tmp_path, capsys):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "theirs.pt")
    rc = main(["import-weights", "resnet", "-p", "resnet18", "--from", str(tmp_path / "theirs.pt"),
               "-o", str(tmp_path / "ours.safetensors")])
    assert rc == 1 and "not a safetensors file" in capsys.readouterr().err


def test_rename_matches_whole_segments():
    m = {"features.1": "conv2", "downsample.0": "downsample.conv"}
    assert rename("features.1.weight", m) == "conv2.weight"
    assert rename("features.10.weight", m) == "features.10.weight"
    assert rename("layer1.0.downsample.0.bias", m) == "layer1.0.downsample.conv.bias"


def test_map_file_is_checked(tmp_path, capsys):
    (tmp_path / "map.yaml").write_text("features.0: 'a b'\n")
    (tmp_path / "w.safetensors").write_bytes(b"")
    rc = main(["import-weights", "alexnet", "--from", str(tmp_path / "w.safetensors"), "-o",
               str(tmp_path / "o.safetensors"), "--map", str(tmp_path / "map.yaml")])
    err = capsys.readouterr().err
    assert rc == 1 and "map.yaml:1" in err and "identifiers" in err
