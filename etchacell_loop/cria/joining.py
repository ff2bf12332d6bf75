"""Close a volunteer's open strokes into loops, as the paper's code does (and, later, better).

Volunteers often trace one outline in several strokes, and near the top and bottom of a nucleus the
envelope is several islands. The seed code joins strokes greedily: from the end of the current chain
it goes to the nearest free endpoint — another stroke's start or end (entering at the end reverses
that stroke) or the chain's own start, which closes the loop — with no distance cut-off. A stroke
whose own ends are nearest to each other therefore stays its own loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

Points = NDArray[np.float64]  # shape (n, 2): x, y in pixels


def join_greedy(strokes: Sequence[Points]) -> list[Points]:
    """Loops (each an (n, 2) array, first point not repeated) from one volunteer's strokes."""
    remaining = [np.asarray(s, dtype=np.float64) for s in strokes if len(s) > 0]
    loops: list[Points] = []
    while remaining:
        chain = [remaining.pop(0)]
        while True:
            tail, head = chain[-1][-1], chain[0][0]
            best_distance = float(np.hypot(*(tail - head)))
            best: tuple[int, bool] | None = None  # (stroke index, reversed?)
            for index, stroke in enumerate(remaining):
                for reverse, point in ((False, stroke[0]), (True, stroke[-1])):
                    distance = float(np.hypot(*(tail - point)))
                    if distance < best_distance:
                        best_distance, best = distance, (index, reverse)
            if best is None:  # the chain's own start is nearest: the loop closes
                break
            stroke = remaining.pop(best[0])
            chain.append(stroke[::-1] if best[1] else stroke)
        loops.append(np.concatenate(chain))
    return loops


MAX_EXACT_STROKES = 6  # 12 endpoints: 4,096 matching states, about a millisecond


def join_min_total(strokes: Sequence[Points]) -> list[Points]:
    """Loops whose total joining distance is the smallest possible.

    Every way of closing strokes into loops is a perfect matching of their endpoints (an end matched
    with its own stroke's other end closes that stroke alone), so the best joining is a minimum-weight
    perfect matching, found exactly by dynamic programming over endpoint subsets. Greedy joining can
    pair a near end early and pay a long chord later; this cannot. Beyond ``MAX_EXACT_STROKES`` strokes
    the exact search grows too fast and greedy joining is used.
    """
    parts = [np.asarray(s, dtype=np.float64) for s in strokes if len(s) > 0]
    if len(parts) > MAX_EXACT_STROKES:
        return join_greedy(parts)
    if not parts:
        return []
    ends = np.array([p for s in parts for p in (s[0], s[-1])])  # endpoint 2k = start of k, 2k+1 = its end
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
