"""Sort-of-CLEVR (Santoro et al. 2017, Relation Networks), from state descriptions or as images.

A scene holds six objects, one of each colour (red, green, blue, orange, gray, yellow), each a
square or a circle of half-size `object_size`, placed without overlap in an `image_size` square.
Each example asks one question about the object of one colour, encoded as the reference
implementation does (11 numbers: the colour one-hot, [non-relational, relational], the subtype
one-hot); answers index [yes, no, rectangle, circle, 1, 2, 3, 4, 5, 6]:
- non-relational: 0 its shape; 1 is it on the left (x < image_size / 2); 2 is it on the top;
- relational: 0 the shape of the object closest to it; 1 the shape of the farthest; 2 how many
  objects have its shape (itself included). Distance ties go to the lower colour index.
`form: state` feeds `state` (N, 6, 9): x and y over image_size, is-circle, the colour one-hot;
`form: image` feeds `image` (N, 3, image_size, image_size), RGB in [0, 1] on white.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from .base import Slot, Task, TaskOptions, register

COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.5, 0], [0.5, 0.5, 0.5], [1, 1, 0]], np.float32)
ANSWERS = ("yes", "no", "rectangle", "circle", "1", "2", "3", "4", "5", "6")
YES, NO, RECTANGLE, CIRCLE, ONE = 0, 1, 2, 3, 4
OBJECTS = len(COLOURS)


class ClevrOptions(TaskOptions):
    form: Literal["state", "image"] = "state"
    image_size: int = Field(75, ge=24, le=256)
    object_size: int = Field(5, ge=2, le=16)
    relational: Literal["both", "relational", "non_relational"] = "both"
    # state form: list each scene's objects in a random order (the colour one-hot still names
    # them), so a model must find the object a question is about instead of reading a fixed slot
    shuffle: bool = False

    @model_validator(mode="after")
    def _fits(self):
        if self.image_size < 12 * self.object_size:
            raise ValueError(f"image_size ({self.image_size}) must be at least 12 * object_size "
                             f"({12 * self.object_size}) for six objects to fit")
        return self


@register("sort_of_clevr")
class SortOfClevr(Task):
    """One question per scene; `answer` indexes ANSWERS; `centres` (N, 6, 2) holds the objects'
    integer (x, y) centres and `circle` (N, 6) their shapes, for checks."""

    Options = ClevrOptions
    metric = "accuracy"
    metric_doc = "fraction of questions answered with the right ANSWERS index"

    def feeds(self):
        o = self.options
        scene = (Slot("float32", ("N", OBJECTS, 9)) if o.form == "state"
                 else Slot("float32", ("N", 3, o.image_size, o.image_size)))
        return {o.form: scene, "question": Slot("float32", ("N", 11))}

    def reads(self):
        return {"answer": Slot("int64", ("N",), high=len(ANSWERS)), "centres": Slot("int64", ("N", OBJECTS, 2)),
                "circle": Slot("int64", ("N", OBJECTS))}

    def _place(self, rng) -> np.ndarray:
        """Six centres in a 3 x 3 grid of cells (six cells drawn), jittered inside each cell: never
        overlapping, and no rejection loop."""
        o = self.options
        cell = o.image_size // 3
        cells = rng.choice(9, size=OBJECTS, replace=False)
        lo, hi = o.object_size, cell - o.object_size  # centre offsets keeping the object in its cell
        off = rng.integers(lo, hi + 1, size=(OBJECTS, 2))
        return np.stack([cells % 3 * cell, cells // 3 * cell], axis=1) + off

    def make(self, rng, b):
        o = self.options
        centres = np.stack([self._place(rng) for _ in range(b)]).astype(np.int64)
        circle = rng.integers(0, 2, size=(b, OBJECTS)).astype(np.int64)
        colour = rng.integers(0, OBJECTS, size=b)
        if o.relational == "both":
            rel = rng.integers(0, 2, size=b)
        else:
            rel = np.full(b, int(o.relational == "relational"))
        sub = rng.integers(0, 3, size=b)
        question = np.zeros((b, 11), np.float32)
        question[np.arange(b), colour] = 1
        question[np.arange(b), 6 + rel] = 1
        question[np.arange(b), 8 + sub] = 1
        answer = np.array([self._answer(centres[i], circle[i], int(colour[i]), int(rel[i]), int(sub[i]))
                           for i in range(b)], np.int64)
        if o.form == "state":
            scene = np.concatenate([centres / o.image_size, circle[..., None],
                                    np.broadcast_to(np.eye(OBJECTS), (b, OBJECTS, OBJECTS))], axis=-1)
            if o.shuffle:
                order = np.argsort(rng.random((b, OBJECTS)), axis=1)
                scene = np.take_along_axis(scene, order[..., None], axis=1)
        else:
            scene = self._render(centres, circle)
        return {o.form: scene.astype(np.float32), "question": question, "answer": answer, "centres": centres,
                "circle": circle}

    def _answer(self, centres, circle, c, rel, sub) -> int:
        shape = lambda k: CIRCLE if circle[k] else RECTANGLE  # noqa: E731
        if not rel:
            if sub == 0:
                return shape(c)
            return YES if centres[c, sub - 1] < self.options.image_size / 2 else NO
        if sub == 2:
            return ONE + int((circle == circle[c]).sum()) - 1
        d = ((centres - centres[c]) ** 2).sum(-1).astype(np.float64)
        if sub == 0:
            d[c] = np.inf
            return shape(int(np.argmin(d)))  # argmin/argmax: the first, the lower colour, on ties
        return shape(int(np.argmax(d)))

    def _render(self, centres, circle) -> np.ndarray:
        o = self.options
        S, s = o.image_size, o.object_size
        img = np.ones((len(centres), 3, S, S), np.float32)
        yy, xx = np.mgrid[-s:s, -s:s]
        disc = (xx + 0.5) ** 2 + (yy + 0.5) ** 2 <= s * s  # pixel centres inside the circle
        for i in range(len(centres)):
            for k in range(OBJECTS):
                x, y = centres[i, k]
                region = img[i, :, y - s:y + s, x - s:x + s]
                mask = disc if circle[i, k] else np.ones_like(disc)
                region[:, mask] = COLOURS[k][:, None]
        return img
