"""``etchacell subjects prepare|upload`` on real files, a real database and the sandbox."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.models import DataSplit, Roi, Subject, SubjectSet, UploadState, Volume
from etchacell_loop.imaging.manifest import read_manifest
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.imaging.support import write_imagej_tiff, write_ome_zarr

runner = CliRunner()
ROI = "cell01:4,6,2:40,30,3"


@pytest.fixture
def volume_path(tmp_path: Path) -> Path:
    data = np.random.default_rng(3).integers(0, 255, size=(8, 40, 50), dtype=np.uint8)
    return write_imagej_tiff(tmp_path / "hela.tif", data, voxel_size_nm=(50, 10, 10))


def test_prepare_writes_frames_and_manifest_and_repeats_cleanly(volume_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "subjects"
    first = runner.invoke(app, ["subjects", "prepare", str(volume_path), "--roi", ROI, "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "3 subjects (written)" in first.stdout
    assert [e.upload_key for e in read_manifest(out)] == [f"hela/cell01/z000{z}" for z in (2, 3, 4)]
    again = runner.invoke(app, ["subjects", "prepare", str(volume_path), "--roi", ROI, "--out", str(out)])
    assert again.exit_code == 0 and "3 subjects (unchanged)" in again.stdout


def test_voxel_size_option_and_recorded_rois(tmp_path: Path) -> None:
    data = np.zeros((6, 30, 30), dtype=np.uint8)
    rois = [{"name": "n1", "x": 0, "y": 0, "z": 1, "width": 20, "height": 20, "depth": 2, "nucleus_label": 1}]
    path = write_ome_zarr(tmp_path / "synth.zarr", data, etchacell={"kind": "synthetic-sbfsem", "rois": rois})
    out = tmp_path / "subjects"
    args = ["subjects", "prepare", str(path), "--all-rois", "--out", str(out), "--voxel-size-nm", "250,10,10"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (first, second) = read_manifest(out)
    assert first.roi.name == "n1" and first.frame_z == (0, 0, 1, 2, 3)  # 250 nm slices: offsets of 1 and 2
    assert first.metadata["Raw Z resolution (nm)"] == "250" and second.z == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--roi", "cell01:1,2:3,4,5"], "is not X,Y,Z"),
        (["--roi", "cell01"], "NAME:X,Y,Z:W,H,D"),
        ([], "no ROI"),
        (["--all-rois"], "records no ROIs"),
        (["--roi", "far:500,500,0:10,10,1"], "outside the volume"),
        (["--roi", ROI, "--voxel-size-nm", "50,10"], "Z,Y,X"),
        (["--roi", ROI, "--roi", ROI], "more than once"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(volume_path: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["subjects", "prepare", str(volume_path), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_missing_volume_and_missing_manifest_are_exit_2(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["subjects", "prepare", str(tmp_path / "nope.zarr"), "--roi", ROI, "--out", "o"])
    assert missing.exit_code == 2 and "nope.zarr: no such file" in missing.stderr
    (tmp_path / "empty").mkdir()
    upload = runner.invoke(app, ["subjects", "upload", str(tmp_path / "empty"), "--subject-set", "s"])
    assert upload.exit_code == 2 and "no subjects" in upload.stderr


def test_upload_puts_every_subject_on_panoptes_once_and_records_it(
    configured: dict[str, int], sandbox: SandboxProcess, volume_path: Path, tmp_path: Path, db_url: str
) -> None:
    out = tmp_path / "subjects"
    prepared = runner.invoke(app, ["subjects", "prepare", str(volume_path), "--roi", ROI, "--out", str(out)])
    assert prepared.exit_code == 0, prepared.output
    entries = read_manifest(out)
    for _ in range(2):
        result = runner.invoke(app, ["subjects", "upload", str(out), "--subject-set", "hela raw"])
        assert result.exit_code == 0, result.output
    assert re.search(r"0\W+0\W+0\W+3\W+0", result.stdout)  # the rerun: created, adopted, linked 0; all 3 there
    inventory = sandbox.inventory(configured["project_id"])
    by_key = {s["metadata"]["#upload_key"]: s for s in inventory["subjects"]}
    assert sorted(by_key) == sorted(e.upload_key for e in entries) and len(inventory["subjects"]) == 3
    real_set = next(s for s in inventory["subject_sets"] if s["display_name"] == "hela raw")
    assert real_set["workflow_ids"] == [configured["segmentation_workflow_id"]]
    for entry in entries:
        subject = by_key[entry.upload_key]
        assert subject["subject_set_ids"] == [real_set["id"]]
        assert subject["metadata"]["#frame_slices"] == entry.metadata["#frame_slices"]
        assert [loc["bytes"] for loc in subject["locations"]] == [(out / p).stat().st_size for p in entry.frames]
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            (volume,) = session.exec(select(Volume)).all()
            (roi,) = session.exec(select(Roi)).all()
            (set_row,) = session.exec(select(SubjectSet)).all()
            rows = session.exec(select(Subject)).all()
        assert (volume.name, volume.shape_z, volume.voxel_size_z_nm) == ("hela", 8, 50.0)
        assert (roi.name, roi.x, roi.y, roi.z, roi.width, roi.height, roi.depth) == ("cell01", 4, 6, 2, 40, 30, 3)
        assert set_row.panoptes_id == real_set["id"]
        assert {r.upload_key: r.panoptes_id for r in rows} == {k: s["id"] for k, s in by_key.items()}
        assert all(r.upload_state == UploadState.LINKED and r.roi_id == roi.id for r in rows)
        assert all(r.upload_attempts == 1 for r in rows)  # the rerun posted nothing
    finally:
        engine.dispose()


def test_upload_can_hold_rois_back_and_fix_their_splits(
    configured: dict[str, int], sandbox: SandboxProcess, volume_path: Path, tmp_path: Path, db_url: str
) -> None:
    out = Path("subjects")  # relative to the working directory (the test's tmp_path)
    rois = ["--roi", ROI, "--roi", "cell02:4,6,5:40,30,2"]
    assert runner.invoke(app, ["subjects", "prepare", str(volume_path), *rois, "--out", str(out)]).exit_code == 0
    upload = ["subjects", "upload", str(out)]
    traced = [*upload, "--subject-set", "traced", "--roi", "cell01", "--split", "cell01=validation"]
    held = [*upload, "--subject-set", "held back", "--roi", "cell02", "--no-workflow"]
    for command in (traced, held):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    sets = {s["display_name"]: s for s in sandbox.inventory(configured["project_id"])["subject_sets"]}
    assert sets["traced"]["workflow_ids"] == [configured["segmentation_workflow_id"]]
    assert sets["held back"]["workflow_ids"] == []
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            splits = {roi.name: roi.split for roi in session.exec(select(Roi)).all()}
            rows = session.exec(select(Subject)).all()
            per_roi = Counter(subject.roi_id for subject in rows)
            frame_dirs = {Path(subject.local_dir or "") for subject in rows}
    finally:
        engine.dispose()
    assert splits["cell01"] is DataSplit.VALIDATION and splits["cell02"] is not DataSplit.UNASSIGNED
    assert sorted(per_roi.values()) == [2, 3]
    assert all(d.is_absolute() and d.is_dir() for d in frame_dirs)  # found again from any working directory
    refused = runner.invoke(app, [*traced[:-1], "cell01=train"])
    assert refused.exit_code == 2 and "already in the validation split" in refused.output
    unknown = runner.invoke(app, [*traced[:5], "--roi", "cell09"])
    assert unknown.exit_code == 2 and "cell09: not in the manifest" in unknown.output


def test_upload_exits_1_with_a_summary_when_subjects_fail(
    configured: dict[str, int], sandbox: SandboxProcess, volume_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "subjects"
    prepared = runner.invoke(
        app, ["subjects", "prepare", str(volume_path), "--roi", "one:0,0,4:20,20,1", "--out", str(out)]
    )
    assert prepared.exit_code == 0, prepared.output
    sandbox.set_faults(error_rate=1.0, error_statuses=[422], path_prefixes=["/api/subjects"])
    result = runner.invoke(app, ["subjects", "upload", str(out), "--subject-set", "doomed"])
    sandbox.clear_faults()
    assert result.exit_code == 1, result.output
    assert "failed hela/one/z0004" in result.stdout
