"""Volunteer tracings as Zooniverse records them → typed tracings, with a reason for everything dropped.

Both front ends are read exactly as Panoptes stores them (reference §3.2): the old front end's marks
``{"tool", "frame", "points": [{"x", "y"}, …]}`` and the new front end's
``{"toolType": "freehandLine" | "polygon", "frame", "pathX": […], "pathY": […], "markId"?}``.
Coordinates are natural-image pixels of the mark's frame; ``metadata.subject_dimensions[frame]``
gives that frame's size. Nothing here stops on bad input: a bad value drops that point, a bad mark
drops that mark, and only an unreadable annotation list makes the whole classification invalid —
always with an :class:`Issue` saying why. Coordinates are kept as floats (never truncated).

Pure functions over text and records: no database, no network, no module state.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from etchacell_loop import jsontext
from etchacell_loop.db.models import ParseStatus

FloatArray = NDArray[np.float64]
ANON_TOKEN_MAX = 64  # Classification.anonymous_token
TRACING_TOOLS = frozenset({"freehandLine", "polygon"})
EXPORT_COLUMNS = (
    "classification_id", "user_name", "user_id", "user_ip", "workflow_id", "workflow_name", "workflow_version",
    "created_at", "gold_standard", "expert", "metadata", "annotations", "subject_data", "subject_ids",
)  # fmt: skip
REQUIRED_EXPORT_COLUMNS = ("classification_id", "workflow_id", "created_at", "metadata", "annotations", "subject_ids")


class IssueCode(enum.StrEnum):
    MALFORMED_JSON = "malformed-json"  # annotations or metadata are not JSON
    NOT_A_LIST = "not-a-list"  # annotations are JSON but not a list of tasks
    NO_DIMENSIONS = "no-dimensions"  # metadata.subject_dimensions missing for a frame: not clipped
    NON_FINITE = "non-finite"  # NaN, infinity, or a non-number among the coordinates: those points dropped
    OFF_IMAGE = "off-image"  # points outside the frame: clipped to its edge
    TOO_FEW_POINTS = "too-few-points"  # fewer than the minimum after cleaning: mark dropped
    TOO_MANY_POINTS = "too-many-points"  # more than the maximum: evenly decimated
    UNKNOWN_MARK = "unknown-mark"  # not a tracing (a point, a circle, garbage): mark dropped
    BAD_FRAME = "bad-frame"  # frame is not a frame of the subject: mark dropped
    EMPTY = "empty"  # the volunteer drew nothing (information, not a fault)


# Issues that lose or change a volunteer's data; the others only inform.
_DAMAGING = frozenset(set(IssueCode) - {IssueCode.EMPTY, IssueCode.NO_DIMENSIONS})


@dataclass(frozen=True)
class Issue:
    """Why something in a classification was dropped, clipped or questioned."""

    code: IssueCode
    message: str
    mark: int | None = None  # index of the mark in its task's value list

    def __str__(self) -> str:
        where = f"mark {self.mark}: " if self.mark is not None else ""
        return f"{self.code.value}: {where}{self.message}"


@dataclass(frozen=True)
class FrameSize:
    """Natural size of one frame of a subject, in pixels."""

    width_px: float
    height_px: float


@dataclass(frozen=True, eq=False)
class Tracing:
    """One volunteer line on one frame, in natural-image pixels of that frame.

    ``mark_id`` is the new front end's id; a machine mark left untouched by a volunteer keeps it, which
    is how corrections say "the model was right here".
    """

    frame: int
    x_px: FloatArray
    y_px: FloatArray
    task: str
    tool: str
    tool_index: int | None = None
    mark_id: str | None = None

    @property
    def n_points(self) -> int:
        return int(self.x_px.size)


@dataclass(frozen=True)
class ParseLimits:
    """What counts as a usable line. Declared as data beside the parser, chosen by configuration."""

    min_points: int = 3
    max_points: int = 20_000
    tasks: frozenset[str] | None = None  # None: every drawing task


@dataclass(frozen=True)
class ParsedClassification:
    """The usable tracings of one classification and everything said about it."""

    tracings: tuple[Tracing, ...]
    issues: tuple[Issue, ...]
    frame_sizes: Mapping[int, FrameSize] = field(default_factory=dict)
    invalid: bool = False

    @property
    def status(self) -> ParseStatus:
        if self.invalid:
            return ParseStatus.INVALID
        return ParseStatus.PARTIAL if any(i.code in _DAMAGING for i in self.issues) else ParseStatus.OK

    @property
    def empty(self) -> bool:
        """The volunteer drew nothing usable (counted as a classification, not as a drawer)."""
        return not self.tracings

    def reasons(self) -> list[str]:
        return [str(issue) for issue in self.issues]


def parse_classification(
    annotations: str | Sequence[Any],
    metadata: str | Mapping[str, Any] | None,
    limits: ParseLimits = ParseLimits(),
    fallback_size: FrameSize | None = None,
) -> ParsedClassification:
    """Tracings from a classification's raw ``annotations`` and ``metadata`` (JSON text or parsed)."""
    issues: list[Issue] = []
    tasks = _load_json(annotations, "annotations", issues)
    meta = _load_json(metadata, "metadata", issues) if metadata is not None else {}
    sizes = frame_sizes(meta if isinstance(meta, Mapping) else {})
    if tasks is None:
        return ParsedClassification((), tuple(issues), sizes, invalid=True)
    if not isinstance(tasks, list):
        issues.append(Issue(IssueCode.NOT_A_LIST, f"annotations are a {type(tasks).__name__}, not a list"))
        return ParsedClassification((), tuple(issues), sizes, invalid=True)
    tracings: list[Tracing] = []
    for annotation in tasks:
        if not isinstance(annotation, Mapping):
            continue
        task = str(annotation.get("task", ""))
        value = annotation.get("value")
        if (limits.tasks is not None and task not in limits.tasks) or not isinstance(value, list):
            continue  # a question or another task: not ours to read
        for index, mark in enumerate(value):
            tracing = _parse_mark(mark, task, index, sizes, fallback_size, limits, issues)
            if tracing is not None:
                tracings.append(tracing)
    if not tracings:
        issues.append(Issue(IssueCode.EMPTY, "no usable tracing"))
    return ParsedClassification(tuple(tracings), tuple(issues), sizes)


