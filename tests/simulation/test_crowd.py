"""Synthetic volunteers: each behaviour leaves the trace it should, and crowds are assigned fairly."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from etchacell_loop.cria.joining import join_greedy
from etchacell_loop.cria.raster import fill_even_odd
from etchacell_loop.simulation.crowd import (
    Behaviour,
    CrowdMix,
    SimStroke,
    Volunteer,
    assign_crowd,
    make_volunteer,
    spread_classifications,
    trace,
)
from etchacell_loop.simulation.shapes import SliceTruth, draw_nucleus

N_SLICES = 60
MIDDLE = N_SLICES // 2
SHAPE = (1000, 1000)


@pytest.fixture(scope="module")
def flipbooks() -> list[list[SliceTruth]]:
    """Two nuclei's flipbooks around their middle slice: frames ±10, ±5 slices, target in the middle."""
    books = []
    for seed in (1, 4):
        model = draw_nucleus(np.random.default_rng(seed), N_SLICES)
        books.append([model.slice_truth(MIDDLE + offset) for offset in (-10, -5, 0, 5, 10)])
    return books


def volunteer(behaviour: Behaviour, seed: int = 0, **changes: Any) -> Volunteer:
    made = make_volunteer(f"v-{behaviour}", behaviour, np.random.default_rng(seed))
    return replace(made, **changes) if changes else made


def fill(strokes: list[SimStroke]) -> np.ndarray:
    loops = join_greedy([np.column_stack([s.x_px, s.y_px]) for s in strokes])
    return fill_even_odd(loops, SHAPE)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def test_a_careful_volunteer_traces_the_envelope_in_one_closed_stroke(flipbooks: list[list[SliceTruth]]) -> None:
    rng = np.random.default_rng(11)
    for book in flipbooks:
        for seed in range(3):
            strokes = trace(volunteer(Behaviour.CAREFUL, seed), book, 2, rng)
            assert len(strokes) == 1 and strokes[0].frame == 2
            (stroke,) = strokes
            assert 350 < stroke.n_points < 1200  # a mouse recording of the whole outline
            gaps = np.hypot(np.diff(stroke.x_px), np.diff(stroke.y_px))
            assert 1.4 < float(np.median(gaps)) < 3.2
            assert np.hypot(stroke.x_px[-1] - stroke.x_px[0], stroke.y_px[-1] - stroke.y_px[0]) < 10  # closed
            assert dice(fill(strokes), book[2].nucleus) > 0.95


def test_cap_slices_are_traced_island_by_island() -> None:
    model = draw_nucleus(np.random.default_rng(0), N_SLICES)
    cap = next(
        truth
        for truth in (model.slice_truth(z) for z in range(N_SLICES))
        if ndimage.label(truth.nucleus)[1] >= 2 and truth.nucleus.sum() > 20_000
    )
    strokes = trace(volunteer(Behaviour.CAREFUL, 3, min_island_area_px=0.0), [cap] * 5, 2, np.random.default_rng(2))
    assert len(strokes) == len(cap.nucleus_outlines) >= 2
    assert dice(fill(strokes), cap.nucleus) > 0.9


def test_offset_volunteers_are_systematically_outside_or_inside(flipbooks: list[list[SliceTruth]]) -> None:
    rng = np.random.default_rng(5)
    for book in flipbooks:
        truth = int(book[2].nucleus.sum())
        outer = [fill(trace(volunteer(Behaviour.OFFSET, s, offset_px=4.0), book, 2, rng)).sum() for s in range(3)]
        inner = [fill(trace(volunteer(Behaviour.OFFSET, s, offset_px=-4.0), book, 2, rng)).sum() for s in range(3)]
        assert all(area > truth * 1.015 for area in outer)
        assert all(area < truth * 0.985 for area in inner)


def test_offset_volunteers_keep_their_side() -> None:
    signs = {np.sign(volunteer(Behaviour.OFFSET, seed).offset_px) for seed in range(12)}
    assert signs == {-1.0, 1.0}  # both kinds exist
    for seed in range(12):
        offset = abs(volunteer(Behaviour.OFFSET, seed).offset_px)
        assert 2.0 <= offset <= 6.0
    assert volunteer(Behaviour.CAREFUL).offset_px == 0.0


