"""Retirement once consensus stabilises, against the paper's fixed 30 classifications.

Synthetic subjects (slices of synthetic nuclei, caps with islands included) are classified one
volunteer at a time by a crowd of every kind (careful, sloppy, partial, offset, nucleolus, false
positive, graffiti, empty, wrong frame, and prolific volunteers repeating one error). After each
classification the slice's consensus is computed exactly as the daemon does (``cria.consensus``).

The retire job does not look after every classification: it checks once per run, so several
classifications can arrive between two checks. ``--check-every N`` sets that cadence: checks fall
every N classifications, from a random phase per subject (the daemon's runs are not aligned with a
subject's arrivals). At each check the stopping rule gets what the job measures: the subject's
classifications, the consensus's own leave-latest-out stability, the Dice with the consensus of the
previous check and the classifications since then. A subject no rule retired by its last check is
counted at the limit. Reported per cadence: classifications per retired subject, and the consensus
quality (Dice with the truth) at retirement against the consensus of all 30. Two variants of the
default rule are listed for comparison: the consensus's own stability alone (the rule before checks
were compared) and the Dice between checks alone.

    .venv/bin/python bench/bench_retirement.py [--subjects 120] [--method cria] [--seed 7]
        [--check-every 1 3 5]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from etchacell_loop.cria.consensus import CriaParams, Drawing, consensus_of_ballots, dice
from etchacell_loop.cria.joining import join_greedy
from etchacell_loop.cria.methods import Ballot
from etchacell_loop.cria.raster import Mask, fill_patch
from etchacell_loop.retirement import FixedCount, StableConsensus, StoppingRule, Update
from etchacell_loop.simulation.crowd import CrowdMix, Volunteer, assign_crowd, trace
from etchacell_loop.simulation.shapes import draw_nucleus

SHAPE = (1000, 1000)
OFFSETS = (-10, -5, 0, 5, 10)  # the flipbook: ±500 nm and ±250 nm at 50 nm per slice
LIMIT = 30


@dataclass(frozen=True)
class SubjectRun:
    """One subject classified 30 times. After each classification k (index k - 1): the consensus's
    own stability and its Dice with the truth; ``between[i][j]``: Dice of the consensus after i + 1
    and after j + 1 classifications (what a check compares with the previous one)."""

    stability: tuple[float | None, ...]
    dice_with_truth: tuple[float, ...]
    between: tuple[tuple[float, ...], ...]


def simulate_subject(seed: int, volunteers: Sequence[Volunteer], method: str) -> SubjectRun:
    """Classify one synthetic slice with ``volunteers`` in order, computing the consensus each time."""
    rng = np.random.default_rng(seed)
    n_slices = 60
    model = draw_nucleus(rng, n_slices, SHAPE)
    z = int(rng.integers(0, n_slices))
    frames = [model.slice_truth(min(max(z + o, 0), n_slices - 1)) for o in OFFSETS]
    truth: Mask = frames[2].nucleus
    params = CriaParams(method=method, pixel_size_nm=20.0)
    drawings: list[Drawing] = []
    ballots: list[Ballot] = []
    stability: list[float | None] = []
    scores: list[float] = []
    areas: list[Mask] = []
    for count, volunteer in enumerate(volunteers, start=1):
        strokes = [s for s in trace(volunteer, frames, 2, rng) if s.frame == 2]  # other frames: other slices
        if strokes:
            points = tuple(np.column_stack([s.x_px, s.y_px]) for s in strokes)
            drawings.append(Drawing(volunteer.key, count, points))
            ballots.append(Ballot(fill_patch(join_greedy(list(points)), SHAPE)))
        consensus = consensus_of_ballots(drawings, ballots, count, SHAPE, params)
        stability.append(consensus.stability)  # None while fewer than two drew, as the job stores it
        scores.append(dice(consensus.area, truth))
        areas.append(consensus.area)
    return SubjectRun(tuple(stability), tuple(scores), dice_between(areas))


def dice_between(areas: Sequence[Mask]) -> tuple[tuple[float, ...], ...]:
    """Dice of every pair of consensus areas, over the box that holds them all (the rest is empty)."""
    union = np.logical_or.reduce(list(areas))
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    if not rows.size:
        return tuple(tuple(1.0 for _ in areas) for _ in areas)
    crops = [a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] for a in areas]
    return tuple(tuple(dice(a, b) for b in crops) for a in crops)


def check_counts(every: int, phase: int, limit: int = LIMIT) -> list[int]:
    """The classification counts at which the retire job checks: every ``every`` from ``phase``."""
    return list(range(phase, limit + 1, every))


def check_updates(run: SubjectRun, counts: Sequence[int]) -> list[Update]:
    """What the retire job hands the rule at each check: the subject's classifications, the
    consensus's own stability, the Dice with the previous check's consensus and the classifications
    since then."""
    updates: list[Update] = []
    previous: int | None = None
    for count in counts:
        between = run.between[previous - 1][count - 1] if previous is not None else None
        updates.append(Update(count, run.stability[count - 1], between, count - (previous or 0)))
        previous = count
    return updates


class LeaveLatestOutOnly(StableConsensus):
    """For comparison, the rule before checks were compared: a check agrees when the consensus's
    own stability (Dice with itself without the latest drawing) reaches the threshold."""

    name = "leave-latest-out only"

    def agrees(self, update: Update) -> bool:
        return update.stability is not None and update.stability >= self.stability_dice


class ChecksOnly(StableConsensus):
    """For comparison, the Dice between checks without the consensus's own stability as a veto."""

    name = "between checks only"

    def agrees(self, update: Update) -> bool:
        return update.check_dice is not None and update.check_dice >= self.stability_dice


