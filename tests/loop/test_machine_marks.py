"""A predicted nucleus becomes FEM freehand marks that fill back to the same area."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from etchacell_loop.annotations import parse_classification
from etchacell_loop.cria.raster import fill_even_odd
from etchacell_loop.loop.machine_marks import (
    envelope_marks,
    is_machine_mark_id,
    mark_loops,
    outline_loops,
    reduction_body,
)
from etchacell_loop.simulation.correction import envelope_distance_px

MARK_KEYS = {
    "stepKey", "taskIndex", "taskKey", "taskType", "toolIndex", "toolType", "frame", "markId", "pathX", "pathY",
}  # fmt: skip


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def nucleus_with_cap_islands(shape: tuple[int, int] = (500, 460)) -> NDArray[np.bool_]:
    """A lobed nucleus with an invagination seen as a hole, two cap islands, one cut by the image edge."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    angle = np.arctan2(rows - 250.0, cols - 220.0)
    radius = np.hypot(rows - 250.0, (cols - 220.0) * 1.15)
    area = radius < 150 + 18 * np.sin(3 * angle) + 7 * np.cos(5 * angle)
    area &= ~(np.hypot(rows - 260.0, cols - 240.0) < 30)  # hole
    area |= np.hypot(rows - 60.0, cols - 400.0) < 25  # island
    area |= np.hypot(rows - 470.0, cols - 10.0) < 40  # island cut by the left and bottom edges
    return np.asarray(area)


def test_marks_fill_back_to_the_predicted_area() -> None:
    area = nucleus_with_cap_islands()
    marks = envelope_marks(area, frame=2, subject_id=100_000_123)
    assert dice(fill_even_odd(mark_loops(marks), area.shape), area) > 0.97
    assert dice(fill_even_odd(mark_loops(marks, frame=2), area.shape), area) > 0.97
    assert mark_loops(marks, frame=0) == []


def test_one_mark_per_outline_islands_and_holes_alike() -> None:
    area = nucleus_with_cap_islands()
    _, islands = ndimage.label(area)
    _, holes = ndimage.label(ndimage.binary_fill_holes(area) & ~area)
    assert (islands, holes) == (3, 1)
    marks = envelope_marks(area, subject_id=7)
    assert len(marks) == islands + holes


def test_marks_are_in_the_front_end_format() -> None:
    area = nucleus_with_cap_islands()
    height, width = area.shape
    marks = envelope_marks(area, frame=2, task_key="T1", subject_id=5)
    for mark in marks:
        assert set(mark) == MARK_KEYS
        assert (mark["stepKey"], mark["taskIndex"], mark["toolIndex"]) == ("S0", 0, 0)
        assert (mark["taskKey"], mark["taskType"], mark["toolType"], mark["frame"]) == (
            "T1",
            "drawing",
            "freehandLine",
            2,
        )
        x, y = np.array(mark["pathX"]), np.array(mark["pathY"])
        assert x.size == y.size >= 4
        assert (x[0], y[0]) == (x[-1], y[-1])  # closed
        assert x.min() >= 0 and x.max() <= width - 1 and y.min() >= 0 and y.max() <= height - 1
        assert all(round(v, 2) == v for v in mark["pathX"] + mark["pathY"])
    json.dumps(marks)  # plain JSON types only


def test_outlines_are_simplified_but_stay_on_the_boundary() -> None:
    area = nucleus_with_cap_islands()
    distance = envelope_distance_px(np.pad(area, 1))[1:-1, 1:-1]  # the image edge counts as boundary
    raw = outline_loops(area, tolerance_px=0.0)
    simplified = outline_loops(area, tolerance_px=1.0)
    assert sum(map(len, simplified)) < sum(map(len, raw)) / 5
    for loop in simplified:
        cols = np.round(loop[:, 0]).astype(int)
        rows = np.round(loop[:, 1]).astype(int)
        assert float(distance[rows, cols].max()) <= 1.5


def test_mark_ids_are_stable_per_subject_and_unique() -> None:
    area = nucleus_with_cap_islands()
    first = [m["markId"] for m in envelope_marks(area, subject_id=41)]
    again = [m["markId"] for m in envelope_marks(area, subject_id=41)]
    other = [m["markId"] for m in envelope_marks(area, subject_id=42)]
    assert first == again
    assert len(set(first)) == len(first)
    assert not set(first) & set(other)
    assert all(is_machine_mark_id(i) for i in first)
    assert not is_machine_mark_id("clhhuqm9") and not is_machine_mark_id(None)


def test_speckle_below_the_minimum_area_gives_no_mark() -> None:
    area = np.zeros((80, 80), dtype=bool)
    area[10:50, 10:50] = True
    area[70, 70] = True  # one stray pixel
    assert len(envelope_marks(area)) == 2 - 1
    assert len(envelope_marks(area, min_area_px=0.0)) == 2
    assert envelope_marks(np.zeros((20, 20), dtype=bool)) == []


def test_a_nucleus_filling_the_image_still_gives_a_closed_outline() -> None:
    area = np.ones((40, 50), dtype=bool)
    (mark,) = envelope_marks(area)
    assert dice(fill_even_odd(mark_loops([mark]), area.shape), area) > 0.97


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        envelope_marks(np.zeros((2, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match="negative"):
        envelope_marks(np.zeros((3, 4), dtype=bool), tolerance_px=-1.0)


def test_reduction_body_and_a_classification_that_keeps_the_marks() -> None:
    area = nucleus_with_cap_islands()
    marks = envelope_marks(area, frame=2, subject_id=9)
    body = reduction_body(9, marks)
    assert body == {"reduction": {"subject_id": 9, "data": {"data": marks}}}
    assert reduction_body(9, marks, subgroup="beta")["reduction"]["subgroup"] == "beta"
    # a volunteer who keeps every machine mark posts them back with their ids; the parser reads them
    annotations = [{"task": "T0", "taskType": "drawing", "value": marks}]
    parsed = parse_classification(annotations, {"classifier_version": "2.0"})
    assert not parsed.invalid
    assert [t.mark_id for t in parsed.tracings] == [m["markId"] for m in marks]
    assert {t.frame for t in parsed.tracings} == {2}
