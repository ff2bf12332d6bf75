"""Corrections against tracing from scratch: quality that enters training, and volunteer time per settled slice.

Two rounds of the loop on synthetic slices with known truth, with the daemon's own functions:

- **Round 0, tracing.** Each slice (a random slice of a synthetic nucleus, caps included) is traced
  by the paper's crowd (:class:`~etchacell_loop.simulation.crowd.CrowdMix`) one volunteer at a time;
  after each classification the consensus is computed as the aggregate job does and the default
  stopping rule (``retirement.StableConsensus``, checked after every classification) decides when
  the slice settles. Each classification costs what the time model says
  (:mod:`etchacell_loop.simulation.timing`): a look, and the outline drawn at a hand's pace.
- **Round 1, correction.** The model's outline of the same slice is shown as pre-loaded marks
  (:func:`etchacell_loop.loop.machine_marks.outline_loops`, as the publish job pushes them). The
  outline comes from a stated error model of a model that has trained once (``--wrong`` of the slices
  wrong: three small fragments of the nucleus — the demo's cell04 slice 6 —, drawn 30% too wide, or
  missing; the rest right within a pixel or two). Volunteers with the same tracing habits and a
  corrector behaviour from the mix judge it (:func:`~etchacell_loop.simulation.correction.correct_marks`),
  the corrections' consensus and verdict are computed by the rule the aggregate job uses
  (:func:`etchacell_loop.cria.correction.correction_consensus`), and the slice settles by the same
  stopping rule; a disputed slice is not retired as stable but waits for more correctors, up to
  ``retirement.max_classifications``, as the retire job does. Still disputed there, it does not enter
  training and is traced again from scratch: its tracing time is charged to the correction round.
- The **monitoring guard**: ``--monitoring-slices`` of the corrected slices, at random, are also traced
  from scratch (``correction.monitoring_slices``: a count per model version); when the median Dice
  between corrected and traced consensus there falls below ``--guard-dice`` the round's corrections are
  held (not training data), as the publish job's guard does. The simulated slices stand for a round
  of ``--round-slices`` (default: the paper's 18 ROIs at ``correction.budget_per_round``, 900), which
  the monitoring tracings' seconds are shared by.

Printed per share of accept-anything correctors (``--accepting``): median Dice with truth of what
enters training from corrections (this rule, and a plain majority over the corrections as before),
the share of slices entering training below 0.9 Dice with truth (from corrections, from scratch),
the share disputed, the guard's figure, and volunteer-seconds and classifications per settled slice
against tracing from scratch (the saving); then where the correction round's seconds went
(correcting right and wrong outlines, tracing disputed slices again, the monitoring tracings) and
the saving with the monitoring left out.

    .venv/bin/python bench/bench_corrections.py [--slices 60] [--accepting 0 0.3 0.6] [--wrong 0.3] [--seed 11]
        [--monitoring-slices 5] [--round-slices 900]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from etchacell_loop.config import Settings
from etchacell_loop.cria.consensus import Consensus, CriaParams, Drawing, dice, slice_consensus
from etchacell_loop.cria.correction import CorrectionRule, CorrectionVerdict, correction_consensus, rule_from_settings
from etchacell_loop.cria.raster import Mask
from etchacell_loop.loop.machine_marks import outline_loops
from etchacell_loop.retirement import StableConsensus, Update
from etchacell_loop.simulation.correction import Corrector, CorrectorMix, MachineMark, correct_marks
from etchacell_loop.simulation.crowd import CrowdMix, SimStroke, Volunteer, assign_crowd, trace
from etchacell_loop.simulation.shapes import SliceTruth, draw_nucleus
from etchacell_loop.simulation.timing import TimeModel, path_length_px

SHAPE = (600, 600)
OFFSETS = (-10, -5, 0, 5, 10)
LIMIT = 30
PIXEL_NM = 1000 * 10 / SHAPE[0]  # the subject's 1000 px show 10 µm: the same envelope band in pixels
TO_SUBJECT_PX = 1000 / SHAPE[0]  # lengths for the time model, which is in the subject's 1000 px
PAPER_ROIS = 18  # the paper's cells segmented by volunteers (section 2.1): one model version's round covers them
BAD_DICE = 0.9  # a slice entering training below this Dice with the truth counts as bad


@dataclass(frozen=True)
class Settled:
    """One slice settled by one round: how many classifications and seconds it took, its consensus's
    Dice with the truth, and (corrections) the verdict and the plain majority's Dice with the truth."""

    classifications: int
    seconds: float
    dice_truth: float
    area: Mask
    verdict: CorrectionVerdict | None = None
    plain_dice_truth: float | None = None