def frame_sizes(metadata: Mapping[str, Any]) -> dict[int, FrameSize]:
    """``metadata.subject_dimensions`` by frame; frames never displayed (``null``) are absent."""
    sizes: dict[int, FrameSize] = {}
    dimensions = metadata.get("subject_dimensions")
    if not isinstance(dimensions, list):
        return sizes
    for frame, entry in enumerate(dimensions):
        if not isinstance(entry, Mapping):
            continue
        width, height = _number(entry.get("naturalWidth")), _number(entry.get("naturalHeight"))
        if width is not None and height is not None and width > 0 and height > 0:
            sizes[frame] = FrameSize(width, height)
    return sizes


def _load_json(value: Any, what: str, issues: list[Issue]) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return jsontext.loads(value)
    except (json.JSONDecodeError, RecursionError) as exc:
        issues.append(Issue(IssueCode.MALFORMED_JSON, f"{what} are not valid JSON ({exc})"))
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _parse_mark(
    mark: Any,
    task: str,
    index: int,
    sizes: Mapping[int, FrameSize],
    fallback: FrameSize | None,
    limits: ParseLimits,
    issues: list[Issue],
) -> Tracing | None:
    if not isinstance(mark, Mapping):
        issues.append(Issue(IssueCode.UNKNOWN_MARK, f"a {type(mark).__name__}, not a mark", index))
        return None
    raw = _raw_coordinates(mark)
    if raw is None:
        kind = mark.get("toolType") or mark.get("tool")
        issues.append(Issue(IssueCode.UNKNOWN_MARK, f"not a tracing (tool {kind!r})", index))
        return None
    frame = _frame(mark.get("frame", 0))
    if frame is None or (sizes and frame not in sizes and frame >= max(sizes) + 1):
        issues.append(Issue(IssueCode.BAD_FRAME, f"frame {mark.get('frame')!r} is not a frame of the subject", index))
        return None
    x, y = _clean(raw, index, issues)
    x, y = _limit_points(x, y, limits, index, issues)
    size = sizes.get(frame, fallback)
    if size is None:
        issues.append(Issue(IssueCode.NO_DIMENSIONS, f"no natural size for frame {frame}: not clipped", index))
    else:
        x, y = _clip(x, y, size, index, issues)
    if x.size < limits.min_points:
        issues.append(Issue(IssueCode.TOO_FEW_POINTS, f"{x.size} usable point(s), {limits.min_points} needed", index))
        return None
    tool = str(mark.get("toolType") or "freehandLine")
    tool_index = mark.get("toolIndex", mark.get("tool"))
    mark_id = mark.get("markId") or mark.get("markID")
    return Tracing(
        frame=frame,
        x_px=x,
        y_px=y,
        task=task,
        tool=tool,
        tool_index=tool_index if isinstance(tool_index, int) and not isinstance(tool_index, bool) else None,
        mark_id=str(mark_id) if mark_id is not None else None,
    )


