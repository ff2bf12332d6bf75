"""Synthetic nuclei: reproducible, islands at the caps, a nucleolus inside, organelles outside."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from etchacell_loop.simulation.shapes import NucleusModel, draw_nucleus, nucleus_stack, outlines, signed_area

N_SLICES = 48


@pytest.fixture(scope="module")
def models() -> list[NucleusModel]:
    return [draw_nucleus(np.random.default_rng(seed), N_SLICES) for seed in range(3)]


def islands(mask: np.ndarray) -> int:
    return int(ndimage.label(mask)[1])


def test_the_same_seed_gives_the_same_nucleus_and_another_seed_another() -> None:
    first = nucleus_stack(np.random.default_rng(5), 12)
    again = nucleus_stack(np.random.default_rng(5), 12)
    other = nucleus_stack(np.random.default_rng(6), 12)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.nucleus, b.nucleus) and np.array_equal(a.nucleolus, b.nucleolus)
        assert len(a.organelles) == len(b.organelles)
        assert all(np.array_equal(x, y) for x, y in zip(a.organelles, b.organelles, strict=True))
    assert not np.array_equal(first[6].nucleus, other[6].nucleus)


def test_the_middle_slice_is_one_region_a_few_hundred_pixels_across(models: list[NucleusModel]) -> None:
    for model in models:
        truth = model.slice_truth(N_SLICES // 2)
        assert truth.nucleus.shape == (1000, 1000)
        assert islands(truth.nucleus) == 1
        diameter = 2 * np.sqrt(truth.nucleus.sum() / np.pi)
        assert 300 < diameter < 600


def test_slices_near_both_caps_break_into_several_islands(models: list[NucleusModel]) -> None:
    cap = N_SLICES // 6
    for model in models:
        top = max(islands(model.slice_truth(z).nucleus) for z in range(cap))
        bottom = max(islands(model.slice_truth(z).nucleus) for z in range(N_SLICES - cap, N_SLICES))
        assert top >= 2 and bottom >= 2
        assert model.slice_truth(1).nucleus.sum() < 0.25 * model.slice_truth(N_SLICES // 2).nucleus.sum()


def test_some_outlines_are_concave() -> None:
    """Invaginations: a slice whose nucleus fills clearly less than its convex hull."""
    from skimage.measure import regionprops

    least_solid = 1.0
    for seed in range(4):
        model = draw_nucleus(np.random.default_rng(seed), N_SLICES)
        for z in range(N_SLICES // 4, 3 * N_SLICES // 4, 4):
            props = regionprops(model.slice_truth(z).nucleus.astype(np.uint8))  # type: ignore[no-untyped-call]
            least_solid = min(least_solid, float(props[0].solidity))
    assert least_solid < 0.96


def test_organelles_never_touch_the_nucleus_and_number_three_to_eight(models: list[NucleusModel]) -> None:
    for model in models:
        assert 3 <= len(model.organelles) <= 8
        for z in range(0, N_SLICES, 4):
            truth = model.slice_truth(z)
            near_nucleus = ndimage.binary_dilation(truth.nucleus, iterations=3)
            for organelle in truth.organelles:
                assert organelle.sum() > 200  # a mitochondrion-sized blob
                assert not (organelle & near_nucleus).any()


def test_the_nucleolus_lies_inside_the_nucleus(models: list[NucleusModel]) -> None:
    for model in models:
        present = 0
        for z in range(N_SLICES):
            truth = model.slice_truth(z)
            if truth.nucleolus.any():
                present += 1
                inner = ndimage.binary_erosion(truth.nucleus, iterations=4)
                assert not (truth.nucleolus & ~inner).any()
        assert present >= N_SLICES // 4
        assert model.slice_truth(N_SLICES // 2).nucleolus.any()


def test_outlines_are_islands_and_holes_oriented_away_from_the_region() -> None:
    mask = np.zeros((200, 200), dtype=bool)
    yy, xx = np.mgrid[:200, :200]
    mask |= (xx - 60) ** 2 + (yy - 100) ** 2 <= 40**2
    mask &= ~((xx - 60) ** 2 + (yy - 100) ** 2 <= 15**2)  # a ring
    mask |= (xx - 160) ** 2 + (yy - 100) ** 2 <= 20**2  # and a separate disc
    mask[0:3, 0:3] = True  # a speck in the corner, touching the border
    loops = outlines(mask, min_area_px=20)
    areas = sorted(signed_area(loop) for loop in loops)
    assert len(loops) == 3  # the speck is below the area limit
    assert areas[0] < areas[1] < 0 < areas[2]  # two islands, one hole
    assert abs(areas[0]) == pytest.approx(np.pi * 40**2, rel=0.03)
    for loop in loops:
        assert not np.array_equal(loop[0], loop[-1])  # first point not repeated
        tangent = np.roll(loop, -1, axis=0) - np.roll(loop, 1, axis=0)
        outward = np.column_stack([-tangent[:, 1], tangent[:, 0]])
        outward /= np.hypot(outward[:, 0], outward[:, 1])[:, None]
        probe = np.rint(loop + 2.5 * outward).astype(int)
        assert (~mask[probe[:, 1], probe[:, 0]]).mean() > 0.9
    assert outlines(np.zeros((10, 10), dtype=bool)) == []


def test_a_slice_takes_a_few_milliseconds() -> None:
    model = draw_nucleus(np.random.default_rng(2), 160)
    model.slice_truth(0)  # the polar grids are built once per region
    start = time.perf_counter()
    for z in range(40, 80):
        model.slice_truth(z)
    assert (time.perf_counter() - start) / 40 < 0.03
