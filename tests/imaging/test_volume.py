"""Volumes opened lazily from real files: TIFF stacks, TIFF folders, OME-Zarr 0.4 and 0.5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from etchacell_loop.imaging.volume import (
    RoiBox,
    VolumeError,
    open_label,
    open_volume,
    parse_voxel_size_nm,
    volume_name,
)
from tests.imaging.support import write_imagej_tiff, write_ome_zarr, write_tiff_folder

FALLBACK = (70.0, 8.0, 8.0)


def ramp(shape: tuple[int, ...], dtype: type = np.uint16) -> np.ndarray:
    """Every voxel different, so a region read from the wrong place cannot match by chance."""
    return np.arange(np.prod(shape), dtype=np.int64).reshape(shape).astype(dtype)


def test_imagej_tiff_stack_reads_regions_and_its_calibration(tmp_path: Path) -> None:
    data = ramp((6, 40, 52))
    path = write_imagej_tiff(tmp_path / "hela.tif", data, voxel_size_nm=(50, 10, 10))
    with open_volume(path, fallback_voxel_size_nm=FALLBACK) as volume:
        assert (volume.name, volume.format, volume.shape_zyx) == ("hela", "tiff", (6, 40, 52))
        assert volume.voxel_size_nm == pytest.approx((50.0, 10.0, 10.0))
        assert volume.voxel_size_source == "imagej" and volume.dtype == np.uint16
        np.testing.assert_array_equal(volume.read(4, slice(3, 17), slice(30, 52)), data[4, 3:17, 30:52])


def test_uncalibrated_tiff_takes_the_fallback_and_an_explicit_size_wins(tmp_path: Path) -> None:
    path = write_imagej_tiff(tmp_path / "plain.tiff", ramp((3, 8, 8), np.uint8))
    with open_volume(path, fallback_voxel_size_nm=FALLBACK) as volume:
        assert (volume.voxel_size_nm, volume.voxel_size_source) == (FALLBACK, "default")
    calibrated = write_imagej_tiff(tmp_path / "cal.tif", ramp((3, 8, 8), np.uint8), voxel_size_nm=(50, 10, 10))
    with open_volume(calibrated, voxel_size_nm=(30.0, 5.0, 5.0)) as volume:
        assert (volume.voxel_size_nm, volume.voxel_size_source) == ((30.0, 5.0, 5.0), "option")
    with pytest.raises(VolumeError, match="voxel size"):
        open_volume(path)


def test_tiff_folder_is_stacked_in_natural_order_and_read_lazily(tmp_path: Path) -> None:
    data = ramp((12, 16, 20))
    folder = write_tiff_folder(tmp_path / "stack", data)
    (folder / "notes.txt").write_text("not a slice")
    (folder / "slice_7.tif").write_bytes(b"broken")  # a slice nobody reads must not matter
    with open_volume(folder, fallback_voxel_size_nm=FALLBACK) as volume:
        assert (volume.name, volume.format, volume.shape_zyx) == ("stack", "tiff-folder", (12, 16, 20))
        for z in (0, 2, 10, 11):  # slice_10 after slice_9, not after slice_1
            np.testing.assert_array_equal(volume.read(z, slice(2, 9), slice(0, 20)), data[z, 2:9])


@pytest.mark.parametrize(
    ("version", "unit", "scale"), [("0.4", "nanometer", (50, 10, 10)), ("0.5", "micrometer", (0.05, 0.01, 0.01))]
)
def test_ome_zarr_reads_level_zero_regions_with_its_scale(
    tmp_path: Path, version: str, unit: str, scale: tuple[float, float, float]
) -> None:
    data = ramp((5, 64, 48))
    path = write_ome_zarr(
        tmp_path / "cells.ome.zarr", data, version=version, unit=unit, scale=scale, chunks=(1, 16, 16),
        leading_axes=("c",) if version == "0.5" else (),
    )  # fmt: skip
    with open_volume(path, fallback_voxel_size_nm=FALLBACK) as volume:
        assert (volume.name, volume.format, volume.shape_zyx) == ("cells", "ome-zarr", (5, 64, 48))
        assert volume.voxel_size_nm == pytest.approx((50.0, 10.0, 10.0)) and volume.voxel_size_source == "ngff"
        np.testing.assert_array_equal(volume.read(3, slice(20, 40), slice(5, 30)), data[3, 20:40, 5:30])
        assert volume.rois == () and volume.labels == ()


def test_a_region_read_touches_only_its_chunks(tmp_path: Path) -> None:
    """Chunks outside the region are made unreadable: a read that loaded more would fail."""
    data = ramp((3, 32, 32))
    path = write_ome_zarr(tmp_path / "lazy.zarr", data, chunks=(1, 16, 16))
    for chunk in (path / "0").rglob("*"):
        name = chunk.relative_to(path / "0").as_posix()
        if chunk.is_file() and not name.startswith(".") and name != "1.0.1":
            chunk.write_bytes(b"\x00garbage")
    with open_volume(path) as volume:
        np.testing.assert_array_equal(volume.read(1, slice(2, 14), slice(18, 30)), data[1, 2:14, 18:30])
        with pytest.raises(Exception):  # noqa: B017 - zarr's own decode error; only proves the chunks are bad
            volume.read(1, slice(0, 32), slice(0, 32))


def test_synthetic_volume_carries_rois_and_labels(tmp_path: Path) -> None:
    data = ramp((4, 20, 24), np.uint8)
    nucleus = np.zeros((4, 20, 24), np.uint16)
    nucleus[1:3, 5:15, 6:18] = 1
    rois = [{"name": "cell01", "x": 2, "y": 1, "z": 0, "width": 20, "height": 18, "depth": 4, "nucleus_label": 1}]
    attrs = {"kind": "synthetic-sbfsem", "seed": 3, "voxel_size_nm": [50, 10, 10], "rois": rois}
    path = write_ome_zarr(tmp_path / "synth.zarr", data, etchacell=attrs, labels={"nucleus": nucleus})
    with open_volume(path) as volume:
        assert volume.rois == (RoiBox("cell01", 2, 1, 0, 20, 18, 4, nucleus_label=1),)
        assert volume.labels == ("nucleus",)
    with open_label(path, "nucleus") as label:
        assert label.shape_zyx == (4, 20, 24) and label.dtype == np.uint16
        assert label.voxel_size_nm == (50.0, 10.0, 10.0)
        np.testing.assert_array_equal(label.read(2, slice(0, 20), slice(0, 24)), nucleus[2])
    with pytest.raises(VolumeError, match="no label image 'envelope'"):
        open_label(path, "envelope")


def test_roi_boxes_are_clipped_to_the_volume() -> None:
    box = RoiBox("edge", x=-5, y=10, z=8, width=30, height=30, depth=10)
    assert box.clipped((12, 25, 20)) == RoiBox("edge", 0, 10, 8, 20, 15, 4)
    with pytest.raises(VolumeError, match="outside the volume"):
        RoiBox("away", x=50, y=0, z=0, width=5, height=5, depth=5).clipped((12, 25, 20))


def test_bad_volumes_are_one_line_errors(tmp_path: Path) -> None:
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, ramp((1, 8, 8), np.uint8)[0])
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, ramp((2, 8, 8, 3), np.uint8), photometric="rgb")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    fake = tmp_path / "fake.tif"
    fake.write_bytes(b"this is not a tiff")
    two_channels = write_ome_zarr(tmp_path / "rgb.zarr", ramp((2, 3, 8, 8), np.uint8), leading_axes=("c",))
    cases = {
        tmp_path / "missing.zarr": "no such file",
        tmp_path / "notes.txt": "unknown volume format",
        tmp_path / "empty": "unknown volume format",
        fake: "not a readable TIFF",
        flat: "not a 3-D",
        rgb: "not a 3-D",
        two_channels: "not a 3-D z, y, x image",
    }
    for path, expected in cases.items():
        with pytest.raises(VolumeError, match=expected) as caught:
            open_volume(path, fallback_voxel_size_nm=FALLBACK)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_voxel_size_text_and_volume_names() -> None:
    assert parse_voxel_size_nm("50, 10,10") == (50.0, 10.0, 10.0)
    for bad in ("50,10", "a,b,c", "50,0,10", "50,10,10,1", "50,-1,10"):
        with pytest.raises(VolumeError, match="Z,Y,X"):
            parse_voxel_size_nm(bad)
    names = [volume_name(Path(p)) for p in ("hela.zarr", "/d/hela.ome.zarr", "hela.ome.tif", "x/hela", "a.b.TIFF")]
    assert names == ["hela", "hela", "hela", "hela", "a.b"]
