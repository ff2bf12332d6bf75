from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from etchacell_loop.cria.consensus import envelope_band
from etchacell_loop.imaging.volume import RoiBox, open_label
from etchacell_loop.model.data import (
    AugmentParams,
    LabelledSlice,
    TrainingDataError,
    assign_splits,
    augment_pair,
    envelope_target,
    from_model_layout,
    group_runs,
    load_stacks,
    model_planes,
    normalise_intensity,
    pad_to_patch,
    resample_area,
    resample_image,
    sample_patch,
    split_stacks,
    to_model_layout,
    training_batch,
    with_splits,
)
from etchacell_loop.model.evaluation import upscale_to_source
from etchacell_loop.model.metrics import evaluate_volumes

from .support import CROP_PX, SCALE, make_volume, tiny_preset, write_labelled_slices

SPLITS = {"cell01": "train", "cell02": "validation", "cell03": "test"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[LabelledSlice]]:
    root = tmp_path_factory.mktemp("training-data")
    volume = make_volume(root / "syn.zarr")
    return volume, write_labelled_slices(volume, root / "masks", SPLITS)


def test_normalise_maps_the_percentile_window_to_unit_range() -> None:
    values = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    out = normalise_intensity(values)
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.45 < float(np.median(out)) < 0.55
    assert not normalise_intensity(np.full((4, 4), 7)).any()


def test_image_shrinking_averages_areas() -> None:
    image = np.zeros((10, 10), np.float32)
    image[:5, :5] = 25.0
    out = resample_image(image, (2, 2))
    np.testing.assert_allclose(out, [[25.0, 0.0], [0.0, 0.0]])


def test_resampled_mask_stays_binary_and_keeps_its_area() -> None:
    yy, xx = np.mgrid[:300, :300]
    disk = (yy - 150) ** 2 + (xx - 140) ** 2 <= 100**2  # radius 100 px at 10 nm
    out = resample_area(disk, (60, 60))  # 50 nm pixels: radius 20 px
    assert out.dtype == np.bool_
    assert set(np.unique(out)) <= {False, True}
    assert abs(out.sum() - np.pi * 20**2) / (np.pi * 20**2) < 0.03


def test_target_is_the_source_band_area_averaged_to_the_model_grid() -> None:
    # A 120 px square nucleus at 10 nm, shown at 20 nm (scale 2); model voxels of 50 nm (factor 5).
    mask = np.zeros((100, 100), bool)
    mask[20:80, 20:80] = True  # source rows and columns 40 .. 159
    target = envelope_target(mask, (200, 200), 70.0 / 10.0, (40, 40))
    # The 7 px band at 10 nm spans source rows 37..43 round the top edge (4 inside, 3 outside): model
    # rows 7 ([35, 40), 3 of 5 in the band) and 8 ([40, 45), 4 of 5); 156..162 at the bottom: 31 and 32.
    column = target[:, 20]
    assert np.flatnonzero(column).tolist() == [7, 8, 31, 32]
    assert target.dtype == np.bool_


def test_a_perfect_prediction_of_the_target_scores_high_at_the_source_resolution() -> None:
    yy, xx = np.mgrid[:400, :400]
    area = (yy - 200) ** 2 + (xx - 190) ** 2 <= 140**2  # a disc at 10 nm
    band = envelope_band(area, 7.0)
    mask = resample_area(area, (200, 200))  # the consensus at 20 nm
    target = envelope_target(mask, (400, 400), 7.0, (80, 80))
    scored = evaluate_volumes(
        upscale_to_source(target, (5, 5), (400, 400))[np.newaxis], band[np.newaxis], pixel_size_nm=10.0
    )
    # The band drawn at 50 nm (1 px inside the outline) reached F 0.73 here; the target's ceiling is higher.
    assert scored.f_measure > 0.8 and scored.ahd_px < 0.5
    inner = envelope_band(resample_area(area, (80, 80)), 70.0 / 50.0)
    old = evaluate_volumes(
        upscale_to_source(inner, (5, 5), (400, 400))[np.newaxis], band[np.newaxis], pixel_size_nm=10.0
    )
    assert old.f_measure < scored.f_measure - 0.05


