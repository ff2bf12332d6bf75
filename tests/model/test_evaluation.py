"""Evaluating from files: references on the prediction's grid, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from etchacell_loop.cria.consensus import envelope_band
from etchacell_loop.model.evaluation import EvaluationError, evaluate_paths
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
    pred = prediction(tmp_path / "pred.zarr", coarse_outline(4), [0, 0, 0])
    row = evaluate_paths(pred, truth)
    assert (row.f_measure, row.precision, row.recall, row.ahd_px) == (1.0, 1.0, 1.0, 0.0)
    assert row.pixel_size_nm == 50.0 and row.area_f_measure == 1.0


def test_a_prediction_of_part_of_the_volume_is_compared_with_that_part(tmp_path: Path) -> None:
    truth = fine_truth(tmp_path / "truth.zarr", depth=6)
    envelope = coarse_outline(3)
    envelope[2] = 0  # the last slice missed
    pred = prediction(tmp_path / "pred.zarr", envelope, [2, 0, 0])
    row = evaluate_paths(pred, truth)
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
    row = evaluate_paths(pred, ref, pixel_size_nm=50.0)
    assert row.f_measure == 1.0 and row.ahd_nm == 0.0
