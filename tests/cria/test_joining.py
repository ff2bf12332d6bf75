"""Greedy stroke joining is the seed code's rule: endpoint pairs matched nearest first, loops from the matching.

The reference below is written from the rule's plain statement, independently of the module: list every
pair of endpoints (a stroke's own two ends included) in the seed's order, sort them by distance (Python's
sort is stable, so equal distances keep that order), take each pair whose endpoints are both still free,
then walk the cycles stroke → matched endpoint → next stroke.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from etchacell_loop.cria.joining import MAX_EXACT_STROKES, join_greedy, join_min_total
from etchacell_loop.cria.raster import fill_even_odd

END, START = "end", "start"
Endpoint = tuple[int, str]  # (stroke number, END or START)
Cycle = tuple[tuple[float, float], ...]


def seed_rule(strokes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The seed code's joining, as plainly as it can be written."""
    parts = [np.asarray(s, dtype=np.float64) for s in strokes if len(s) > 0]

    def point(endpoint: Endpoint) -> np.ndarray:
        stroke, side = endpoint
        return np.asarray(parts[stroke][-1] if side == END else parts[stroke][0])

    pairs = []  # listed by stroke, other stroke, then end before start on each side, as the seed lists them
    for i in range(len(parts)):
        for j in range(len(parts)):
            for side_i in (END, START):
                for side_j in (END, START):
                    if (i, side_i) != (j, side_j):
                        dx, dy = point((i, side_i)) - point((j, side_j))
                        pairs.append((math.sqrt(dx * dx + dy * dy), (i, side_i), (j, side_j)))
    pairs.sort(key=lambda pair: pair[0])

    partner: dict[Endpoint, Endpoint] = {}
    for _, a, b in pairs:
        if a not in partner and b not in partner:
            partner[a], partner[b] = b, a

    loops, walked = [], set()
    for first in range(len(parts)):
        pieces, stroke, entered_at = [], first, START
        while stroke not in walked:
            walked.add(stroke)
            pieces.append(parts[stroke] if entered_at == START else parts[stroke][::-1])
            stroke, entered_at = partner[(stroke, END if entered_at == START else START)]
        if pieces:
            loops.append(np.concatenate(pieces))
    return loops


def as_cycle(loop: np.ndarray) -> Cycle:
    """The loop's points from a fixed place and in a fixed direction, so that loops equal up to rotation
    and reversal compare equal."""
    points = [(float(x), float(y)) for x, y in np.asarray(loop)]
    lowest = min(points)
    candidates = []
    for sequence in (points, points[::-1]):
        for k, p in enumerate(sequence):
            if p == lowest:
                candidates.append(tuple(sequence[k:] + sequence[:k]))
    return min(candidates)