def _raw_coordinates(mark: Mapping[str, Any]) -> tuple[list[Any], list[Any]] | None:
    """The mark's x and y lists, from either front end; None when it is not a tracing."""
    tool_type = mark.get("toolType")
    if tool_type is not None and tool_type not in TRACING_TOOLS:
        return None
    path_x, path_y = mark.get("pathX"), mark.get("pathY")
    if isinstance(path_x, list) and isinstance(path_y, list):
        return path_x, path_y
    points = mark.get("points")
    if isinstance(points, list):
        try:  # the usual case, at C speed: every point a {"x", "y"} object
            return [p["x"] for p in points], [p["y"] for p in points]
        except (TypeError, KeyError, IndexError):
            xs = [p.get("x") if isinstance(p, Mapping) else None for p in points]
            ys = [p.get("y") if isinstance(p, Mapping) else None for p in points]
            return xs, ys
    return None


def _frame(value: Any) -> int | None:
    number = _number(value)
    if number is None or number < 0 or number != int(number):
        return None
    return int(number)


def _as_floats(values: list[Any]) -> FloatArray:
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return np.array([_number(v) if _number(v) is not None else np.nan for v in values], dtype=np.float64)


def _clean(raw: tuple[list[Any], list[Any]], index: int, issues: list[Issue]) -> tuple[FloatArray, FloatArray]:
    xs, ys = raw
    if len(xs) != len(ys):
        issues.append(Issue(IssueCode.NON_FINITE, f"pathX has {len(xs)} values, pathY {len(ys)}: extra dropped", index))
    n = min(len(xs), len(ys))
    x, y = _as_floats(xs[:n]), _as_floats(ys[:n])
    finite = np.isfinite(x) & np.isfinite(y)
    dropped = int(n - finite.sum())
    if dropped:
        issues.append(
            Issue(IssueCode.NON_FINITE, f"{dropped} point(s) with a missing or non-finite value dropped", index)
        )
        x, y = x[finite], y[finite]
    return x, y


def _limit_points(
    x: FloatArray, y: FloatArray, limits: ParseLimits, index: int, issues: list[Issue]
) -> tuple[FloatArray, FloatArray]:
    if x.size <= limits.max_points:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, limits.max_points).round().astype(np.int64))
    issues.append(Issue(IssueCode.TOO_MANY_POINTS, f"{x.size} points decimated to {keep.size}", index))
    return x[keep], y[keep]


def _clip(
    x: FloatArray, y: FloatArray, size: FrameSize, index: int, issues: list[Issue]
) -> tuple[FloatArray, FloatArray]:
    outside = (x < 0) | (x > size.width_px) | (y < 0) | (y > size.height_px)
    count = int(outside.sum())
    if not count:
        return x, y
    issues.append(
        Issue(
            IssueCode.OFF_IMAGE,
            f"{count} point(s) outside the {size.width_px:g}x{size.height_px:g} frame clipped",
            index,
        )
    )
    return np.clip(x, 0.0, size.width_px), np.clip(y, 0.0, size.height_px)


# --- classification exports -------------------------------------------------------------------------


def volunteer_key(user_id: int | None, anonymous_token: str | None, classification_id: int) -> str:
    """``user:<id>``; for anonymous volunteers ``anon:<session>`` (the API has no IP token), or,
    with no session either, ``anon:classification-<id>`` (each such classification counts alone)."""
    if user_id is not None:
        return f"user:{user_id}"
    if anonymous_token:
        return f"anon:{anonymous_token}"
    return f"anon:classification-{classification_id}"