def test_other_z_sizes_take_the_nearest_slice() -> None:
    assert model_planes(10, 15, 50.0, 50.0) == [10, 11, 12, 13, 14, 15]
    assert model_planes(10, 15, 25.0, 50.0) == [10, 12, 14]
    assert model_planes(0, 4, 30.0, 50.0) == [0, 2, 3]  # 0, 1.67, 3.33 nm-wise nearest


def test_runs_are_consecutive_slices_of_one_roi(tmp_path: Path) -> None:
    roi = RoiBox("cell01", 0, 0, 0, 10, 10, 10)
    records = [LabelledSlice("v.zarr", roi, z, (0, 0, 10, 10), 2.0, "m.png", "train") for z in (3, 1, 2, 7, 8)]
    other = LabelledSlice("v.zarr", RoiBox("cell02", 0, 0, 0, 10, 10, 10), 4, (0, 0, 10, 10), 2.0, "m.png", "train")
    runs = group_runs([*records, other])
    assert sorted([[r.roi.name, [s.z for s in run]] for run in runs for r in run[:1]]) == [
        ["cell01", [1, 2, 3]],
        ["cell01", [7, 8]],
        ["cell02", [4]],
    ]


def test_augmentation_keeps_image_and_label_aligned() -> None:
    rng = np.random.default_rng(4)
    label = np.zeros((3, 32, 32), np.uint8)
    label[:, 5:20, 3:9] = 1
    label[1, 25, 28] = 1  # asymmetric, so every flip and rotation shows
    for zoom in (None, (0.8, 1.25)):
        params = AugmentParams(zoom_range=zoom, intensity=False)
        seen = set()
        for _ in range(12):
            image, moved = augment_pair(label.astype(np.float32), label, rng, params)
            assert moved.dtype == np.uint8 and set(np.unique(moved)) <= {0, 1}
            np.testing.assert_array_equal(image >= 0.5, moved.astype(bool))
            seen.add(moved.tobytes())
        assert len(seen) > 3


def test_intensity_augmentation_changes_only_the_image() -> None:
    rng = np.random.default_rng(0)
    image = np.linspace(0, 1, 3 * 16 * 16, dtype=np.float32).reshape(3, 16, 16)
    label = (image > 0.5).astype(np.uint8)
    params = AugmentParams(flips=False, rotations=False)
    out, same = augment_pair(image, label, rng, params)
    np.testing.assert_array_equal(same, label)
    assert not np.allclose(out, image)
    assert np.all(np.diff(out.ravel()) >= 0)  # gain, offset and gamma keep the order of intensities


def test_shallow_stacks_are_padded_by_reflection() -> None:
    stack = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    padded = pad_to_patch(stack, (4, 3, 3))
    np.testing.assert_array_equal(padded[:, 0, 0], [0, 9, 0, 9])


def test_splits_are_deterministic_and_serve_train_and_validation() -> None:
    names = [f"cell{i:02d}" for i in range(10)]
    first = assign_splits(names, seed=5)
    assert first == assign_splits(list(reversed(names)), seed=5)
    assert sorted(first.values()).count("train") == 6
    assert sorted(first.values()).count("validation") == 2
    for n in (2, 3):
        splits = assign_splits(names[:n], seed=1)
        assert "train" in splits.values() and "validation" in splits.values()
    assert assign_splits(["only"]) == {"only": "train"}


