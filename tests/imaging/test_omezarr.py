"""OME-Zarr writing and reading: NGFF 0.4 metadata, pyramids built block by block, foreign volumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from numpy.typing import NDArray

from etchacell_loop.imaging.omezarr import (
    OmeZarrError,
    create_label,
    create_multiscale,
    create_volume,
    downsample_2x,
    pyramid_shapes,
    read_etchacell_attrs,
)
from etchacell_loop.imaging.synth_volume import LABEL_NAMES, SynthSpec, generate_volume
from etchacell_loop.imaging.volume import VolumeError, open_volume

SPEC = SynthSpec(shape=(10, 256, 192), seed=11, voxel_size_nm=(40.0, 8.0, 8.0))


def array(path: Path) -> NDArray[Any]:
    return np.asarray(zarr.open_array(str(path), mode="r")[:])


def attrs(path: Path) -> Any:
    return json.loads((path / ".zattrs").read_text())


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("omezarr") / "cells.zarr"
    generate_volume(path, SPEC)
    return path


def test_levels_halve_y_and_x_until_the_smallest_side_would_drop_below_64() -> None:
    assert pyramid_shapes((16, 256, 256)) == [(16, 256, 256), (16, 128, 128), (16, 64, 64)]
    assert pyramid_shapes((5, 261, 130)) == [(5, 261, 130), (5, 131, 65)]
    assert pyramid_shapes((3, 40, 40)) == [(3, 40, 40)]
    assert len(pyramid_shapes((1, 2**16, 2**16))) == 6


def test_the_image_carries_ngff_0_4_multiscales_with_a_scale_per_level(volume: Path) -> None:
    attrs = json.loads((volume / ".zattrs").read_text())
    (multiscale,) = attrs["multiscales"]
    assert multiscale["version"] == "0.4"
    assert [(a["name"], a["type"], a["unit"]) for a in multiscale["axes"]] == [
        ("z", "space", "nanometer"),
        ("y", "space", "nanometer"),
        ("x", "space", "nanometer"),
    ]
    shapes = pyramid_shapes(SPEC.shape)
    assert [d["path"] for d in multiscale["datasets"]] == [str(k) for k in range(len(shapes))]
    for level, (dataset, shape) in enumerate(zip(multiscale["datasets"], shapes, strict=True)):
        (transform,) = dataset["coordinateTransformations"]
        assert transform == {"type": "scale", "scale": [40.0, 8.0 * 2**level, 8.0 * 2**level]}
        meta = json.loads((volume / str(level) / ".zarray").read_text())
        assert meta["zarr_format"] == 2 and meta["dimension_separator"] == "/"
        assert tuple(meta["shape"]) == shape and meta["dtype"] == "|u1"
        assert meta["chunks"][0] <= 8 and meta["chunks"][1] <= 256
    with open_volume(volume) as opened:
        assert opened.voxel_size_nm == SPEC.voxel_size_nm and opened.voxel_size_source == "ngff"


def test_every_label_is_a_multiscale_with_an_image_label_attribute(volume: Path) -> None:
    assert attrs(volume / "labels")["labels"] == list(LABEL_NAMES)
    dtypes = {"nucleus": np.uint16, "envelope": np.uint8, "nucleolus": np.uint16, "organelles": np.uint16}
    for name in LABEL_NAMES:
        group = attrs(volume / "labels" / name)
        assert group["image-label"]["version"] == "0.4"
        datasets = group["multiscales"][0]["datasets"]
        assert datasets[0]["coordinateTransformations"][0]["scale"] == [40, 8, 8]
        assert len(datasets) == len(pyramid_shapes(SPEC.shape))
        level0 = zarr.open_array(str(volume / "labels" / name / "0"), mode="r")
        assert level0.shape == SPEC.shape and level0.dtype == dtypes[name]


def test_coarser_levels_are_means_for_the_image_and_samples_for_labels(volume: Path) -> None:
    image0, image1 = array(volume / "0"), array(volume / "1")
    expected = np.rint(image0.reshape(10, 128, 2, 96, 2).astype(np.float64).mean(axis=(2, 4)))
    assert np.abs(image1.astype(np.float64) - expected).max() <= 0.5 + 1e-9
    nucleus0, nucleus1 = array(volume / "labels/nucleus/0"), array(volume / "labels/nucleus/1")
    assert np.array_equal(nucleus1, nucleus0[:, ::2, ::2])


def test_blocks_written_one_at_a_time_give_the_whole_pyramid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (12, 161, 201), dtype=np.uint8)
    path = tmp_path / "v.zarr"
    root = create_volume(path, name="v")
    writer = create_multiscale(root, data.shape, (50, 10, 10), np.uint8, name="v", method="mean", chunks=(4, 64, 64))
    for z in range(0, 12, 4):
        writer.write_block(z, data[z : z + 4])
    assert np.array_equal(array(path / "0"), data)
    level1 = array(path / "1")
    assert level1.shape == (12, 81, 101)
    assert np.array_equal(level1, downsample_2x(data, "mean"))
    corner = data[:, :2, :2].astype(np.float64).mean(axis=(1, 2))
    assert np.array_equal(level1[:, 0, 0], np.rint(corner).astype(np.uint8))
    assert np.array_equal(level1[:, -1, -1], data[:, -1, -1])  # an odd edge: its own mean


def test_a_volume_made_elsewhere_has_no_rois_and_its_voxel_size_comes_from_the_scale(tmp_path: Path) -> None:
    path = tmp_path / "foreign.zarr"
    root = create_volume(path, name="foreign")
    create_multiscale(root, (4, 64, 64), (30.0, 5.0, 5.0), np.uint8, name="foreign", method="mean")
    assert read_etchacell_attrs(path) is None
    with open_volume(path) as opened:
        assert opened.rois == () and opened.voxel_size_nm == (30.0, 5.0, 5.0)
    create_label(root, "nucleus", (4, 64, 64), (30.0, 5.0, 5.0), np.uint16)
    assert attrs(path / "labels")["labels"] == ["nucleus"]


def test_what_is_not_a_volume_is_named_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(OmeZarrError, match="no such volume"):
        read_etchacell_attrs(tmp_path / "missing.zarr")
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    plain.attrs["x"] = 1
    with pytest.raises(VolumeError, match="multiscales"):
        open_volume(tmp_path / "plain.zarr")
    create_volume(tmp_path / "taken.zarr", name="taken")
    with pytest.raises(FileExistsError, match="already exists"):
        create_volume(tmp_path / "taken.zarr", name="taken")
