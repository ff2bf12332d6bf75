"""Volunteer effort from classifications' metadata: seconds read as Zooniverse records them, bad times
counted as unknown (never an exception), and rounds summed over settled slices with the saving against
tracing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from etchacell_loop.effort import (
    EFFORT_COLUMNS,
    INPUT_COLUMNS,
    MAX_SECONDS,
    Duration,
    RoundEffort,
    Task,
    Unknown,
    classification_seconds,
    effort_by_round,
    effort_table,
    parse_instant,
    unknown_text,
)

# A real row's metadata (../shared/fixtures/zooniverse-exports/cat-project-classifications.csv), shortened.
REAL = (
    '{"source":"api","session":"ea72","viewport":{"width":1715,"height":1064},'
    '"started_at":"2025-01-21T16:06:58.517Z","user_agent":"Mozilla/5.0","utc_offset":"0",'
    '"finished_at":"2025-01-21T16:08:41.259Z","live_project":false,"user_language":"en"}'
)


def timed(started: object, finished: object, **extra: object) -> str:
    return json.dumps({"started_at": started, "finished_at": finished, **extra})


# --- one classification -------------------------------------------------------------------------------


def test_a_real_classification_took_its_seconds_to_the_millisecond() -> None:
    duration = classification_seconds(REAL)
    assert duration.seconds == pytest.approx(102.742) and duration.unknown is None


def test_the_decoded_metadata_is_read_alike() -> None:
    assert classification_seconds(json.loads(REAL)).seconds == pytest.approx(102.742)


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        (None, Unknown.MISSING),
        ("", Unknown.MISSING),
        ("{}", Unknown.MISSING),
        (json.dumps({"finished_at": "2025-01-21T16:08:41.259Z"}), Unknown.MISSING),
        (timed(None, "2025-01-21T16:08:41.259Z"), Unknown.MISSING),
        (timed("2025-01-21T16:06:58.517Z", ""), Unknown.MISSING),
        ("{not json", Unknown.UNPARSABLE),
        ("[1, 2]", Unknown.UNPARSABLE),
        ('"2025-01-21T16:06:58.517Z"', Unknown.UNPARSABLE),
        (timed("yesterday", "2025-01-21T16:08:41.259Z"), Unknown.UNPARSABLE),
        (timed("2025-13-21T16:06:58.517Z", "2025-01-21T16:08:41.259Z"), Unknown.UNPARSABLE),
        (timed(1737475618517, 1737475721259), Unknown.UNPARSABLE),
        (timed(["2025-01-21T16:06:58Z"], "2025-01-21T16:08:41Z"), Unknown.UNPARSABLE),
        (timed("2025-01-21T16:08:41.259Z", "2025-01-21T16:06:58.517Z"), Unknown.NEGATIVE),
        (timed("2025-01-21T09:00:00.000Z", "2025-01-21T10:00:00.001Z"), Unknown.TOO_LONG),
        (timed("2025-01-20T16:00:00.000Z", "2025-01-21T16:00:00.000Z"), Unknown.TOO_LONG),
    ],
)
def test_bad_times_are_unknown_with_their_reason(metadata: str | None, why: Unknown) -> None:
    assert classification_seconds(metadata) == Duration(None, why)


def test_an_hour_exactly_still_counts_and_the_limit_can_be_set() -> None:
    hour = timed("2025-01-21T09:00:00.000Z", "2025-01-21T10:00:00.000Z")
    assert classification_seconds(hour).seconds == MAX_SECONDS
    assert classification_seconds(hour, max_seconds=600).unknown is Unknown.TOO_LONG


def test_zones_are_honoured_and_a_time_without_one_is_utc() -> None:
    assert classification_seconds(timed("2025-01-21T17:00:00+01:00", "2025-01-21T16:00:30Z")).seconds == 30
    assert classification_seconds(timed("2025-01-21T16:00:00", "2025-01-21T16:00:30.5Z")).seconds == 30.5
    assert classification_seconds(timed("2025-01-21T16:00:00Z", "2025-01-21T16:00:00Z")).seconds == 0
    assert parse_instant(" 2025-01-21T16:00:00Z ") is not None and parse_instant(None) is None


# --- rounds -------------------------------------------------------------------------------------------


def row(kind: str, subject_kind: str, roi: int, z: int, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(INPUT_COLUMNS)
    base.update(row_kind=kind, subject_kind=subject_kind, roi_id=roi, slice_index=z)
    base["loop_round"] = 0 if subject_kind == "raw" else values.pop("loop_round", None)
    base.update(values)
    return base


def seconds(n: float) -> str:
    return timed("2025-01-21T16:00:00.000Z", f"2025-01-21T16:{int(n) // 60:02d}:{n % 60:06.3f}Z")


def tracing_rows() -> list[dict[str, Any]]:
    """Two settled traced slices: four timed classifications of 60 s, one missing, one too long."""
    rows = [row("slice", "raw", 1, z) for z in (10, 11)]
    rows += [row("classification", "raw", 1, 10, raw_metadata=seconds(60)) for _ in range(3)]
    rows += [row("classification", "raw", 1, 11, raw_metadata=seconds(60))]
    rows += [row("classification", "raw", 1, 11, raw_metadata=None)]
    rows += [row("classification", "raw", 1, 11, raw_metadata=timed("2025-01-21T08:00:00Z", "2025-01-21T16:00:00Z"))]
    return rows


def correction_rows(loop_round: int, version: str, dice: list[float]) -> list[dict[str, Any]]:
    """One settled corrected slice per Dice, each corrected twice in 15 s; the first also traced, its
    corrected consensus agreeing 0.75 with the traced one."""
    rows: list[dict[str, Any]] = []
    for z, value in enumerate(dice, start=20):
        common = {"loop_round": loop_round, "model_version": version}
        monitoring = 0.75 if z == 20 else None
        rows.append(row("slice", "prediction", 2, z, correction_dice=value, monitoring_dice=monitoring, **common))
        rows += [row("classification", "prediction", 2, z, raw_metadata=seconds(15), **common) for _ in range(2)]
    return rows


def test_tracing_is_round_zero_with_unknown_durations_counted_at_the_mean() -> None:
    (tracing,) = effort_by_round(tracing_rows())
    assert (tracing.round, tracing.task, tracing.model_version) == (0, Task.TRACING, None)
    assert (tracing.settled_slices, tracing.classifications, tracing.timed, tracing.untimed) == (2, 6, 4, 2)
    assert tracing.volunteer_seconds == pytest.approx(240)
    assert tracing.unknown == {Unknown.MISSING: 1, Unknown.TOO_LONG: 1}
    assert tracing.seconds_per_classification == pytest.approx(60)
    assert tracing.classifications_per_slice == 3
    assert tracing.seconds_per_slice == pytest.approx(180)  # 6 classifications at the mean 60 s, over 2 slices
    assert tracing.saved_against(tracing) is None


def test_correction_rounds_in_order_with_their_saving_and_quality() -> None:
    rows = correction_rows(2, "v2", [0.9, 0.95]) + tracing_rows() + correction_rows(1, "v1", [0.5, 0.7, 0.8])
    tracing, first, second = effort_by_round(rows)
    assert [(r.round, r.model_version) for r in (tracing, first, second)] == [(0, None), (1, "v1"), (2, "v2")]
    assert (first.task, first.settled_slices, first.classifications, first.timed) == (Task.CORRECTION, 3, 6, 6)
    assert first.seconds_per_slice == pytest.approx(30)
    assert first.saved_against(tracing) == pytest.approx(1 - 30 / 180)
    assert first.median_correction_dice == pytest.approx(0.7)
    assert second.median_correction_dice == pytest.approx(0.925)
    assert first.monitored_slices == 1 and first.median_monitoring_dice == pytest.approx(0.75)
    assert (second.monitored_slices, second.median_monitoring_dice) == (1, 0.75)


def test_monitoring_tracings_are_charged_to_the_round_they_monitor_at_their_own_pace() -> None:
    monitored = {"loop_round": 1, "model_version": "v1"}
    tracings = [row("monitoring", "raw", 2, 20, raw_metadata=seconds(50), **monitored) for _ in range(2)]
    tracings.append(row("monitoring", "raw", 2, 20, raw_metadata=None, **monitored))
    tracing, first = effort_by_round(tracing_rows() + correction_rows(1, "v1", [0.5, 0.7, 0.8]) + tracings)
    assert (tracing.settled_slices, tracing.classifications, tracing.monitoring_classifications) == (2, 6, 0)
    assert (first.round, first.task, first.settled_slices) == (1, Task.CORRECTION, 3)  # slice 20 not counted again
    assert (first.classifications, first.timed, first.monitoring_classifications, first.monitoring_timed) == (
        9,
        8,
        3,
        2,
    )
    assert first.volunteer_seconds == pytest.approx(6 * 15 + 2 * 50)
    assert first.unknown == {Unknown.MISSING: 1}
    # six corrections of 15 s, and three tracings valued at their own mean of 50 s (not the round's 23.75 s)
    assert first.seconds_per_slice == pytest.approx((6 * 15 + 3 * 50) / 3)
    assert first.saved_against(tracing) == pytest.approx(1 - 80 / 180)
    columns, table = effort_table(tracing_rows() + correction_rows(1, "v1", [0.5, 0.7, 0.8]) + tracings)
    assert [dict(zip(columns, r, strict=True))["monitoring_classifications"] for r in table] == [0, 3]


def test_a_slice_with_two_subjects_counts_once_and_a_round_without_a_version_comes_last() -> None:
    rows = [
        row("slice", "prediction", 3, 5, loop_round=1, model_version="v1"),
        row("slice", "prediction", 3, 5, loop_round=1, model_version="v1"),
        row("slice", "prediction", 3, 6),  # a prediction subject naming no model version
        row("classification", "prediction", 3, 6, raw_metadata=seconds(10)),
    ]
    first, unversioned = effort_by_round(rows)
    assert (first.round, first.settled_slices, first.classifications, first.seconds_per_slice) == (1, 1, 0, None)
    assert (unversioned.round, unversioned.task, unversioned.seconds_per_slice) == (None, Task.CORRECTION, 10)
    assert unversioned.saved_against(None) is None


def test_monitoring_counts_each_measured_slice_once() -> None:
    rows = [
        row("slice", "prediction", 4, z, loop_round=1, model_version="v1", monitoring_dice=d)
        for z, d in ((1, 0.8), (2, 0.9), (2, 0.9), (3, None))
    ]
    (only,) = effort_by_round(rows)
    assert only.settled_slices == 3 and only.monitored_slices == 2
    assert only.median_monitoring_dice == pytest.approx(0.85)


def test_no_timed_classification_means_no_seconds_not_zero() -> None:
    rows = [row("slice", "raw", 1, 1), row("classification", "raw", 1, 1, raw_metadata="{broken")]
    (tracing,) = effort_by_round(rows)
    assert (tracing.seconds_per_classification, tracing.seconds_per_slice) == (None, None)
    correction = RoundEffort(1, Task.CORRECTION, "v1", 1, 1, 1, 10.0)
    assert correction.saved_against(tracing) is None


def test_the_table_has_one_printable_row_per_round() -> None:
    columns, rows = effort_table(tracing_rows() + correction_rows(1, "v1", [0.5, 0.7, 0.8]))
    assert columns == EFFORT_COLUMNS
    tracing, first = (dict(zip(columns, r, strict=True)) for r in rows)
    assert tracing == {
        "round": 0,
        "task": "tracing",
        "model_version": None,
        "settled_slices": 2,
        "classifications": 6,
        "classifications_per_slice": 3.0,
        "volunteer_seconds": 240.0,
        "seconds_per_slice": 180.0,
        "seconds_per_classification": 60.0,
        "untimed": 2,
        "untimed_why": "missing 1, too long 1",
        "saved_vs_tracing": None,
        "median_correction_dice": None,
        "monitored_slices": 0,
        "median_monitoring_dice": None,
        "monitoring_classifications": 0,
    }
    assert (first["task"], first["saved_vs_tracing"], first["median_correction_dice"]) == ("correction", 0.833, 0.7)
    assert (first["monitored_slices"], first["median_monitoring_dice"]) == (1, 0.75)
    assert effort_table([]) == (EFFORT_COLUMNS, [])


def test_unknown_reasons_read_most_common_first() -> None:
    assert unknown_text({Unknown.NEGATIVE: 1, Unknown.MISSING: 3, Unknown.TOO_LONG: 0}) == "missing 3, negative 1"
    assert unknown_text({}) is None
