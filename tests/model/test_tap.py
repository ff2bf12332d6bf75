"""Tri-axis prediction: windows, blending, the combination rules and component removal."""

from __future__ import annotations

import itertools
import sys
import threading
import types

import numpy as np
import pytest
from scipy import ndimage

from etchacell_loop.model import tap
from etchacell_loop.model.tap import (
    ACCELERATOR_BATCH_SIZE,
    COMPONENT_CONNECTIVITY,
    DEFAULT_BATCH_SIZE,
    AxisRegion,
    BoxReader,
    PredictFn,
    Shape3,
    TapError,
    TapParams,
    agreement_counts,
    array_reader,
    blend_weights,
    combine_votes,
    disagreement,
    predict_axis_region,
    predict_regions,
    remove_small_components,
    resolve_batch_size,
    tri_axis_predict,
    tri_axis_probabilities,
    view_patch,
    window_starts,
    window_step,
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


# --- the pipeline against a plain sequential loop ---------------------------------------------------


def sequential_axis_region(
    read: BoxReader,
    shape_zyx: Shape3,
    core_start: Shape3,
    core_stop: Shape3,
    predict_fn: PredictFn,
    params: TapParams,
    axis: int,
) -> np.ndarray:
    """The reference: one batch after another on one thread, windows cut in volume axes and moved,
    blended one by one (the implementation before the pipeline, kept verbatim in substance)."""
    patch = view_patch(params.patch_zyx, axis)
    per_axis = [
        [
            s
            for s in window_starts(shape_zyx[d], patch[d], window_step(patch[d], params.overlap))
            if s < core_stop[d] and s + patch[d] > core_start[d]
        ]
        for d in range(3)
    ]
    lo = [per_axis[d][0] for d in range(3)]
    hi = tuple(min(per_axis[d][-1] + patch[d], shape_zyx[d]) for d in range(3))
    block = read((lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]))
    pads = [(0, max(per_axis[d][-1] + patch[d] - lo[d] - block.shape[d], 0)) for d in range(3)]
    halo = np.asarray(np.pad(block, pads, mode="symmetric"), dtype=np.float32)
    weights = blend_weights(patch)
    core_shape = tuple(core_stop[d] - core_start[d] for d in range(3))
    total = np.zeros(core_shape, dtype=np.float32)
    weight_sum = np.zeros(core_shape, dtype=np.float32)
    starts = list(itertools.product(*per_axis))
    assert params.batch_size is not None
    for first in range(0, len(starts), params.batch_size):
        group = starts[first : first + params.batch_size]
        windows = [halo[tuple(slice(s[d] - lo[d], s[d] - lo[d] + patch[d]) for d in range(3))] for s in group]
        batch = np.stack([np.moveaxis(w, axis, 0) for w in windows]).astype(np.float32, copy=False)
        output = np.asarray(predict_fn(batch), dtype=np.float32)
        for start, predicted in zip(group, output, strict=True):
            moved = np.moveaxis(predicted, 0, axis)
            src, dst = [], []
            for d in range(3):
                a, b = max(start[d], core_start[d]), min(start[d] + patch[d], core_stop[d])
                src.append(slice(a - start[d], b - start[d]))
                dst.append(slice(a - core_start[d], b - core_start[d]))
            w = weights[tuple(src)]
            total[tuple(dst)] += w * moved[tuple(src)]
            weight_sum[tuple(dst)] += w
    return np.asarray(total / weight_sum, dtype=np.float32)


def nonlinear_fn(batch: np.ndarray) -> np.ndarray:
    """Deterministic, depends on the whole window and on each window's place in its batch (so a
    batch composed differently from the reference's would show)."""
    smoothed = ndimage.uniform_filter(batch, size=(1, 3, 3, 3), mode="nearest")
    rank = np.arange(batch.shape[0], dtype=np.float32)[:, None, None, None]
    return np.asarray(1 / (1 + np.exp(-8 * (smoothed - 0.5))) + 1e-3 * rank, dtype=np.float32)


