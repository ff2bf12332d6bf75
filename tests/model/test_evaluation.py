"""Evaluating from files: references on the prediction's grid, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from etchacell_loop.cria.consensus import envelope_band
from etchacell_loop.imaging.volume import RoiBox
from etchacell_loop.model.data import LabelledSlice
from etchacell_loop.model.evaluation import (
    EvaluationError,
    PredictionOnSource,
    consensus_band_slices,
    consensus_source_area,
    evaluate_paths,
    truth_band_slices,
    upscale_to_source,
)
from tests.imaging.support import write_imagej_tiff, write_ome_zarr


def fine_truth(path: Path, depth: int = 4) -> Path:
    """Truth at 10 nm: a 100 x 100 px square nucleus at (50, 50) with its 70 nm (7 px) band."""
    area = np.zeros((200, 200), dtype=bool)
    area[50:150, 50:150] = True
    band = np.stack([envelope_band(area, 7)] * depth).astype(np.uint8)
    return write_ome_zarr(path, np.zeros_like(band), scale=(50.0, 10.0, 10.0), labels={"envelope": band})


def coarse_outline(depth: int) -> np.ndarray:
    """The same nucleus at 50 nm is the square [10, 30); a 70 nm band is 1.4 → 1 px: its inner outline."""
    outline = np.zeros((depth, 40, 40), dtype=np.uint8)
    outline[:, 10:30, 10:30] = 1
    outline[:, 11:29, 11:29] = 0
    return outline


def prediction(path: Path, envelope: np.ndarray, offset_zyx: list[int]) -> Path:
    placement = {"kind": "prediction", "offset_zyx_px": offset_zyx, "factor_zyx": [1, 5, 5]}
    return write_ome_zarr(
        path, envelope * 255, scale=(50.0, 50.0, 50.0),
        etchacell={**placement, "voxel_size_nm": [50.0, 50.0, 50.0]}, labels={"envelope": envelope},
    )  # fmt: skip


def test_a_fine_reference_is_redrawn_on_the_prediction_grid(tmp_path: Path) -> None:
    truth = fine_truth(tmp_path / "truth.zarr")
    pred = prediction(tmp_path / "pred.zarr", seed_target(4), [0, 0, 0])
    row = evaluate_paths(pred, truth).model_grid
    assert (row.f_measure, row.precision, row.recall, row.ahd_px) == (1.0, 1.0, 1.0, 0.0)
    assert row.pixel_size_nm == 50.0 and row.area_f_measure == 1.0


def test_a_prediction_of_part_of_the_volume_is_compared_with_that_part(tmp_path: Path) -> None:
    truth = fine_truth(tmp_path / "truth.zarr", depth=6)
    envelope = seed_target(3)
    envelope[2] = 0  # the last slice missed
    pred = prediction(tmp_path / "pred.zarr", envelope, [2, 0, 0])
    row = evaluate_paths(pred, truth).model_grid
    assert row.precision == 1.0 and row.recall == pytest.approx(2 / 3)
    assert row.ahd_px == pytest.approx(np.hypot(40, 40) / 3)  # a third of the truth at the cap


def test_volumes_on_different_grids_without_a_placement_are_refused(tmp_path: Path) -> None:
    truth = fine_truth(tmp_path / "truth.zarr")
    other = write_ome_zarr(tmp_path / "other.zarr", coarse_outline(4), scale=(50.0, 50.0, 50.0))
    with pytest.raises(EvaluationError, match="not on one grid"):
        evaluate_paths(other, truth)


def test_an_uncalibrated_tiff_needs_a_pixel_size(tmp_path: Path) -> None:
    pred = write_imagej_tiff(tmp_path / "pred.tif", coarse_outline(3) * 255)
    ref = write_imagej_tiff(tmp_path / "ref.tif", coarse_outline(3) * 255)
    with pytest.raises(EvaluationError, match="pixel-size-nm"):
        evaluate_paths(pred, ref)
    evaluation = evaluate_paths(pred, ref, pixel_size_nm=50.0)
    assert evaluation.source is None  # one grid: nothing to scale
    assert evaluation.primary.f_measure == 1.0 and evaluation.primary.ahd_nm == 0.0


# --- at the source resolution (the paper's Table 1) -------------------------------------------------


def seed_target(depth: int) -> np.ndarray:
    """The truth's 7 px band at 10 nm area-averaged to 50 nm (the training target): rows and columns
    9 and 10 round the top-left edge at 50 (45..49 holds 3 band pixels, 50..54 holds 4), 29 and 30 round 150."""
    ring = np.zeros((depth, 40, 40), dtype=np.uint8)
    ring[:, 9:31, 9:31] = 1
    ring[:, 11:29, 11:29] = 0
    ring[:, [9, 9, 30, 30], [9, 30, 9, 30]] = 0  # an outer corner voxel holds 3 x 3 of its 25 band pixels
    return ring


def test_a_perfect_prediction_of_the_target_is_scored_at_the_source_resolution(tmp_path: Path) -> None:
    truth = fine_truth(tmp_path / "truth.zarr")
    pred = prediction(tmp_path / "pred.zarr", seed_target(4), [0, 0, 0])
    evaluation = evaluate_paths(pred, truth)
    assert evaluation.source is not None and evaluation.primary is evaluation.source
    source = evaluation.source
    # Scaled back up, the two 50 nm rows cover source rows 45..54: every band pixel (47..53), and 3 more
    # (the corners, rounded by the bicubic filter, miss a few band pixels).
    assert source.pixel_size_nm == 10.0 and source.recall > 0.99 and source.ahd_px < 0.01
    assert source.precision == pytest.approx(0.7, abs=0.02)
    assert source.f_measure == pytest.approx(0.825, abs=0.01)
    assert source.area_f_measure is not None and source.area_f_measure > 0.95
    assert evaluation.model_grid.pixel_size_nm == 50.0 and evaluation.model_grid.f_measure > 0.98


def test_a_prediction_one_model_voxel_off_is_five_source_pixels_off(tmp_path: Path) -> None:
    truth = fine_truth(tmp_path / "truth.zarr")
    shifted = np.roll(seed_target(4), 1, axis=2)  # one 50 nm column to the right
    evaluation = evaluate_paths(prediction(tmp_path / "pred.zarr", shifted, [0, 0, 0]), truth)
    assert evaluation.source is not None
    assert evaluation.source.f_measure < 0.7
    # The vertical sides moved 5 px (their band pixels are now 1 to 3 px from the prediction); the
    # horizontal sides still cover theirs.
    assert 0.3 < evaluation.source.ahd_px < 3.0
    assert evaluation.source.ahd_nm == pytest.approx(10 * evaluation.source.ahd_px)


def test_upscaling_is_bicubic_and_kept_at_one_half() -> None:
    line = np.zeros((5, 5), dtype=bool)
    line[2, :] = True  # a one-voxel line at 50 nm
    up = upscale_to_source(line, (5, 5), (25, 25))
    # Bicubic: 0.56 half a voxel from the line's centre, 0.42 beyond: its own 5 source rows, no more.
    assert np.flatnonzero(up[:, 12]).tolist() == [10, 11, 12, 13, 14]
    single = np.zeros((3, 3), dtype=bool)
    single[1, 1] = True
    assert upscale_to_source(single, (5, 5), (15, 15)).sum() == 21  # a lone voxel loses its 4 corners
    assert upscale_to_source(line, (5, 5), (12, 13)).shape == (12, 13)  # cut to the region
    assert not upscale_to_source(np.zeros((3, 3), bool), (5, 5), (15, 15)).any()
    np.testing.assert_array_equal(upscale_to_source(single, (1, 1), (3, 3)), single)


def test_each_source_slice_takes_the_model_plane_covering_it(tmp_path: Path) -> None:
    planes = np.zeros((2, 4, 4), dtype=np.uint8)
    planes[0, 1, 1] = 1
    planes[1, 2, 2] = 1
    attrs = {
        "kind": "prediction", "offset_zyx_px": [3, 0, 0], "factor_zyx": [2, 1, 1],
        "voxel_size_nm": [20.0, 10.0, 10.0], "source_voxel_size_nm": [10.0, 10.0, 10.0],
        "roi": {"name": "r", "x": 0, "y": 0, "z": 3, "width": 4, "height": 4, "depth": 3},
    }  # fmt: skip
    path = write_ome_zarr(
        tmp_path / "p.zarr", planes, scale=(20.0, 10.0, 10.0), etchacell=attrs, labels={"envelope": planes}
    )
    prediction_on_source = PredictionOnSource.open(path)
    try:
        assert [bool(prediction_on_source.slice(z)[1, 1]) for z in (3, 4, 5)] == [True, True, False]
        assert bool(prediction_on_source.slice(5)[2, 2]) and not prediction_on_source.slice(9).any()
        assert prediction_on_source.placement.region == RoiBox("region", 0, 0, 3, 4, 4, 3)
    finally:
        prediction_on_source.close()


def test_a_consensus_band_is_drawn_on_its_crop_and_then_cut_to_the_region(tmp_path: Path) -> None:
    mask = np.zeros((50, 50), dtype=np.uint8)
    mask[10:40, 10:40] = 255  # at 20 nm: source pixels 20..79 of the crop, which starts at (100, 200)
    Image.fromarray(mask).save(tmp_path / "m.png")
    crop = (100, 200, 100, 100)  # x, y, w, h
    record = LabelledSlice(
        "v.zarr", RoiBox("r", 100, 200, 0, 100, 100, 5), 2, crop, 2.0, str(tmp_path / "m.png"), "test"
    )
    region = RoiBox("half", 150, 200, 0, 50, 100, 5)  # the right half of the crop: cuts the nucleus
    [(z, band)] = list(consensus_band_slices([record], region, envelope_width_nm=70.0, source_pixel_nm=10.0))
    assert z == 2 and band.shape == (100, 50)
    whole = envelope_band(consensus_source_area(record), 7.0)
    np.testing.assert_array_equal(band, whole[:, 50:])
    assert not band[40:60, 0].any()  # no band along the cut, which runs through the nucleus


def test_the_truth_of_an_roi_is_its_own_nucleus(tmp_path: Path) -> None:
    nuclei = np.zeros((2, 60, 120), dtype=np.uint8)
    nuclei[:, 10:50, 10:50] = 1
    nuclei[:, 10:50, 70:110] = 2
    bands = np.stack([envelope_band(plane > 0, 7) for plane in nuclei]).astype(np.uint8)
    path = write_ome_zarr(tmp_path / "t.zarr", np.zeros_like(bands), labels={"envelope": bands, "nucleus": nuclei})
    region = RoiBox("r", 0, 0, 0, 120, 60, 2)
    everything = dict(truth_band_slices(path, region))
    own = dict(truth_band_slices(path, region, nucleus_label=2))
    only_1 = dict(truth_band_slices(path, region, nucleus_label=2, slices=[1, 7]))
    assert everything[0].sum() == 2 * own[0].sum()
    assert not own[0][:, :60].any() and own[0][:, 60:].sum() == everything[0][:, 60:].sum()
    assert list(only_1) == [1]