def test_a_sloppy_volunteer_is_close_but_not_exact(flipbooks: list[list[SliceTruth]]) -> None:
    rng = np.random.default_rng(8)
    scores = [
        dice(fill(trace(volunteer(Behaviour.SLOPPY, s), book, 2, rng)), book[2].nucleus)
        for s in range(4)
        for book in flipbooks
    ]
    careful = [
        dice(fill(trace(volunteer(Behaviour.CAREFUL, s), book, 2, rng)), book[2].nucleus)
        for s in range(4)
        for book in flipbooks
    ]
    assert min(scores) > 0.85
    assert np.mean(scores) < np.mean(careful)


def test_partial_tracings_are_several_open_strokes_that_joining_closes(flipbooks: list[list[SliceTruth]]) -> None:
    rng = np.random.default_rng(3)
    counts, scores = [], []
    for seed in range(6):
        for book in flipbooks:
            strokes = trace(volunteer(Behaviour.PARTIAL, seed), book, 2, rng)
            counts.append(len(strokes))
            for stroke in strokes:
                assert np.hypot(stroke.x_px[-1] - stroke.x_px[0], stroke.y_px[-1] - stroke.y_px[0]) > 3  # open
            scores.append(dice(fill(strokes), book[2].nucleus))
    assert min(counts) >= 1 and max(counts) >= 3 and np.mean(counts) >= 2
    assert np.median(scores) > 0.95  # small gaps: the chords barely matter
    assert min(scores) > 0.6  # a missing chunk: the chord cuts off part of the nucleus


def test_nucleolus_tracers_stay_inside_and_do_not_cover_the_nucleus(flipbooks: list[list[SliceTruth]]) -> None:
    rng = np.random.default_rng(4)
    for book in flipbooks:
        truth = book[2]
        assert truth.nucleolus.any()
        traced = fill(trace(volunteer(Behaviour.NUCLEOLUS), book, 2, rng))
        assert dice(traced, truth.nucleolus) > 0.85
        assert traced.sum() < 0.2 * truth.nucleus.sum()


def test_false_positives_trace_an_organelle_outside_the_nucleus(flipbooks: list[list[SliceTruth]]) -> None:
    rng = np.random.default_rng(6)
    for book in flipbooks:
        truth = book[2]
        for seed in range(3):
            traced = fill(trace(volunteer(Behaviour.FALSE_POSITIVE, seed), book, 2, rng))
            assert traced.any()
            assert (traced & truth.nucleus).sum() < 10
            assert max(dice(traced, organelle) for organelle in truth.organelles) > 0.5


def test_wrong_frame_traces_another_frames_nucleus_and_says_so(flipbooks: list[list[SliceTruth]]) -> None:
    rng = np.random.default_rng(9)
    frames_seen: Counter[int] = Counter()
    for seed in range(8):
        book = flipbooks[seed % 2]
        strokes = trace(volunteer(Behaviour.WRONG_FRAME, seed), book, 2, rng)
        (frame,) = {s.frame for s in strokes}
        assert frame != 2
        frames_seen[frame] += 1
        assert dice(fill(strokes), book[frame].nucleus) > 0.95  # right for the frame it was drawn on
    assert frames_seen[1] + frames_seen[3] > frames_seen[0] + frames_seen[4]  # the nearest planes are likeliest


def test_empty_draws_nothing_and_graffiti_ignores_the_nucleus(flipbooks: list[list[SliceTruth]]) -> None:
    rng = np.random.default_rng(10)
    book = flipbooks[0]
    assert trace(volunteer(Behaviour.EMPTY), book, 2, rng) == []
    strokes = trace(volunteer(Behaviour.GRAFFITI), book, 2, rng)
    assert 1 <= len(strokes) <= 3
    assert all(s.n_points >= 40 for s in strokes)
    for stroke in strokes:
        assert (stroke.x_px >= 0).all() and (stroke.x_px <= 999).all()
        assert (stroke.y_px >= 0).all() and (stroke.y_px <= 999).all()
    assert dice(fill(strokes), book[2].nucleus) < 0.5


def test_a_target_without_a_nucleus_gets_no_envelope_tracing() -> None:
    blank = np.zeros(SHAPE, dtype=bool)
    nothing = SliceTruth(0, blank, blank, ())
    rng = np.random.default_rng(1)
    for behaviour in (Behaviour.CAREFUL, Behaviour.SLOPPY, Behaviour.PARTIAL, Behaviour.OFFSET, Behaviour.NUCLEOLUS):
        assert trace(volunteer(behaviour), [nothing] * 5, 2, rng) == []


