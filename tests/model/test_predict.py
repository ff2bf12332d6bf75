"""Whole-volume prediction: chunked runs equal the in-memory TAP, components are judged whole
(joined across chunk borders through faces, edges and corners alike), the default post-processing
keeps a true envelope, and the OME-Zarr written is one the volume reader opens."""

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
from etchacell_loop.model import predict as predict_module
from etchacell_loop.model.data import normalise_intensity
from etchacell_loop.model.evaluation import PredictionOnSource, upscale_to_source
from etchacell_loop.model.metrics import Table1Accumulator
from etchacell_loop.model.predict import (
    HIGH_PERCENTILE,
    PredictError,
    apply_window,
    block_mean,
    chunk_boxes,
    intensity_window,
    kept_labels,
    predict_volume,
    prediction_grid,
    resampling_factors,
    scratch_chunks,
)
from etchacell_loop.model.presets import ModelPreset, get_preset
from etchacell_loop.model.tap import (
    COMPONENT_CONNECTIVITY,
    DEFAULT_MIN_COMPONENT_VOXELS,
    TAP_RULES,
    TapParams,
    TapResult,
    TapRule,
    remove_small_components,
    tri_axis_predict,
)
from tests.imaging.support import write_imagej_tiff, write_ome_zarr
from tests.model.envelope_truth import PAPER_MIN_COMPONENT_VOXELS, TruthRoi, f_measure, write_truth_roi

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


def perfect_fn(batch: np.ndarray) -> np.ndarray:
    """A perfect model of an image that is the truth: envelope exactly where it is shown."""
    return (batch >= 0.5).astype(np.float32)


def read_envelope(path: Path) -> np.ndarray:
    with open_label(path, "envelope") as envelope:
        z, y, x = envelope.shape_zyx
        return np.stack([envelope.read(k, slice(0, y), slice(0, x)) for k in range(z)]).astype(bool)


