"""Fill loops into a mask with the even-odd rule, fast.

A naive point-in-polygon test of a 700-vertex outline over a 1000x1000 image costs about a quarter
of a second; Pillow's polygon fill is a C scanline fill and costs about a millisecond. Each loop is
filled on its own and the fills are combined by exclusive-or, which is the even-odd rule across
loops: a loop inside another is a hole, a loop inside a hole is filled again.

Vertices are not thinned first: a hand-drawn line jitters by more than the fraction of a pixel that
could be dropped safely, so thinning costs more than the fill it would save. They reach Pillow as an
``ImagePath.Path`` (C doubles), not a Python list: turning a 500-point loop into a list of floats and
Pillow reading it back cost half as much again as the fill itself. Pillow fills from the exact
fractional vertices, so the path holds exactly the values of the loop (built straight from float32
memory when the loop's values are float32 values, as the export's coordinates are, else from a list).

A fill is kept as a :class:`Patch`, the mask over the loops' bounding box only: a nucleus covers a
fraction of a 1000x1000 image, and every later step (height map, agreement) touches only the patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImagePath

from etchacell_loop.cria.joining import Points

Mask = NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Patch:
    """A boolean mask placed at (``top``, ``left``) of a larger image."""

    top: int
    left: int
    mask: Mask

    @property
    def bottom(self) -> int:
        return self.top + int(self.mask.shape[0])

    @property
    def right(self) -> int:
        return self.left + int(self.mask.shape[1])

    @property
    def area_px(self) -> int:
        return int(np.count_nonzero(self.mask))

    def paste(self, shape: tuple[int, int]) -> Mask:
        """The patch as a full-size mask."""
        full = np.zeros(shape, dtype=np.bool_)
        full[self.top : self.bottom, self.left : self.right] = self.mask
        return full


def empty_patch() -> Patch:
    return Patch(0, 0, np.zeros((0, 0), dtype=np.bool_))


def fill_patch(loops: Sequence[Points], shape: tuple[int, int]) -> Patch:
    """The even-odd fill of ``loops`` over their bounding box, clipped to ``shape`` (pixel centres at
    integer coordinates)."""
    paths = [_path(loop) for loop in loops if len(loop) >= 3]
    if not paths:
        return empty_patch()
    boxes = [path.getbbox() for path in paths]
    height, width = shape
    left = max(0, math.floor(min(box[0] for box in boxes)))
    top = max(0, math.floor(min(box[1] for box in boxes)))
    right = min(width, math.ceil(max(box[2] for box in boxes)) + 1)
    bottom = min(height, math.ceil(max(box[3] for box in boxes)) + 1)
    if right <= left or bottom <= top:
        return empty_patch()
    size = (right - left, bottom - top)
    mask = _fill_one(paths[0], left, top, size)
    for path in paths[1:]:
        mask = mask ^ _fill_one(path, left, top, size)
    return Patch(top, left, mask)


def _path(loop: Points) -> ImagePath.Path:
    """The loop's vertices as a Pillow path of exactly the same values."""
    points = np.asarray(loop)
    single = points.astype(np.float32)
    if np.array_equal(single, points):
        return ImagePath.Path(single.reshape(-1))  # read as a float32 buffer, no Python floats
    return ImagePath.Path(points.astype(np.float64).reshape(-1).tolist())


def _fill_one(path: ImagePath.Path, left: int, top: int, size: tuple[int, int]) -> Mask:
    """Fill one loop on a canvas whose corner is (``left``, ``top``). The path is moved there in
    place, in C: x - left and y - top, the same double subtractions as shifting the array."""
    path.transform((1.0, 0.0, -left, 0.0, 1.0, -top))
    canvas = Image.new("L", size, 0)  # "L", not "1": six times cheaper to read back
    ImageDraw.Draw(canvas).polygon(path, fill=1, outline=1)
    return np.asarray(canvas).view(np.bool_)


def fill_even_odd(loops: Sequence[Points], shape: tuple[int, int]) -> Mask:
    """A boolean (height, width) mask of the loops."""
    return fill_patch(loops, shape).paste(shape)
