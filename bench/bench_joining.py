"""How much the stroke-joining rule changes a volunteer's filled area, and what each rule costs.

Random broken outlines (an ellipse, a little wobbly, cut into 2 to 8 arcs with a random gap after most
arcs, each arc drawn in either direction, the arcs in any order) are closed into loops by three rules
and filled even-odd, as the consensus fills a volunteer's drawing:

* ``chain walk`` — the chain walk this project used before (kept below as ``chain_walk_joining``): from
  stroke 0, repeatedly go to the free endpoint nearest the chain's tail unless the chain's own start is
  nearer, which closes the loop;
* ``greedy`` — the seed code's rule (``cria.joining.join_greedy``): all endpoint pairs matched globally,
  nearest first;
* ``min-total`` — the joining of least total chord length (``cria.joining.join_min_total``).

For each pair of rules it prints how many outlines' filled areas differ (Dice < 0.99) and how many by
more than 10% of the larger area, then the time per call of each rule on these outlines and on sets of
dozens of strokes.

    .venv/bin/python bench/bench_joining.py [--outlines 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Sequence

import numpy as np

from etchacell_loop.cria.joining import Points, join_greedy, join_min_total
from etchacell_loop.cria.raster import fill_even_odd

SHAPE = (400, 400)
Join = Callable[[Sequence[Points]], list[Points]]


def chain_walk_joining(strokes: Sequence[Points]) -> list[Points]:
    """The chain walk this project used before: grow a chain from the first remaining stroke, each time
    appending the stroke with the free endpoint nearest the chain's tail (reversed when that endpoint is
    its end), and close the loop when the chain's own start is nearer than every free endpoint."""
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
            if best is None:
                break
            stroke = remaining.pop(best[0])
            chain.append(stroke[::-1] if best[1] else stroke)
        loops.append(np.concatenate(chain))
    return loops


RULES: dict[str, Join] = {"chain walk": chain_walk_joining, "greedy": join_greedy, "min-total": join_min_total}


def broken_outline(rng: np.random.Generator) -> list[Points]:
    """One outline as a volunteer might trace it in several strokes, with gaps, in any order and direction."""
    centre, size = rng.uniform(150, 250, 2), rng.uniform(20, 140)
    a, b, tilt = size, size * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
    n_arcs = int(rng.integers(2, 9))
    cuts = np.sort(rng.uniform(0, 2 * np.pi, n_arcs))
    strokes = []
    for k in range(n_arcs):
        start, stop = cuts[k], cuts[k + 1] if k + 1 < n_arcs else cuts[0] + 2 * np.pi
        gap = rng.uniform(0, 0.6) * (stop - start) if rng.random() < 0.8 else 0.0
        t = np.linspace(start, stop - gap, int(rng.integers(2, 60)))
        x, y = a * np.cos(t), b * np.sin(t)
        arc = np.column_stack([x * np.cos(tilt) - y * np.sin(tilt), x * np.sin(tilt) + y * np.cos(tilt)])
        arc = centre + arc + rng.normal(0, size * 0.02, arc.shape)
        strokes.append(arc[::-1] if rng.random() < 0.5 else arc)
    return [strokes[k] for k in rng.permutation(n_arcs)]


def scattered_strokes(rng: np.random.Generator, count: int) -> list[Points]:
    """Dozens of short random strokes: the slow end of the joining's inputs."""
    return [np.cumsum(rng.normal(0, 15, (10, 2)), axis=0) + rng.uniform(0, 400, 2) for _ in range(count)]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2 * int((a & b).sum()) / total


def area_change(a: np.ndarray, b: np.ndarray) -> float:
    """Difference in filled area as a fraction of the larger area (0 when both are empty)."""
    larger = max(int(a.sum()), int(b.sum()))
    return 0.0 if larger == 0 else abs(int(a.sum()) - int(b.sum())) / larger


def report_differences(fills: dict[str, list[np.ndarray]]) -> None:
    for first, second in itertools.combinations(fills, 2):
        pairs = list(zip(fills[first], fills[second], strict=True))
        differ = sum(dice(a, b) < 0.99 for a, b in pairs)
        far = sum(area_change(a, b) > 0.10 for a, b in pairs)
        print(f"{first:>10} vs {second:<10} Dice < 0.99: {differ:5d}   area differs > 10%: {far:5d}   of {len(pairs)}")


def time_per_call(join: Join, sets: Sequence[Sequence[Points]], repeats: int = 3) -> float:
    """Best of a few passes, in microseconds per call."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for strokes in sets:
            join(strokes)
        best = min(best, time.perf_counter() - started)
    return best / len(sets) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outlines", type=int, default=2000, help="random broken outlines to join and fill")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    outlines = [broken_outline(rng) for _ in range(args.outlines)]
    print(f"{len(outlines)} broken outlines, {np.mean([len(s) for s in outlines]):.1f} strokes each on average")
    fills = {name: [fill_even_odd(join(strokes), SHAPE) for strokes in outlines] for name, join in RULES.items()}
    report_differences(fills)

    print("time per call (µs, best of 3):")
    many = {count: [scattered_strokes(rng, count) for _ in range(100)] for count in (12, 30, 60)}
    for name, join in RULES.items():
        times = [f"outlines {time_per_call(join, outlines):8.1f}"]
        times += [f"{count} strokes {time_per_call(join, sets, 1):8.1f}" for count, sets in many.items()]
        print(f"{name:>10}: " + "   ".join(times))


if __name__ == "__main__":
    main()
