"""Close a volunteer's open strokes into loops, as the paper's code does (and, later, better).

Volunteers often trace one outline in several strokes, and near the top and bottom of a nucleus the
envelope is several islands, so each drawing's strokes must be closed into loops before they can be
filled. The paper says only that "closed loops were produced through connecting separate lines after
ordering them by minimizing distances" (Spiers et al. 2021, §2.4 and §4.8); the rule it used is the one
in the seed code's ``get_closed_points`` (``src/interiors_probability.py`` of
FrancisCrickInstitute/Etch-a-Cell-Nuclear-Envelope), and ``join_greedy`` is that rule:

* every stroke has two endpoints, its start and its end (a one-point stroke's two coincide);
* every pair of endpoints, a stroke's own two ends included, is ordered by straight-line distance,
  nearest first, and pairs are taken in that order whenever both their endpoints are still free, so
  each endpoint is matched exactly once; there is no distance cut-off;
* the loops are the cycles of the matching: along a stroke, across to the endpoint its end is matched
  with, along that stroke (reversed when entered at its end), and so on back to the first stroke. A
  stroke whose own two ends are matched is a loop by itself.

Equal distances are broken as the seed's stable sort leaves them: by the lower-numbered stroke of the
pair, then the other stroke, then that lower-numbered stroke's end before its start, then the other
stroke's end before its start (strokes numbered in drawing order, empty ones left out). Distances are
computed as ``sqrt(dx*dx + dy*dy)``, as in the seed, except that the seed squares with Python's ``**``
(the C library's ``pow``), which can differ from ``dx*dx`` in the last bit: two different pair distances
within a unit in the last place of each other may therefore be ordered differently from the seed, while
exact ties always resolve as in the seed. Loops are walked from the lowest-numbered stroke of each cycle,
forwards; the seed starts elsewhere in the cycle, which changes neither the loop nor its fill.

Where this project differs on purpose: empty strokes are dropped (the seed fails on them), and
``join_min_total`` offers the joining of least total chord length (the ``min-total`` rule, exact up to
``MAX_EXACT_STROKES`` strokes and greedy beyond): a greedy match can pair two near ends early and be
left with a long chord later, bridging two islands or cutting across an outline.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

Points = NDArray[np.float64]  # shape (n, 2): x, y in pixels
Indices = NDArray[np.intp]


def join_greedy(strokes: Sequence[Points]) -> list[Points]:
    """Loops (each an (n, 2) array, first point not repeated) from one volunteer's strokes, joined by
    the seed code's rule: endpoint pairs matched nearest first (see the module docstring)."""
    parts = _non_empty(strokes)
    if len(parts) <= 1:  # one stroke can only close on itself
        return [part.copy() for part in parts]
    return _loops_from_matching(parts, _greedy_matching(_endpoints(parts)))


def _non_empty(strokes: Sequence[Points]) -> list[Points]:
    return [np.asarray(s, dtype=np.float64) for s in strokes if len(s) > 0]


def _endpoints(parts: Sequence[Points]) -> Points:
    """Endpoint 2k is stroke k's start and 2k + 1 its end."""
    return np.array([p for s in parts for p in (s[0], s[-1])], dtype=np.float64)