def test_the_same_generator_state_gives_the_same_strokes(flipbooks: list[list[SliceTruth]]) -> None:
    first = trace(volunteer(Behaviour.SLOPPY), flipbooks[0], 2, np.random.default_rng(42))
    again = trace(volunteer(Behaviour.SLOPPY), flipbooks[0], 2, np.random.default_rng(42))
    assert all(
        np.array_equal(a.x_px, b.x_px) and np.array_equal(a.y_px, b.y_px) for a, b in zip(first, again, strict=True)
    )


def test_classifications_are_spread_evenly() -> None:
    counts = spread_classifications(7, 52, np.random.default_rng(0))
    assert counts.sum() == 52 and set(counts.tolist()) == {7, 8}


def test_assignment_never_repeats_a_volunteer_on_a_subject_and_gives_prolific_volunteers_their_share() -> None:
    rng = np.random.default_rng(12)
    counts = spread_classifications(300, 7500, rng)
    mix = CrowdMix(prolific_share=0.1)
    assignment = assign_crowd(mix, counts, rng)
    assert assignment.n_classifications == 7500
    pairs = set(zip(assignment.subject_index.tolist(), assignment.volunteer_index.tolist(), strict=True))
    assert len(pairs) == 7500  # nobody classified a subject twice
    assert np.array_equal(np.bincount(assignment.subject_index, minlength=300), counts)
    per_volunteer = np.bincount(assignment.volunteer_index, minlength=len(assignment.volunteers))
    prolific = [i for i, v in enumerate(assignment.volunteers) if v.prolific]
    assert [assignment.volunteers[i].behaviour for i in prolific] == list(mix.prolific_behaviours)
    assert per_volunteer[prolific].sum() == pytest.approx(750, abs=3)
    assert all(assignment.volunteers[i].logged_in for i in prolific)
    ordinary = [v for v in assignment.volunteers if not v.prolific]
    assert 0.5 < np.mean([v.logged_in for v in ordinary]) < 0.8
    anonymous = [v for v in ordinary if not v.logged_in]
    assert all(v.key == f"not-logged-in-{v.ip_token}" and v.user_id is None for v in anonymous)
    assert len({v.key for v in assignment.volunteers}) == len(assignment.volunteers)
    assert len({v.user_id for v in assignment.volunteers if v.logged_in}) == sum(
        v.logged_in for v in assignment.volunteers
    )
    efforts = np.sort(per_volunteer[[i for i, v in enumerate(assignment.volunteers) if not v.prolific]])
    assert efforts[len(efforts) // 2] <= 6 and efforts[-1] >= 20  # heavy-tailed: most do a few, some do many
    behaviours = Counter(v.behaviour for v in ordinary)
    assert behaviours[Behaviour.CAREFUL] > behaviours[Behaviour.GRAFFITI] > 0


def test_a_prolific_volunteer_cannot_exceed_one_classification_per_subject() -> None:
    rng = np.random.default_rng(1)
    mix = CrowdMix.only(Behaviour.CAREFUL).with_prolific(1, share=0.9)
    assignment = assign_crowd(mix, [10] * 20, rng)
    prolific = next(i for i, v in enumerate(assignment.volunteers) if v.prolific)
    assert int((assignment.volunteer_index == prolific).sum()) == 20
    assert assignment.n_classifications == 200


def test_a_mix_of_one_behaviour_and_mixes_from_text() -> None:
    assignment = assign_crowd(CrowdMix.only(Behaviour.SLOPPY), [5] * 10, np.random.default_rng(0))
    assert {v.behaviour for v in assignment.volunteers} == {Behaviour.SLOPPY}
    assert not any(v.prolific for v in assignment.volunteers)
    mix = CrowdMix.parse("careful=0.7, wrong_frame=0.3")
    assert mix.fractions == {Behaviour.CAREFUL: 0.7, Behaviour.WRONG_FRAME: 0.3} and mix.prolific_share == 0.0
    assert CrowdMix.parse("careful").fractions == {Behaviour.CAREFUL: 1.0}
    with pytest.raises(ValueError, match="bad mix entry 'carefull=1'"):
        CrowdMix.parse("carefull=1")
    with pytest.raises(ValueError, match="non-negative"):
        CrowdMix(fractions={Behaviour.CAREFUL: -1.0})
    three = CrowdMix.only(Behaviour.CAREFUL).with_prolific(4)
    assert three.prolific_behaviours == (
        Behaviour.NUCLEOLUS,
        Behaviour.FALSE_POSITIVE,
        Behaviour.OFFSET,
        Behaviour.NUCLEOLUS,
    )
    assert three.prolific_share > 0
