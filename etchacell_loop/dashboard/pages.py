"""What each dashboard page shows, read from the database through the named queries.

Why here and not in the routes: a page's figures are plain data (rows, a chart, warnings) that can be
tested without a browser, and the routes stay a thin layer of HTTP. Every figure comes from a named
query in ``ops/queries/`` — the same SQL ``etchacell query`` runs and Grafana can paste — except reads
of one row by id (a consensus result, a training run), which use the models directly.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.config import Settings
from etchacell_loop.dashboard import charts
from etchacell_loop.dashboard.overlay import OverlaySources
from etchacell_loop.db.models import ConsensusResult, Event, ModelVersion, Roi, Subject, TrainingRun
from etchacell_loop.db.queries import NamedQuery, load_queries, run_query
from etchacell_loop.loop.runs import ACTIVE_STATUSES
from etchacell_loop.stored_files import resolve_uri
from etchacell_loop.subject_metadata import IMAGE_KEY

PAPER_FIXED_LIMIT = 30  # the paper's retirement limit: every subject classified 30 times
MAX_PAGE_ROWS = 500

Row = dict[str, Any]


CACHED_QUERIES = frozenset(
    {
        "classification_throughput",
        "volunteer_effort_gini",
        "cursor_lag",
        "retirement_progress",
        "retirement_effort",
        "volunteer_reliability",
        "volunteer_effort",
    }
)
"""Figures that read whole tables (a million classifications take a second on SQLite) and change
slowly: reused for ``dashboard.cache_s`` seconds. Everything else is read fresh on every request."""


class QueryBook:
    """The named queries, parsed once, run against one engine; the costly ones cached briefly."""

    def __init__(self, engine: Engine, cache_s: float = 0.0, directory: Path | None = None) -> None:
        self.engine = engine
        self.queries: Mapping[str, NamedQuery] = load_queries(directory)
        self._cache_s = cache_s
        self._cache: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, list[Row]]] = {}
        self._lock = threading.Lock()

    def rows(self, name: str, **params: object) -> list[Row]:
        given = {key: "" if value is None else str(value) for key, value in params.items()}
        if name not in CACHED_QUERIES or self._cache_s <= 0:
            return run_query(self.engine, self.queries[name], given).as_dicts()
        key = (name, tuple(sorted(given.items())))
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self._cache_s:
            return hit[1]
        rows = run_query(self.engine, self.queries[name], given).as_dicts()
        with self._lock:
            self._cache[key] = (time.monotonic(), rows)
        return rows

    def forget(self) -> None:
        """Drop cached figures (after an action, so the operator sees its effect at once)."""
        with self._lock:
            self._cache.clear()


def parse_time(value: object) -> datetime | None:
    """A timestamp as the named queries print it (ISO text), or None."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- overview ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobHealth:
    """One daemon job: how often it should run, when it last did, and whether it is late.

    ``daemon_stopped``: the daemon has run no job lately (:func:`daemon_silent`). A job with a long
    interval is not late yet when the daemon stops, so without it the row would say "on time" for a
    job that will not run again until someone starts the daemon."""

    job: str
    interval_s: int
    last_started_at: datetime | None
    last_status: str | None
    runs: int
    failures: int
    late: bool
    daemon_stopped: bool = False

    @property
    def state(self) -> str:
        if self.last_started_at is None:
            return "never run"
        if self.daemon_stopped:
            return "daemon stopped"
        if self.late:
            return "late"
        return "failing" if self.last_status == "failed" else "on time"


@dataclass(frozen=True)
class Overview:
    classifications_30d: int
    volunteers_30d: int
    gini: float | None
    volunteers_today: int
    classifications_today: int
    chart: Markup
    cursors: list[Row]
    jobs: list[JobHealth]
    heartbeat_at: datetime | None
    daemon_silent: bool
    active_run: TrainingRun | None
    warnings: list[str] = field(default_factory=list)


