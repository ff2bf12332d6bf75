"""Retirement once consensus stabilises, against the paper's fixed 30 classifications.

Synthetic subjects (slices of synthetic nuclei, caps with islands included) are classified one
volunteer at a time by a crowd of every kind (careful, sloppy, partial, offset, nucleolus, false
positive, graffiti, empty, wrong frame, and prolific volunteers repeating one error). After each
classification the slice's consensus and its stability are computed exactly as the daemon does
(``cria.consensus``); each stopping rule then says when it would have retired the subject. Reported:
classifications per retired subject, and the consensus quality (Dice with the truth) at retirement
against the consensus of all 30.

    .venv/bin/python bench/bench_retirement.py [--subjects 120] [--method cria] [--seed 7]
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
    """One subject classified 30 times: stability and Dice with the truth after each classification."""

    updates: tuple[Update, ...]
    dice_with_truth: tuple[float, ...]


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
    updates: list[Update] = []
    scores: list[float] = []
    for count, volunteer in enumerate(volunteers, start=1):
        strokes = [s for s in trace(volunteer, frames, 2, rng) if s.frame == 2]  # other frames: other slices
        if strokes:
            points = tuple(np.column_stack([s.x_px, s.y_px]) for s in strokes)
            drawings.append(Drawing(volunteer.key, count, points))
            ballots.append(Ballot(fill_patch(join_greedy(list(points)), SHAPE)))
        consensus = consensus_of_ballots(drawings, ballots, count, SHAPE, params)
        stability = consensus.stability if drawings else 1.0  # nobody drew yet: empty and steady
        updates.append(Update(count, stability))
        scores.append(dice(consensus.area, truth))
    return SubjectRun(tuple(updates), tuple(scores))


def retire_at(rule: StoppingRule, updates: Sequence[Update]) -> int:
    """The classification count at which ``rule`` retires the subject (at most the limit)."""
    for k in range(1, len(updates) + 1):
        if rule.decide(updates[:k]).retire:
            return k
    return len(updates)


def _run(args: tuple[int, tuple[Volunteer, ...], str]) -> SubjectRun:
    return simulate_subject(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=120)
    parser.add_argument("--method", default="cria")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
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
    print(f"consensus of all {LIMIT}: median Dice with truth {at_limit:.4f}\n")
    print(f"{'rule':<58} {'mean n':>7} {'max n':>6} {'median Dice':>12} {'loss':>8} {'p10 Dice':>9}")
    rules: list[StoppingRule] = [FixedCount(LIMIT), FixedCount(12)]
    for minimum, threshold, checks in itertools.product((5, 6, 8), (0.95, 0.97, 0.98), (2, 3)):
        rules.append(StableConsensus(minimum, LIMIT, threshold, checks))
    for rule in rules:
        counts = [retire_at(rule, run.updates) for run in runs]
        scores = [run.dice_with_truth[k - 1] for run, k in zip(runs, counts, strict=True)]
        median = statistics.median(scores)
        p10 = float(np.percentile(scores, 10))
        print(
            f"{_describe(rule):<58} {statistics.mean(counts):>7.2f} {max(counts):>6} {median:>12.4f}"
            f" {at_limit - median:>8.4f} {p10:>9.4f}"
        )


def _describe(rule: StoppingRule) -> str:
    if isinstance(rule, StableConsensus):
        return (
            f"stable-consensus min {rule.min_classifications}, Dice >= {rule.stability_dice},"
            f" {rule.stable_checks} in a row"
        )
    if isinstance(rule, FixedCount):
        return f"fixed-count {rule.count}"
    return rule.name


if __name__ == "__main__":
    main()
