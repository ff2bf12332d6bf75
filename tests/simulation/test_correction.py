"""Volunteers judge the machine's outline against the truth; the overlay route recovers the outline."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from etchacell_loop.simulation.correction import (
    MachineMark,
    correct_marks,
    envelope_distance_px,
    marks_from_overlay,
)
from etchacell_loop.simulation.crowd import Behaviour, make_volunteer
from etchacell_loop.simulation.shapes import SliceTruth, outlines

SHAPE = (200, 240)


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return np.asarray((xx - cx) ** 2 + (yy - cy) ** 2 <= r**2)


def truth_with_two_islands() -> SliceTruth:
    nucleus = disc(80, 100, 45) | disc(185, 100, 30)
    nucleolus = disc(80, 100, 12)
    return SliceTruth(z=3, nucleus=nucleus, nucleolus=nucleolus, organelles=())


def loop_mark(mark_id: str, mask: np.ndarray, push_px: float = 0.0) -> MachineMark:
    """The outline of ``mask`` as a closed mark, pushed ``push_px`` outwards."""
    (loop,) = outlines(mask)
    centre = loop.mean(axis=0)
    direction = (loop - centre) / np.linalg.norm(loop - centre, axis=1, keepdims=True)
    points = loop + push_px * direction
    closed = np.vstack([points, points[:1]])
    return MachineMark(mark_id, 0, closed[:, 0].copy(), closed[:, 1].copy())


def max_distance_px(points_x: np.ndarray, points_y: np.ndarray, truth: SliceTruth) -> float:
    distance = envelope_distance_px(truth.nucleus)
    rows = np.clip(np.round(points_y).astype(int), 0, SHAPE[0] - 1)
    cols = np.clip(np.round(points_x).astype(int), 0, SHAPE[1] - 1)
    return float(distance[rows, cols].max())


def test_careful_volunteer_keeps_good_marks_and_fixes_a_wrong_one() -> None:
    truth = truth_with_two_islands()
    good = loop_mark("clgood01", disc(80, 100, 45))
    wrong = loop_mark("clwrong1", disc(185, 100, 30), push_px=9.0)  # 9 px outside the small island
    nucleolus = loop_mark("clnucl01", truth.nucleolus)  # on another structure
    rng = np.random.default_rng(4)
    careful = make_volunteer("careful", Behaviour.CAREFUL, rng)
    submitted = correct_marks([good, wrong, nucleolus], truth, careful, rng)
    kept = [m for m in submitted if m.kept]
    assert [m.mark_id for m in kept] == ["clgood01"]
    assert np.array_equal(kept[0].stroke.x_px, good.x_px)  # untouched
    redrawn = [m for m in submitted if not m.kept]
    assert redrawn, "the wrong mark's island was redrawn"
    for mark in redrawn:
        assert max_distance_px(mark.stroke.x_px, mark.stroke.y_px, truth) < 5.0
        assert mark.stroke.x_px.min() > 140  # on the small island, where the wrong mark was


def test_careful_volunteer_draws_a_missing_island() -> None:
    truth = truth_with_two_islands()
    rng = np.random.default_rng(1)
    careful = make_volunteer("careful", Behaviour.CAREFUL, rng)
    submitted = correct_marks([loop_mark("clgood01", disc(80, 100, 45))], truth, careful, rng)
    assert submitted[0].mark_id == "clgood01"
    assert any(not m.kept and m.stroke.x_px.min() > 140 for m in submitted)


def test_some_volunteers_accept_everything() -> None:
    truth = truth_with_two_islands()
    rng = np.random.default_rng(2)
    marks = [loop_mark("clwrong1", disc(185, 100, 30), push_px=9.0), loop_mark("clnucl01", truth.nucleolus)]
    submitted = correct_marks(marks, truth, make_volunteer("x", Behaviour.EMPTY, rng), rng)
    assert [m.mark_id for m in submitted] == ["clwrong1", "clnucl01"]


def test_sloppy_volunteers_fix_less_than_careful_ones() -> None:
    truth = truth_with_two_islands()
    wrong = [loop_mark("clwrong1", disc(185, 100, 30), push_px=9.0)]
    rng = np.random.default_rng(3)
    left_wrong = {Behaviour.CAREFUL: 0, Behaviour.SLOPPY: 0}
    for behaviour in left_wrong:
        for _ in range(40):
            volunteer = make_volunteer("v", behaviour, rng)
            submitted = correct_marks(wrong, truth, volunteer, rng)
            left_wrong[behaviour] += any(m.mark_id == "clwrong1" for m in submitted)
    assert left_wrong[Behaviour.CAREFUL] == 0
    assert 5 <= left_wrong[Behaviour.SLOPPY] <= 35


@pytest.mark.parametrize("quality", [90, 60])
def test_overlay_outline_is_recovered_within_a_few_pixels(quality: int) -> None:
    """An outline drawn 3 px wide in magenta on a noisy slice, JPEG-compressed, read back."""
    rng = np.random.default_rng(0)
    grey = (120 + 30 * rng.standard_normal(SHAPE)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(np.dstack([grey] * 3), mode="RGB")
    theta = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    x = 110 + 60 * np.cos(theta) + 6 * np.cos(3 * theta)
    y = 95 + 45 * np.sin(theta)
    ImageDraw.Draw(image).line([*zip(x.tolist(), y.tolist(), strict=True), (x[0], y[0])], fill=(255, 0, 255), width=3)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    (mark,) = marks_from_overlay(decoded, frame=1)
    assert mark.frame == 1 and mark.mark_id is None
    drawn = np.zeros(SHAPE, bool)
    drawn[np.round(y).astype(int), np.round(x).astype(int)] = True
    distance = ndimage.distance_transform_edt(~drawn)
    rows = np.clip(np.round(mark.y_px).astype(int), 0, SHAPE[0] - 1)
    cols = np.clip(np.round(mark.x_px).astype(int), 0, SHAPE[1] - 1)
    assert distance[rows, cols].max() <= 3.0
    # …and it goes all the way round
    drawn_back = np.zeros(SHAPE, bool)
    drawn_back[rows, cols] = True
    back = ndimage.distance_transform_edt(~drawn_back)
    assert back[np.round(y).astype(int), np.round(x).astype(int)].max() <= 3.0


def test_a_slice_without_magenta_has_no_marks() -> None:
    grey = np.full((*SHAPE, 3), 128, np.uint8)
    grey[50:60, 50:60] = (250, 40, 40)  # red is not magenta
    assert marks_from_overlay(grey) == []
