"""Drive an offline aggregation: read the export, vote every slice, pool, vote again where it matters.

1. **Read.** Records stream from the file to worker processes in batches (a bounded number in
   flight, so a 100,000-row export never sits in memory as text); workers parse the CSV and the JSON
   and send back placed drawings.
2. **Vote.** Every slice that is some subject's own slice gets its consensus (workers write the
   subject's images themselves, so only small summaries travel back).
3. **Pool and vote again** (``cria-robust`` and ``staple``): each volunteer's agreement is summed
   across every slice they drew on; a slice is voted again, with every drawer's record (without the
   slice itself, so a drawing is never judged by its own agreement), when a drawer whose record
   elsewhere says "unreliable" had a say in its first answer. Elsewhere the first answer stands:
   a drawing the robust vote already left out cannot change it by weighing less, and weighting
   volunteers who agree well elsewhere by their small differences changes nothing that matters.

Nothing here raises on bad content: unreadable rows and classifications are counted and written to
``issues.csv``; a subject whose image size nobody reported is listed with that reason.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from etchacell_loop.aggregate.heap import RARE_COLLECTION_THRESHOLDS, collecting_rarely, keep_freed_memory
from etchacell_loop.aggregate.outputs import (
    SubjectSummary,
    VolunteerSummary,
    columns_of,
    prepare_folders,
    write_csv,
    write_subject_images,
)
from etchacell_loop.aggregate.reading import ReadRow, export_header, export_records, open_export, read_records
from etchacell_loop.annotations import ExportFormatError, ParseLimits, RowProblem
from etchacell_loop.cria.assembly import SliceAssembler, SliceDrawings
from etchacell_loop.cria.consensus import CriaParams, DrawerOutcome, slice_consensus
from etchacell_loop.cria.reliability import VolunteerRecord, is_flagged, reliability_weight
from etchacell_loop.subject_metadata import SliceKey

log = logging.getLogger(__name__)

Progress = Callable[[str, float, float | None], None]
"""(phase, done, total or None) — called as work completes; the CLI draws it as a progress bar."""

REWEIGHTED_METHODS = frozenset({"cria-robust", "staple"})
DEFAULT_PIXEL_SIZE_NM = 20.0  # 2000 px crops at 10 nm shown at 1000 px, as in the paper
MAX_SLICES_PER_TASK = 16


@dataclass(frozen=True)
class AggregateOptions:
    """How to aggregate an export (the CLI's flags, the configuration's consensus section)."""

    params: CriaParams = field(default_factory=CriaParams)
    workflow_id: int | None = None  # None: the first workflow in the export; rows of others are skipped
    pixel_size_nm: float | None = None  # None: from subject metadata, else DEFAULT_PIXEL_SIZE_NM
    limits: ParseLimits = field(default_factory=ParseLimits)
    workers: int | None = None  # None: one per core; 0: in this process
    batch_rows: int = 250
    reweight: bool = True
    reweight_below: float = 0.7  # re-vote slices with a drawer whose weight elsewhere is below this


@dataclass
class AggregateReport:
    """What a run read, decided and wrote."""

    out_dir: Path
    rows: int = 0
    row_problems: int = 0
    workflow_id: int | None = None
    other_workflow_rows: Counter[int] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    empty: int = 0
    subjects: int = 0
    slices: int = 0
    subjects_without_size: int = 0
    unplaced_marks: int = 0
    orphan_drawings: int = 0
    volunteers: int = 0
    flagged_volunteers: int = 0
    reweighted_slices: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _SubjectTally:
    classifications: int = 0
    empty: int = 0
    unplaced: int = 0
    slice: SliceKey | None = None
    problems: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _SliceTask:
    drawings: SliceDrawings
    params: CriaParams
    records: Mapping[str, VolunteerRecord] | None
    out_dir: Path


@dataclass(frozen=True)
class _SliceResult:
    key: SliceKey
    area_px: int
    stability: float | None
    outcomes: tuple[DrawerOutcome, ...]
    n_flagged: int


def aggregate_export(
    export: Path,
    out_dir: Path,
    options: AggregateOptions | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> AggregateReport:
    """Aggregate ``export`` into ``out_dir`` (created; files of an earlier run are replaced). The
    summary is removed first and written last: its presence says the run finished.

    ``executor`` runs the reading and voting instead of this machine's process pool: a Dask
    client's (``client.get_executor()``) spreads the subjects' slices over a cluster's workers,
    which write their subjects' images into ``out_dir`` themselves (so it must be on storage they
    all see); the pooling of volunteer records stays here, a sum over the slices' small results.
    The same functions run on the same inputs either way, so the outputs are the same files."""
    options = options or AggregateOptions()
    report = AggregateReport(out_dir)
    prepare_folders(out_dir)
    (out_dir / "summary.csv").unlink(missing_ok=True)
    workers = options.workers if options.workers is not None else (os.cpu_count() or 1)
    with collecting_rarely():  # the rows read here are millions of small objects that never form cycles
        pool = executor or _worker_pool(workers)
        try:
            started = time.perf_counter()
            assembler, tallies, pixel_nm, issues = _read(export, options, report, pool, progress)
            report.seconds["read"] = time.perf_counter() - started
            started = time.perf_counter()
            results = _vote_all(assembler, pixel_nm, options, out_dir, pool, progress)
            report.seconds["vote"] = time.perf_counter() - started
            started = time.perf_counter()
            records = _pool_records(results.values())
            if options.reweight and options.params.method in REWEIGHTED_METHODS:
                again = _revote(assembler, results, records, pixel_nm, options, out_dir, pool, progress)
                report.reweighted_slices = len(again)
                results.update(again)
                records = _pool_records(results.values())
            report.seconds["reweight"] = time.perf_counter() - started
        finally:
            if pool is not None and executor is None:
                pool.shutdown()
        _finish(report, assembler, tallies, results, records, issues, options)
    return report


def _worker_pool(workers: int) -> Executor | None:
    """Processes that read and vote (None: all in this process)."""
    return ProcessPoolExecutor(max_workers=workers, initializer=start_worker) if workers > 0 else None


def start_worker() -> None:
    """Each worker keeps the memory it frees for its next slice and collects cycles rarely; what it
    inherited from the parent is set aside from collection for good (see ``heap``)."""
    keep_freed_memory()
    gc.freeze()
    gc.set_threshold(*RARE_COLLECTION_THRESHOLDS)


def _read(
    export: Path, options: AggregateOptions, report: AggregateReport, pool: Executor | None, progress: Progress | None
) -> tuple[SliceAssembler, dict[int, _SubjectTally], dict[SliceKey, float], list[tuple[Any, ...]]]:
    assembler = SliceAssembler()
    tallies: dict[int, _SubjectTally] = defaultdict(_SubjectTally)
    pixel_nm: dict[SliceKey, float] = {}
    issues: list[tuple[Any, ...]] = []
    total = float(export.stat().st_size)
    report.workflow_id = options.workflow_id
    with open_export(export) as (lines, position):
        records = export_records(lines)
        header = next(records, None)
        if header is None:
            raise ExportFormatError("the export is empty (no header row)")
        columns = export_header(header[1])
        batches = ((batch, columns, options.limits) for batch in _batches(records, options.batch_rows))
        for batch in _ordered_map(pool, read_records, batches):
            for row in batch:
                if isinstance(row, RowProblem):
                    report.row_problems += 1
                    issues.append(("", row.line, "", "unreadable", row.message))
                elif _of_chosen_workflow(row, report):
                    _take_row(row, assembler, tallies, pixel_nm, issues, report)
            if progress is not None:
                progress("read", float(position()), total)
    if report.rows == 0:
        raise ExportFormatError(nothing_to_aggregate(report, issues))
    return assembler, tallies, pixel_nm, issues


def nothing_to_aggregate(report: AggregateReport, issues: list[tuple[Any, ...]]) -> str:
    """Why an export gave no classification to aggregate, in one line: only a header (or a file cut
    short right after it), only unreadable rows, or only rows of other workflows."""
    if report.other_workflow_rows:
        others = ", ".join(str(w) for w in sorted(report.other_workflow_rows))
        return f"no classification of workflow {report.workflow_id}; the export has workflow(s) {others}"
    if report.row_problems:
        _, line, _, _, message = issues[0]
        return f"no readable classification: {report.row_problems} unreadable row(s); line {line}: {message}"
    return "no classification rows after the header (an empty export, or one cut short)"


def _of_chosen_workflow(row: ReadRow, report: AggregateReport) -> bool:
    """Rows of the chosen workflow (the first one seen, unless one was named); others are counted."""
    if report.workflow_id is None:
        report.workflow_id = row.workflow_id
    if row.workflow_id != report.workflow_id:
        report.other_workflow_rows[row.workflow_id] += 1
        return False
    return True


def _take_row(
    row: ReadRow,
    assembler: SliceAssembler,
    tallies: dict[int, _SubjectTally],
    pixel_nm: dict[SliceKey, float],
    issues: list[tuple[Any, ...]],
    report: AggregateReport,
) -> None:
    report.rows += 1
    report.statuses[row.status.value] += 1
    report.empty += row.empty
    report.unplaced_marks += row.placement.unplaced_marks
    tally = tallies[row.subject_id]
    tally.classifications += 1
    tally.empty += row.empty
    tally.unplaced += row.placement.unplaced_marks
    tally.slice = row.layout.own_slice
    tally.problems.update(row.layout.problems)
    if row.layout.pixel_size_nm is not None:
        pixel_nm.setdefault(row.layout.own_slice, row.layout.pixel_size_nm)
    if row.reasons or row.status.value != "ok":
        issues.append((row.classification_id, row.line, row.subject_id, row.status.value, "; ".join(row.reasons)))
    assembler.add(row.volunteer, row.classification_id, row.layout, row.placement)


def _vote_all(
    assembler: SliceAssembler,
    pixel_nm: Mapping[SliceKey, float],
    options: AggregateOptions,
    out_dir: Path,
    pool: Executor | None,
    progress: Progress | None,
) -> dict[SliceKey, _SliceResult]:
    keys = assembler.slices()
    tasks = (_task(assembler, key, pixel_nm, options, out_dir, None) for key in keys)
    return _run_slices([t for t in tasks if t is not None], pool, progress, "vote")


def _revote(
    assembler: SliceAssembler,
    results: Mapping[SliceKey, _SliceResult],
    records: Mapping[str, VolunteerRecord],
    pixel_nm: Mapping[SliceKey, float],
    options: AggregateOptions,
    out_dir: Path,
    pool: Executor | None,
    progress: Progress | None,
) -> dict[SliceKey, _SliceResult]:
    reliability = options.params.methods.reliability
    every_drawer_counts = options.params.method == "staple"  # STAPLE weighs everyone, excluded or not
    tasks = []
    for key, result in results.items():
        elsewhere = {o.volunteer: records[o.volunteer] - o.record() for o in result.outcomes}
        doubtful = [
            o
            for o in result.outcomes
            if (o.included or every_drawer_counts)
            and reliability_weight(elsewhere[o.volunteer], reliability) < options.reweight_below
        ]
        if not doubtful:
            continue
        task = _task(assembler, key, pixel_nm, options, out_dir, elsewhere)
        if task is not None:
            tasks.append(task)
    return _run_slices(tasks, pool, progress, "reweight")


def _task(
    assembler: SliceAssembler,
    key: SliceKey,
    pixel_nm: Mapping[SliceKey, float],
    options: AggregateOptions,
    out_dir: Path,
    records: Mapping[str, VolunteerRecord] | None,
) -> _SliceTask | None:
    drawings = assembler.drawings(key)
    if drawings is None:
        return None
    size_nm = options.pixel_size_nm or pixel_nm.get(key) or DEFAULT_PIXEL_SIZE_NM
    return _SliceTask(drawings, replace(options.params, pixel_size_nm=size_nm), records, out_dir)


def _run_slices(
    tasks: list[_SliceTask], pool: Executor | None, progress: Progress | None, phase: str
) -> dict[SliceKey, _SliceResult]:
    """Every slice voted, in batches of a few slices a task: one task a slice cost a Dask cluster's
    scheduler more than the slice (4,241 tasks of ~20 ms), and a process pool a round trip each."""
    results: dict[SliceKey, _SliceResult] = {}
    per_task = _slices_per_task(len(tasks), pool)
    batches = ((tasks[i : i + per_task],) for i in range(0, len(tasks), per_task))
    for batch in _ordered_map(pool, _vote_slices, batches):
        for result in batch:
            results[result.key] = result
        if progress is not None:
            progress(phase, float(len(results)), float(len(tasks)))
    return results


def _slices_per_task(n_slices: int, pool: Executor | None) -> int:
    """Enough slices a task to make its overhead small, few enough that every worker gets at least
    eight tasks (so the last ones do not leave workers idle)."""
    if pool is None:
        return 1
    return max(1, min(MAX_SLICES_PER_TASK, n_slices // (8 * _slots(pool))))


def _vote_slices(tasks: list[_SliceTask]) -> list[_SliceResult]:
    return [_vote_slice(task) for task in tasks]


def _vote_slice(task: _SliceTask) -> _SliceResult:
    """One slice's consensus, its subjects' images written (runs in a worker)."""
    drawings = task.drawings
    consensus = slice_consensus(
        drawings.drawings, drawings.n_classifications, drawings.shape, task.params, task.records
    )
    write_subject_images(task.out_dir, drawings.subject_ids, consensus)
    return _SliceResult(drawings.key, consensus.area_px, consensus.stability, consensus.outcomes, consensus.n_flagged)


def _pool_records(results: Iterable[_SliceResult]) -> dict[str, VolunteerRecord]:
    records: dict[str, VolunteerRecord] = defaultdict(VolunteerRecord)
    for result in results:
        for outcome in result.outcomes:
            records[outcome.volunteer] = records[outcome.volunteer] + outcome.record()
    return dict(records)


def _finish(
    report: AggregateReport,
    assembler: SliceAssembler,
    tallies: Mapping[int, _SubjectTally],
    results: Mapping[SliceKey, _SliceResult],
    records: Mapping[str, VolunteerRecord],
    issues: list[tuple[Any, ...]],
    options: AggregateOptions,
) -> None:
    summaries = [_subject_summary(sid, tally, results, options) for sid, tally in sorted(tallies.items())]
    reliability = options.params.methods.reliability
    volunteers = [
        VolunteerSummary(
            volunteer,
            record.slices,
            record.mean_dice,
            record.sensitivity,
            record.specificity,
            reliability_weight(record, reliability),
            is_flagged(record, reliability),
        )
        for volunteer, record in sorted(records.items())
    ]
    out = report.out_dir
    write_csv(out / "volunteers.csv", volunteers, columns_of(VolunteerSummary))
    write_csv(out / "issues.csv", [_IssueRow(*i) for i in issues], columns_of(_IssueRow))
    write_csv(out / "summary.csv", summaries, columns_of(SubjectSummary))  # last: the run is complete
    report.subjects = len(summaries)
    report.slices = len(results)
    report.subjects_without_size = sum(1 for s in summaries if "no image size" in s.problems)
    report.orphan_drawings = assembler.orphan_drawings()
    report.volunteers = len(volunteers)
    report.flagged_volunteers = sum(v.flagged for v in volunteers)


@dataclass(frozen=True)
class _IssueRow:
    classification_id: Any
    line: int
    subject_id: Any
    status: str
    reasons: str


def _subject_summary(
    subject_id: int, tally: _SubjectTally, results: Mapping[SliceKey, _SliceResult], options: AggregateOptions
) -> SubjectSummary:
    key = tally.slice
    result = results.get(key) if key is not None else None
    problems = sorted(tally.problems)
    if result is None:
        problems.append("no image size: no classification reported the target frame's natural size")
    return SubjectSummary(
        subject_id=subject_id,
        slice=str(key) if key is not None else "",
        classifications=tally.classifications,
        empty=tally.empty,
        drawers=len(result.outcomes) if result else 0,
        classifications_used=sum(o.included for o in result.outcomes) if result else 0,
        flagged=result.n_flagged if result else 0,
        unplaced_marks=tally.unplaced,
        area_px=result.area_px if result else 0,
        stability=result.stability if result else None,
        method=options.params.method,
        problems="; ".join(problems),
    )


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def _batches(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    batch: list[_Item] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ordered_map(
    pool: Executor | None, fn: Callable[..., _Result], argument_tuples: Iterable[tuple[Any, ...]]
) -> Iterator[_Result]:
    """``fn(*args)`` for each tuple, in order, with a bounded number in flight (``Executor.map``
    would read the whole input first)."""
    if pool is None:
        for args in argument_tuples:
            yield fn(*args)
        return
    in_flight: deque[Future[_Result]] = deque()
    limit = 2 * _slots(pool) + 2
    for args in argument_tuples:
        in_flight.append(pool.submit(fn, *args))
        if len(in_flight) >= limit:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def _slots(pool: Executor) -> int:
    """How many tasks ``pool`` runs at once: its processes, or a Dask client's worker threads."""
    client = getattr(pool, "_client", None)
    if client is not None:
        return max(1, int(sum(client.nthreads().values())))
    return int(getattr(pool, "_max_workers", 2) or 2)
