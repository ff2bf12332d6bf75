"""CRIA core: joining strokes into loops, even-odd fill, height map, band and confidence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import polygon as naive_polygon

from etchacell_loop.cria.consensus import CriaParams, Drawing, envelope_band, slice_consensus
from etchacell_loop.cria.joining import MAX_EXACT_STROKES, join_greedy, join_min_total, joining_distance
from etchacell_loop.cria.raster import fill_even_odd

SHAPE = (400, 400)


def circle(cx: float, cy: float, r: float, n: int = 360, start: float = 0.0, stop: float = 2 * np.pi) -> np.ndarray:
    t = np.linspace(start, stop, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])


def disk_mask(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return np.asarray((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_a_closed_stroke_stays_its_own_loop() -> None:
    loops = join_greedy([circle(100, 100, 50), circle(300, 300, 40)])
    assert len(loops) == 2


def test_broken_outline_is_rejoined_reversing_strokes_entered_at_their_end() -> None:
    arc1 = circle(200, 200, 100, 90, 0, np.pi)
    arc2 = circle(200, 200, 100, 90, np.pi, 2 * np.pi)[::-1]  # drawn the other way round
    (loop,) = join_greedy([arc1, arc2])
    assert loop.shape == (180, 2)
    filled = fill_even_odd([loop], SHAPE)
    assert dice(filled, disk_mask(200, 200, 100)) > 0.98


def test_nested_loops_are_holes_even_odd() -> None:
    filled = fill_even_odd(join_greedy([circle(200, 200, 150), circle(200, 200, 50)]), SHAPE)
    assert filled[200, 200] == 0 and filled[200, 100] == 1 and filled[200, 20] == 0
    ring = disk_mask(200, 200, 150) & ~disk_mask(200, 200, 50)
    assert dice(filled, ring) > 0.97


def test_scanline_fill_matches_a_naive_fill_and_is_fast() -> None:
    outline = circle(500, 500, 380, n=700) + np.random.default_rng(1).normal(0, 4, (700, 2))
    fast = fill_even_odd([outline], (1000, 1000))
    rr, cc = naive_polygon(outline[:, 1], outline[:, 0], (1000, 1000))  # type: ignore[no-untyped-call]
    naive = np.zeros((1000, 1000), bool)
    naive[rr, cc] = True
    assert dice(fast, naive) > 0.995


def test_majority_of_drawers_with_a_confidence_map() -> None:
    truth = disk_mask(200, 200, 100)
    rng = np.random.default_rng(3)
    drawings = [
        Drawing(f"v{i}", i, (circle(200 + rng.normal(0, 2), 200 + rng.normal(0, 2), 100 + rng.normal(0, 2)),))
        for i in range(9)
    ]
    drawings.append(Drawing("odd", 9, (circle(80, 80, 30),)))  # one volunteer traced something else
    result = slice_consensus(drawings, n_classifications=14, shape=SHAPE, params=CriaParams())
    assert result.n_volunteers == 10
    assert dice(result.area, truth) > 0.98
    assert not result.area[80, 80]  # a minority outline is voted out
    assert result.confidence[200, 200] == pytest.approx(0.9) and result.confidence[80, 80] == pytest.approx(0.1)
    odd = next(o for o in result.outcomes if o.volunteer == "odd")
    assert odd.dice == 0.0 and odd.tp == 0 and odd.fp > 0 and result.n_flagged == 1
    by_classifications = slice_consensus(
        drawings, n_classifications=14, shape=SHAPE, params=CriaParams(denominator="classifications")
    )
    assert by_classifications.confidence[200, 200] == pytest.approx(9 / 14)


def test_band_is_seven_pixels_at_70_nm_and_10_nm_pixels() -> None:
    area = disk_mask(200, 200, 100)
    band = envelope_band(area, 70 / 10)
    row = band[200, :]
    left = np.flatnonzero(row[:200])
    assert left.size == 7  # 4 inside the outline, 3 outside
    assert (~area[200, left]).sum() == 3
    assert envelope_band(area, 70 / 20).sum() < band.sum()


def test_no_drawers_gives_an_empty_consensus() -> None:
    result = slice_consensus([], n_classifications=5, shape=SHAPE, params=CriaParams())
    assert result.area_px == 0 and not result.band.any() and result.n_volunteers == 0


def test_min_total_joining_never_pays_more_than_greedy() -> None:
    rng = np.random.default_rng(7)
    strictly_better = 0
    for _ in range(60):
        strokes = [
            np.cumsum(rng.normal(0, 15, (rng.integers(3, 12), 2)), axis=0) + rng.uniform(0, 400, 2)
            for _ in range(rng.integers(1, 7))
        ]
        greedy = join_greedy(strokes)
        best = join_min_total(strokes)
        assert sum(len(loop) for loop in best) == sum(len(s) for s in strokes)  # every point used once
        g, b = joining_distance(strokes, greedy), joining_distance(strokes, best)
        assert b <= g + 1e-9
        strictly_better += b < g - 1e-6
    assert strictly_better > 0  # greedy is not always optimal on scattered islands


def test_min_total_closes_each_island_on_its_own() -> None:
    """Two islands each traced as two arcs: joining must not bridge the islands."""
    left = [circle(100, 200, 40, 60, 0, np.pi), circle(100, 200, 40, 60, np.pi, 2 * np.pi)]
    right = [circle(300, 200, 40, 60, 0, np.pi), circle(300, 200, 40, 60, np.pi, 2 * np.pi)]
    loops = join_min_total([left[0], right[1], right[0], left[1]])
    assert len(loops) == 2
    filled = fill_even_odd(loops, SHAPE)
    assert dice(filled, disk_mask(100, 200, 40) | disk_mask(300, 200, 40)) > 0.97


def test_many_strokes_fall_back_to_greedy() -> None:
    strokes = [circle(50 + 40 * i, 200, 15) for i in range(MAX_EXACT_STROKES + 2)]
    assert len(join_min_total(strokes)) == len(strokes)


def test_band_matches_morphology_by_a_disk() -> None:
    """The fast band (shifted ANDs over the area's box) equals erosion and dilation by a disk."""
    rng = np.random.default_rng(11)

    def disk(r: int) -> np.ndarray:
        y, x = np.ogrid[-r : r + 1, -r : r + 1]
        return np.asarray(x * x + y * y <= r * r)

    for _ in range(20):
        area = ndimage.gaussian_filter(rng.random((120, 150)), 4) > 0.5
        area[:, :5] = False  # some areas touch the image edge, some do not
        for width in (1, 3.5, 7, 10):
            n = max(1, round(width))
            inner = ndimage.binary_erosion(area, disk((n + 1) // 2), border_value=0)
            outer = ndimage.binary_dilation(area, disk(n // 2)) if n // 2 else area
            assert np.array_equal(envelope_band(area, width), outer & ~inner)
