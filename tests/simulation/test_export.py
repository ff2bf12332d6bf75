"""The synthetic export reads back exactly like a real one, and its truth lines up with its marks."""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from etchacell_loop.annotations import ExportRow, IssueCode, parse_classification, read_export
from etchacell_loop.cria.joining import join_greedy
from etchacell_loop.cria.raster import fill_even_odd
from etchacell_loop.simulation.crowd import Behaviour, CrowdMix, SimStroke, make_volunteer, trace
from etchacell_loop.simulation.export import (
    Browser,
    ClassificationPlan,
    ExportResult,
    ExportSpec,
    FrontEnd,
    WorkflowInfo,
    annotations_json,
    metadata_json,
    record_stroke,
    write_synthetic_export,
)
from etchacell_loop.simulation.shapes import draw_nucleus
from etchacell_loop.subject_metadata import SliceKey, export_subject_metadata, subject_layout

REAL_EXPORT = Path(__file__).parents[1] / "fixtures" / "zooniverse-exports" / "cat-project-classifications.csv"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """Six subjects of one region, five classifications each, from the default crowd."""
    out = tmp_path_factory.mktemp("small") / "export.csv"
    spec = ExportSpec(n_subjects=6, n_classifications=30, fem_fraction=0.5, slices_per_roi=6)
    return write_synthetic_export(spec, out, np.random.default_rng(3))


def rows(result: ExportResult) -> list[ExportRow]:
    read = list(read_export(result.csv_path))
    assert all(isinstance(row, ExportRow) for row in read)
    return [row for row in read if isinstance(row, ExportRow)]


def test_the_header_is_the_real_exports_header(small: ExportResult) -> None:
    with REAL_EXPORT.open(newline="") as real, small.csv_path.open(newline="") as ours:
        assert next(csv.reader(ours)) == next(csv.reader(real))
    assert small.csv_path.read_bytes().count(b"\r") == 0  # lines end as the real export's do


def test_every_row_parses_without_issues_in_id_order(small: ExportResult) -> None:
    read = rows(small)
    assert len(read) == small.rows == 30
    ids = [row.classification_id for row in read]
    assert ids == sorted(ids) and len(set(ids)) == 30
    assert [row.created_at for row in read] == sorted(row.created_at for row in read)
    issues: Counter[IssueCode] = Counter()
    for row in read:
        parsed = parse_classification(row.annotations, row.metadata)
        issues.update(issue.code for issue in parsed.issues)
        assert set(issue.code for issue in parsed.issues) <= {IssueCode.EMPTY}
        for tracing in parsed.tracings:
            assert 0 <= tracing.frame < 5 and tracing.tool == "freehandLine" and tracing.task == "T0"
            assert parsed.frame_sizes[tracing.frame].width_px == 1000
    assert issues[IssueCode.EMPTY] == small.empty_rows
    assert sum(len(row.subject_ids) for row in read) == 30


def test_both_front_ends_appear_as_each_writes_its_marks(small: ExportResult) -> None:
    read = rows(small)
    kinds: Counter[bool] = Counter()
    for row in read:
        metadata = json.loads(row.metadata)
        marks = json.loads(row.annotations)[0]["value"]
        fem = metadata.get("classifier_version") == "2.0"
        kinds[fem] += 1
        dimensions = metadata["subject_dimensions"]
        if fem:
            assert len(dimensions) == 5 and all(d["naturalWidth"] == 1000 for d in dimensions)
        else:
            assert dimensions[2] is not None and len(dimensions) >= 3
        for mark in marks:
            if fem:
                assert set(mark) == {"frame", "pathX", "pathY", "details", "toolType", "toolIndex", "tool_label"}
                assert mark["toolType"] == "freehandLine" and mark["tool_label"] is None
                assert len(mark["pathX"]) > 20 and all(round(v, 2) == v for v in mark["pathX"])
            else:
                assert list(mark) == ["tool", "frame", "details", "tool_label", "points"]
                assert mark["tool_label"] == "Nuclear envelope"
                assert all(round(p["x"], 1) == p["x"] for p in mark["points"])
                pairs = [(p["x"], p["y"]) for p in mark["points"]]
                assert all(a != b for a, b in itertools.pairwise(pairs))  # no repeated points
    assert kinds[True] == small.fem_rows == 15 and kinds[False] == 15
    first_fem = next(i for i, row in enumerate(read) if "classifier_version" in row.metadata)
    assert all("classifier_version" in row.metadata for row in read[first_fem:])  # the project moved over once


def test_volunteers_look_like_zooniverse_users(small: ExportResult) -> None:
    for row in rows(small):
        assert len(row.user_ip) == 20 and int(row.user_ip, 16) >= 0
        if row.user_id is None:
            assert row.user_name == f"not-logged-in-{row.user_ip}"
        else:
            assert not row.user_name.startswith("not-logged-in")
        assert row.workflow_version == "37.114" and row.workflow_id == 21873