def overview(book: QueryBook, settings: Settings, now: datetime) -> Overview:
    throughput = book.rows("classification_throughput", since="-30d")
    gini = book.rows("volunteer_effort_gini", since="-30d")[0]
    jobs = job_health(book.rows("job_status", since="-1d"), settings, now)
    heartbeat = daemon_heartbeat(jobs)
    silent = daemon_silent(jobs, settings, now)
    today = throughput[-1] if throughput and throughput[-1]["day"] == now.date().isoformat() else None
    warnings = [f"job {j.job} is late: last run {_ago(j.last_started_at, now)}" for j in jobs if j.late]
    if silent:
        warnings.insert(0, "the daemon has not run any job lately" if heartbeat else "the daemon has never run a job")
    with Session(book.engine) as session:
        active = session.exec(
            select(TrainingRun).where(col(TrainingRun.status).in_(ACTIVE_STATUSES)).order_by(col(TrainingRun.id))
        ).first()
    return Overview(
        classifications_30d=int(gini["classifications"] or 0),
        volunteers_30d=int(gini["volunteers"] or 0),
        gini=gini["gini"],
        volunteers_today=int(today["volunteers"]) if today else 0,
        classifications_today=int(today["classifications"]) if today else 0,
        chart=charts.bar_chart(
            [str(r["day"])[5:] for r in throughput],
            [float(r["classifications"]) for r in throughput],
            label="Classifications per day (last 30 days)",
            line=[float(r["volunteers"]) for r in throughput],
            line_label="volunteers",
        ),
        cursors=book.rows("cursor_lag"),
        jobs=jobs,
        heartbeat_at=heartbeat,
        daemon_silent=silent,
        active_run=active,
        warnings=warnings,
    )


def daemon_heartbeat(jobs: Sequence[JobHealth]) -> datetime | None:
    """The daemon's last sign of life: the newest start of any job."""
    return max((j.last_started_at for j in jobs if j.last_started_at), default=None)


def daemon_silent(jobs: Sequence[JobHealth], settings: Settings, now: datetime) -> bool:
    """No job started for ``jobs.late_factor`` periods of the quickest job (or none ever): the daemon
    is stopped, or stuck."""
    heartbeat = daemon_heartbeat(jobs)
    quickest = min(settings.jobs.intervals().values())
    return heartbeat is None or (now - heartbeat).total_seconds() > quickest * settings.jobs.late_factor


def job_health(rows: Sequence[Row], settings: Settings, now: datetime) -> list[JobHealth]:
    """Every job the daemon runs (and any other found in the log), late when its last start is more
    than ``jobs.late_factor`` intervals ago; each marked ``daemon_stopped`` while the daemon is silent."""
    by_job = {str(r["job"]): r for r in rows}
    intervals = settings.jobs.intervals()
    health = []
    for name in [*intervals, *sorted(set(by_job) - set(intervals))]:
        row = by_job.get(name, {})
        interval = intervals.get(name, 0)
        started = parse_time(row.get("last_started_at"))
        late = (
            bool(interval)
            and started is not None
            and (now - started).total_seconds() > interval * settings.jobs.late_factor
        )
        health.append(
            JobHealth(
                name,
                interval,
                started,
                row.get("last_status"),
                int(row.get("runs") or 0),
                int(row.get("failures") or 0),
                late,
            )
        )
    if daemon_silent(health, settings, now):
        return [replace(h, daemon_stopped=True) for h in health]
    return health


# --- subject sets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetEffort:
    subject_set: str
    retired: int
    mean_classifications: float | None
    saved_vs_fixed: int


@dataclass(frozen=True)
class SubjectSets:
    progress: list[Row]
    effort: list[SetEffort]
    histogram: Markup
    retired_total: int
    mean_per_retired: float | None
    fixed_limit: int = PAPER_FIXED_LIMIT


