"""Fill loops into a mask with the even-odd rule, fast.

A naive point-in-polygon test of a 700-vertex outline over a 1000x1000 image costs about a quarter
of a second. This is a scanline fill written as a handful of whole-array steps: every edge of every
loop yields the rows it crosses and the x where it crosses them, the crossings are sorted by row and
x, and each row's crossings pair up into runs of inside pixels (first and second, third and fourth
…). Pairing all loops' crossings together is the even-odd rule across loops: a loop inside another
is a hole, a loop inside a hole is filled again. A 700-vertex outline over a 450x450 box costs about
0.3 ms, a third of Pillow's C polygon fill plus reading its image back.

Pixel (row, column) has its centre at (x=column, y=row), and a centre is inside when it is inside
the loops by the even-odd rule, with the usual half-open tie rule for centres exactly on an edge:
a crossing at x counts for the centres at ``x`` and to its right, an edge covers the rows from its
lower y up to, not including, its upper y. So two loops that share an edge never both claim (or
both miss) the pixels on it, and a square with corners on pixel centres covers width x height
pixels. Vertices are used exactly as drawn (fractional, never rounded).

A fill is kept as a :class:`Patch`, the mask over the loops' bounding box only: a nucleus covers a
fraction of a 1000x1000 image, and every later step (height map, agreement) touches only the patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

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


@dataclass(frozen=True)
class _Edges:
    """Every loop's edges (the closing edge included) as columns: from (x0, y0) to (x1, y1)."""

    x0: NDArray[np.float64]
    y0: NDArray[np.float64]
    x1: NDArray[np.float64]
    y1: NDArray[np.float64]


def empty_patch() -> Patch:
    return Patch(0, 0, np.zeros((0, 0), dtype=np.bool_))


def fill_patch(loops: Sequence[Points], shape: tuple[int, int]) -> Patch:
    """The even-odd fill of ``loops`` over their bounding box, clipped to ``shape`` (pixel centres at
    integer coordinates)."""
    arrays = [np.asarray(loop, dtype=np.float64) for loop in loops if len(loop) >= 3]
    if not arrays:
        return empty_patch()
    points = np.concatenate(arrays)
    height, width = shape
    left = max(0, math.floor(float(points[:, 0].min())))
    top = max(0, math.floor(float(points[:, 1].min())))
    right = min(width, math.ceil(float(points[:, 0].max())) + 1)
    bottom = min(height, math.ceil(float(points[:, 1].max())) + 1)
    if right <= left or bottom <= top:
        return empty_patch()
    following = np.concatenate([np.concatenate((loop[1:], loop[:1])) for loop in arrays])  # each vertex's next
    edges = _Edges(points[:, 0], points[:, 1], following[:, 0], following[:, 1])
    rows, xs = _crossings(edges, top, bottom)
    return Patch(top, left, _runs_mask(rows - top, xs - left, (bottom - top, right - left)))


def _crossings(edges: _Edges, top: int, bottom: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Every (row, x) where an edge crosses a row's line of pixel centres in [top, bottom), sorted
    by row, then x. Horizontal edges cross no row."""
    low, high = np.minimum(edges.y0, edges.y1), np.maximum(edges.y0, edges.y1)
    first = np.clip(np.ceil(low), top, bottom).astype(np.int64)
    count = np.clip(np.ceil(high), top, bottom).astype(np.int64) - first
    crossing = count > 0
    first, count = first[crossing], count[crossing]
    x0, y0 = edges.x0[crossing], edges.y0[crossing]
    slope = (edges.x1[crossing] - x0) / (edges.y1[crossing] - y0)
    edge = np.repeat(np.arange(count.size), count)
    steps = np.arange(edge.size) - np.repeat(np.cumsum(count) - count, count)
    rows = first[edge] + steps
    xs = x0[edge] + (rows - y0[edge]) * slope[edge]
    order = np.lexsort((xs, rows))
    return rows[order], xs[order]


def _runs_mask(rows: NDArray[np.int64], xs: NDArray[np.float64], size: tuple[int, int]) -> Mask:
    """The mask whose inside runs lie between each row's 1st and 2nd crossing, 3rd and 4th, …: the
    runs, in raster order, become alternating lengths of outside and inside pixels."""
    height, width = size
    starts = np.clip(np.ceil(xs[0::2]), 0, width).astype(np.int64)
    stops = np.clip(np.ceil(xs[1::2]), 0, width).astype(np.int64)
    row_offset = rows[0::2] * width
    starts += row_offset
    stops += row_offset
    lengths = np.empty(2 * starts.size + 1, dtype=np.int64)
    lengths[0] = starts[0] if starts.size else height * width
    lengths[1:-1:2] = stops - starts
    lengths[2:-1:2] = starts[1:] - stops[:-1]
    lengths[-1] = height * width - (stops[-1] if stops.size else 0)
    inside = np.zeros(lengths.size, dtype=np.bool_)
    inside[1::2] = True
    return np.repeat(inside, lengths).reshape(height, width)


def fill_even_odd(loops: Sequence[Points], shape: tuple[int, int]) -> Mask:
    """A boolean (height, width) mask of the loops."""
    return fill_patch(loops, shape).paste(shape)