def test_subject_data_places_every_frame_on_its_slice(small: ExportResult) -> None:
    manifest = json.loads(small.manifest_path.read_text())
    for row in rows(small):
        (subject_id,) = row.subject_ids
        metadata = export_subject_metadata(row.subject_data, subject_id)
        layout = subject_layout(subject_id, metadata)
        truth = manifest["subjects"][str(subject_id)]
        assert layout.problems == () and layout.target_frame == 2 and layout.scaling_factor == 2
        assert layout.own_slice == SliceKey(truth["roi"], truth["z"])
        assert layout.frame_slices == tuple(SliceKey(truth["roi"], z) for z in truth["frame_slices"])
        z = truth["z"]
        assert truth["frame_slices"] == [min(max(z + o, 0), 5) for o in (-10, -5, 0, 5, 10)]
        assert metadata["Raw XY resolution (nm)"] == "10" and metadata["Raw Z resolution (nm)"] == "50"
        assert metadata["Image 2"].endswith(".jpg") and metadata["jpeg quality (%)"] == "90"
        assert json.loads(row.subject_data)[str(subject_id)]["retired"] is None


def test_truth_images_are_beside_the_export(small: ExportResult) -> None:
    manifest = json.loads(small.manifest_path.read_text())
    assert len(manifest["subjects"]) == 6
    for subject_id, entry in manifest["subjects"].items():
        image = np.asarray(Image.open(small.csv_path.parent / entry["truth"]))
        assert image.shape == (1000, 1000) and set(np.unique(image).tolist()) <= {0, 255}
        assert int((image == 255).sum()) == entry["nucleus_px"]
        assert (small.truth_dir / f"{subject_id}.png").exists()
    kinds = {v["behaviour"] for v in manifest["volunteers"].values()}
    assert kinds <= {b.value for b in Behaviour}


def test_a_careful_crowd_agrees_with_the_truth(tmp_path: Path) -> None:
    spec = ExportSpec(n_subjects=4, n_classifications=24, mix=CrowdMix.only(Behaviour.CAREFUL), slices_per_roi=4)
    result = write_synthetic_export(spec, tmp_path / "export.csv", np.random.default_rng(8))
    fills: dict[int, list[np.ndarray]] = {}
    for row in rows(result):
        parsed = parse_classification(row.annotations, row.metadata)
        strokes = [np.column_stack([t.x_px, t.y_px]) for t in parsed.tracings if t.frame == 2]
        fills.setdefault(row.subject_ids[0], []).append(fill_even_odd(join_greedy(strokes), (1000, 1000)))
    checked = 0
    for subject_id, masks in fills.items():
        truth = np.asarray(Image.open(result.truth_dir / f"{subject_id}.png")) > 127
        if truth.sum() < 50_000:
            continue  # a cap: islands too small to be worth tracing
        consensus = np.mean(masks, axis=0) >= 0.5
        assert 2 * (consensus & truth).sum() / (consensus.sum() + truth.sum()) > 0.95
        checked += 1
    assert checked >= 2


def test_wrong_frame_marks_match_the_truth_of_the_slice_their_frame_shows(tmp_path: Path) -> None:
    spec = ExportSpec(n_subjects=24, n_classifications=24, mix=CrowdMix.only(Behaviour.WRONG_FRAME), slices_per_roi=24)
    result = write_synthetic_export(spec, tmp_path / "export.csv", np.random.default_rng(2))
    manifest = json.loads(result.manifest_path.read_text())
    subject_of_slice = {(s["roi"], s["z"]): int(sid) for sid, s in manifest["subjects"].items()}
    checked = 0
    for row in rows(result):
        (subject_id,) = row.subject_ids
        layout = subject_layout(subject_id, export_subject_metadata(row.subject_data, subject_id))
        parsed = parse_classification(row.annotations, row.metadata)
        frames = {t.frame for t in parsed.tracings}
        if not frames:
            continue
        (frame,) = frames
        shown = layout.slice_of(frame)
        assert shown is not None and shown != layout.own_slice
        truth = np.asarray(Image.open(result.truth_dir / f"{subject_of_slice[(shown.roi, shown.z)]}.png")) > 127
        if truth.sum() < 50_000:
            continue
        traced = fill_even_odd(join_greedy([np.column_stack([t.x_px, t.y_px]) for t in parsed.tracings]), (1000, 1000))
        assert 2 * (traced & truth).sum() / (traced.sum() + truth.sum()) > 0.93
        checked += 1
    assert checked >= 8


def test_the_same_seed_writes_the_same_bytes_whatever_the_number_of_processes(tmp_path: Path) -> None:
    spec = ExportSpec(n_subjects=6, n_classifications=18, slices_per_roi=3)
    one = write_synthetic_export(spec, tmp_path / "one" / "export.csv", np.random.default_rng(4))
    two = write_synthetic_export(spec, tmp_path / "two" / "export.csv", np.random.default_rng(4), workers=2)
    assert one.rois == 2
    assert one.csv_path.read_bytes() == two.csv_path.read_bytes()
    assert one.manifest_path.read_text() == two.manifest_path.read_text()
    other = write_synthetic_export(spec, tmp_path / "other" / "export.csv", np.random.default_rng(5))
    assert other.csv_path.read_bytes() != one.csv_path.read_bytes()