def _greedy_matching(ends: Points) -> list[int]:
    """``partner[e]``: the endpoint that e is matched with, pairs taken nearest first while both are free."""
    first, second = _pairs_in_seed_order(len(ends) // 2)
    dx, dy = (ends[first] - ends[second]).T
    distance = np.sqrt(dx * dx + dy * dy)
    order = np.argsort(distance, kind="stable")  # stable: equal distances keep the seed's order
    partner = [-1] * len(ends)
    unmatched = len(ends)
    for a, b in zip(first[order].tolist(), second[order].tolist(), strict=True):
        if partner[a] < 0 and partner[b] < 0:
            partner[a], partner[b] = b, a
            unmatched -= 2
            if not unmatched:
                break
    return partner


@lru_cache(maxsize=128)
def _pairs_in_seed_order(n_strokes: int) -> tuple[Indices, Indices]:
    """Every unordered pair of the strokes' endpoints, listed in the order the seed code first lists it
    (by lower stroke, other stroke, then end before start on each side), so that a stable sort by
    distance breaks ties as the seed's does. Cached: the pairs depend only on the number of strokes."""
    first, second = np.triu_indices(2 * n_strokes, k=1)
    stroke_first, stroke_second = first // 2, second // 2  # first's stroke is never the higher one
    start_first, start_second = 1 - first % 2, 1 - second % 2  # 0 for an end, 1 for a start
    seed_rank = (stroke_first * n_strokes + stroke_second) * 4 + 2 * start_first + start_second
    order = np.argsort(seed_rank, kind="stable")
    first, second = first[order], second[order]
    first.setflags(write=False)
    second.setflags(write=False)
    return first, second


MAX_EXACT_STROKES = 6  # 12 endpoints: 4,096 matching states, about a millisecond


def join_min_total(strokes: Sequence[Points]) -> list[Points]:
    """Loops whose total joining distance is the smallest possible.

    Every way of closing strokes into loops is a perfect matching of their endpoints (an end matched
    with its own stroke's other end closes that stroke alone), so the best joining is a minimum-weight
    perfect matching, found exactly by dynamic programming over endpoint subsets. Greedy joining can
    pair a near end early and pay a long chord later; this cannot. Beyond ``MAX_EXACT_STROKES`` strokes
    the exact search grows too fast and greedy joining is used.
    """
    parts = _non_empty(strokes)
    if len(parts) > MAX_EXACT_STROKES:
        return join_greedy(parts)
    if not parts:
        return []
    ends = _endpoints(parts)
    distances = np.hypot(*(ends[:, None, :] - ends[None, :, :]).transpose(2, 0, 1))
    partner = _min_matching(distances)
    return _loops_from_matching(parts, partner)


def _min_matching(distances: NDArray[np.float64]) -> list[int]:
    m = len(distances)
    full = (1 << m) - 1
    cost = {full: 0.0}
    choice: dict[int, tuple[int, int]] = {}
    for mask in range(full - 1, -1, -1):
        if bin(mask).count("1") % 2:
            continue
        first = (~mask & -~mask).bit_length() - 1  # lowest endpoint not yet matched
        best = float("inf")
        for other in range(first + 1, m):
            if mask & (1 << other):
                continue
            rest = cost.get(mask | (1 << first) | (1 << other))
            if rest is not None and distances[first, other] + rest < best:
                best, choice[mask] = distances[first, other] + rest, (first, other)
        cost[mask] = best
    partner = [0] * m
    mask = 0
    while mask != full:
        a, b = choice[mask]
        partner[a], partner[b] = b, a
        mask |= (1 << a) | (1 << b)
    return partner


def _loops_from_matching(parts: Sequence[Points], partner: Sequence[int]) -> list[Points]:
    """Walk stroke → matched endpoint → next stroke until back at the start of each cycle."""
    used = [False] * len(parts)
    loops: list[Points] = []
    for start in range(len(parts)):
        if used[start]:
            continue
        pieces: list[Points] = []
        stroke, entry = start, 2 * start  # enter at its start, leave at its end
        while not used[stroke]:
            used[stroke] = True
            forward = entry == 2 * stroke
            pieces.append(parts[stroke] if forward else parts[stroke][::-1])
            exit_end = 2 * stroke + 1 if forward else 2 * stroke
            entry = partner[exit_end]
            stroke = entry // 2
        loops.append(np.concatenate(pieces))
    return loops


def joining_distance(strokes: Sequence[Points], loops: Sequence[Points]) -> float:
    """Total length of the chords a joining added: the loops' closed perimeter less the strokes' own
    lengths (what the joining rules compete on)."""

    def length(points: Points, closed: bool) -> float:
        path = np.vstack([points, points[:1]]) if closed else points
        return float(np.hypot(*np.diff(path, axis=0).T).sum())

    return sum(length(loop, True) for loop in loops) - sum(length(np.asarray(s), False) for s in strokes if len(s))