def same_loops(got: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> bool:
    return sorted(as_cycle(loop) for loop in got) == sorted(as_cycle(loop) for loop in expected)


def ellipse_arcs(rng: np.random.Generator, centre: np.ndarray, size: float, n_arcs: int) -> list[np.ndarray]:
    """One closed outline (ellipse, a little wobbly) broken into arcs, with a random gap after each."""
    a, b = size * rng.uniform(0.6, 1.0), size * rng.uniform(0.4, 1.0)
    tilt = rng.uniform(0, np.pi)
    cuts = np.sort(rng.uniform(0, 2 * np.pi, n_arcs)) + rng.uniform(0, 2 * np.pi)
    arcs = []
    for k in range(n_arcs):
        start = cuts[k]
        stop = cuts[k + 1] if k + 1 < n_arcs else cuts[0] + 2 * np.pi
        gap = rng.uniform(0, 0.6) * (stop - start) if rng.random() < 0.8 else 0.0
        t = np.linspace(start, stop - gap, max(2, int(rng.integers(2, 60))))
        x, y = a * np.cos(t), b * np.sin(t)
        points = np.column_stack([x * np.cos(tilt) - y * np.sin(tilt), x * np.sin(tilt) + y * np.cos(tilt)])
        arcs.append(centre + points + rng.normal(0, size * 0.02, points.shape))
    return arcs


def broken_outline(rng: np.random.Generator) -> list[np.ndarray]:
    return ellipse_arcs(rng, rng.uniform(100, 300, 2), rng.uniform(20, 150), int(rng.integers(1, 9)))


def islands(rng: np.random.Generator) -> list[np.ndarray]:
    strokes = []
    for _ in range(rng.integers(2, 6)):
        strokes += ellipse_arcs(rng, rng.uniform(0, 400, 2), rng.uniform(5, 40), int(rng.integers(1, 4)))
    return strokes


def closed_strokes(rng: np.random.Generator) -> list[np.ndarray]:
    """Whole outlines in one stroke each, some with the first point repeated at the end."""
    strokes = []
    for _ in range(rng.integers(1, 5)):
        (loop,) = ellipse_arcs(rng, rng.uniform(50, 350, 2), rng.uniform(10, 80), 1)
        strokes.append(np.vstack([loop, loop[:1]]) if rng.random() < 0.5 else loop)
    return strokes


def scribbles(rng: np.random.Generator) -> list[np.ndarray]:
    """Random walks, from a single stroke to dozens, some of one point."""
    count = int(rng.choice([1, 1, 2, 3, 5, 8, 13, 30]))
    return [
        np.cumsum(rng.normal(0, 15, (int(rng.integers(1, 12)), 2)), axis=0) + rng.uniform(0, 400, 2)
        for _ in range(count)
    ]


def on_a_grid(rng: np.random.Generator) -> list[np.ndarray]:
    """Strokes with integer endpoints on a small grid: equal distances and shared endpoints everywhere,
    so the tie-breaking decides the loops."""
    return [rng.integers(0, 5, (int(rng.integers(1, 4)), 2)).astype(np.float64) for _ in range(rng.integers(1, 10))]


Generator = Callable[[np.random.Generator], list[np.ndarray]]
GENERATORS: dict[str, Generator] = {
    "broken outline": broken_outline,
    "islands": islands,
    "closed strokes": closed_strokes,
    "scribbles": scribbles,
    "on a grid": on_a_grid,
}
CASES_PER_KIND = 80


def drawn_anyhow(rng: np.random.Generator, strokes: list[np.ndarray]) -> list[np.ndarray]:
    """The same strokes as a volunteer might have drawn them: any order, any direction, with the odd
    empty stroke."""
    drawn = [s[::-1] if rng.random() < 0.5 else s for s in strokes]
    drawn = [drawn[k] for k in rng.permutation(len(drawn))]
    if rng.random() < 0.2:
        drawn.insert(int(rng.integers(0, len(drawn) + 1)), np.empty((0, 2)))
    return drawn


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_greedy_joining_is_the_seed_rule(kind: str) -> None:
    rng = np.random.default_rng(sorted(GENERATORS).index(kind))
    for case in range(CASES_PER_KIND):
        strokes = drawn_anyhow(rng, GENERATORS[kind](rng))
        got = join_greedy(strokes)
        assert same_loops(got, seed_rule(strokes)), f"{kind} case {case}: {len(strokes)} strokes"
        assert sum(len(loop) for loop in got) == sum(len(s) for s in strokes)  # every point once


def segment(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=np.float64)


def test_equal_distances_go_to_the_lower_numbered_strokes_first() -> None:
    """Three strokes running outwards from points 1 apart: the middle stroke's start is exactly 1 from
    both others' starts. The seed lists the middle stroke's pair with the lower-numbered of the two first,
    so which one it joins depends only on the drawing order; the rest follows by distance."""
    middle = segment((0.0, 0.0), (0.0, 10.0))
    right = segment((1.0, 0.0), (10.0, -5.0))
    left = segment((-1.0, 0.0), (-10.0, -5.0))
    # starts joined middle-right, then middle's end to left's start, left's end to right's end
    assert same_loops(join_greedy([middle, right, left]), [np.vstack([middle, left, right[::-1]])])
    assert same_loops(join_greedy([middle, left, right]), [np.vstack([middle, right, left[::-1]])])


def test_equal_distances_take_an_end_before_a_start() -> None:
    """A point equally far from both ends of another stroke is joined to that stroke's end, whichever of
    the two strokes comes first."""
    upright = segment((0.0, 0.0), (0.0, 2.0))
    across = segment((1.0, 1.0), (5.0, 1.0))  # its start is √2 from both of upright's ends
    assert same_loops(join_greedy([upright, across]), [np.vstack([upright, across])])
    assert same_loops(join_greedy([across, upright]), [np.vstack([across, upright])])


def arc(degrees_from: float, degrees_to: float, n: int = 60, r: float = 100.0) -> np.ndarray:
    t = np.radians(np.linspace(degrees_from, degrees_to, n))
    return np.column_stack([200 + r * np.cos(t), 200 + r * np.sin(t)])


def test_three_arcs_each_close_on_their_own_as_in_the_seed() -> None:
    """A circle cut into the arcs 50-230°, 230-330° and 330-50°, each drawn 30° short at both ends (60°
    gaps). Each arc's own ends are nearer than the gaps (the two short arcs' strictly, so they close
    first, leaving the long arc nothing nearer than its own ends), so the seed closes each arc on itself:
    three thin segments. Walking a chain from the first stroke instead joins all three into one
    near-disk."""
    strokes = [arc(80, 200), arc(260, 300), arc(0, 20)]
    loops = join_greedy(strokes)
    assert same_loops(loops, strokes)  # three loops, each one arc closed by its chord
    assert same_loops(loops, seed_rule(strokes))
    segments = sum(100.0**2 / 2 * (np.radians(span) - np.sin(np.radians(span))) for span in (120, 40, 20))
    area = int(fill_even_odd(loops, (400, 400)).sum())
    assert area == pytest.approx(segments, rel=0.03)
    assert area < 0.3 * np.pi * 100.0**2


def test_one_stroke_closes_on_itself_and_empty_strokes_are_dropped() -> None:
    stroke = arc(0, 300)
    (loop,) = join_greedy([np.empty((0, 2)), stroke])
    np.testing.assert_array_equal(loop, stroke)
    assert loop is not stroke
    assert join_greedy([]) == [] and join_greedy([np.empty((0, 2))]) == []
    (dot,) = join_greedy([np.array([[5.0, 6.0]])])
    np.testing.assert_array_equal(dot, [[5.0, 6.0]])


def test_min_total_uses_the_greedy_rule_beyond_its_exact_limit() -> None:
    rng = np.random.default_rng(5)
    strokes = drawn_anyhow(rng, islands(rng) + islands(rng))
    while len([s for s in strokes if len(s)]) <= MAX_EXACT_STROKES:
        strokes += islands(rng)
    assert same_loops(join_min_total(strokes), seed_rule(strokes))