def retire_at(rule: StoppingRule, updates: Sequence[Update]) -> int:
    """The classification count at which ``rule`` retires the subject (the limit when it never does)."""
    for k in range(1, len(updates) + 1):
        if rule.decide(updates[:k]).retire:
            return updates[k - 1].classifications
    return LIMIT


def _run(args: tuple[int, tuple[Volunteer, ...], str]) -> SubjectRun:
    return simulate_subject(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=120)
    parser.add_argument("--method", default="cria")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--check-every", type=int, nargs="+", default=[1, 3, 5], help="classifications between two checks"
    )
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    assignment = assign_crowd(CrowdMix(), [LIMIT] * args.subjects, rng)
    streams: list[list[Volunteer]] = [[] for _ in range(args.subjects)]
    for subject, volunteer in zip(assignment.subject_index, assignment.volunteer_index, strict=True):
        streams[int(subject)].append(assignment.volunteers[int(volunteer)])
    for stream in streams:
        rng.shuffle(stream)
    started = time.perf_counter()
    jobs = [(args.seed * 100_003 + i, tuple(stream), args.method) for i, stream in enumerate(streams)]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(_run, jobs, chunksize=4))
    elapsed = time.perf_counter() - started

    behaviours = [v.behaviour.value for stream in streams for v in stream]
    shares = {b: behaviours.count(b) / len(behaviours) for b in sorted(set(behaviours))}
    at_limit = statistics.median(run.dice_with_truth[-1] for run in runs)
    print(f"{args.subjects} subjects x {LIMIT} classifications, method {args.method}, {elapsed:.0f} s")
    print("crowd: " + ", ".join(f"{b} {share:.0%}" for b, share in shares.items()))
    print(f"consensus of all {LIMIT}: median Dice with truth {at_limit:.4f}")
    rules: list[StoppingRule] = [FixedCount(LIMIT), FixedCount(12)]
    for minimum, threshold, checks in itertools.product((5, 6, 8), (0.95, 0.97, 0.98), (2, 3)):
        rules.append(StableConsensus(minimum, LIMIT, threshold, checks))
    rules += [LeaveLatestOutOnly(8, LIMIT, 0.95, 2), ChecksOnly(8, LIMIT, 0.95, 2)]  # the defaults, compared
    phases = np.random.default_rng(args.seed + 1)
    for every in args.check_every:
        counts = [check_counts(every, int(phases.integers(1, every + 1))) for _ in runs]
        print(f"\nchecks every {every} classification(s)")
        print(f"{'rule':<58} {'mean n':>7} {'max n':>6} {'median Dice':>12} {'loss':>8} {'p10 Dice':>9}")
        for rule in rules:
            retired = [retire_at(rule, check_updates(run, c)) for run, c in zip(runs, counts, strict=True)]
            scores = [run.dice_with_truth[k - 1] for run, k in zip(runs, retired, strict=True)]
            median = statistics.median(scores)
            p10 = float(np.percentile(scores, 10))
            print(
                f"{_describe(rule):<58} {statistics.mean(retired):>7.2f} {max(retired):>6} {median:>12.4f}"
                f" {at_limit - median:>8.4f} {p10:>9.4f}"
            )


def _describe(rule: StoppingRule) -> str:
    if isinstance(rule, StableConsensus):
        return (
            f"{rule.name} min {rule.min_classifications}, Dice >= {rule.stability_dice}, {rule.stable_checks} in a row"
        )
    if isinstance(rule, FixedCount):
        return f"fixed-count {rule.count}"
    return rule.name


if __name__ == "__main__":
    main()