def anonymous_token(metadata: Any) -> str | None:
    """The browser session of an anonymous classification (``metadata.session``), hashed when longer
    than the column that keeps it."""
    session = metadata.get("session") if isinstance(metadata, Mapping) else None
    if not isinstance(session, str) or not session:
        return None
    if len(session) <= ANON_TOKEN_MAX:
        return session
    return hashlib.sha256(session.encode()).hexdigest()


class ExportFormatError(ValueError):
    """The file is not a Zooniverse classification export (one line saying what is missing)."""


@dataclass(frozen=True)
class ExportRow:
    """One row of a classification export, with the raw JSON columns kept as text."""

    line: int
    classification_id: int
    user_name: str
    user_id: int | None
    user_ip: str
    workflow_id: int
    workflow_version: str
    created_at: datetime
    metadata: str
    annotations: str
    subject_data: str
    subject_ids: tuple[int, ...]


@dataclass(frozen=True)
class RowProblem:
    """A row that could not be read (truncated, unparseable id or date); the run goes on."""

    line: int
    message: str


def read_export(source: Path | Iterable[str], workflow_id: int | None = None) -> Iterator[ExportRow | RowProblem]:
    """Stream an export row by row (a 100,000-row export never sits in memory whole)."""
    if isinstance(source, Path):
        with source.open(newline="", encoding="utf-8") as handle:
            yield from read_export(handle, workflow_id)
        return
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(source)
    try:
        header = next(reader)
    except StopIteration:
        raise ExportFormatError("the export is empty (no header row)") from None
    position = export_columns(header)
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RowProblem(reader.line_num, f"unreadable CSV ({exc}); stopped here")
            return
        if not values:
            continue
        row = export_row(reader.line_num, values, position)
        if isinstance(row, ExportRow) and workflow_id is not None and row.workflow_id != workflow_id:
            continue
        yield row


def export_columns(header: Sequence[str]) -> dict[str, int]:
    """Where each column is, from an export's header row; ``ExportFormatError`` when it is not one."""
    missing = [c for c in REQUIRED_EXPORT_COLUMNS if c not in header]
    if missing:
        raise ExportFormatError(f"not a classification export: missing column(s) {', '.join(missing)}")
    return {name: i for i, name in enumerate(header)}


def export_row(line: int, values: Sequence[str], position: Mapping[str, int]) -> ExportRow | RowProblem:
    """One row's fields as an :class:`ExportRow`, or why they are not one."""
    width = max(position.values()) + 1
    if len(values) != width:
        return RowProblem(line, f"{len(values)} fields, the header has {width} (truncated row?)")
    return _export_row(line, values, position)


def _export_row(line: int, values: Sequence[str], position: Mapping[str, int]) -> ExportRow | RowProblem:
    def get(name: str) -> str:
        return values[position[name]] if name in position else ""

    try:
        subject_ids = tuple(int(s) for s in get("subject_ids").split(";") if s.strip())
        user_id = get("user_id").strip()
        return ExportRow(
            line=line,
            classification_id=int(get("classification_id")),
            user_name=get("user_name"),
            user_id=int(user_id) if user_id else None,
            user_ip=get("user_ip"),
            workflow_id=int(get("workflow_id")),
            workflow_version=get("workflow_version"),
            created_at=parse_export_time(get("created_at")),
            metadata=get("metadata"),
            annotations=get("annotations"),
            subject_data=get("subject_data"),
            subject_ids=subject_ids,
        )
    except ValueError as exc:
        return RowProblem(line, f"unreadable row: {exc}")


_RUBY_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) UTC", re.ASCII)


def parse_export_time(text: str) -> datetime:
    """``2025-01-21 16:08:41 UTC`` (the export's Ruby format) or ISO 8601, as aware UTC.

    The Ruby format's usual zero-padded form is read field by field: ``strptime`` costs about twenty
    times more, a few CPU-seconds over a 100,000-row export. Anything else it accepts (unpadded
    fields) or rejects (a 13th month: its own message) still goes through ``strptime``."""
    stripped = text.strip()
    if stripped.endswith(" UTC"):
        fields = _RUBY_TIME.fullmatch(stripped)
        if fields is not None:
            year, month, day, hour, minute, second = map(int, fields.groups())
            try:
                return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
            except ValueError:
                pass
        return datetime.strptime(stripped, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