# --- one classification, front end by front end ---------------------------------------------------------


def plan(front_end: FrontEnd) -> ClassificationPlan:
    volunteer = make_volunteer("cellfan1", Behaviour.CAREFUL, np.random.default_rng(0), user_id=5)
    browser = Browser("Mozilla/5.0", 1440, 789, 0, "en")
    return ClassificationPlan(1001, 7, volunteer, browser, 1_720_000_000.0, 60.0, "ab" * 32, front_end)


@pytest.mark.parametrize("front_end", list(FrontEnd))
def test_recorded_strokes_read_back_exactly(front_end: FrontEnd) -> None:
    model = draw_nucleus(np.random.default_rng(1), 30)
    frames = [model.slice_truth(z) for z in (5, 10, 15, 20, 25)]
    rng = np.random.default_rng(2)
    strokes = trace(make_volunteer("p", Behaviour.PARTIAL, rng), frames, 2, rng)
    strokes += trace(make_volunteer("w", Behaviour.WRONG_FRAME, rng), frames, 2, rng)
    recorded = [r for r in (record_stroke(s, front_end) for s in strokes) if r is not None]
    assert len(recorded) >= 3
    workflow = WorkflowInfo()
    parsed = parse_classification(
        annotations_json(recorded, front_end, workflow),
        metadata_json(plan(front_end), sorted({s.frame for s in recorded}), (1000, 1000)),
    )
    assert parsed.issues == ()
    assert len(parsed.tracings) == len(recorded)
    for tracing, stroke in zip(parsed.tracings, recorded, strict=True):
        assert tracing.frame == stroke.frame
        assert np.array_equal(tracing.x_px, stroke.x_px) and np.array_equal(tracing.y_px, stroke.y_px)
    decimals = 2 if front_end is FrontEnd.FEM else 1
    first = record_stroke(strokes[0], front_end)
    assert first is not None
    assert np.abs(first.x_px[:50] - strokes[0].x_px[:50]).max() <= 0.5 * 10.0**-decimals + 1e-9


def test_fem_closes_lines_that_come_back_and_drops_short_ones() -> None:
    angle = np.linspace(0, 2 * np.pi, 120, endpoint=False)  # 5 px apart
    loop = SimStroke(2, 500 + 100 * np.cos(angle), 500 + 100 * np.sin(angle))
    closed = record_stroke(loop, FrontEnd.FEM)
    assert closed is not None and closed.n_points == 121
    assert (closed.x_px[-1], closed.y_px[-1]) == (closed.x_px[0], closed.y_px[0])
    arc = SimStroke(2, loop.x_px[:40], loop.y_px[:40])
    kept = record_stroke(arc, FrontEnd.FEM)
    assert kept is not None and kept.n_points == 40  # open: stored as drawn
    assert record_stroke(SimStroke(2, loop.x_px[:20], loop.y_px[:20]), FrontEnd.FEM) is None
    assert record_stroke(SimStroke(2, loop.x_px[:20], loop.y_px[:20]), FrontEnd.PFE) is not None
    still = SimStroke(2, np.array([1.01, 1.02, 1.04, 5.0]), np.array([2.0, 2.0, 2.0, 2.0]))
    assert record_stroke(still, FrontEnd.PFE) is None  # rounded to 1.0, 1.0, 1.0, 5.0; repeats dropped: two left
    assert record_stroke(SimStroke(2, np.array([1.0, 3.0, 5.0]), np.array([2.0, 2.0, 2.0])), FrontEnd.PFE) is not None


def test_whole_numbers_are_written_as_a_browser_writes_them() -> None:
    stroke = SimStroke(0, np.array([912.0, 912.94, 0.0, 10.5]), np.array([1.0, 2.25, 3.0, 4.0]))
    text = annotations_json([stroke], FrontEnd.FEM, WorkflowInfo())
    assert '"pathX":[912,912.94,0,10.5]' in text and '"pathY":[1,2.25,3,4]' in text
    metadata = json.loads(metadata_json(plan(FrontEnd.FEM), [0], (1000, 1000)))
    assert list(metadata)[:3] == ["source", "session", "feedback"]  # jsonb's key order
    assert metadata["classifier_version"] == "2.0" and metadata["started_at"].endswith("Z")


def test_fem_ignores_pointer_moves_under_half_a_pixel() -> None:
    x = np.concatenate([np.arange(0.0, 62.0, 2.0), [60.2, 60.4, 60.6, 62.0]])
    recorded = record_stroke(SimStroke(1, x, np.zeros_like(x)), FrontEnd.FEM)
    assert recorded is not None
    assert recorded.x_px.tolist()[-4:] == [58.0, 60.0, 60.6, 62.0]  # 60.2 and 60.4 are too near 60.0