def expected_tap(source: np.ndarray, factor_yx: int, params: TapParams) -> TapResult:
    """The in-memory reference: area-average y, x, normalise the region, TAP."""
    z, y, x = source.shape
    resampled = source.reshape(z, y // factor_yx, factor_yx, x // factor_yx, factor_yx).mean(axis=(2, 4))
    return tri_axis_predict(normalise_intensity(resampled.astype(np.float32)), smoothing_fn, params)


def test_resampling_factors_round_to_whole_source_voxels() -> None:
    assert resampling_factors((50.0, 10.0, 10.0), 50.0) == (1, 5, 5)
    assert resampling_factors((8.0, 8.0, 8.0), 50.0) == (6, 6, 6)
    assert resampling_factors((100.0, 5.0, 5.0), 50.0) == (1, 10, 10)


def float64_block_mean(block: np.ndarray, factor_zyx: tuple[int, int, int]) -> np.ndarray:
    """The reference: edge-padded blocks averaged in float64 over a six-dimensional reshape."""
    pads = [(0, -n % f) for n, f in zip(block.shape, factor_zyx, strict=True)]
    padded = np.pad(block, pads, mode="edge")
    z, y, x = padded.shape
    fz, fy, fx = factor_zyx
    blocks = padded.reshape(z // fz, fz, y // fy, fy, x // fx, fx)
    return np.asarray(blocks.mean(axis=(1, 3, 5), dtype=np.float64), dtype=np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("factor", [(1, 1, 1), (1, 5, 5), (2, 3, 7), (6, 6, 6)])
def test_block_means_equal_the_float64_mean_bit_for_bit(dtype: type, factor: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(5)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        block = rng.integers(info.min, info.max, (13, 31, 29), dtype=dtype, endpoint=True)  # the extremes too
        block[0, 0, :] = info.max
        block[1, 0, :] = info.min
    else:
        block = (rng.random((13, 31, 29)) * 1000).astype(dtype)
    assert np.array_equal(block_mean(block, factor), float64_block_mean(block, factor))


def test_the_scratch_chunks_divide_the_prediction_chunks() -> None:
    assert scratch_chunks((64, 256, 256)) == (16, 128, 128)
    assert scratch_chunks((4, 16, 16)) == (4, 16, 16)
    assert scratch_chunks((32, 48, 200)) == (16, 48, 200)  # 128 does not divide 48 or 200: the chunk's own


def test_a_large_regions_window_comes_from_slices_resampled_from_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above WINDOW_SAMPLE_VOXELS the window is taken over evenly spaced slices, read from the source
    before the region is resampled; the prediction equals the in-memory TAP with that window."""
    source = shell_volume((12, 150, 160), seed=6)
    path = write_ome_zarr(tmp_path / "cells.zarr", source, scale=(50.0, 10.0, 10.0))
    monkeypatch.setattr(predict_module, "WINDOW_SAMPLE_VOXELS", 4 * 30 * 32)  # four of the twelve slices
    params = TapParams(patch_zyx=PATCH, min_component_voxels=0)
    with open_volume(path) as volume:
        report = predict_volume(
            volume, smoothing_fn, patch_preset(), tmp_path / "p.zarr", params=params, chunk_zyx=(4, 16, 16)
        )
    resampled = source.reshape(12, 30, 5, 32, 5).mean(axis=(2, 4)).astype(np.float32)
    window = intensity_window(resampled[[0, 4, 7, 11]])  # linspace(0, 11, 4) rounded
    assert report.intensity_window == window != intensity_window(resampled)
    reference = tri_axis_predict(apply_window(resampled, window), smoothing_fn, params)
    assert np.array_equal(read_envelope(tmp_path / "p.zarr"), reference.envelope)
    assert report.voted_voxels == int(reference.voted.sum()) > 0


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
    labels, _ = ndimage.label(voted, structure=COMPONENT_CONNECTIVITY)
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
    _, n = ndimage.label(written, structure=COMPONENT_CONNECTIVITY)
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


# Two 3 x 3 x 3 cubes meeting only along an edge or at a corner, each in its own 8^3 chunk of a
# 16^3 volume: (first cube's corner, second cube's corner), named by the chunk borders between them.
DIAGONAL_CROSSINGS = {
    "y": ((2, 5, 2), (2, 8, 5)),  # across the y border, joined along an edge running in z
    "x": ((2, 2, 5), (2, 5, 8)),  # across the x border
    "z": ((5, 2, 2), (8, 5, 2)),  # across the z border
    "yx edge": ((2, 5, 5), (2, 8, 8)),  # across the y and x borders, along the z edge where they meet
    "corner": ((5, 5, 5), (8, 8, 8)),  # through the chunk corner: one voxel touches one voxel
}
SMALL_CHUNK = (8, 8, 8)


def two_cubes(first: tuple[int, int, int], second: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros((16, 16, 16), dtype=bool)
    for z, y, x in (first, second):
        mask[z : z + 3, y : y + 3, x : x + 3] = True
    return mask


def _box(start: tuple[int, int, int], stop: tuple[int, int, int]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(start, stop, strict=True))


@pytest.mark.parametrize("crossing", DIAGONAL_CROSSINGS)
def test_pieces_joined_only_diagonally_across_a_chunk_border_are_one_component(tmp_path: Path, crossing: str) -> None:
    pair = two_cubes(*DIAGONAL_CROSSINGS[crossing])
    assert ndimage.label(pair, structure=ndimage.generate_binary_structure(3, 1))[1] == 2  # no face in common
    pieces = [int(pair[_box(start, stop)].sum()) for start, stop in chunk_boxes(pair.shape, SMALL_CHUNK)]
    assert sorted(pieces)[-2:] == [27, 27]  # one cube per chunk: they join across a border
    volume = pair.copy()
    volume[12:16, 12:16, 0:3] = True  # a separate 48-voxel block: above either cube, below the pair
    source = write_ome_zarr(tmp_path / "cubes.zarr", np.where(volume, 255, 0).astype(np.uint8), scale=(50.0,) * 3)
    for name, params in (
        ("minimum", TapParams(patch_zyx=PATCH, min_component_voxels=50)),
        ("largest", TapParams(patch_zyx=PATCH, min_component_voxels=0, keep_largest=True)),
    ):
        in_memory = tri_axis_predict(volume.astype(np.float32), perfect_fn, params).envelope
        out = tmp_path / f"{name}.zarr"
        with open_volume(source) as opened:
            predict_volume(opened, perfect_fn, patch_preset(), out, params=params, chunk_zyx=SMALL_CHUNK)
        assert np.array_equal(in_memory, pair), name  # the pair (54 voxels) is one component
        assert np.array_equal(read_envelope(out), in_memory), name


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


# --- the default post-processing on a true envelope -----------------------------------------------

PERFECT_PATCH = (8, 32, 32)
CHUNK_IN_ROI = (32, 48, 48)  # smaller than the ROI's model grid, (58, 116, 115): 2 x 3 x 3 chunks


@pytest.fixture(scope="module")
def truth_roi(tmp_path_factory: pytest.TempPathFactory) -> TruthRoi:
    return write_truth_roi(tmp_path_factory.mktemp("truth-roi"))


def test_the_truth_roi_is_a_fair_test(truth_roi: TruthRoi) -> None:
    """Its envelope (one cell's: the volume has one) is larger than the paper's minimum component,
    and covers more than 1% of the ROI, so the intensity window (1st to 99th percentile) maps it to 1
    and the rest to 0: the perfect model sees the truth."""
    truth = truth_roi.truth
    assert truth.sum() > PAPER_MIN_COMPONENT_VOXELS == DEFAULT_MIN_COMPONENT_VOXELS
    assert truth.mean() > 1 - HIGH_PERCENTILE / 100


@pytest.mark.parametrize("rule", TAP_RULES)
def test_the_default_post_processing_keeps_a_true_envelope(truth_roi: TruthRoi, tmp_path: Path, rule: TapRule) -> None:
    truth = truth_roi.truth
    params = TapParams(patch_zyx=PERFECT_PATCH, rule=rule, keep_largest=True)  # as for an ROI; the paper's minimum
    with open_volume(truth_roi.path) as volume:
        report = predict_volume(
            volume, perfect_fn, patch_preset(PERFECT_PATCH), tmp_path / "p.zarr", params=params, roi=truth_roi.roi,
            chunk_zyx=CHUNK_IN_ROI,
        )  # fmt: skip
    envelope = read_envelope(tmp_path / "p.zarr")
    assert report.grid.shape_zyx == truth.shape and report.n_chunks == 18
    assert report.voted_voxels == int(truth.sum())  # every axis predicts the truth, so every rule votes it
    assert f_measure(envelope, truth) >= 0.99
    assert report.n_components_kept == 1
    assert np.array_equal(envelope, remove_small_components(truth, DEFAULT_MIN_COMPONENT_VOXELS, keep_largest=True))


def test_the_default_post_processing_keeps_a_true_envelope_at_the_source_resolution(
    truth_roi: TruthRoi, tmp_path: Path
) -> None:
    """Scored as Table 1 is, on the source grid: the post-processed prediction, scaled back up, is the
    unprocessed truth scaled back up (the defaults for an ROI: rule all, the paper's minimum, the
    largest piece kept)."""
    out = tmp_path / "p.zarr"
    with open_volume(truth_roi.path) as volume:
        predict_volume(volume, perfect_fn, patch_preset(PERFECT_PATCH), out, roi=truth_roi.roi, chunk_zyx=CHUNK_IN_ROI)
    prediction = PredictionOnSource.open(out)
    try:
        place = prediction.placement
        factor_yx, region_yx = (place.factor_zyx[1], place.factor_zyx[2]), (place.region_zyx[1], place.region_zyx[2])
        unprocessed = Table1Accumulator(prediction.pixel_size_nm)
        for k in range(truth_roi.truth.shape[0]):
            z = place.offset_zyx[0] + k * place.factor_zyx[0]
            unprocessed.add(z, prediction.slice(z), upscale_to_source(truth_roi.truth[k], factor_yx, region_yx))
    finally:
        prediction.close()
    scored = unprocessed.table()
    assert scored.pixel_size_nm == 10.0 and scored.n_slices == truth_roi.truth.shape[0]
    # F, not AHD: a speck of truth alone on a slice, removed with the small pieces, costs that slice's cap.
    assert scored.f_measure >= 0.99 and scored.recall >= 0.99 and scored.precision == 1.0


def two_slabs() -> np.ndarray:
    """Two separate blocks over the paper's minimum: 12,800 and 11,200 voxels."""
    mask = np.zeros((24, 64, 96), dtype=bool)
    mask[4:14, 8:40, 4:44] = True
    mask[4:14, 8:40, 56:91] = True
    return mask


def test_without_parameters_an_roi_keeps_its_largest_piece_and_a_whole_volume_every_large_one(tmp_path: Path) -> None:
    mask = two_slabs()
    source = write_ome_zarr(tmp_path / "slabs.zarr", np.where(mask, 255, 0).astype(np.uint8), scale=(50.0,) * 3)
    everything = RoiBox("all", x=0, y=0, z=0, width=96, height=64, depth=24)
    preset = patch_preset(PERFECT_PATCH)
    with open_volume(source) as volume:
        whole = predict_volume(volume, perfect_fn, preset, tmp_path / "whole.zarr", chunk_zyx=(16, 32, 32))
        roi = predict_volume(volume, perfect_fn, preset, tmp_path / "roi.zarr", roi=everything, chunk_zyx=(16, 32, 32))
    assert (whole.n_components_kept, whole.envelope_voxels) == (2, int(mask.sum()))
    assert (roi.n_components_kept, roi.envelope_voxels) == (1, 12_800)
    for name, keep_largest in (("whole", False), ("roi", True)):
        extras: Any = zarr.open_group(tmp_path / f"{name}.zarr", mode="r").attrs["etchacell"]
        tap = extras["tap"]
        assert tap["keep_largest"] is keep_largest and tap["min_component_voxels"] == DEFAULT_MIN_COMPONENT_VOXELS
