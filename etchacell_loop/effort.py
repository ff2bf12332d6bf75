"""Volunteer effort as Zooniverse records it: the seconds each classification took, and per round of the
loop what volunteers spent on the slices that settled, what correcting saved against tracing, and at
which quality.

Why from the classification's own metadata: every classification a Zooniverse front end posts carries
the browser's ``metadata.started_at`` (the subject was shown) and ``metadata.finished_at`` (Done was
pressed), ISO 8601 in UTC with milliseconds (``2025-01-21T16:06:58.517Z``), and exports carry the same
column. Their difference is the only record of volunteer time there is; simulated volunteers write it
from a stated time model (:mod:`etchacell_loop.simulation.timing`), so a simulation and a live project
are read alike. A duration is *unknown* — counted by reason, never guessed, never an error — when the
metadata or either time is missing, when they do not parse, when ``finished_at`` precedes
``started_at`` (a clock changed under the browser) or when it exceeds :data:`MAX_SECONDS` (a tab left
open over lunch is not effort).

Rounds (:func:`effort_by_round`): round 0 is tracing raw subjects from scratch (their consensus is the
volunteer consensus); round N is correcting the predictions of the N-th model version whose predictions
were sent to volunteers. Only *settled* slices count — subjects the loop decided to retire (retiring or
retired: the notion training uses, :data:`etchacell_loop.db.models.SETTLED_STATES`) — so a
round's figures compare finished answers and do not drift while unfinished slices gather
classifications.

Monitoring: a random share of each version's corrected slices is also uploaded as a raw subject and
traced from scratch (``slice_prediction.monitoring_subject_id``, :mod:`etchacell_loop.loop.monitoring`).
That tracing is not round 0's work — those slices would be counted twice, and tracing would look as if
it grew with every round — but a cost of checking the version's corrections: its classifications are
charged to the round of the version it monitors (``monitoring_classifications``), once both the
corrected subject and the monitoring subject have settled, and its slice is not counted again. The
saving of a correction round is therefore net of the monitoring it needs, as
``bench/bench_corrections.py`` counts it.

Seconds per settled slice are the round's known seconds plus each untimed classification valued at the
mean known duration of its own task (correcting, or tracing a monitoring slice; the round's mean when
none of that task is timed), over its settled slices: a few broken clocks neither make a round look
cheaper nor hide it, and an untimed monitoring tracing is not valued at a correction's pace. Without
monitoring this is the round's mean known duration times its classifications per settled slice. The
saving of a correction round is ``1 - seconds per settled corrected slice / seconds per settled traced
slice`` (round 0's).

The rows come from the named query ``ops/queries/volunteer_effort.sql`` (:data:`INPUT_COLUMNS`):
selecting them is portable SQL, but reading JSON text and ISO times is not (SQLite's ``json_extract``
and ``julianday`` against PostgreSQL's ``->>`` and casts that fail on the first bad value), so the
arithmetic is done here, in Python, where a bad value is just an unknown duration.

Pure: rows in, records out; no database, no files.
"""

from __future__ import annotations

import enum
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from etchacell_loop import jsontext

MAX_SECONDS = 3600.0
"""Longer than an hour is not one classification's work (a tab left open): the duration is unknown."""

TRACING_ROUND = 0


class Unknown(enum.StrEnum):
    """Why a classification's duration is unknown."""

    MISSING = "missing"  # no metadata, or no started_at / finished_at in it
    UNPARSABLE = "unparsable"  # metadata not a JSON object, or a time that is not ISO 8601 text
    NEGATIVE = "negative"  # finished before it started
    TOO_LONG = "too long"  # more than MAX_SECONDS


class Task(enum.StrEnum):
    """What volunteers did in a round."""

    TRACING = "tracing"  # raw subjects, traced from scratch
    CORRECTION = "correction"  # a model version's predictions, corrected


@dataclass(frozen=True)
class Duration:
    """A classification's seconds, or why they are unknown."""

    seconds: float | None
    unknown: Unknown | None = None


