"""Table 1 metrics on hand-built volumes whose answers follow from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from etchacell_loop.model.metrics import (
    Table1,
    average_hausdorff_px,
    central_slice_of,
    evaluate_volumes,
    overlap_scores,
    render_table1,
    symmetric_average_hausdorff_px,
)


def square_outline(shape_yx: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    """A 1-px square outline ``size`` wide: a closed envelope around a ``size``² area."""
    image = np.zeros(shape_yx, dtype=bool)
    image[top : top + size, left : left + size] = True
    image[top + 1 : top + size - 1, left + 1 : left + size - 1] = False
    return image


def vertical_line(shape_zyx: tuple[int, int, int], x: int) -> np.ndarray:
    volume = np.zeros(shape_zyx, dtype=bool)
    volume[:, :, x] = True
    return volume


def test_identical_volumes_score_perfectly() -> None:
    ref = np.stack([square_outline((32, 32), 4, 4, 20)] * 5)
    row = evaluate_volumes(ref.copy(), ref, pixel_size_nm=50.0)
    assert (row.f_measure, row.precision, row.recall) == (1.0, 1.0, 1.0)
    assert row.ahd_px == 0.0 and row.ahd_symmetric_px == 0.0 and row.ahd_nm == 0.0
    assert row.area_f_measure == 1.0
    assert row.central_slice == 2


def test_line_shifted_by_two_pixels_is_two_pixels_away_both_ways() -> None:
    # Every true pixel (row r, column 10) has its nearest prediction at (r, 12): distance 2.
    ref = vertical_line((3, 16, 24), x=10)
    pred = vertical_line((3, 16, 24), x=12)
    assert average_hausdorff_px(ref, pred) == pytest.approx(2.0)
    assert symmetric_average_hausdorff_px(ref, pred) == pytest.approx(2.0)
    row = evaluate_volumes(pred, ref, pixel_size_nm=10.0)
    assert row.ahd_nm == pytest.approx(20.0)
    assert row.f_measure == 0.0 and row.precision == 0.0 and row.recall == 0.0


def test_a_slice_missed_entirely_costs_the_cap_instead_of_being_skipped() -> None:
    shape = (2, 10, 20)
    ref = vertical_line(shape, x=5)  # 10 true pixels per slice
    pred = ref.copy()
    pred[1] = False  # nothing predicted on slice 1
    cap = math.hypot(10, 20)
    # 10 pixels at distance 0 on slice 0, 10 pixels at the cap on slice 1.
    assert average_hausdorff_px(ref, pred) == pytest.approx(cap / 2)
    # Every predicted pixel lies on the truth: the reverse direction is 0, the mean is cap / 4.
    assert symmetric_average_hausdorff_px(ref, pred) == pytest.approx(cap / 4)


def test_false_envelope_on_an_empty_slice_shows_only_in_the_symmetric_form() -> None:
    ref = vertical_line((2, 10, 20), x=5)
    ref[1] = False
    pred = vertical_line((2, 10, 20), x=5)
    cap = math.hypot(10, 20)
    assert average_hausdorff_px(ref, pred) == 0.0
    # Reverse direction: 10 predicted pixels at 0, 10 at the cap → cap / 2; the mean halves it.
    assert symmetric_average_hausdorff_px(ref, pred) == pytest.approx(cap / 4)


def test_precision_and_recall_on_half_overlaps() -> None:
    ref = np.zeros((1, 4, 4), dtype=bool)
    ref[0, 0, :] = True  # 4 true voxels
    pred = np.zeros_like(ref)
    pred[0, 0, 2:] = True  # 2 predicted voxels, both true
    pred_shifted = np.zeros_like(ref)
    pred_shifted[0, 0, 2:] = True
    pred_shifted[0, 1, :2] = True  # 4 predicted voxels, 2 of them true
    inside = overlap_scores(pred, ref)
    assert (inside.precision, inside.recall) == (1.0, 0.5)
    assert inside.f_measure == pytest.approx(2 / 3)
    half = overlap_scores(pred_shifted, ref)
    assert (half.precision, half.recall, half.f_measure) == (0.5, 0.5, 0.5)


def test_nothing_predicted_and_nothing_true_is_agreement() -> None:
    empty = np.zeros((2, 8, 8), dtype=np.uint8)
    scores = overlap_scores(empty, empty)
    assert (scores.precision, scores.recall, scores.f_measure) == (1.0, 1.0, 1.0)
    assert average_hausdorff_px(empty, empty) == 0.0


def test_area_f_measure_on_the_central_slice() -> None:
    ref = np.zeros((7, 24, 24), dtype=np.uint8)
    pred = np.zeros_like(ref)
    for z in range(2, 7):
        ref[z] = square_outline((24, 24), 5, 5, 10)
        pred[z] = square_outline((24, 24), 5, 10, 10)
    # Truth fills a 10 x 10 area; the prediction's area is shifted 5 columns: 50 px in common.
    assert central_slice_of(ref) == 4
    row = evaluate_volumes(pred * 255, ref, pixel_size_nm=50.0)
    assert row.central_slice == 4
    assert row.area_f_measure == pytest.approx(0.5)
    assert evaluate_volumes(pred, ref, pixel_size_nm=50.0, central_slice=2).area_f_measure == pytest.approx(0.5)


def test_an_open_envelope_has_no_area_to_compare() -> None:
    ref = vertical_line((3, 10, 10), x=4)
    row = evaluate_volumes(ref, ref, pixel_size_nm=50.0)
    assert row.central_slice is None and row.area_f_measure is None


def test_volumes_of_different_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate_volumes(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), pixel_size_nm=50.0)


def test_table1_rendering_follows_the_paper_layout() -> None:
    ref = vertical_line((3, 16, 24), x=10)
    rows: dict[str, Table1] = {
        "unet": evaluate_volumes(vertical_line((3, 16, 24), x=12), ref, pixel_size_nm=10.0),
        "tap": evaluate_volumes(ref, ref, pixel_size_nm=10.0),
    }
    text = render_table1(rows).splitlines()
    header = text[0]
    columns = ["F-measure", "Recall", "Precision", "AHD (pixels)", "AHD (nm)", "F-measure area (single slice)"]
    positions = [header.index(title) for title in columns]
    assert positions == sorted(positions)
    assert text[2].startswith("unet") and "2.000" in text[2] and "20.000" in text[2]
    assert text[3].startswith("tap") and "1.000" in text[3]
    assert text[2].split()[-3] == "-"  # no closed area to fill
