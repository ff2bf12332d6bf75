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