def classification_seconds(metadata: str | Mapping[str, Any] | None, max_seconds: float = MAX_SECONDS) -> Duration:
    """``finished_at - started_at`` of a classification's metadata (the stored JSON text or its
    decoded object), or why it cannot be known."""
    fields = metadata_object(metadata)
    if isinstance(fields, Unknown):
        return Duration(None, fields)
    started, finished = fields.get("started_at"), fields.get("finished_at")
    if started is None or finished is None or started == "" or finished == "":
        return Duration(None, Unknown.MISSING)
    start, end = parse_instant(started), parse_instant(finished)
    if start is None or end is None:
        return Duration(None, Unknown.UNPARSABLE)
    seconds = (end - start).total_seconds()
    if seconds < 0:
        return Duration(None, Unknown.NEGATIVE)
    if seconds > max_seconds:
        return Duration(None, Unknown.TOO_LONG)
    return Duration(seconds)


def metadata_object(metadata: str | Mapping[str, Any] | None) -> Mapping[str, Any] | Unknown:
    """The metadata as a mapping; :attr:`Unknown.MISSING` when there is none, :attr:`Unknown.UNPARSABLE`
    when its text is not a JSON object."""
    if metadata is None:
        return Unknown.MISSING
    if isinstance(metadata, Mapping):
        return metadata
    if not metadata.strip():
        return Unknown.MISSING
    try:
        decoded = jsontext.loads(metadata)
    except ValueError:
        return Unknown.UNPARSABLE
    return decoded if isinstance(decoded, dict) else Unknown.UNPARSABLE


def parse_instant(value: object) -> datetime | None:
    """An ISO 8601 time as an aware datetime (no zone: UTC, as browsers' ``toISOString`` writes), or
    None when it is not ISO 8601 text."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- per round ---------------------------------------------------------------------------------------

INPUT_COLUMNS = (
    "row_kind",
    "loop_round",
    "model_version",
    "subject_kind",
    "roi_id",
    "slice_index",
    "raw_metadata",
    "correction_dice",
    "monitoring_dice",
)
"""What each row of ``volunteer_effort.sql`` holds. ``row_kind`` ``slice``: one settled subject, with
its prediction's ``correction_dice`` and, for a monitoring slice traced from scratch too, its
``monitoring_dice`` (corrected against traced consensus, ``slice_prediction.monitoring_dice``);
``classification``: one classification of a settled subject, with its ``raw_metadata``;
``monitoring``: one classification of a settled monitoring subject (a raw subject, traced from scratch)
whose corrected subject has settled too, with the ``loop_round`` and ``model_version`` it monitors."""

SLICE_ROW = "slice"
CLASSIFICATION_ROW = "classification"
MONITORING_ROW = "monitoring"


@dataclass(frozen=True)
class RoundEffort:
    """What volunteers spent on one round's settled slices, and the quality those slices reached.

    ``round``: 0 for tracing, N for the N-th model version whose predictions were corrected, None for
    prediction subjects that name no model version. ``classifications``, ``timed``,
    ``volunteer_seconds`` (the sum of the known durations) and ``unknown`` (the untimed, by reason)
    count everything charged to the round; of those, ``monitoring_classifications``,
    ``monitoring_timed`` and ``monitoring_seconds`` are the tracings from scratch of its monitoring
    slices. ``monitoring_dice``: Dice between the corrected and the traced consensus of the
    ``monitored_slices``, the monitoring slices traced from scratch too whose two answers have been
    compared.
    """

    round: int | None
    task: Task
    model_version: str | None
    settled_slices: int
    classifications: int
    timed: int
    volunteer_seconds: float
    unknown: Mapping[Unknown, int] = field(default_factory=dict)
    correction_dice: tuple[float, ...] = ()
    monitored_slices: int = 0
    monitoring_dice: tuple[float, ...] = ()
    monitoring_classifications: int = 0
    monitoring_timed: int = 0
    monitoring_seconds: float = 0.0

    @property
    def untimed(self) -> int:
        return self.classifications - self.timed

    @property
    def seconds_per_classification(self) -> float | None:
        return self.volunteer_seconds / self.timed if self.timed else None

    @property
    def classifications_per_slice(self) -> float | None:
        return self.classifications / self.settled_slices if self.settled_slices else None

    @property
    def seconds_per_slice(self) -> float | None:
        """The round's estimated seconds (:meth:`estimated_seconds`) per settled slice."""
        total = self.estimated_seconds
        if total is None or not self.settled_slices:
            return None
        return total / self.settled_slices

    @property
    def estimated_seconds(self) -> float | None:
        """Every classification charged to the round at its known duration, or else at the mean known
        duration of its task (the monitoring tracings and the rest apart, as they take different
        times); None when none is timed."""
        overall = self.seconds_per_classification
        if overall is None:
            return None
        monitoring = (self.monitoring_classifications, self.monitoring_timed, self.monitoring_seconds)
        work = (
            self.classifications - monitoring[0],
            self.timed - monitoring[1],
            self.volunteer_seconds - monitoring[2],
        )
        return sum(
            seconds + (count - timed) * (seconds / timed if timed else overall)
            for count, timed, seconds in (work, monitoring)
        )

    @property
    def median_correction_dice(self) -> float | None:
        return statistics.median(self.correction_dice) if self.correction_dice else None

    @property
    def median_monitoring_dice(self) -> float | None:
        return statistics.median(self.monitoring_dice) if self.monitoring_dice else None

    def saved_against(self, tracing: RoundEffort | None) -> float | None:
        """``1 - seconds per settled slice here / per settled traced slice``: the share of volunteer time
        this round saved against tracing from scratch (None for tracing itself, or when either is unknown)."""
        if tracing is None or self.task is Task.TRACING:
            return None
        here, traced = self.seconds_per_slice, tracing.seconds_per_slice
        if here is None or not traced:
            return None
        return 1.0 - here / traced


