"""Image classification: scikit-learn's bundled handwritten digits (UCI optdigits' test part,
1,797 grey 8x8 images of 0..9, values 0..16), for the image classifiers of the zoo (resnet, alexnet).

Nothing downloads: `sklearn.datasets.load_digits` reads a file shipped inside scikit-learn, which
is imported only when the task is built (`pip install 'nnspec[train]'`) and read once per process.
The images are resized to the spec's `image_size` by a separable linear map (nearest or bilinear,
torch's `F.interpolate` conventions with align_corners=False) and the grey channel is repeated
to 3 channels for nets that take RGB.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterator, Literal

import numpy as np
from pydantic import Field

from .base import MAX_BATCH, MAX_ELEMENTS, MAX_EVAL_BATCHES, Slot, Task, TaskError, TaskOptions, _bounded, register

SOURCE_SIZE = 8  # load_digits' images are 8x8
CLASSES = 10
MAX_IMAGE_SIZE = 256


@lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images f32[1797, 8, 8] scaled to [0, 1], labels i64[1797]), read once per process."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise TaskError("the digits task needs scikit-learn", hint="pip install 'nnspec[train]'") from None
    data = load_digits()
    images = np.asarray(data.images, np.float32) / 16.0  # pixel values are counts 0..16
    labels = np.asarray(data.target, np.int64)
    if images.shape[1:] != (SOURCE_SIZE, SOURCE_SIZE) or len(images) != len(labels):
        raise TaskError(f"scikit-learn's digits have an unexpected shape {images.shape}")
    images.flags.writeable = labels.flags.writeable = False  # cached: shared by every task
    return images, labels


def resize_matrix(size: int, mode: str, source: int = SOURCE_SIZE) -> np.ndarray:
    """f64[size, source]: row i weights the source pixels output pixel i reads along one axis, so a
    whole image resizes as R @ img @ R.T. Source coordinates follow torch's align_corners=False:
    nearest reads floor(i * source / size); bilinear reads (i + 0.5) * source / size - 0.5,
    clamped at 0, between its two neighbours."""
    R = np.zeros((size, source))
    scale = source / size
    rows = np.arange(size)
    if mode == "nearest":
        R[rows, np.minimum(np.floor(rows * scale).astype(np.int64), source - 1)] = 1.0
        return R
    x = np.maximum((rows + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(x).astype(np.int64), source - 1)
    hi = np.minimum(lo + 1, source - 1)
    frac = x - lo
    np.add.at(R, (rows, lo), 1.0 - frac)
    np.add.at(R, (rows, hi), frac)
    return R


class DigitsOptions(TaskOptions):
    image_size: int = Field(SOURCE_SIZE, ge=1, le=MAX_IMAGE_SIZE)  # the spec's input size (32 for CIFAR nets)
    channels: Literal[1, 3] = 3  # 3: the grey image repeated, for nets that take RGB
    resize: Literal["nearest", "bilinear"] = "bilinear"
    valid_fraction: float = Field(0.2, gt=0.0, le=0.5)
    normalise: bool = True  # standardise by the training split's pixel mean and std
    binarise: bool = False  # pixels 1 where the resized value is >= 1/2, else 0 (not normalised)


@register("digits")
class Digits(Task):
    """`image` f32[N, channels, image_size, image_size] and its class `targets` i64[N] in [0, 10).
    A fixed permutation drawn from the task seed splits the 1,797 images; the last
    `valid_fraction` of it is the validation split. Training batch k draws its images uniformly
    with replacement from the training split (from step k's random stream); eval_batches walk the
    validation split in order, a last short batch included, so accuracy covers every image once.
    With `normalise`, pixels are (v / 16 - mean) / std, mean and std those of the resized training
    images (one figure for all channels: they are the same grey). With `binarise`, pixels are 0 or 1
    (v / 16 >= 1/2 after the resize), for Bernoulli likelihoods (the VAEs' binarised digits)."""

    Options = DigitsOptions
    metric = "accuracy"
    metric_doc = "fraction of validation images whose largest logit is their class"

    def __init__(self, options: DigitsOptions):
        super().__init__(options)
        images, labels = load_digits_arrays()
        order = np.random.default_rng([options.seed, 2]).permutation(len(images))  # a stream no batch uses
        cut = len(order) - int(round(len(order) * options.valid_fraction))
        self.train_ids, self.valid_ids = order[:cut], order[cut:]
        self.examples = len(self.train_ids)
        self._images, self._labels = images, labels
        self._R = resize_matrix(options.image_size, options.resize)
        self._mean, self._std = self._train_stats() if options.normalise and not options.binarise else (0.0, 1.0)

    def feeds(self):
        o = self.options
        return {"image": Slot("float32", ("N", o.channels, o.image_size, o.image_size))}

    def reads(self):
        return {"targets": Slot("int64", ("N",), high=CLASSES)}

    def _train_stats(self) -> tuple[float, float]:
        """Mean and std of every pixel of the resized training images, without resizing them:
        with R the resize matrix, sum(R X R.T) = w.X.w for w = R.T 1 and
        sum((R X R.T)^2) = trace(X G X.T G) for G = R.T R (exact for either mode)."""
        X = self._images[self.train_ids].astype(np.float64)
        w, G = self._R.sum(axis=0), self._R.T @ self._R
        count = len(X) * self._R.shape[0] ** 2
        mean = np.einsum("a,nab,b->", w, X, w) / count
        square = np.einsum("nab,bc,ndc,da->", X, G, X, G) / count
        return float(mean), float(np.sqrt(max(square - mean * mean, 1e-12)))

    def images(self, ids: np.ndarray) -> np.ndarray:
        """f32[len(ids), channels, S, S]: images `ids` resized, normalised, channels repeated."""
        x = self._R @ self._images[ids].astype(np.float64) @ self._R.T  # R X R.T, image by image
        if self.options.binarise:
            x = (x >= 0.5).astype(np.float32)[:, None]
        else:
            x = ((x - self._mean) / self._std).astype(np.float32)[:, None]
        return np.ascontiguousarray(np.broadcast_to(x, (len(ids), self.options.channels) + x.shape[2:]))

    def _batch(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return {"image": self.images(ids), "targets": self._labels[ids].copy()}

    def make(self, rng, b):
        return self._batch(self.train_ids[rng.integers(0, len(self.train_ids), size=b)])

    def eval_batches(self, batch_size: int, count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The validation split in order, `batch_size` images a batch (the last may be shorter);
        `count` caps the batches."""
        _bounded("batch_size", batch_size, 1, MAX_BATCH)
        n = -(-len(self.valid_ids) // batch_size)
        if count is not None:
            _bounded("count", count, 1, MAX_EVAL_BATCHES)
            n = min(n, count)
        for i in range(n):
            ids = self.valid_ids[i * batch_size:(i + 1) * batch_size]
            if self.elements(len(ids)) > MAX_ELEMENTS:  # the bound `batch` checks before its work
                raise TaskError(f"task 'digits': a batch of {len(ids)} would hold about "
                                f"{self.elements(len(ids)):,} numbers (at most {MAX_ELEMENTS:,})",
                                hint="use a smaller batch size or image_size")
            yield self._batch(ids)
