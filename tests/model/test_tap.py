"""Tri-axis prediction: windows, blending, the combination rules and component removal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from etchacell_loop.model.tap import (
    COMPONENT_CONNECTIVITY,
    TapError,
    TapParams,
    agreement_counts,
    array_reader,
    combine_votes,
    disagreement,
    predict_axis_region,
    remove_small_components,
    tri_axis_predict,
    tri_axis_probabilities,
    view_patch,
    window_starts,
)


def threshold_fn(batch: np.ndarray) -> np.ndarray:
    """A pointwise "model": envelope wherever the input is bright."""
    return (batch > 0.5).astype(np.float32)


def smoothing_fn(batch: np.ndarray) -> np.ndarray:
    """A model whose output depends on the whole window, as a U-Net's does."""
    return np.stack([ndimage.uniform_filter(patch, size=3, mode="constant") for patch in batch]).astype(np.float32)


def test_windows_cover_the_axis_and_end_flush() -> None:
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(12, 4, 4) == [0, 4, 8]
    assert window_starts(4, 4, 3) == [0]
    assert window_starts(3, 8, 6) == [0]


def test_the_patch_z_runs_along_the_slicing_axis() -> None:
    assert view_patch((4, 8, 16), 0) == (4, 8, 16)
    assert view_patch((4, 8, 16), 1) == (8, 4, 16)
    assert view_patch((4, 8, 16), 2) == (8, 16, 4)


def test_sliding_windows_reproduce_a_pointwise_model_on_every_axis() -> None:
    rng = np.random.default_rng(3)
    volume = rng.random((7, 21, 18), dtype=np.float32)  # z shorter than the y-view's patch: padded
    params = TapParams(patch_zyx=(4, 8, 8), overlap=0.25, batch_size=5)
    expected = volume > 0.5
    for probability in tri_axis_probabilities(volume, threshold_fn, params):
        assert probability.shape == volume.shape
        np.testing.assert_allclose(probability, expected.astype(np.float32), atol=1e-6)
        assert np.array_equal(probability >= 0.5, expected)


def test_a_core_box_gets_the_values_of_the_whole_volume_run() -> None:
    rng = np.random.default_rng(4)
    volume = rng.random((12, 30, 26), dtype=np.float32)
    params = TapParams(patch_zyx=(4, 8, 8), overlap=0.5)
    shape = (12, 30, 26)
    for axis in (0, 1, 2):
        whole = predict_axis_region(array_reader(volume), shape, (0, 0, 0), shape, smoothing_fn, params, axis)
        core = predict_axis_region(array_reader(volume), shape, (5, 9, 3), (9, 21, 20), smoothing_fn, params, axis)
        np.testing.assert_array_equal(core, whole[5:9, 9:21, 3:20])


def test_rules_all_majority_any() -> None:
    # Four voxels called envelope by 3, 2, 1 and 0 axes respectively.
    votes = [np.zeros((1, 1, 4), dtype=bool) for _ in range(3)]
    votes[0][0, 0, :3] = True
    votes[1][0, 0, :2] = True
    votes[2][0, 0, :1] = True
    assert combine_votes(votes, "all")[0, 0].tolist() == [True, False, False, False]
    assert combine_votes(votes, "majority")[0, 0].tolist() == [True, True, False, False]
    assert combine_votes(votes, "any")[0, 0].tolist() == [True, True, True, False]
    with pytest.raises(TapError, match="rule"):
        combine_votes(votes, "most")  # type: ignore[arg-type]


def test_tap_applies_the_rule_to_three_probability_volumes() -> None:
    volume = np.zeros((4, 4, 4), dtype=np.float32)
    volume[1:3, 1:3, 1:3] = 0.9
    params = TapParams(patch_zyx=(2, 4, 4), rule="all", min_component_voxels=0)
    result = tri_axis_predict(volume, threshold_fn, params)
    assert np.array_equal(result.envelope, volume > 0.5)
    assert np.array_equal(result.probability >= 0.5, volume > 0.5)
    assert result.uncertainty.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_uncertainty_is_the_share_of_envelope_the_axes_disagree_on() -> None:
    votes = [np.zeros((3, 2, 2), dtype=bool) for _ in range(3)]
    for v in votes:
        v[0] = True  # slice 0: all axes agree on 4 voxels
    votes[0][1, 0, 0] = True  # slice 1: one voxel all agree on, three only one axis calls
    votes[1][1, 0, 0] = True
    votes[2][1, 0, 0] = True
    votes[0][1, 1, :] = True
    votes[1][1, 0, 1] = True
    every, some = agreement_counts(votes)
    assert every.tolist() == [4, 1, 0] and some.tolist() == [4, 4, 0]
    assert disagreement(every, some).tolist() == [0.0, 0.75, 0.0]


def test_small_components_go_and_large_ones_stay() -> None:
    mask = np.zeros((6, 10, 10), dtype=bool)
    mask[0, 0, :5] = True  # 5 voxels
    mask[2:4, 2:7, 2:4] = True  # 20 voxels
    kept = remove_small_components(mask, 10)
    assert kept.sum() == 20 and not kept[0].any()
    assert remove_small_components(mask, 0).sum() == 25
    assert remove_small_components(mask, 0, keep_largest=True).sum() == 20


def test_components_touching_only_at_an_edge_or_a_corner_are_one() -> None:
    corner = np.zeros((4, 4, 4), dtype=bool)
    corner[0:2, 0:2, 0:2] = True  # 8 voxels
    corner[2:4, 2:4, 2:4] = True  # 8 more, meeting the first at one corner only
    edge = np.zeros((2, 4, 4), dtype=bool)
    edge[:, 0:2, 0:2] = True
    edge[:, 2:4, 2:4] = True  # meeting the first along an edge only
    for mask in (corner, edge):
        assert remove_small_components(mask, 16).sum() == 16
        assert remove_small_components(mask, 17).sum() == 0


def test_a_band_one_voxel_wide_joined_diagonally_is_one_component() -> None:
    # A 70 nm envelope at 50 nm voxels: each voxel meets the next only at a corner or along an edge.
    mask = np.zeros((30, 30, 60), dtype=bool)
    steps = np.arange(30)
    mask[steps, steps, steps] = True  # corner to corner, up to (29, 29, 29)
    mask[29 - steps, 29, 29 + steps] = True  # and on from there edge to edge, back down in z
    speck = np.zeros_like(mask)
    speck[20:22, 2:4, 40:42] = True  # 8 voxels on their own
    kept = remove_small_components(mask | speck, 30, keep_largest=True)
    assert np.array_equal(kept, mask) and mask.sum() == 59
    assert COMPONENT_CONNECTIVITY.sum() == 27  # the centre and its 26 neighbours


def test_keep_largest_is_off_unless_the_caller_says_the_volume_is_one_roi() -> None:
    assert TapParams(patch_zyx=(4, 8, 8)).keep_largest is False


def test_bad_parameters_are_refused_in_one_line() -> None:
    with pytest.raises(TapError, match="overlap"):
        TapParams(patch_zyx=(4, 8, 8), overlap=1.0)
    with pytest.raises(TapError, match="axes"):
        TapParams(patch_zyx=(4, 8, 8), axes=(0, 3))
    with pytest.raises(TapError, match="returned shape"):
        tri_axis_probabilities(np.zeros((4, 8, 8), np.float32), lambda b: b[:, :1], TapParams(patch_zyx=(4, 8, 8)))
