"""Preparing subjects from a real file: frames on disk, the manifest, shared contrast, resuming."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from etchacell_loop.imaging.manifest import read_manifest
from etchacell_loop.imaging.prepare import PrepareReport, prepare_subjects
from etchacell_loop.imaging.subjects import SubjectFormat
from etchacell_loop.imaging.volume import RoiBox, open_label, open_volume
from etchacell_loop.subject_metadata import subject_layout
from tests.imaging.support import write_imagej_tiff, write_ome_zarr

ROI = RoiBox("cell01", x=10, y=20, z=8, width=80, height=60, depth=6)
MARKER = (5, 36, 34)  # z, x, y of a 2 x 2 bright block: subject pixel ((36 - 10) / 2, (34 - 20) / 2)
FMT = SubjectFormat()  # the paper's: scale 2, 5 frames 250 nm apart (5 slices at 50 nm)


@pytest.fixture
def volume_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    data = rng.integers(40, 80, size=(30, 100, 120), dtype=np.uint8)
    data[10] = rng.integers(150, 200, size=(100, 120))  # one bright slice inside the ROI
    z, x, y = MARKER
    data[z, y : y + 2, x : x + 2] = 255
    return write_imagej_tiff(tmp_path / "hela.tif", data, voxel_size_nm=(50, 10, 10))


def prepare(path: Path, out: Path, rois: list[RoiBox], fmt: SubjectFormat = FMT) -> PrepareReport:
    with open_volume(path) as volume:
        return prepare_subjects(volume, rois, out, fmt)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def frame(out: Path, relative: str) -> np.ndarray:
    with Image.open(out / relative) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_every_subject_and_plane_is_made_once_and_described(volume_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "subjects"
    report = prepare(volume_path, out, [ROI])
    entries = read_manifest(out)
    assert [e.z for e in entries] == list(range(8, 14))
    assert [e.upload_key for e in entries][:2] == ["hela/cell01/z0008", "hela/cell01/z0009"]
    planes = {z for e in entries for z in e.frame_z}
    assert planes == set(range(24))  # 8 - 10 .. 13 + 10, clamped at 0
    jpegs = sorted((out / "frames").rglob("*.jpg"))
    assert len(jpegs) == len(planes) == report.rois[0].frames_written
    by_plane: dict[int, set[str]] = {}
    for entry in entries:
        assert entry.frame_z == tuple(max(0, entry.z + d) for d in (-10, -5, 0, 5, 10))
        assert entry.target_frame == 2 and entry.metadata["#slice"] == str(entry.z)
        for z, path in zip(entry.frame_z, entry.frames, strict=True):
            by_plane.setdefault(z, set()).add(path)
            assert frame(out, path).shape == (50, 60)  # the ROI widened to the whole 120 x 100 volume, at scale 2
        layout = subject_layout(1, entry.metadata)
        assert layout.problems == () and [k.z for k in layout.frame_slices or ()] == list(entry.frame_z)
        assert [entry.metadata[f"Image {k}"] for k in range(5)] == [Path(p).name for p in entry.frames]
    assert all(len(paths) == 1 for paths in by_plane.values())  # a plane shown by several subjects: one file


def test_the_marker_lands_where_the_metadata_says(volume_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "subjects"
    prepare(volume_path, out, [ROI])
    entry = next(e for e in read_manifest(out) if e.z == MARKER[0] + 5)  # the marker's slice is frame 1 here
    image = frame(out, entry.frames[1]).astype(int)
    x0, y0, _, _ = (int(v) for v in entry.metadata["#crop_xywh"].split(","))
    scale = float(entry.metadata["Scaling factor"])
    row, column = (int(i) for i in np.unravel_index(np.argmax(image), image.shape))
    assert (column, row) == ((MARKER[1] - x0) / scale, (MARKER[2] - y0) / scale)


def test_one_contrast_window_serves_the_whole_roi(volume_path: Path, tmp_path: Path) -> None:
    """Slice 10 is brighter than its neighbours; with one window per ROI its frame stays brighter
    (a window per slice would stretch both to the same grey)."""
    out = tmp_path / "subjects"
    prepare(volume_path, out, [ROI])
    entries = {e.z: e for e in read_manifest(out)}
    bright = frame(out, entries[10].frames[2]).mean()
    dim = frame(out, entries[9].frames[2]).mean()
    assert bright - dim > 100


def test_a_second_run_writes_nothing_and_a_killed_run_resumes(volume_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "subjects"
    prepare(volume_path, out, [ROI])
    before = snapshot(out)
    again = prepare(volume_path, out, [ROI])
    assert snapshot(out) == before
    assert again.manifest_written is False and again.rois[0].frames_written == 0 and again.rois[0].frames_reused > 0

    lost = sorted((out / "frames").rglob("*.jpg"))[:3]
    originals = {path: path.read_bytes() for path in lost}
    for path in lost:
        path.unlink()
    (out / "manifest.jsonl").unlink()  # killed before the manifest was written
    resumed = prepare(volume_path, out, [ROI])
    assert resumed.rois[0].frames_written == 3 and resumed.manifest_written
    assert all(path.read_bytes() == data for path, data in originals.items())
    assert snapshot(out).keys() == before.keys()


def test_a_changed_recipe_makes_new_frames_and_other_rois_stay(volume_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "subjects"
    prepare(volume_path, out, [ROI])
    other = RoiBox("cell02", x=0, y=0, z=20, width=40, height=40, depth=3)
    prepare(volume_path, out, [other])
    assert {e.roi.name for e in read_manifest(out)} == {"cell01", "cell02"}
    old = {e.upload_key: e.frames for e in read_manifest(out)}
    lower = prepare(volume_path, out, [ROI], replace(FMT, jpeg_quality=60))
    assert lower.rois[0].frames_written == lower.rois[0].planes
    new = {e.upload_key: e for e in read_manifest(out)}
    assert len(new) == 9 and new["hela/cell02/z0020"].frames == old["hela/cell02/z0020"]
    changed = new["hela/cell01/z0010"]
    assert changed.frames != old["hela/cell01/z0010"] and changed.metadata["jpeg quality (%)"] == "60"


def test_rois_are_clipped_and_an_ome_zarr_works_the_same(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 4000, size=(8, 50, 70), dtype=np.uint16)
    path = write_ome_zarr(tmp_path / "cells.zarr", data, version="0.5", chunks=(1, 32, 32))
    out = tmp_path / "subjects"
    report = prepare(path, out, [RoiBox("edge", x=40, y=30, z=6, width=60, height=60, depth=10)])
    assert report.rois[0].box == RoiBox("edge", 40, 30, 6, 30, 20, 2)
    entries = read_manifest(out)
    assert [e.z for e in entries] == [6, 7] and entries[0].frame_z == (0, 1, 6, 7, 7)
    assert entries[0].metadata["#crop_xywh"] == "0,0,70,50" and frame(out, entries[0].frames[2]).shape == (25, 35)
    assert entries[0].volume.dtype == "uint16" and entries[0].volume.shape_zyx == (8, 50, 70)


def test_a_generated_synthetic_volume_prepares_with_its_recorded_rois(tmp_path: Path) -> None:
    """Integration with the synthetic generator: its OME-Zarr, ROIs and labels read as contract 1 says."""
    from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume

    path = tmp_path / "synth.zarr"
    generate_volume(path, SynthSpec(shape=(12, 512, 512), seed=3))
    out = tmp_path / "subjects"
    with open_volume(path) as volume:
        assert volume.format == "ome-zarr" and volume.shape_zyx == (12, 512, 512)
        assert volume.voxel_size_nm == (50.0, 10.0, 10.0) and volume.voxel_size_source == "ngff"
        assert volume.rois and "nucleus" in volume.labels
        report = prepare_subjects(volume, list(volume.rois[:1]), out, FMT)
    roi = report.rois[0].box
    entries = read_manifest(out)
    assert [e.z for e in entries] == list(range(roi.z, roi.z + roi.depth))
    assert all(e.upload_key.startswith(f"synth/{roi.name}/z") for e in entries)
    with open_label(path, "nucleus") as nucleus:
        centre = nucleus.read(roi.z + roi.depth // 2, slice(roi.y, roi.y + roi.height), slice(roi.x, roi.x + roi.width))
        assert volume.rois[0].nucleus_label in set(np.unique(centre).tolist())