def subject_sets(book: QueryBook) -> SubjectSets:
    progress = book.rows("retirement_progress")
    counts = book.rows("retirement_effort")
    per_set: dict[str, list[tuple[int, int]]] = defaultdict(list)
    overall: dict[int, int] = defaultdict(int)
    for row in counts:
        n, subjects = int(row["classifications"]), int(row["subjects"])
        per_set[str(row["subject_set"] or "(no set)")].append((n, subjects))
        overall[n] += subjects
    effort = [_set_effort(name, pairs) for name, pairs in per_set.items()]
    retired = sum(overall.values())
    top = max([*overall, PAPER_FIXED_LIMIT + 1])
    return SubjectSets(
        progress=progress,
        effort=effort,
        histogram=charts.bar_chart(
            [str(n) for n in range(top + 1)],
            [float(overall.get(n, 0)) for n in range(top + 1)],
            label="Retired subjects by classifications received",
            unit=" subjects",
            marker_at=PAPER_FIXED_LIMIT,
            marker_label=f"fixed limit {PAPER_FIXED_LIMIT}",
        )
        if overall
        else charts.bar_chart([], [], label="Retired subjects by classifications received"),
        retired_total=retired,
        mean_per_retired=sum(n * k for n, k in overall.items()) / retired if retired else None,
    )


def _set_effort(name: str, pairs: Sequence[tuple[int, int]]) -> SetEffort:
    retired = sum(k for _, k in pairs)
    used = sum(n * k for n, k in pairs)
    return SetEffort(name, retired, used / retired if retired else None, PAPER_FIXED_LIMIT * retired - used)


# --- consensus ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsensusView:
    """One consensus result: where it is, what made it, and who agreed with it."""

    result: ConsensusResult
    roi: Roi
    subject: Subject | None
    agreement: list[Row]
    sources: OverlaySources | None


def reliability_params(settings: Settings) -> dict[str, object]:
    """The flagging thresholds the consensus itself uses, as named-query parameters."""
    return {"min_slices": settings.consensus.flag_min_slices, "flag_below": settings.consensus.flag_below_dice}


def consensus_view(book: QueryBook, settings: Settings, consensus_id: int) -> ConsensusView | None:
    with Session(book.engine, expire_on_commit=False) as session:
        result = session.get(ConsensusResult, consensus_id)
        if result is None:
            return None
        roi = session.get(Roi, result.roi_id)
        subject = session.get(Subject, result.subject_id) if result.subject_id else None
    assert roi is not None
    return ConsensusView(
        result,
        roi,
        subject,
        book.rows("consensus_agreement", consensus_id=consensus_id),
        overlay_sources(result, subject, settings.data_dir),
    )


def overlay_sources(result: ConsensusResult, subject: Subject | None, data_dir: Path) -> OverlaySources | None:
    """The files to draw a consensus over its slice; None when the consensus has no images."""
    if not result.band_uri or not result.confidence_uri:
        return None
    return OverlaySources(
        frame=_target_frame(subject, data_dir),
        band=resolve_uri(result.band_uri, data_dir),
        confidence=resolve_uri(result.confidence_uri, data_dir),
    )


def _target_frame(subject: Subject | None, data_dir: Path) -> Path | None:
    if subject is None or not subject.local_dir:
        return None
    name = subject.panoptes_metadata.get(IMAGE_KEY.format(index=subject.target_frame))
    return resolve_uri(subject.local_dir, data_dir) / name if isinstance(name, str) and name else None


# --- models ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Models:
    versions: list[Row]
    runs: list[Row]
    chart: Markup
    active_run: Row | None
    promoted: str | None
    effort: list[Row]
    effort_chart: Markup


def models(book: QueryBook) -> Models:
    versions = with_monitoring(book.rows("model_versions"), book.rows("monitoring_slices"))
    runs = book.rows("training_runs", top=50)
    effort = book.rows("volunteer_effort")
    oldest_first = list(reversed(versions))
    return Models(
        versions=versions,
        runs=runs,
        chart=charts.grouped_bars(
            [str(v["version"]).split("-")[0] for v in oldest_first],
            {
                "validation F": [v["validation_f_measure"] for v in oldest_first],
                "test F vs consensus": [v["f_measure_consensus"] for v in oldest_first],
                "test F vs truth": [v["f_measure_truth"] for v in oldest_first],
                "correction Dice": [v["mean_correction_dice"] for v in oldest_first],
            },
            label="Table 1 F-measures and correction Dice per model version",
            top=1.0,
        ),
        active_run=next((r for r in runs if r["status"] in {s.value for s in ACTIVE_STATUSES}), None),
        promoted=next((str(v["version"]) for v in versions if v["promoted"]), None),
        effort=effort,
        effort_chart=effort_chart(effort),
    )


