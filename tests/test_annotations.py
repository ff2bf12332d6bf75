"""Parsing tracings from both Zooniverse front ends, real exports, and every kind of bad input."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from etchacell_loop.annotations import (
    EXPORT_COLUMNS,
    ExportFormatError,
    ExportRow,
    FrameSize,
    IssueCode,
    ParseLimits,
    RowProblem,
    parse_classification,
    parse_export_time,
    read_export,
)
from etchacell_loop.db.models import ParseStatus

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "zooniverse-exports"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "zooniverse-exports"
METADATA_1000 = {"subject_dimensions": [{"naturalWidth": 1000, "naturalHeight": 1000}] * 5}
# Short names for the table of bad inputs below.
M, C = METADATA_1000, IssueCode
OK, PARTIAL, INVALID = ParseStatus.OK, ParseStatus.PARTIAL, ParseStatus.INVALID


def exports_dir() -> Path:
    for candidate in (FIXTURES, SHARED):
        if (candidate / "cat-project-classifications.csv").is_file():
            return candidate
    pytest.skip("real Zooniverse exports not found")


def fem(path_x: list[Any], path_y: list[Any], frame: Any = 2, **extra: Any) -> dict[str, Any]:
    return {
        "frame": frame,
        "toolIndex": 0,
        "toolType": "freehandLine",
        "pathX": path_x,
        "pathY": path_y,
        "details": [],
        **extra,
    }


def drawing(*marks: Any, task: str = "T0") -> list[dict[str, Any]]:
    return [{"task": task, "taskType": "drawing", "value": list(marks)}]


def codes(parsed: Any) -> list[IssueCode]:
    return [issue.code for issue in parsed.issues]


def test_new_front_end_mark_keeps_float_coordinates_and_mark_id() -> None:
    parsed = parse_classification(
        json.dumps(drawing(fem([10.25, 20.5, 30.75], [1.5, 2.5, 3.5], markId="m1"))), METADATA_1000
    )
    (tracing,) = parsed.tracings
    assert parsed.status is ParseStatus.OK and codes(parsed) == []
    assert tracing.frame == 2 and tracing.tool == "freehandLine" and tracing.mark_id == "m1"
    np.testing.assert_array_equal(tracing.x_px, [10.25, 20.5, 30.75])  # not truncated
    np.testing.assert_array_equal(tracing.y_px, [1.5, 2.5, 3.5])


def test_old_front_end_points() -> None:
    mark = {
        "tool": 0,
        "frame": 1,
        "details": [],
        "points": [{"x": 412.3, "y": 118.0}, {"x": 415.1, "y": 120.4}, {"x": 419.8, "y": 125.2}],
    }
    (tracing,) = parse_classification(drawing(mark), METADATA_1000).tracings
    assert tracing.frame == 1 and tracing.tool_index == 0
    np.testing.assert_array_equal(tracing.x_px, [412.3, 415.1, 419.8])


@pytest.mark.parametrize(
    ("annotations", "metadata", "status", "expected", "n_tracings"),
    [
        ("[{not json", M, INVALID, [C.MALFORMED_JSON], 0),
        ('{"task": "T0"}', M, INVALID, [C.NOT_A_LIST], 0),
        (drawing(), M, OK, [C.EMPTY], 0),
        ([], M, OK, [C.EMPTY], 0),
        (drawing(fem([1, 2, "NaN", 4], [1, 2, 3, 4])), M, PARTIAL, [C.NON_FINITE], 1),
        (drawing(fem([1, 2, None, 4], [1, np.inf, 3, 4])), M, PARTIAL, [C.NON_FINITE, C.TOO_FEW_POINTS, C.EMPTY], 0),
        (drawing(fem([-5, 500, 1200], [10, 20, 30])), M, PARTIAL, [C.OFF_IMAGE], 1),
        (drawing(fem([1, 2], [1, 2])), M, PARTIAL, [C.TOO_FEW_POINTS, C.EMPTY], 0),
        (drawing(fem([1, 2, 3], [1, 2, 3])), None, OK, [C.NO_DIMENSIONS], 1),
        (drawing(fem([1, 2, 3], [1, 2, 3])), "{broken", PARTIAL, [C.MALFORMED_JSON, C.NO_DIMENSIONS], 1),
        (drawing({"toolType": "point", "x": 3, "y": 4}), M, PARTIAL, [C.UNKNOWN_MARK, C.EMPTY], 0),
        (drawing("graffiti"), M, PARTIAL, [C.UNKNOWN_MARK, C.EMPTY], 0),
        (drawing(fem([1, 2, 3], [1, 2, 3], frame=9)), M, PARTIAL, [C.BAD_FRAME, C.EMPTY], 0),
        (drawing(fem([1, 2, 3], [1, 2, 3], frame=-1)), M, PARTIAL, [C.BAD_FRAME, C.EMPTY], 0),
        (drawing(fem([1, 2, 3, 4], [1, 2, 3])), M, PARTIAL, [C.NON_FINITE], 1),
    ],
)  # fmt: skip
def test_bad_input_is_recorded_never_raised(
    annotations: Any, metadata: Any, status: ParseStatus, expected: list[IssueCode], n_tracings: int
) -> None:
    parsed = parse_classification(annotations, metadata)
    assert parsed.status is status
    assert codes(parsed) == expected
    assert len(parsed.tracings) == n_tracings
    assert all(reason for reason in parsed.reasons())


def test_one_bad_mark_does_not_drop_the_classification() -> None:
    """The seed code dropped a whole classification on one bad value; here only that mark goes."""
    parsed = parse_classification(drawing(fem([1, 2], [1, 2]), fem([10, 20, 30], [10, 20, 30])), METADATA_1000)
    assert len(parsed.tracings) == 1 and parsed.status is ParseStatus.PARTIAL
    assert parsed.issues[0].mark == 0


def test_off_image_points_are_clipped_to_the_frame() -> None:
    (tracing,) = parse_classification(drawing(fem([-5, 500, 1200], [10, 2000, 30])), METADATA_1000).tracings
    np.testing.assert_array_equal(tracing.x_px, [0, 500, 1000])
    np.testing.assert_array_equal(tracing.y_px, [10, 1000, 30])


def test_huge_line_is_decimated_keeping_its_ends() -> None:
    n = 100_000
    t = np.linspace(0, 2 * np.pi, n)
    parsed = parse_classification(drawing(fem(list(500 + 300 * np.cos(t)), list(500 + 300 * np.sin(t)))), METADATA_1000)
    (tracing,) = parsed.tracings
    assert tracing.n_points == ParseLimits().max_points
    assert tracing.x_px[0] == pytest.approx(800) and tracing.x_px[-1] == pytest.approx(800)
    assert codes(parsed) == [IssueCode.TOO_MANY_POINTS]


def test_fallback_size_clips_when_metadata_lacks_dimensions() -> None:
    parsed = parse_classification(drawing(fem([1, 2, 3000], [1, 2, 3])), {}, fallback_size=FrameSize(1000, 1000))
    assert codes(parsed) == [IssueCode.OFF_IMAGE]
    assert parsed.tracings[0].x_px.max() == 1000


def test_task_filter_and_questions_are_ignored() -> None:
    annotations = [*drawing(fem([1, 2, 3], [1, 2, 3]), task="T1"), {"task": "T2", "value": "Yes"}]
    assert parse_classification(annotations, METADATA_1000, ParseLimits(tasks=frozenset({"T0"}))).empty
    assert len(parse_classification(annotations, METADATA_1000).tracings) == 1


def test_real_cat_export_streams_and_parses() -> None:
    rows = list(read_export(exports_dir() / "cat-project-classifications.csv"))
    assert len(rows) == 153 and all(isinstance(r, ExportRow) for r in rows)
    tools: dict[str, int] = {}
    statuses = set()
    for row in rows:
        assert isinstance(row, ExportRow)
        parsed = parse_classification(row.annotations, row.metadata)
        statuses.add(parsed.status)
        for tracing in parsed.tracings:
            tools[tracing.tool] = tools.get(tracing.tool, 0) + 1
            size = parsed.frame_sizes[tracing.frame]
            assert tracing.x_px.min() >= 0 and tracing.x_px.max() <= size.width_px
    assert tools == {"freehandLine": 165, "polygon": 19}
    assert ParseStatus.INVALID not in statuses
    anonymous = [r for r in rows if isinstance(r, ExportRow) and r.user_id is None]
    assert len(anonymous) == 114 and all(r.user_name.startswith("not-logged-in-") for r in anonymous)
    assert {r.workflow_id for r in rows if isinstance(r, ExportRow)} == {28090}


def test_real_question_export_has_no_tracings() -> None:
    rows = [r for r in read_export(exports_dir() / "cls_export.csv") if isinstance(r, ExportRow)]
    assert len(rows) == 7
    assert all(parse_classification(r.annotations, r.metadata).empty for r in rows)


def test_workflow_filter() -> None:
    assert list(read_export(exports_dir() / "cat-project-classifications.csv", workflow_id=1)) == []


def test_truncated_export_reports_the_broken_rows_and_keeps_the_rest() -> None:
    text = (exports_dir() / "cat-project-classifications.csv").read_text(encoding="utf-8")
    cut = text[: int(len(text) * 0.6)]
    results = list(read_export(io.StringIO(cut)))
    good = [r for r in results if isinstance(r, ExportRow)]
    problems = [r for r in results if isinstance(r, RowProblem)]
    assert 50 < len(good) < 153
    assert len(problems) == 1 and problems[0].line > 1


def test_rows_with_missing_fields_or_bad_ids_are_problems() -> None:
    header = ",".join(EXPORT_COLUMNS)
    good = "1,a,,tok,5,W,1.1,2025-01-21 16:08:41 UTC,,,{},[],{},7"
    short = "2,b,,tok,5"
    bad_id = "x,a,,tok,5,W,1.1,2025-01-21 16:08:41 UTC,,,{},[],{},7"
    results = list(read_export(io.StringIO("\n".join([header, good, short, bad_id]) + "\n")))
    assert isinstance(results[0], ExportRow) and results[0].subject_ids == (7,)
    assert isinstance(results[1], RowProblem) and "fields" in results[1].message
    assert isinstance(results[2], RowProblem)


def test_not_an_export() -> None:
    with pytest.raises(ExportFormatError, match="missing column"):
        list(read_export(io.StringIO("subject_id,metadata\n1,{}\n")))
    with pytest.raises(ExportFormatError, match="empty"):
        list(read_export(io.StringIO("")))


def test_export_time_formats() -> None:
    ruby = parse_export_time("2025-01-21 16:08:41 UTC")
    iso = parse_export_time("2025-01-21T16:08:41.380Z")
    assert ruby.tzinfo is not None and (iso - ruby).total_seconds() == pytest.approx(0.38)


@pytest.mark.parametrize(
    "text",
    ["2025-01-21 16:08:41 UTC", " 2024-02-29 23:59:59 UTC\n", "2025-1-2 3:04:05 UTC", "0999-12-31 00:00:00 UTC"],
)
def test_export_time_reads_the_ruby_format_as_strptime_does(text: str) -> None:
    expected = datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    parsed = parse_export_time(text)
    assert parsed == expected and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text", ["2025-13-01 00:00:00 UTC", "2025-02-30 00:00:00 UTC", "2025-01-01 24:00:00 UTC", "2025-01-0x 00:00:00 UTC"]
)
def test_bad_export_times_are_refused_with_strptimes_message(text: str) -> None:
    with pytest.raises(ValueError) as expected:
        datetime.strptime(text, "%Y-%m-%d %H:%M:%S UTC")
    with pytest.raises(ValueError) as refused:
        parse_export_time(text)
    assert str(refused.value) == str(expected.value)
