"""The fill hands Pillow exactly the loop's vertices, whatever the loop's dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from etchacell_loop.cria.raster import Mask, fill_patch

SHAPE = (120, 160)


def jittery_loop(rng: np.random.Generator, cx: float, cy: float, radius: float) -> NDArray[np.float64]:
    """A hand-drawn-like closed line with fractional vertices (some on exact halves)."""
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    r = radius + rng.normal(0, 1.5, angles.size)
    loop = np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles)])
    loop[::7] = np.round(loop[::7] * 2) / 2
    return loop


def pillow_from_lists(loops: list[NDArray[np.float64]], shape: tuple[int, int]) -> tuple[int, int, Mask]:
    """The even-odd fill drawn the plain way: each loop as a list of Python floats on one canvas over
    the loops' clipped bounding box, the fills combined by exclusive-or."""
    points = np.concatenate([np.asarray(loop, np.float64) for loop in loops])
    left, top = max(0, math.floor(points[:, 0].min())), max(0, math.floor(points[:, 1].min()))
    right = min(shape[1], math.ceil(points[:, 0].max()) + 1)
    bottom = min(shape[0], math.ceil(points[:, 1].max()) + 1)
    mask = np.zeros((bottom - top, right - left), np.bool_)
    for loop in loops:
        canvas = Image.new("L", (right - left, bottom - top), 0)
        shifted = np.asarray(loop, np.float64) - (left, top)
        ImageDraw.Draw(canvas).polygon(shifted.ravel().tolist(), fill=1, outline=1)
        mask ^= np.asarray(canvas).astype(np.bool_)
    return top, left, mask


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fill_matches_pillow_drawing_the_same_values_from_lists(dtype: type[np.floating]) -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        outer = jittery_loop(rng, rng.uniform(40, 120), rng.uniform(30, 90), rng.uniform(20, 45))
        hole = jittery_loop(rng, outer[:, 0].mean(), outer[:, 1].mean(), 8.0)
        loops = [outer.astype(dtype), hole.astype(dtype)]  # float64: values float32 cannot hold
        patch = fill_patch(loops, SHAPE)
        top, left, expected = pillow_from_lists([loop.astype(np.float64) for loop in loops], SHAPE)
        assert (patch.top, patch.left) == (top, left)
        np.testing.assert_array_equal(patch.mask, expected)


def test_a_fill_of_float64_values_differs_from_their_float32_rounding() -> None:
    """The check above can fail: Pillow fills from fractional vertices, so rounding them changes masks."""
    rng = np.random.default_rng(3)
    changed = 0
    for _ in range(40):
        loop = jittery_loop(rng, 80, 60, 40) + 1e-4 * rng.standard_normal((90, 2))
        rounded = loop.astype(np.float32).astype(np.float64)
        changed += not np.array_equal(fill_patch([loop], SHAPE).mask, fill_patch([rounded], SHAPE).mask)
    assert changed > 0


def test_loops_past_the_edge_are_clipped_like_the_plain_drawing() -> None:
    rng = np.random.default_rng(11)
    loop = jittery_loop(rng, 150, 10, 30)
    patch = fill_patch([loop], SHAPE)
    top, left, expected = pillow_from_lists([loop], SHAPE)
    assert (patch.top, patch.left, patch.right) == (top, left, SHAPE[1])
    np.testing.assert_array_equal(patch.mask, expected)


def test_loops_with_fewer_than_three_points_or_off_the_image_fill_nothing() -> None:
    assert fill_patch([np.array([[1.0, 1.0], [5.0, 5.0]])], SHAPE).mask.size == 0
    assert fill_patch([np.array([[500.0, 500.0], [520.0, 500.0], [510.0, 530.0]])], SHAPE).mask.size == 0