@pytest.mark.parametrize(("batch_size", "overlap"), [(1, 0.25), (3, 0.5), (7, 0.25), (500, 0.0)])
def test_the_pipeline_equals_a_plain_sequential_loop_bit_for_bit(batch_size: int, overlap: float) -> None:
    rng = np.random.default_rng(11)
    volume = rng.random((11, 37, 29), dtype=np.float32)  # z shorter than the y and x views' patch: mirrored
    shape: Shape3 = (11, 37, 29)
    params = TapParams(patch_zyx=(4, 16, 8), overlap=overlap, batch_size=batch_size)
    read = array_reader(volume)
    cores = [((0, 0, 0), shape), ((3, 5, 2), (9, 30, 17)), ((0, 36, 28), shape)]
    regions = [AxisRegion(read, shape, start, stop, axis) for start, stop in cores for axis in (0, 1, 2)]
    pipelined = list(predict_regions(regions, nonlinear_fn, params))  # many regions through one pipeline
    assert len(pipelined) == len(regions)
    for region, probability in zip(regions, pipelined, strict=True):
        expected = sequential_axis_region(
            read, shape, region.core_start, region.core_stop, nonlinear_fn, params, region.axis
        )
        assert probability.dtype == np.float32 and probability.flags.c_contiguous
        assert np.array_equal(probability, expected), (region.core_start, region.axis)


def test_a_volume_shorter_than_the_patch_in_two_axes_is_mirrored_as_numpy_pads_it() -> None:
    volume = np.random.default_rng(13).random((5, 6, 29), dtype=np.float32)
    params = TapParams(patch_zyx=(4, 16, 8), batch_size=2)  # the x view's patch is 16 x 8 x 4 in z, y, x
    pipelined = tri_axis_probabilities(volume, nonlinear_fn, params)
    for axis, probability in enumerate(pipelined):
        expected = sequential_axis_region(
            array_reader(volume), (5, 6, 29), (0, 0, 0), (5, 6, 29), nonlinear_fn, params, axis
        )
        assert np.array_equal(probability, expected), axis


def test_the_model_sees_the_batches_of_the_sequential_loop() -> None:
    rng = np.random.default_rng(12)
    volume = rng.random((9, 30, 20), dtype=np.float32)
    params = TapParams(patch_zyx=(4, 8, 8), batch_size=5)
    seen: dict[str, list[np.ndarray]] = {"pipeline": [], "reference": []}

    def recording(name: str) -> PredictFn:
        def predict(batch: np.ndarray) -> np.ndarray:
            seen[name].append(batch.copy())
            return nonlinear_fn(batch)

        return predict

    for axis in (0, 1, 2):
        predict_axis_region(
            array_reader(volume), (9, 30, 20), (2, 4, 0), (9, 30, 20), recording("pipeline"), params, axis
        )
        sequential_axis_region(
            array_reader(volume), (9, 30, 20), (2, 4, 0), (9, 30, 20), recording("reference"), params, axis
        )
    assert len(seen["pipeline"]) == len(seen["reference"]) > 3
    for ours, theirs in zip(seen["pipeline"], seen["reference"], strict=True):
        assert ours.flags.c_contiguous and np.array_equal(ours, theirs)


def test_a_failing_model_stops_the_pipeline_and_leaves_no_thread() -> None:
    calls = []

    def failing(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        if len(calls) == 3:
            raise RuntimeError("out of device memory")
        return batch

    volume = np.zeros((8, 64, 64), dtype=np.float32)
    with pytest.raises(RuntimeError, match="device memory"):
        tri_axis_probabilities(volume, failing, TapParams(patch_zyx=(4, 8, 8), batch_size=2))
    assert len(calls) == 3
    assert not [t for t in threading.enumerate() if t.name.startswith("tap-")]


@pytest.mark.parametrize("length", [1, 2, 5])
def test_mirror_indices_fold_as_numpys_symmetric_padding(length: int) -> None:
    line = np.arange(length, dtype=np.float32)
    for size in (length, length + 1, 2 * length, 5 * length + 3):
        padded = np.pad(line, (0, size - length), mode="symmetric")
        assert np.array_equal(line[tap._mirrored(length, size)], padded), size


def test_the_batch_size_is_automatic_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_batch_size(5) == 5
    monkeypatch.delitem(sys.modules, "keras", raising=False)  # no Keras model here: a CPU's batch, nothing imported
    assert resolve_batch_size(None) == DEFAULT_BATCH_SIZE == 8
    assert "keras" not in sys.modules
    backend = pytest.importorskip("etchacell_loop.model.backend")
    monkeypatch.setitem(sys.modules, "keras", types.ModuleType("keras"))
    for present, expected in ((True, ACCELERATOR_BATCH_SIZE), (False, DEFAULT_BATCH_SIZE)):
        monkeypatch.setattr(backend, "accelerator_present", lambda present=present: present)
        assert resolve_batch_size(None) == expected
    assert ACCELERATOR_BATCH_SIZE == 32
    assert TapParams(patch_zyx=(4, 8, 8)).batch_size is None