@dataclass
class _Clock:
    """Classifications and their known seconds, while rows are read."""

    classifications: int = 0
    timed: int = 0
    seconds: float = 0.0
    unknown: Counter[Unknown] = field(default_factory=Counter)

    def add(self, metadata: str | None, max_seconds: float) -> None:
        self.classifications += 1
        duration = classification_seconds(metadata, max_seconds)
        if duration.seconds is None:
            self.unknown[duration.unknown or Unknown.MISSING] += 1
            return
        self.timed += 1
        self.seconds += duration.seconds


@dataclass
class _Tally:
    """A round's figures while its rows are read: its own task's classifications and its monitoring
    tracings on separate clocks, as their durations differ."""

    slices: set[tuple[int, int]] = field(default_factory=set)
    work: _Clock = field(default_factory=_Clock)
    monitoring: _Clock = field(default_factory=_Clock)
    correction_dice: list[float] = field(default_factory=list)
    monitoring_dice: dict[tuple[int, int], float] = field(default_factory=dict)  # one per slice

    def add(self, row: Mapping[str, Any], max_seconds: float) -> None:
        where = (int(row["roi_id"]), int(row["slice_index"]))
        if row["row_kind"] == CLASSIFICATION_ROW:
            self.work.add(row.get("raw_metadata"), max_seconds)
            return
        if row["row_kind"] == MONITORING_ROW:
            self.monitoring.add(row.get("raw_metadata"), max_seconds)
            return
        self.slices.add(where)
        if row.get("correction_dice") is not None:
            self.correction_dice.append(float(row["correction_dice"]))
        if row.get("monitoring_dice") is not None:
            self.monitoring_dice[where] = float(row["monitoring_dice"])


RoundKey = tuple[int | None, Task, str | None]


def effort_by_round(rows: Iterable[Mapping[str, Any]], max_seconds: float = MAX_SECONDS) -> list[RoundEffort]:
    """Every round with settled slices, tracing first, then correction rounds in order (a round
    without a model version last). ``rows`` as :data:`INPUT_COLUMNS` describes."""
    tallies: dict[RoundKey, _Tally] = {}
    for row in rows:
        key = round_key(row)
        tally = tallies.get(key)
        if tally is None:
            tally = tallies[key] = _Tally()
        tally.add(row, max_seconds)
    ordered = sorted(tallies.items(), key=lambda item: (item[0][0] is None, item[0][0] or 0, item[0][2] or ""))
    return [_finished(key, tally) for key, tally in ordered]


