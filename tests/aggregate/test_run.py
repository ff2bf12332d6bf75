"""Offline aggregation of classification exports: the real cat export and crafted flipbook exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from etchacell_loop.aggregate.run import AggregateOptions, aggregate_export
from etchacell_loop.annotations import EXPORT_COLUMNS
from etchacell_loop.cli.app import app
from etchacell_loop.cria.consensus import CriaParams
from etchacell_loop.subject_metadata import layout_metadata

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "zooniverse-exports"
CAT = FIXTURES / "cat-project-classifications.csv"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def square(x0: float, y0: float, side: float, n: int = 80) -> tuple[list[float], list[float]]:
    """A closed square outline as a mouse would record it (``n`` points per side)."""
    t = np.linspace(0, 1, n, endpoint=False)
    xs = np.concatenate([x0 + side * t, np.full(n, x0 + side), x0 + side * (1 - t), np.full(n, x0)])
    ys = np.concatenate([np.full(n, y0), y0 + side * t, np.full(n, y0 + side), y0 + side * (1 - t)])
    return [round(float(v), 2) for v in xs], [round(float(v), 2) for v in ys]


class ExportWriter:
    """Rows in the real export's columns, for crafted cases."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def add(
        self,
        subject_id: int,
        user: str,
        marks: list[dict[str, Any]] | str,
        subject_metadata: dict[str, Any] | None = None,
        workflow_id: int = 10,
        frames: int = 5,
    ) -> None:
        cid = 1000 + len(self.rows)
        metadata = {
            "session": f"session-{user}",
            "subject_dimensions": [{"naturalWidth": 400, "naturalHeight": 300}] * frames,
        }
        annotations = marks if isinstance(marks, str) else json.dumps([{"task": "T0", "value": marks}])
        subject_data = {str(subject_id): {"retired": None, **(subject_metadata or {})}}
        values = {
            "classification_id": str(cid),
            "user_name": f"not-logged-in-{user}",
            "user_id": "",
            "user_ip": user,
            "workflow_id": str(workflow_id),
            "workflow_name": "Draw",
            "workflow_version": "1.1",
            "created_at": "2025-01-21 16:08:41 UTC",
            "gold_standard": "",
            "expert": "",
            "metadata": json.dumps(metadata),
            "annotations": annotations,
            "subject_data": json.dumps(subject_data),
            "subject_ids": str(subject_id),
        }
        self.rows.append([values[c] for c in EXPORT_COLUMNS])

    def write(self, path: Path, truncate_last: bool = False) -> Path:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(EXPORT_COLUMNS)
            writer.writerows(self.rows)
        if truncate_last:
            text = path.read_text()
            path.write_text(text[: text.rstrip("\n").rfind(",")] + "\n")
        return path


def fem_mark(frame: int, outline: tuple[list[float], list[float]]) -> dict[str, Any]:
    return {"frame": frame, "toolType": "freehandLine", "toolIndex": 0, "pathX": outline[0], "pathY": outline[1]}


def test_the_real_cat_export_in_workers_and_in_process_gives_the_same_masks(tmp_path: Path) -> None:
    pooled = aggregate_export(CAT, tmp_path / "pool", AggregateOptions(workers=2))
    inline = aggregate_export(CAT, tmp_path / "inline", AggregateOptions(workers=0))
    assert pooled.rows == inline.rows == 153 and pooled.workflow_id == 28090
    assert pooled.subjects == 30 and pooled.statuses["partial"] == 22 and pooled.empty == 10
    summary = read_csv(tmp_path / "pool" / "summary.csv")
    assert len(summary) == 30 and sum(int(r["classifications"]) for r in summary) == 153
    for row in summary:
        a = np.asarray(Image.open(tmp_path / "pool" / "masks" / f"{row['subject_id']}.png"))
        b = np.asarray(Image.open(tmp_path / "inline" / "masks" / f"{row['subject_id']}.png"))
        assert np.array_equal(a, b) and set(np.unique(a)) <= {0, 255}
        assert int(row["area_px"]) == int((a == 255).sum())
    first = np.asarray(Image.open(tmp_path / "pool" / "masks" / "458021.png"))
    assert first.shape == (635, 1024)  # the natural size of the subject's frame 0
    issues = read_csv(tmp_path / "pool" / "issues.csv")
    assert any("outside the 1024x635 frame clipped" in r["reasons"] for r in issues)


