"""Manifest paths: relative where the folder can carry them, so a copied folder reads at its new place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from etchacell_loop.db.models import Volume
from etchacell_loop.imaging.manifest import manifest_path, portable_path, read_manifest, resolved_path
from etchacell_loop.imaging.prepare import prepare_subjects
from etchacell_loop.imaging.records import ensure_manifest_rows, manifest_uploads
from etchacell_loop.imaging.subjects import SubjectFormat
from etchacell_loop.imaging.volume import RoiBox, open_volume
from tests.imaging.support import write_imagej_tiff

ROI = RoiBox("cell01", x=10, y=20, z=8, width=80, height=60, depth=4)


def make_volume(path: Path) -> Path:
    data = np.random.default_rng(3).integers(40, 200, size=(20, 100, 120), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_imagej_tiff(path, data, voxel_size_nm=(50, 10, 10))


def prepare(volume_path: Path, out: Path, relative_root: Path | None = None) -> None:
    with open_volume(volume_path) as volume:
        prepare_subjects(volume, [ROI], out, SubjectFormat(), relative_root=relative_root)


def written_volume_paths(out: Path) -> set[str]:
    lines = manifest_path(out).read_text().splitlines()
    return {json.loads(line)["volume"]["path"] for line in lines}


def test_a_work_folder_copied_elsewhere_reads_its_own_volume_and_frames(tmp_path: Path) -> None:
    work = tmp_path / "work"
    volume_path = make_volume(work / "hela.tif")
    prepare(volume_path, work / "subjects", relative_root=work)
    assert written_volume_paths(work / "subjects") == {"../hela.tif"}

    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(work, copy)
    shutil.rmtree(work)
    entries = read_manifest(copy / "subjects")
    assert len(entries) == ROI.depth
    assert {entry.volume.path for entry in entries} == {str((copy / "hela.tif").resolve())}
    assert all((copy / "subjects" / frame).is_file() for entry in entries for frame in entry.frames)
    with open_volume(Path(entries[0].volume.path)) as volume:
        assert volume.shape_zyx == (20, 100, 120)


def test_upload_records_absolute_paths_of_the_folder_where_it_now_is(tmp_path: Path, migrated_engine: Engine) -> None:
    work = tmp_path / "work"
    prepare(make_volume(work / "hela.tif"), work / "subjects", relative_root=work)
    copy = tmp_path / "moved"
    shutil.copytree(work, copy)
    entries = read_manifest(copy / "subjects")
    with Session(migrated_engine) as session:
        roi_ids = ensure_manifest_rows(session, entries)
        uploads = manifest_uploads(entries, copy / "subjects", roi_ids)
        stored = session.exec(select(Volume).where(Volume.name == "hela")).one()
    assert stored.storage_uri == str((copy / "hela.tif").resolve())
    assert all(file.path.is_file() and file.path.is_relative_to(copy) for up in uploads for file in up.files)


def test_a_volume_inside_the_manifest_folder_is_relative_by_default_and_one_outside_stays_absolute(
    tmp_path: Path,
) -> None:
    inside = tmp_path / "inside"
    prepare(make_volume(inside / "volumes" / "hela.tif"), inside)
    assert written_volume_paths(inside) == {"volumes/hela.tif"}

    shared = make_volume(tmp_path / "shared-disk" / "hela.tif")
    outside = tmp_path / "subjects"
    prepare(shared, outside)  # no wider root: the operator's volume keeps its absolute path
    assert written_volume_paths(outside) == {str(shared.resolve())}
    shutil.copytree(outside, tmp_path / "copied")
    assert {e.volume.path for e in read_manifest(tmp_path / "copied")} == {str(shared.resolve())}


def test_a_second_run_into_the_folder_keeps_the_paths_relative_and_rewrites_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    volume_path = make_volume(work / "hela.tif")
    prepare(volume_path, work / "subjects", relative_root=work)
    before = manifest_path(work / "subjects").read_bytes()
    with open_volume(volume_path) as volume:
        report = prepare_subjects(volume, [ROI], work / "subjects", SubjectFormat(), relative_root=work)
    assert not report.manifest_written
    assert manifest_path(work / "subjects").read_bytes() == before


def test_portable_and_resolved_paths_are_inverse_under_the_root(tmp_path: Path) -> None:
    directory, root = tmp_path / "w" / "subjects", tmp_path / "w"
    volume = str((tmp_path / "w" / "data" / "v.zarr").resolve())
    written = portable_path(volume, directory, root)
    assert written == "../data/v.zarr"
    assert resolved_path(written, directory) == volume
    assert portable_path(written, directory, root) == written  # already portable: unchanged
    elsewhere = str((tmp_path / "other" / "v.zarr").resolve())
    assert portable_path(elsewhere, directory, root) == elsewhere
    assert portable_path(volume, directory) == volume  # the default root is the folder itself