@dataclass(frozen=True)
class SliceResult:
    machine: str  # "right", or how the model's outline was wrong
    tracing: Settled
    correction: Settled
    retrace: Settled  # a second tracing from scratch (other volunteers): monitoring and disputed slices


def machine_outline(truth: Mask, rng: np.random.Generator, wrong: float) -> tuple[Mask, str]:
    """A model's area for the slice, from the stated error model."""
    if not truth.any() or rng.random() >= wrong:
        jitter = int(rng.integers(-2, 3))
        if jitter > 0:
            return ndimage.binary_dilation(truth, iterations=jitter), "right"
        if jitter < 0:
            return ndimage.binary_erosion(truth, iterations=-jitter), "right"
        return truth.copy(), "right"
    kind = ["fragments", "wide", "missing"][int(rng.integers(0, 3))]
    if kind == "missing":
        return np.zeros_like(truth), kind
    rows, cols = np.nonzero(truth)
    if kind == "wide":
        cy, cx = rows.mean(), cols.mean()
        yy, xx = np.mgrid[: truth.shape[0], : truth.shape[1]]
        back = ndimage.map_coordinates(truth.astype(np.float32), [cy + (yy - cy) / 1.3, cx + (xx - cx) / 1.3], order=0)
        return back > 0.5, kind
    inner = ndimage.binary_erosion(truth, iterations=10)
    candidates = np.flatnonzero(inner.ravel()) if inner.any() else np.flatnonzero(truth.ravel())
    yy, xx = np.mgrid[: truth.shape[0], : truth.shape[1]]
    pieces = np.zeros_like(truth)
    radius = max(6.0, 0.08 * np.sqrt(truth.sum() / np.pi))
    for index in rng.choice(candidates, size=3, replace=False):
        y, x = divmod(int(index), truth.shape[1])
        pieces |= (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
    return pieces & truth, kind


def marks_of(area: Mask, frame: int) -> list[MachineMark]:
    """The outline as the publish job pushes it (one mark per loop, ids kept)."""
    return [
        MachineMark(f"ml{frame:02d}{k:08x}", frame, loop[:, 0].copy(), loop[:, 1].copy())
        for k, loop in enumerate(outline_loops(area, 1.0, 30.0))
    ]


def _drawing(key: str, count: int, strokes: Sequence[SimStroke]) -> Drawing | None:
    on_slice = [s for s in strokes if s.frame == 2]
    if not on_slice:
        return None
    return Drawing(key, count, tuple(np.column_stack([s.x_px, s.y_px]) for s in on_slice))


def _settle(
    areas: Sequence[Mask],
    stabilities: Sequence[float | None],
    rule: StableConsensus,
    disputed: Sequence[bool] | None = None,
) -> int:
    """The classification count at which ``rule`` retires, checking after every classification; a
    correction subject whose consensus is ``disputed`` is not retired as stable but waits for more, up
    to the limit, as the retire job does (``retire_job.held_while_disputed``)."""
    updates: list[Update] = []
    for count in range(1, len(areas) + 1):
        between = dice(areas[count - 1], areas[count - 2]) if count >= 2 else None
        updates.append(Update(count, stabilities[count - 1], between, 1))
        decision = rule.decide(updates)
        if decision.retire and not (decision.reason == "stable" and disputed and disputed[count - 1]):
            return count
    return len(areas)


def trace_round(
    frames: Sequence[SliceTruth], volunteers: Sequence[Volunteer], rng: np.random.Generator, setup: Setup
) -> Settled:
    """Round 0: tracing from scratch until the slice settles."""
    truth = frames[2].nucleus
    drawings: list[Drawing] = []
    areas: list[Mask] = []
    stabilities: list[float | None] = []
    seconds: list[float] = []
    for count, volunteer in enumerate(volunteers[:LIMIT], start=1):
        pace = setup.time.pace(rng)
        strokes = trace(volunteer, frames, 2, rng)
        seconds.append(setup.time.tracing_s(TO_SUBJECT_PX * path_length_px((s.x_px, s.y_px) for s in strokes), pace))
        drawing = _drawing(volunteer.key, count, strokes)
        if drawing is not None:
            drawings.append(drawing)
        consensus = slice_consensus(drawings, count, SHAPE, setup.params)
        areas.append(consensus.area)
        stabilities.append(consensus.stability)
    k = _settle(areas, stabilities, setup.rule)
    return Settled(k, float(sum(seconds[:k])), dice(areas[k - 1], truth), areas[k - 1])


def correct_round(
    frames: Sequence[SliceTruth],
    machine: Mask,
    volunteers: Sequence[tuple[Volunteer, Corrector]],
    rng: np.random.Generator,
    setup: Setup,
) -> Settled:
    """Round 1: the machine outline corrected until the slice settles."""
    truth = frames[2].nucleus
    marks = marks_of(machine, 2)
    shown_px = TO_SUBJECT_PX * path_length_px((m.x_px, m.y_px) for m in marks)
    drawings: list[Drawing] = []
    deleted = 0
    results: list[tuple[Consensus, CorrectionVerdict]] = []
    plain: list[Mask] = []
    seconds: list[float] = []
    for count, (volunteer, corrector) in enumerate(volunteers[:LIMIT], start=1):
        pace = setup.time.pace(rng)
        submitted = correct_marks(marks, frames[2], volunteer, rng, frame=2, corrector=corrector)
        kept = {m.mark_id for m in submitted if m.kept}
        drawn = TO_SUBJECT_PX * path_length_px((m.stroke.x_px, m.stroke.y_px) for m in submitted if not m.kept)
        removed = sum(1 for m in marks if m.mark_id not in kept)
        seconds.append(setup.time.correcting_s(shown_px, drawn, removed, pace))
        drawing = _drawing(volunteer.key, count, [m.stroke for m in submitted])
        if drawing is None:
            deleted += 1
        else:
            drawings.append(drawing)
        results.append(correction_consensus(drawings, deleted, machine, setup.params, setup.correction))
        plain.append(slice_consensus(drawings, count, SHAPE, setup.params, with_stability=False).area)
    areas = [c.area for c, _ in results]
    k = _settle(areas, [c.stability for c, _ in results], setup.rule, [not v.usable for _, v in results])
    consensus, verdict = results[k - 1]
    return Settled(
        k, float(sum(seconds[:k])), dice(consensus.area, truth), consensus.area, verdict, dice(plain[k - 1], truth)
    )


@dataclass(frozen=True)
class Setup:
    params: CriaParams
    rule: StableConsensus
    correction: CorrectionRule
    time: TimeModel


def default_setup() -> Setup:
    settings = Settings()
    c, r = settings.consensus, settings.retirement
    return Setup(
        CriaParams.from_settings(c, PIXEL_NM),
        StableConsensus(r.min_classifications, r.max_classifications, r.stability_dice, r.stable_checks),
        rule_from_settings(
            c.correction_kept_weight, c.correction_agree_dice, c.correction_min_edits, c.correction_deleted_weight
        ),
        TimeModel(),
    )


def run_slice(
    job: tuple[int, float, int, tuple[Volunteer, ...], tuple[Volunteer, ...], tuple[Corrector, ...]],
) -> SliceResult:
    seed, wrong, min_corrections, tracers, correctors, behaviours = job
    rng = np.random.default_rng(seed)
    n_slices = 60
    model = draw_nucleus(rng, n_slices, SHAPE)
    z = int(rng.integers(0, n_slices))
    frames = [model.slice_truth(min(max(z + o, 0), n_slices - 1)) for o in OFFSETS]
    setup = default_setup()
    machine, kind = machine_outline(frames[2].nucleus, rng, wrong)
    tracing = trace_round(frames, tracers, rng, setup)
    correcting = replace(setup, rule=replace(setup.rule, min_classifications=min_corrections))
    correction = correct_round(frames, machine, list(zip(correctors, behaviours, strict=True)), rng, correcting)
    retrace = trace_round(frames, correctors, rng, setup)
    return SliceResult(kind, tracing, correction, retrace)


def streams(n: int, rng: np.random.Generator) -> list[list[Volunteer]]:
    assignment = assign_crowd(CrowdMix(), [LIMIT] * n, rng)
    out: list[list[Volunteer]] = [[] for _ in range(n)]
    for subject, volunteer in zip(assignment.subject_index, assignment.volunteer_index, strict=True):
        out[int(subject)].append(assignment.volunteers[int(volunteer)])
    for stream in out:
        rng.shuffle(stream)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--accepting", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    parser.add_argument("--wrong", type=float, default=0.3, help="share of slices the model gets wrong")
    defaults = Settings().correction
    parser.add_argument(
        "--monitoring-slices",
        type=int,
        default=defaults.monitoring_slices,
        help="corrected slices also traced from scratch, per model version (correction.monitoring_slices)",
    )
    parser.add_argument(
        "--round-slices",
        type=int,
        default=PAPER_ROIS * defaults.budget_per_round,
        help="slices one model version sends for correction, whose settled slices share the monitoring tracings"
        " (default: the paper's 18 ROIs at correction.budget_per_round)",
    )
    parser.add_argument(
        "--guard-dice",
        type=float,
        default=defaults.min_monitoring_dice,
        help="median monitoring Dice below which corrections are held",
    )
    parser.add_argument(
        "--min-corrections",
        type=int,
        default=Settings().retirement.min_corrections,
        help="classifications a correction subject needs at least (retirement.min_corrections)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.monitoring_slices < 0 or args.round_slices < max(args.slices, 1):
        parser.error("--monitoring-slices must be >= 0 and --round-slices at least --slices")

    rng = np.random.default_rng(args.seed)
    tracer_streams = streams(args.slices, rng)
    corrector_streams = streams(args.slices, rng)
    print(
        f"{args.slices} slices, model wrong on {args.wrong:.0%} (fragments / too wide / missing), stopping rule "
        f"{default_setup().rule.name} checked after every classification, time model {TimeModel()}; "
        f"{args.monitoring_slices} monitoring slices in a round of {args.round_slices}"
    )
    print(
        "Dice with truth (median) of what enters training from corrections (this rule), of a plain majority over"
        " the corrections, and of tracing from scratch: over all slices, then over the slices the model got wrong"
    )
    header = (
        f"{'accepting':>9} {'rule':>7} {'plain':>7} {'scratch':>7} {'w rule':>7} {'w plain':>7} {'w scr':>7} "
        f"{'bad rule':>8} {'bad scr':>7} {'disputed':>8} {'monitor':>7} {'held':>5} {'n trace':>7} {'n corr':>6} "
        f"{'s trace':>7} {'s corr':>7} {'saved':>6} {'seconds':>7}"
    )
    print(header)
    breakdowns: list[Breakdown] = []
    for share in args.accepting:
        mix = CorrectorMix().with_accepting(share)
        pick = np.random.default_rng([args.seed, int(share * 1000)])
        jobs = [
            (
                args.seed * 10_007 + i,
                args.wrong,
                args.min_corrections,
                tuple(tracer_streams[i]),
                tuple(corrector_streams[i]),
                tuple(mix.draw(pick) for _ in corrector_streams[i]),
            )
            for i in range(args.slices)
        ]
        started = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(run_slice, jobs, chunksize=2))
        breakdowns.append(_report(share, results, args, time.perf_counter() - started))
    _print_breakdown(breakdowns)


@dataclass(frozen=True)
class Breakdown:
    """Where a settled slice's correction-round seconds go (means over all slices), against tracing."""

    share: float
    right: float  # correcting the slices the model got right
    wrong: float  # correcting the slices it got wrong
    retrace: float  # tracing again the disputed slices (all of them when the guard holds the round)
    monitoring: float  # the monitoring tracings
    tracing: float  # tracing from scratch, round 0


def _print_breakdown(rows: Sequence[Breakdown]) -> None:
    """Where the correction round's seconds go, and the saving with and without the monitoring."""
    print("\nvolunteer-seconds per settled slice in the correction round, by what they were spent on")
    print(
        f"{'accepting':>9} {'right':>6} {'wrong':>6} {'retrace':>7} {'monitor':>7} {'total':>6} {'trace':>6} "
        f"{'saved':>6} {'w/o monitor':>11}"
    )
    for row in rows:
        total = row.right + row.wrong + row.retrace + row.monitoring
        print(
            f"{row.share:>9.0%} {row.right:>6.0f} {row.wrong:>6.0f} {row.retrace:>7.0f} {row.monitoring:>7.0f} "
            f"{total:>6.0f} {row.tracing:>6.0f} {1 - total / row.tracing:>6.0%} "
            f"{1 - (total - row.monitoring) / row.tracing:>11.0%}"
        )


def _report(share: float, results: Sequence[SliceResult], args: argparse.Namespace, elapsed: float) -> Breakdown:
    """One line: what enters training (all slices, and the slices the model got wrong), the guard,
    and the time per settled slice; returns where that time went."""
    monitored = np.zeros(len(results), dtype=bool)
    size = min(args.monitoring_slices, len(results))
    monitored[np.random.default_rng([args.seed, 99]).choice(len(results), size=size, replace=False)] = True
    agreement = [dice(r.correction.area, r.retrace.area) for r, m in zip(results, monitored, strict=True) if m]
    monitor = statistics.median(agreement) if agreement else float("nan")
    held = bool(agreement) and monitor < args.guard_dice
    usable = [r.correction.verdict is not None and r.correction.verdict.usable for r in results]
    # what enters training from this round: the usable corrections, disputed slices traced again from
    # scratch; everything traced from scratch when the guard holds the round's corrections
    retraced = [held or not ok for ok in usable]
    trained = [
        r.retrace.dice_truth if again else r.correction.dice_truth for r, again in zip(results, retraced, strict=True)
    ]
    plain = [r.correction.plain_dice_truth or 0.0 for r in results]
    scratch = [r.tracing.dice_truth for r in results]
    wrong = [i for i, r in enumerate(results) if r.machine != "right"]
    n = len(results)
    breakdown = Breakdown(
        share,
        right=sum(r.correction.seconds for r in results if r.machine == "right") / n,
        wrong=sum(r.correction.seconds for r in results if r.machine != "right") / n,
        retrace=sum(r.retrace.seconds for r, again in zip(results, retraced, strict=True) if again) / n,
        # the monitoring tracings, shared by the round's settled slices
        monitoring=args.monitoring_slices * statistics.mean(r.retrace.seconds for r in results) / args.round_slices,
        tracing=statistics.mean(r.tracing.seconds for r in results),
    )
    s_corr = breakdown.right + breakdown.wrong + breakdown.retrace + breakdown.monitoring
    s_trace = breakdown.tracing
    print(
        f"{share:>9.0%} {_median(trained):>7.4f} {_median(plain):>7.4f} {_median(scratch):>7.4f} "
        f"{_median([trained[i] for i in wrong]):>7.4f} {_median([plain[i] for i in wrong]):>7.4f} "
        f"{_median([scratch[i] for i in wrong]):>7.4f} {_below(trained):>8.1%} {_below(scratch):>7.1%} "
        f"{1 - float(np.mean(usable)):>8.0%} "
        f"{monitor:>7.3f} {'yes' if held else 'no':>5} "
        f"{statistics.mean(r.tracing.classifications for r in results):>7.1f} "
        f"{statistics.mean(r.correction.classifications for r in results):>6.1f} "
        f"{s_trace:>7.0f} {s_corr:>7.0f} {1 - s_corr / s_trace:>6.0%} {elapsed:>7.0f}"
    )
    return breakdown


def _below(values: Sequence[float]) -> float:
    """The share of slices whose Dice with the truth is below :data:`BAD_DICE`: the tail a median hides."""
    return sum(v < BAD_DICE for v in values) / len(values) if values else float("nan")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


if __name__ == "__main__":
    main()