def test_flipbook_marks_feed_the_slices_their_frames_show(tmp_path: Path) -> None:
    export = ExportWriter()
    # Two subjects of one ROI: subject 1 targets z 40 (frames 30..50), subject 2 targets z 45 (35..55).
    one, two = layout_metadata("roi", 2, [30, 35, 40, 45, 50]), layout_metadata("roi", 2, [35, 40, 45, 50, 55])
    for i in range(3):
        export.add(1, f"a{i}", [fem_mark(2, square(100, 100, 100))], one)
    for i in range(2):  # two volunteers of subject 2 trace z 40, shown on its frame 1, a bigger square
        export.add(2, f"b{i}", [fem_mark(1, square(90, 90, 120)), fem_mark(2, square(150, 100, 50))], two)
    export.add(3, "c", [fem_mark(0, square(10, 10, 50)), fem_mark(3, square(10, 10, 50))], {})  # no layout
    report = aggregate_export(export.write(tmp_path / "e.csv"), tmp_path / "out", AggregateOptions(workers=0))
    summary = {r["subject_id"]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    assert summary["1"]["slice"] == "roi@z40" and summary["1"]["drawers"] == "5"
    assert summary["2"]["drawers"] == "2" and summary["3"]["unplaced_marks"] == "1"
    assert report.unplaced_marks == 1 and report.orphan_drawings == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "1.png")) == 255
    assert mask.shape == (300, 400)
    assert mask[150, 150] and not mask[95, 95]  # 3 of 5 drew the small square; 2 of 5 the big one


def test_bad_rows_are_reported_and_the_rest_aggregated(tmp_path: Path) -> None:
    export = ExportWriter()
    for i in range(3):
        export.add(1, f"u{i}", [fem_mark(0, square(50, 50, 100))], frames=1)
    export.add(1, "broken", "[{not json", frames=1)
    export.add(1, "nan", [{"frame": 0, "toolType": "freehandLine", "pathX": ["NaN"] * 30, "pathY": [1] * 30}])
    export.add(1, "blank", [], frames=1)
    export.add(2, "other-workflow", [fem_mark(0, square(50, 50, 100))], workflow_id=11)
    export.add(1, "cut", [fem_mark(0, square(50, 50, 100))])
    path = export.write(tmp_path / "bad.csv", truncate_last=True)
    report = aggregate_export(path, tmp_path / "out", AggregateOptions(workers=0))
    assert report.rows == 6 and report.row_problems == 1 and report.other_workflow_rows == {11: 1}
    assert report.statuses["invalid"] == 1 and report.empty == 3  # broken, all-NaN, blank
    (subject,) = read_csv(tmp_path / "out" / "summary.csv")
    assert subject["classifications"] == "6" and subject["empty"] == "3" and subject["drawers"] == "3"
    issues = read_csv(tmp_path / "out" / "issues.csv")
    assert {r["status"] for r in issues} >= {"invalid", "unreadable"}
    assert any("not valid JSON" in r["reasons"] for r in issues)


@pytest.mark.parametrize(("method", "revoted"), [("cria-robust", 0), ("staple", 6)])
def test_reweighting_methods_write_pooled_volunteer_records(tmp_path: Path, method: str, revoted: int) -> None:
    """The habitual blob-tracer is flagged by both; the robust vote had already left their blobs out
    (nothing to re-vote), STAPLE weighed them and weighs them again with their record."""
    export = ExportWriter()
    for subject in range(1, 7):  # one habitual volunteer traces a small blob on every subject
        for i in range(3):
            export.add(subject, f"good{subject}-{i}", [fem_mark(0, square(100, 100, 120))], frames=1)
        export.add(subject, "habitual", [fem_mark(0, square(300, 200, 30))], frames=1)
    options = AggregateOptions(params=CriaParams(method=method), workers=0)
    report = aggregate_export(export.write(tmp_path / "e.csv"), tmp_path / "out", options)
    volunteers = {r["volunteer"]: r for r in read_csv(tmp_path / "out" / "volunteers.csv")}
    assert volunteers["anon:session-habitual"]["flagged"] == "True"
    assert float(volunteers["anon:session-habitual"]["weight"]) < 0.3
    assert report.flagged_volunteers == 1 and report.reweighted_slices == revoted


def test_cli_aggregate(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["aggregate", str(CAT), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "153 classifications" in result.output and "30 subjects" in result.output
    assert len(list((tmp_path / "out" / "envelope").glob("*.png"))) == 30
    missing = CliRunner().invoke(app, ["aggregate", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    wrong = CliRunner().invoke(app, ["aggregate", str(CAT), "--out", str(tmp_path / "y"), "--method", "mean"])
    assert wrong.exit_code == 2 and "unknown consensus method" in wrong.output
    (tmp_path / "not.csv").write_text("a,b\n1,2\n")
    not_export = CliRunner().invoke(app, ["aggregate", str(tmp_path / "not.csv"), "--out", str(tmp_path / "z")])
    assert not_export.exit_code == 2 and "not a classification export" in not_export.output


def test_png_encoder_round_trips_through_pillow(tmp_path: Path) -> None:
    from etchacell_loop.aggregate.outputs import encode_gray_png

    rng = np.random.default_rng(0)
    for image in (
        np.zeros((7, 5), np.uint8),
        (rng.random((300, 401)) > 0.5).astype(np.uint8) * 255,
        rng.integers(0, 256, (64, 33), dtype=np.uint8),
    ):
        path = tmp_path / "x.png"
        path.write_bytes(encode_gray_png(image))
        with Image.open(path) as decoded:
            assert decoded.mode == "L" and decoded.size == (image.shape[1], image.shape[0])
            assert np.array_equal(np.asarray(decoded), image)
