"""A subject's truth is cut from the volume's OME-Zarr labels exactly where its images were cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from etchacell_loop.simulation.truth import (
    TruthError,
    open_volume_truth,
    subject_crop,
    subject_truth,
)
from tests.simulation.truth_volumes import subject_metadata, write_real_volume, write_truth_volume


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("truth") / "hela.zarr"
    write_truth_volume(path)
    return path


def test_frames_are_the_labels_sampled_at_the_subject_pixels(volume_path: Path) -> None:
    labels = write_truth_volume(volume_path.parent / "copy.zarr")
    volume = open_volume_truth(volume_path)
    assert volume.name == "hela" and volume.roi_nucleus_labels == {"cell01": 1}
    crop = subject_crop(subject_metadata("hela", 6))
    frames = subject_truth(volume, crop)
    assert [f.z for f in frames] == [4, 5, 6, 7, 8]
    own = frames[2]
    assert own.shape_px == (75, 70)  # 150 x 140 source pixels shown at half size
    for u, v in [(0, 0), (35, 37), (69, 74), (10, 60), (50, 20)]:
        x, y = 40 + 2 * u, 30 + 2 * v
        assert own.nucleus[v, u] == (labels["nucleus"][6, y, x] == 1)
        assert own.nucleolus[v, u] == (labels["nucleolus"][6, y, x] == 1)
    assert own.nucleus.sum() == (labels["nucleus"][6, 30:180:2, 40:180:2] == 1).sum()


def test_other_nuclei_and_organelles_are_confusers(volume_path: Path) -> None:
    volume = open_volume_truth(volume_path)
    own = subject_truth(volume, subject_crop(subject_metadata("hela", 6)))[2]
    assert own.nucleolus.any() and not (own.nucleolus & ~own.nucleus).any()
    areas = sorted(int(m.sum()) for m in own.organelles)
    assert len(areas) == 2  # the stranger nucleus reaching into the crop, and the mitochondrion
    assert not any((m & own.nucleus).any() for m in own.organelles)
    assert own.nucleus_outlines and own.organelle_outlines[0]


def test_natural_size_wins_over_the_size_the_crop_implies(volume_path: Path) -> None:
    volume = open_volume_truth(volume_path)
    frames = subject_truth(volume, subject_crop(subject_metadata("hela", 6)), shape_px=(76, 71))
    assert frames[0].shape_px == (76, 71)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"#volume": ""}, "lacks #volume"),
        ({"#crop_xywh": "1,2,3"}, "is not 'x,y,w,h'"),
        ({"#crop_xywh": "1,2,0,5"}, "has no area"),
        ({"#frame_slices": ""}, "no usable #frame_slices"),
        ({"Scaling factor": "0"}, "Scaling factor"),
    ],
)
def test_bad_subject_metadata_is_one_clear_error(change: dict[str, str], message: str) -> None:
    with pytest.raises(TruthError, match=message):
        subject_crop({**subject_metadata("hela", 6), **change})


def test_unknown_region_slice_and_volume_without_labels(volume_path: Path, tmp_path: Path) -> None:
    volume = open_volume_truth(volume_path)
    other = subject_crop({**subject_metadata("hela", 6), "#roi": "cell99"})
    with pytest.raises(TruthError, match="no region 'cell99'"):
        subject_truth(volume, other)
    metadata = subject_metadata("hela", 6)
    metadata["#frame_slices"] = "4,5,6,7,40"
    with pytest.raises(TruthError, match="slice 40 is outside"):
        subject_truth(volume, subject_crop(metadata))
    write_real_volume(tmp_path / "real.zarr")
    with pytest.raises(TruthError, match="no labels/nucleus"):
        open_volume_truth(tmp_path / "real.zarr")
    with pytest.raises(TruthError, match="no such file"):
        open_volume_truth(tmp_path / "absent.zarr")