def with_monitoring(versions: Sequence[Row], monitoring: Sequence[Row]) -> list[Row]:
    """Each version row with ``median_monitoring_dice``: the median Dice between corrected and traced
    consensus over its measured monitoring slices (``monitoring_slices``), the figure the monitoring
    guard compares with ``correction.min_monitoring_dice``; in Python, as portable SQL has no median."""
    measured: dict[str, list[float]] = defaultdict(list)
    for row in monitoring:
        if row["monitoring_dice"] is not None:
            measured[str(row["version"])].append(float(row["monitoring_dice"]))
    return [
        {**v, "median_monitoring_dice": statistics.median(measured[v["version"]]) if v["version"] in measured else None}
        for v in versions
    ]


def effort_chart(effort: Sequence[Row]) -> Markup:
    """Volunteer-seconds per settled slice, round by round (``volunteer_effort``): tracing from scratch
    first, then each model version's corrections, so the effort the loop saves is seen at a glance."""
    return charts.grouped_bars(
        [round_label(r) for r in effort],
        {"volunteer-seconds per settled slice": [r["seconds_per_slice"] for r in effort]},
        label="Volunteer-seconds per settled slice, per round",
    )


def round_label(row: Row) -> str:
    """``0 tracing``, ``2 v3``: a round's number and what volunteers did in it, short enough for an axis."""
    number = "?" if row["round"] is None else str(row["round"])
    what = str(row["model_version"]).split("-")[0] if row["model_version"] else str(row["task"])
    return f"{number} {what}"


@dataclass(frozen=True)
class RunView:
    run: TrainingRun
    events: list[Event]
    version: str | None

    @property
    def active(self) -> bool:
        return self.run.status in ACTIVE_STATUSES

    @property
    def fraction_done(self) -> float | None:
        epoch, epochs = self.run.progress.get("epoch"), self.run.progress.get("epochs")
        if isinstance(epoch, int | float) and isinstance(epochs, int | float) and epochs > 0:
            return min(1.0, float(epoch) / float(epochs))
        return None


def run_view(book: QueryBook, run_id: int) -> RunView | None:
    with Session(book.engine, expire_on_commit=False) as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            return None
        events = list(
            session.exec(
                select(Event).where(Event.training_run_id == run_id).order_by(col(Event.created_at).desc()).limit(50)
            )
        )
        version = session.exec(
            select(ModelVersion.version).where(ModelVersion.training_run_id == run_id).order_by(col(ModelVersion.id))
        ).first()
    return RunView(run, events, version)


# --- helpers -----------------------------------------------------------------------------------------

KEY_SHOWN = 8
"""Characters of a long volunteer key's identifier shown in a table (after its kind, ``anon:``)."""
KEY_WHOLE = 16
"""Identifiers up to this long are shown whole."""


def short_key(key: object) -> str:
    """A volunteer key short enough for a table column: ``user:42`` and
    ``anon:classification-<id>`` whole, an anonymous session (up to 64 characters, often a hash) as
    its kind and first characters, ``anon:3f2a9c1d…``. Why: a full session pushes the figures beside it
    off the page; the page keeps the whole key in a title, for copying."""
    text = "" if key is None else str(key)
    kind, colon, identifier = text.partition(":") if ":" in text else ("", "", text)
    if len(identifier) <= KEY_WHOLE or identifier.startswith("classification-"):
        return text
    return f"{kind}{colon}{identifier[:KEY_SHOWN]}…"


def _ago(moment: datetime | None, now: datetime) -> str:
    return "never" if moment is None else f"{humanize_seconds((now - moment).total_seconds())} ago"


def humanize_seconds(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3.5 h``, ``12 d``: durations as people read them."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def page_window(top: int | None, skip: int | None, default_top: int = 50) -> tuple[int, int]:
    """Paging parameters, bounded: at most ``MAX_PAGE_ROWS`` rows, never a negative offset."""
    size = default_top if top is None else max(1, min(int(top), MAX_PAGE_ROWS))
    return size, max(0, int(skip or 0))
