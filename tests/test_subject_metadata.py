"""Subject metadata → which slice each flipbook frame shows."""

from __future__ import annotations

import json

from etchacell_loop.subject_metadata import (
    SliceKey,
    export_subject_metadata,
    layout_metadata,
    subject_layout,
)


def test_flipbook_frames_map_to_their_slices() -> None:
    metadata = {"Raw XY resolution (nm)": "10", **layout_metadata("cell-3", 2, [30, 35, 40, 45, 50], 2.0)}
    layout = subject_layout(77, metadata)
    assert layout.own_slice == SliceKey("cell-3", 40) and layout.target_frame == 2
    assert [layout.slice_of(f) for f in range(5)] == [SliceKey("cell-3", z) for z in (30, 35, 40, 45, 50)]
    assert layout.slice_of(5) is None and layout.pixel_size_nm == 20.0 and not layout.problems


def test_a_subject_without_layout_is_its_own_slice_on_frame_0() -> None:
    layout = subject_layout(12, {"Filename": "cat.jpg"})
    assert layout.own_slice == SliceKey("subject:12", 0)
    assert layout.slice_of(0) == layout.own_slice and layout.slice_of(1) is None
    assert layout.pixel_size_nm is None


def test_frame_slices_as_a_json_list_and_numbers_as_numbers() -> None:
    layout = subject_layout(5, {"#roi": "r", "#target_frame": 1, "#frame_slices": "[3, 4, 5]"})
    assert layout.own_slice == SliceKey("r", 4) and layout.slice_of(2) == SliceKey("r", 5)


def test_unreadable_layout_is_a_problem_and_falls_back() -> None:
    layout = subject_layout(9, {"#roi": "r", "#slice": "x", "#target_frame": "1.5", "Scaling factor": "-2"})
    assert layout.own_slice == SliceKey("subject:9", 0)
    assert len(layout.problems) == 3 and any("#slice" in p for p in layout.problems)
    clash = subject_layout(9, {"#roi": "r", "#slice": "41", "#target_frame": "0", "#frame_slices": "40,45"})
    assert clash.own_slice == SliceKey("r", 41) and clash.slice_of(1) is None
    assert "disagrees" in clash.problems[0]
    outside = subject_layout(9, {"#roi": "r", "#target_frame": "4", "#frame_slices": "40,45"})
    assert outside.frame_slices is None and "outside" in outside.problems[0]


def test_export_subject_data() -> None:
    data = json.dumps({"458021": {"retired": None, "Filename": "a.jpg", "#roi": "r"}})
    assert export_subject_metadata(data, 458021) == {"Filename": "a.jpg", "#roi": "r"}
    assert export_subject_metadata(data, 1) == {} and export_subject_metadata("{not json", 1) == {}
