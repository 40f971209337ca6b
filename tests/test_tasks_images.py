"""The `digits` task (runtime/tasks/images.py): scikit-learn's bundled 8x8 digits split by a fixed
permutation, resized exactly as torch's F.interpolate would, normalised by the training split,
fed as the image classifiers' `image`, with a clear error when scikit-learn is missing."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from nnspec.compiler import load
from nnspec.runtime.tasks import TaskError, check_against, make_task
from nnspec.runtime.tasks import images as image_tasks

torch.set_num_threads(1)


def digits(**opts):
    return make_task("digits", opts)


def test_shapes_labels_and_determinism():
    t = digits(image_size=32, seed=1)
    assert t.feeds()["image"].shape == ("N", 3, 32, 32) and t.reads()["targets"].high == 10
    b = t.batch(7, 64)
    assert b["image"].shape == (64, 3, 32, 32) and b["image"].dtype == np.float32
    assert b["targets"].dtype == np.int64 and 0 <= b["targets"].min() and b["targets"].max() < 10
    assert np.array_equal(b["image"][:, 0], b["image"][:, 2])  # the grey channel repeated
    again = digits(image_size=32, seed=1).batch(7, 64)
    assert all(b[k].tobytes() == again[k].tobytes() for k in b)
    assert t.batch(8, 64)["image"].tobytes() != b["image"].tobytes()
    assert digits(channels=1).batch(0, 4)["image"].shape == (4, 1, 8, 8)


def test_split_is_a_fixed_permutation_and_eval_covers_it_once():
    t = digits(seed=3)
    assert (len(t.train_ids), len(t.valid_ids)) == (1438, 359) and t.examples == 1438
    assert sorted(np.concatenate([t.train_ids, t.valid_ids]).tolist()) == list(range(1797))
    assert np.array_equal(t.valid_ids, digits(seed=3).valid_ids)
    assert not np.array_equal(t.valid_ids, digits(seed=4).valid_ids)
    batches = list(t.eval_batches(100))
    assert [len(b["targets"]) for b in batches] == [100, 100, 100, 59]
    _, labels = image_tasks.load_digits_arrays()
    assert np.array_equal(np.concatenate([b["targets"] for b in batches]), labels[t.valid_ids])
    assert len(list(t.eval_batches(100, count=2))) == 2
    # training batches draw from the training split only
    train_images = {x.tobytes() for x in t.images(t.train_ids)}
    assert all(x.tobytes() in train_images for x in t.batch(0, 32)["image"])


def test_images_are_the_digits_and_their_labels():
    """Unnormalised 8x8 images are load_digits' values / 16, and a 1-nearest-neighbour classifier
    from the training split labels the validation split correctly (labels travel with images)."""
    from sklearn.datasets import load_digits
    data = load_digits()
    t = digits(normalise=False, channels=1)
    assert np.array_equal(t.images(np.arange(5))[:, 0], (data.images[:5] / 16).astype(np.float32))
    train, valid = t.images(t.train_ids).reshape(1438, -1), t.images(t.valid_ids).reshape(359, -1)
    nearest = ((valid[:, None, :] - train[None, :, :]) ** 2).sum(-1).argmin(1)
    accuracy = (data.target[t.train_ids][nearest] == data.target[t.valid_ids]).mean()
    assert accuracy > 0.95  # about 0.99; shuffled labels would give about 0.1


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", [5, 8, 13, 32, 64])
def test_resize_equals_torch_interpolate(mode, size):
    t = digits(image_size=size, resize=mode, normalise=False, channels=1)
    src = torch.from_numpy(np.array(image_tasks.load_digits_arrays()[0][:16]))[:, None]
    kw = {} if mode == "nearest" else {"align_corners": False}
    want = torch.nn.functional.interpolate(src, size=(size, size), mode=mode, **kw).numpy()
    np.testing.assert_allclose(t.images(np.arange(16)), want, rtol=0, atol=1e-6)


def test_normalised_by_the_training_split():
    t = digits(image_size=32)
    x = t.images(t.train_ids).astype(np.float64)
    assert abs(x.mean()) < 1e-6 and abs(x.std() - 1) < 1e-6
    v = t.images(t.valid_ids)
    assert abs(v.mean()) < 0.1 and abs(v.std() - 1) < 0.1  # the same statistics, not the split's own


def test_fits_the_image_classifiers():
    check_against(digits(image_size=32), load("resnet", "resnet20").forward, "spec 'resnet'")
    check_against(digits(), load("resnet", "resnet20", {"image_size": 8}).forward, "spec 'resnet'")
    with pytest.raises(TaskError, match=r"feeds 'image' as f32\[N,3,8,8\] but spec 'resnet' declares it as "
                                        r"f32\[N,3,32,32\]"):
        check_against(digits(), load("resnet", "resnet20").forward, "spec 'resnet'")


def test_bounds_and_bad_options():
    for bad in ({"image_size": 257}, {"image_size": 0}, {"channels": 2}, {"valid_fraction": 0.0},
                {"resize": "cubic"}, {"normalise": "yes"}):
        with pytest.raises(TaskError, match="bad options for task 'digits'"):
            digits(**bad)
    with pytest.raises(TaskError, match="would hold about"):
        digits(image_size=256).batch(0, 128)  # 128 * 3 * 256 * 256 numbers
    with pytest.raises(TaskError, match="would hold about"):
        next(digits(image_size=256).eval_batches(128))


def test_missing_scikit_learn_is_a_clear_error(monkeypatch):
    image_tasks.load_digits_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn...` now raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(TaskError) as e:
            digits()
        assert e.value.message == "the digits task needs scikit-learn"
        assert e.value.hint == "pip install 'nnspec[train]'"
    finally:
        image_tasks.load_digits_arrays.cache_clear()
