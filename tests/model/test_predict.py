"""Whole-volume prediction: chunked runs equal the in-memory TAP, components are judged whole,
and the OME-Zarr written is one the volume reader opens."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from scipy import ndimage

from etchacell_loop.imaging.omezarr import downsample_2x
from etchacell_loop.imaging.volume import RoiBox, open_label, open_volume
from etchacell_loop.model.data import normalise_intensity
from etchacell_loop.model.predict import (
    PredictError,
    chunk_boxes,
    kept_labels,
    predict_volume,
    prediction_grid,
    resampling_factors,
)
from etchacell_loop.model.presets import ModelPreset, get_preset
from etchacell_loop.model.tap import TapParams, TapResult, tri_axis_predict
from tests.imaging.support import write_imagej_tiff, write_ome_zarr

PATCH = (4, 8, 8)


def patch_preset(patch_zyx: tuple[int, int, int] = PATCH) -> ModelPreset:
    return replace(get_preset("small"), name="test", patch_zyx=patch_zyx, depth=2, voxel_size_nm=50.0)


def smoothing_fn(batch: np.ndarray) -> np.ndarray:
    """A model whose output depends on the whole window (as a U-Net's does): local mean brightness."""
    return np.stack([ndimage.uniform_filter(patch, size=3, mode="constant") for patch in batch]).astype(np.float32)


def shell_volume(shape_zyx: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint8 source at 50 x 10 x 10 nm: a bright ellipsoidal shell (an envelope crossing many
    chunks) and a few bright specks (small false components) on a noisy dark background."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape_zyx, dtype=np.float32)
    cz, cy, cx = (n / 2 for n in shape_zyx)
    radius = np.sqrt(
        ((z - cz) / (0.4 * shape_zyx[0])) ** 2
        + ((y - cy) / (0.35 * shape_zyx[1])) ** 2
        + ((x - cx) / (0.35 * shape_zyx[2])) ** 2
    )
    volume = 40 + 20 * rng.random(shape_zyx)
    volume[np.abs(radius - 1.0) < 0.15] = 210
    volume[:3, 5:20, 5:20] = 230  # specks of 3 x 3 x 3 model voxels in two corners
    volume[-3:, -20:-5, -20:-5] = 230
    return volume.astype(np.uint8)


def expected_tap(source: np.ndarray, factor_yx: int, params: TapParams) -> TapResult:
    """The in-memory reference: area-average y, x, normalise the region, TAP."""
    z, y, x = source.shape
    resampled = source.reshape(z, y // factor_yx, factor_yx, x // factor_yx, factor_yx).mean(axis=(2, 4))
    return tri_axis_predict(normalise_intensity(resampled.astype(np.float32)), smoothing_fn, params)


def test_resampling_factors_round_to_whole_source_voxels() -> None:
    assert resampling_factors((50.0, 10.0, 10.0), 50.0) == (1, 5, 5)
    assert resampling_factors((8.0, 8.0, 8.0), 50.0) == (6, 6, 6)
    assert resampling_factors((100.0, 5.0, 5.0), 50.0) == (1, 10, 10)


def test_chunked_prediction_equals_the_in_memory_tap(tmp_path: Path) -> None:
    source = shell_volume((12, 150, 160))
    path = write_ome_zarr(tmp_path / "cells.zarr", source, scale=(50.0, 10.0, 10.0))
    params = TapParams(patch_zyx=PATCH, rule="majority", min_component_voxels=0)
    reference = expected_tap(source, 5, params)
    voted = reference.voted
    # The threshold: above any piece of the shell inside one chunk, below the whole shell.
    chunk = (4, 16, 16)
    biggest_piece = max(
        int(voted[tuple(slice(a, b) for a, b in zip(s, e, strict=True))].sum())
        for s, e in chunk_boxes(voted.shape, chunk)
    )
    labels, _ = ndimage.label(voted, structure=ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.max() > biggest_piece + 1 and (sizes < biggest_piece + 1).any()
    params = replace(params, min_component_voxels=biggest_piece + 1)
    reference = expected_tap(source, 5, params)

    with open_volume(path) as volume:
        report = predict_volume(
            volume, smoothing_fn, patch_preset(), tmp_path / "pred.zarr", params=params, chunk_zyx=chunk
        )

    assert report.n_chunks == 3 * 2 * 2 and report.grid.shape_zyx == (12, 30, 32)
    envelope = open_label(tmp_path / "pred.zarr", "envelope")
    written = np.stack([envelope.read(z, slice(None), slice(None)) for z in range(12)])
    assert np.array_equal(written.astype(bool), reference.envelope)
    assert report.envelope_voxels == int(reference.envelope.sum()) > 0
    assert report.voted_voxels == int(reference.voted.sum()) > report.envelope_voxels
    probability = open_volume(tmp_path / "pred.zarr")
    assert probability.voxel_size_nm == (50.0, 50.0, 50.0) and probability.dtype == np.uint8
    image = np.stack([probability.read(z, slice(None), slice(None)) for z in range(12)])
    assert np.array_equal(image, np.rint(reference.probability * 255).astype(np.uint8))
    np.testing.assert_allclose(report.uncertainty, reference.uncertainty)


def test_keep_largest_keeps_one_component_spanning_chunks(tmp_path: Path) -> None:
    source = shell_volume((12, 150, 160), seed=1)
    path = write_imagej_tiff(tmp_path / "cells.tif", source, voxel_size_nm=(50.0, 10.0, 10.0))
    params = TapParams(patch_zyx=PATCH, rule="all", min_component_voxels=1, keep_largest=True)
    reference = expected_tap(source, 5, params)
    with open_volume(path) as volume:
        report = predict_volume(
            volume, smoothing_fn, patch_preset(), tmp_path / "p.zarr", params=params, chunk_zyx=(4, 16, 16)
        )
    written = np.stack(
        [open_label(tmp_path / "p.zarr", "envelope").read(z, slice(None), slice(None)) for z in range(12)]
    )
    assert np.array_equal(written.astype(bool), reference.envelope)
    assert report.n_components_kept == 1
    _, n = ndimage.label(written, structure=ndimage.generate_binary_structure(3, 1))
    assert n == 1


def test_labels_touching_across_borders_merge_before_the_size_test() -> None:
    # Labels 1 and 2 (6 + 5 voxels) touch across a border; label 3 (7 voxels) stands alone.
    sizes = np.array([0, 6, 5, 7])
    pairs = np.array([[1, 2]])
    keep, n = kept_labels(sizes, pairs, 10, keep_largest=False)
    assert keep.tolist() == [False, True, True, False] and n == 1
    keep, n = kept_labels(sizes, pairs, 7, keep_largest=False)
    assert keep.tolist() == [False, True, True, True] and n == 2
    keep, n = kept_labels(sizes, pairs, 0, keep_largest=True)
    assert keep.tolist() == [False, True, True, False] and n == 1


def test_an_roi_is_predicted_alone_and_says_where_it_lies(tmp_path: Path) -> None:
    source = shell_volume((10, 200, 200), seed=2)
    path = write_ome_zarr(tmp_path / "cells.zarr", source, scale=(50.0, 10.0, 10.0))
    roi = RoiBox("cell01", x=20, y=40, z=2, width=150, height=100, depth=6)
    params = TapParams(patch_zyx=PATCH, min_component_voxels=0)
    with open_volume(path) as volume:
        report = predict_volume(volume, smoothing_fn, patch_preset(), tmp_path / "roi.zarr", params=params, roi=roi)
    assert report.grid.shape_zyx == (6, 20, 30)
    attrs = open_volume(tmp_path / "roi.zarr")
    assert attrs.shape_zyx == (6, 20, 30)
    reference = expected_tap(source[2:8, 40:140, 20:170], 5, params)
    written = np.stack(
        [open_label(tmp_path / "roi.zarr", "envelope").read(z, slice(None), slice(None)) for z in range(6)]
    )
    assert np.array_equal(written.astype(bool), reference.envelope)
    extras: Any = zarr.open_group(tmp_path / "roi.zarr", mode="r").attrs["etchacell"]
    assert extras["offset_zyx_px"] == [2, 40, 20] and extras["factor_zyx"] == [1, 5, 5]
    assert extras["roi"]["name"] == "cell01" and len(extras["uncertainty"]) == 6


def test_every_pyramid_level_is_written_from_the_chunks(tmp_path: Path) -> None:
    source = shell_volume((4, 700, 660), seed=3)
    path = write_ome_zarr(tmp_path / "big.zarr", source, scale=(50.0, 10.0, 10.0))
    params = TapParams(patch_zyx=PATCH, axes=(0,), min_component_voxels=0)
    with open_volume(path) as volume:
        predict_volume(volume, smoothing_fn, patch_preset(), tmp_path / "p.zarr", params=params, chunk_zyx=(4, 64, 64))
    root = zarr.open_group(tmp_path / "p.zarr", mode="r")
    level0, level1 = (np.asarray(zarr.open_array(root.store, path=level, mode="r")[...]) for level in ("0", "1"))
    assert level0.shape == (4, 140, 132) and level1.shape == (4, 70, 66)
    assert np.array_equal(level1, downsample_2x(level0, "mean"))


def test_a_chunk_size_that_breaks_the_pyramid_is_refused(tmp_path: Path) -> None:
    path = write_ome_zarr(tmp_path / "big.zarr", shell_volume((4, 700, 660)), scale=(50.0, 10.0, 10.0))
    with open_volume(path) as volume, pytest.raises(PredictError, match="multiples of 2"):
        predict_volume(volume, smoothing_fn, patch_preset(), tmp_path / "p.zarr", chunk_zyx=(4, 63, 64))


def test_the_grid_of_an_roi_is_clipped_to_the_volume(tmp_path: Path) -> None:
    path = write_ome_zarr(tmp_path / "v.zarr", shell_volume((6, 100, 100)), scale=(50.0, 10.0, 10.0))
    with open_volume(path) as volume:
        grid = prediction_grid(volume, 50.0, RoiBox("edge", x=80, y=0, z=0, width=50, height=100, depth=6))
    assert grid.region.width == 20 and grid.shape_zyx == (6, 20, 4)
    assert grid.voxel_size_nm == (50.0, 50.0, 50.0)


def test_a_tiny_keras_model_predicts_a_volume_end_to_end(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    from etchacell_loop.model.keras_io import predict_fn_for

    preset = patch_preset((4, 16, 16))
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 4)),  # the 2.5-D layout: slices as channels
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(4, 3, padding="same", activation="sigmoid"),
        ]
    )
    predict_fn = predict_fn_for(model, preset, batch_size=16)
    source = shell_volume((8, 160, 120), seed=4)
    path = write_ome_zarr(tmp_path / "cells.zarr", source, scale=(50.0, 10.0, 10.0))
    params = TapParams(patch_zyx=(4, 16, 16), min_component_voxels=0, batch_size=16)
    with open_volume(path) as volume:
        report = predict_volume(volume, predict_fn, preset, tmp_path / "k.zarr", params=params, chunk_zyx=(4, 16, 16))
    resampled = source.reshape(8, 32, 5, 24, 5).mean(axis=(2, 4)).astype(np.float32)
    reference = tri_axis_predict(normalise_intensity(resampled), predict_fn, params)
    image = np.stack([open_volume(tmp_path / "k.zarr").read(z, slice(None), slice(None)) for z in range(8)])
    assert report.grid.shape_zyx == (8, 32, 24)
    # Batches are composed differently chunk by chunk; the model's arithmetic may differ in the last bit.
    assert np.abs(image.astype(int) - np.rint(reference.probability * 255).astype(int)).max() <= 1
    assert 0 < image.max() <= 255