def test_records_without_a_split_get_one_per_roi() -> None:
    rois = [RoiBox(f"cell{i}", 0, 0, 0, 8, 8, 8) for i in range(4)]
    records = [
        LabelledSlice("v.zarr", roi, z, (0, 0, 8, 8), 2.0, "m.png", "unassigned") for roi in rois for z in range(3)
    ]
    records[0] = LabelledSlice("v.zarr", rois[0], 0, (0, 0, 8, 8), 2.0, "m.png", "test")
    assigned = with_splits(records[1:] + records[:1], seed=2)
    per_roi: dict[str, set[str]] = {}
    for record in assigned:
        per_roi.setdefault(record.roi.name, set()).add(record.split)
    assert all(len(splits) == 1 for name, splits in per_roi.items() if name != "cell0")
    assert {"train", "validation"} <= set().union(*per_roi.values())


def test_stacks_line_up_with_the_truth(synthetic: tuple[Path, list[LabelledSlice]]) -> None:
    volume_path, records = synthetic
    preset = tiny_preset()
    stacks = load_stacks(records, preset)
    by_split = split_stacks(stacks)
    assert {s.roi_key for s in by_split["train"]} == {"syn/cell01"}
    assert {s.roi_key for s in by_split["validation"]} == {"syn/cell02"}
    assert {s.roi_key for s in by_split["test"]} == {"syn/cell03"}
    size = round(CROP_PX * 10 / preset.voxel_size_nm)
    nucleus = open_label(volume_path, "nucleus")
    for stack in stacks:
        record = next(r for r in records if r.roi_key == stack.roi_key)
        assert stack.image.shape == stack.envelope.shape == (len(stack.source_z), size, size)
        assert stack.image.dtype == np.float32 and stack.image.min() >= 0.0 and stack.image.max() <= 1.0
        assert set(np.unique(stack.envelope)) <= {0, 1} and stack.envelope.any()
        x, y, w, h = record.crop_xywh
        z = stack.source_z[len(stack.source_z) // 2]
        truth = nucleus.read(z, slice(y, y + h), slice(x, x + w)) == record.roi.nucleus_label
        expected = resample_area(truth, (size, size))
        plane = stack.area[stack.source_z.index(z)]
        assert (plane & expected).sum() / max(1, (plane | expected).sum()) > 0.95


def test_a_mask_of_the_wrong_size_is_a_clear_error(synthetic: tuple[Path, list[LabelledSlice]], tmp_path: Path) -> None:
    _, records = synthetic
    bad = tmp_path / "bad.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad)
    record = records[0]
    wrong = LabelledSlice(record.volume_path, record.roi, record.z, record.crop_xywh, SCALE, str(bad), "train")
    with pytest.raises(TrainingDataError, match=r"bad.png: mask is 10x10 px, but crop .* is 64x64"):
        load_stacks([wrong], tiny_preset())


def test_training_batches_come_from_train_stacks_and_favour_envelope(
    synthetic: tuple[Path, list[LabelledSlice]],
) -> None:
    _, records = synthetic
    preset = tiny_preset()
    stacks = split_stacks(load_stacks(records, preset))
    rng = np.random.default_rng(0)
    x, y = training_batch(stacks["train"], preset, rng, AugmentParams())
    assert x.shape == y.shape == (preset.batch_size, *preset.patch_zyx)
    assert x.dtype == y.dtype == np.float32
    on = [sample_patch(stacks["train"][0], preset.patch_zyx, rng, on_envelope=True)[1].any() for _ in range(20)]
    assert all(on)


@pytest.mark.parametrize("architecture", ["unet-2.5d", "unet-3d"])
def test_model_layout_round_trips(architecture: str) -> None:
    batch = np.random.default_rng(1).random((2, 3, 8, 5)).astype(np.float32)
    shaped = to_model_layout(batch, architecture)
    assert shaped.shape == ((2, 8, 5, 3) if architecture == "unet-2.5d" else (2, 3, 8, 5, 1))
    np.testing.assert_array_equal(from_model_layout(shaped, architecture), batch)


def test_data_and_presets_import_without_keras() -> None:
    import subprocess
    import sys

    code = "import sys, etchacell_loop.model.data, etchacell_loop.model.presets; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