def round_key(row: Mapping[str, Any]) -> RoundKey:
    """Which round a row belongs to: a monitoring tracing is charged to the round it monitors; other
    raw subjects are tracing (round 0) whatever the query says."""
    if row["subject_kind"] == "raw" and row["row_kind"] != MONITORING_ROW:
        return (TRACING_ROUND, Task.TRACING, None)
    number = row.get("loop_round")
    return (None if number is None else int(number), Task.CORRECTION, row.get("model_version"))


def _finished(key: RoundKey, tally: _Tally) -> RoundEffort:
    number, task, version = key
    work, monitoring = tally.work, tally.monitoring
    return RoundEffort(
        round=number,
        task=task,
        model_version=version,
        settled_slices=len(tally.slices),
        classifications=work.classifications + monitoring.classifications,
        timed=work.timed + monitoring.timed,
        volunteer_seconds=work.seconds + monitoring.seconds,
        unknown=dict(work.unknown + monitoring.unknown),
        correction_dice=tuple(tally.correction_dice),
        monitored_slices=len(tally.monitoring_dice),
        monitoring_dice=tuple(tally.monitoring_dice.values()),
        monitoring_classifications=monitoring.classifications,
        monitoring_timed=monitoring.timed,
        monitoring_seconds=monitoring.seconds,
    )


def tracing_round(rounds: Sequence[RoundEffort]) -> RoundEffort | None:
    """Round 0, what every correction round is measured against."""
    return next((r for r in rounds if r.task is Task.TRACING), None)


# --- as a table (the named query's result) -------------------------------------------------------------

EFFORT_COLUMNS = (
    "round",
    "task",
    "model_version",
    "settled_slices",
    "classifications",
    "classifications_per_slice",
    "volunteer_seconds",
    "seconds_per_slice",
    "seconds_per_classification",
    "untimed",
    "untimed_why",
    "saved_vs_tracing",
    "median_correction_dice",
    "monitored_slices",
    "median_monitoring_dice",
    "monitoring_classifications",
)


def effort_table(
    rows: Sequence[Mapping[str, Any]], max_seconds: float = MAX_SECONDS
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """The rows of ``volunteer_effort.sql`` turned into one printable row per round (:data:`EFFORT_COLUMNS`):
    the Python step the query's ``-- compute:`` header names."""
    rounds = effort_by_round(rows, max_seconds)
    tracing = tracing_round(rounds)
    return EFFORT_COLUMNS, [table_row(r, tracing) for r in rounds]


def table_row(effort: RoundEffort, tracing: RoundEffort | None) -> tuple[Any, ...]:
    """One round as the table shows it: seconds to 0.1 s, shares and Dice to three places."""
    return (
        effort.round,
        effort.task.value,
        effort.model_version,
        effort.settled_slices,
        effort.classifications,
        _places(effort.classifications_per_slice, 2),
        _places(effort.volunteer_seconds, 1),
        _places(effort.seconds_per_slice, 1),
        _places(effort.seconds_per_classification, 1),
        effort.untimed,
        unknown_text(effort.unknown),
        _places(effort.saved_against(tracing), 3),
        _places(effort.median_correction_dice, 3),
        effort.monitored_slices,
        _places(effort.median_monitoring_dice, 3),
        effort.monitoring_classifications,
    )


def unknown_text(unknown: Mapping[Unknown, int]) -> str | None:
    """``missing 3, too long 1``: why durations are unknown, most common first, ties by name (None:
    all known)."""
    counts = sorted(((n, reason.value) for reason, n in unknown.items() if n), key=lambda item: (-item[0], item[1]))
    return ", ".join(f"{reason} {n}" for n, reason in counts) or None


def _places(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
