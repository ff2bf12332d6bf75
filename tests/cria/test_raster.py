"""The scanline fill agrees with a plain point-in-polygon test of every pixel centre."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from skimage.measure import points_in_poly

from etchacell_loop.cria.raster import Mask, fill_even_odd, fill_patch

SHAPE = (120, 160)


def jittery_loop(rng: np.random.Generator, cx: float, cy: float, radius: float) -> NDArray[np.float64]:
    """A hand-drawn-like closed line with fractional vertices."""
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    r = radius + rng.normal(0, 1.5, angles.size)
    return np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles)])


def centres_inside(loops: list[NDArray[np.float64]], shape: tuple[int, int]) -> Mask:
    """Each pixel centre tested against each loop on its own, the answers combined by exclusive-or."""
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    centres = np.column_stack([columns.ravel(), rows.ravel()]).astype(np.float64)
    inside = np.zeros(centres.shape[0], dtype=np.bool_)
    for loop in loops:
        inside ^= points_in_poly(centres, loop)  # type: ignore[no-untyped-call]
    return inside.reshape(shape)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fill_matches_a_point_in_polygon_test_with_holes(dtype: type[np.floating]) -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        outer = jittery_loop(rng, rng.uniform(40, 120), rng.uniform(30, 90), rng.uniform(20, 45))
        hole = jittery_loop(rng, outer[:, 0].mean(), outer[:, 1].mean(), 8.0)
        island = jittery_loop(rng, outer[:, 0].mean(), outer[:, 1].mean(), 3.0)  # inside the hole: filled
        loops = [outer.astype(dtype), hole.astype(dtype), island.astype(dtype)]
        expected = centres_inside([loop.astype(np.float64) for loop in loops], SHAPE)
        np.testing.assert_array_equal(fill_even_odd(loops, SHAPE), expected)


def test_the_patch_is_the_loops_bounding_box_clipped_to_the_image() -> None:
    rng = np.random.default_rng(11)
    loop = jittery_loop(rng, 150, 10, 30)  # past the right and top edges
    patch = fill_patch([loop], SHAPE)
    assert (patch.top, patch.left) == (0, int(np.floor(loop[:, 0].min())))
    assert (patch.bottom, patch.right) == (int(np.ceil(loop[:, 1].max())) + 1, SHAPE[1])
    np.testing.assert_array_equal(patch.paste(SHAPE), centres_inside([loop], SHAPE))


def test_a_fill_uses_the_fractional_vertices_as_drawn() -> None:
    """Rounding vertices changes masks: the fill must not round them."""
    rng = np.random.default_rng(3)
    changed = 0
    for _ in range(20):
        loop = jittery_loop(rng, 80, 60, 40)
        changed += not np.array_equal(fill_even_odd([loop], SHAPE), fill_even_odd([np.round(loop)], SHAPE))
    assert changed > 0


def test_squares_on_pixel_centres_tile_without_gaps_or_overlaps() -> None:
    """The half-open tie rule: a w x h square with corners on centres covers w x h pixels, and
    squares that share edges never both claim the centres on them."""
    count = np.zeros(SHAPE, dtype=np.int64)
    for left in range(10, 70, 20):
        for top in range(5, 65, 15):
            square = np.array([[left, top], [left + 20, top], [left + 20, top + 15], [left, top + 15]], float)
            mask = fill_even_odd([square], SHAPE)
            assert mask.sum() == 20 * 15
            count += mask
    assert count.max() == 1
    assert count[5:65, 10:70].all()


def test_a_reversed_or_rotated_loop_fills_the_same_pixels() -> None:
    rng = np.random.default_rng(5)
    loop = jittery_loop(rng, 70, 60, 35)
    expected = fill_even_odd([loop], SHAPE)
    np.testing.assert_array_equal(fill_even_odd([loop[::-1]], SHAPE), expected)
    np.testing.assert_array_equal(fill_even_odd([np.roll(loop, 17, axis=0)], SHAPE), expected)


def test_loops_with_fewer_than_three_points_or_off_the_image_fill_nothing() -> None:
    assert fill_patch([np.array([[1.0, 1.0], [5.0, 5.0]])], SHAPE).mask.size == 0
    assert fill_patch([np.array([[500.0, 500.0], [520.0, 500.0], [510.0, 530.0]])], SHAPE).mask.size == 0
    assert not fill_even_odd([np.array([[3.0, 3.0], [9.0, 3.0], [15.0, 3.0]])], SHAPE).any()  # no area
