"""Routing tracings from flipbook frames to slices, one drawing per volunteer and slice."""

from __future__ import annotations

import numpy as np

from etchacell_loop.annotations import FrameSize, Tracing
from etchacell_loop.cria.assembly import SliceAssembler, place_tracings
from etchacell_loop.subject_metadata import SliceKey, layout_metadata, subject_layout

SIZES = {f: FrameSize(1000, 1000) for f in range(5)}


def tracing(frame: int, x0: float = 100.0) -> Tracing:
    x = np.array([x0, x0 + 50, x0 + 50, x0])
    return Tracing(frame, x, np.array([100.0, 100, 150, 150]), "T0", "freehandLine")


def flipbook(subject_id: int, z: int) -> object:
    return subject_layout(subject_id, layout_metadata("roi", 2, [z - 10, z - 5, z, z + 5, z + 10]))


def test_marks_go_to_the_slice_their_frame_shows() -> None:
    layout = subject_layout(1, layout_metadata("roi", 2, [30, 35, 40, 45, 50]))
    placement = place_tracings([tracing(2), tracing(1), tracing(2, 300)], layout, SIZES)
    assert set(placement.strokes) == {SliceKey("roi", 40), SliceKey("roi", 35)}
    assert len(placement.strokes[SliceKey("roi", 40)]) == 2 and placement.unplaced_marks == 0
    assert placement.own_size == (1000, 1000)


def test_marks_on_frames_the_metadata_does_not_name_are_unplaced() -> None:
    layout = subject_layout(7, {})
    placement = place_tracings([tracing(0), tracing(3)], layout, SIZES)
    assert list(placement.strokes) == [SliceKey("subject:7", 0)] and placement.unplaced_frames == (3,)


def test_a_slice_gathers_drawings_from_every_subject_showing_it() -> None:
    a, b = (
        subject_layout(1, layout_metadata("roi", 2, [30, 35, 40, 45, 50])),
        subject_layout(2, layout_metadata("roi", 2, [35, 40, 45, 50, 55])),
    )
    assembler = SliceAssembler()
    assembler.add("v1", 10, a, place_tracings([tracing(2)], a, SIZES))  # v1 on slice 40, its target
    assembler.add("v2", 11, b, place_tracings([tracing(1)], b, SIZES))  # v2 on slice 40 from subject 2
    assembler.add("v1", 12, b, place_tracings([tracing(1, 400)], b, SIZES))  # v1 again on 40: loses to target
    assembler.add("v3", 13, a, place_tracings([], a, SIZES))  # an empty classification of subject 1
    forty = assembler.drawings(SliceKey("roi", 40))
    assert forty is not None
    assert [d.volunteer for d in forty.drawings] == ["v1", "v2"]
    assert forty.drawings[0].classification_id == 10 and forty.n_classifications == 3
    assert forty.subject_ids == (1,) and forty.shape == (1000, 1000)
    assert assembler.slices() == [SliceKey("roi", 40), SliceKey("roi", 45)]
    assert assembler.orphan_drawings() == 0


def test_drawings_in_another_grid_are_rescaled() -> None:
    layout = subject_layout(3, {})
    assembler = SliceAssembler()
    assembler.add("big", 1, layout, place_tracings([tracing(0)], layout, {0: FrameSize(1000, 1000)}))
    assembler.add("a", 2, layout, place_tracings([tracing(0)], layout, {0: FrameSize(1000, 1000)}))
    assembler.add("small", 3, layout, place_tracings([tracing(0)], layout, {0: FrameSize(500, 500)}))
    drawings = assembler.drawings(SliceKey("subject:3", 0))
    assert drawings is not None and drawings.shape == (1000, 1000)
    small = next(d for d in drawings.drawings if d.volunteer == "small")
    assert small.strokes[0][:, 0].max() == 300.0  # 150 px on a 500 px frame is 300 px on the slice


def test_no_size_anywhere_means_no_drawings_unless_a_fallback_is_given() -> None:
    layout = subject_layout(4, {})
    assembler = SliceAssembler()
    assembler.add("v", 1, layout, place_tracings([tracing(0)], layout, {}))
    assert assembler.drawings(SliceKey("subject:4", 0)) is None
    assembler.fallback_size = (800, 800)
    found = assembler.drawings(SliceKey("subject:4", 0))
    assert found is not None and found.shape == (800, 800)
