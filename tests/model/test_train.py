from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from etchacell_loop.model.data import LabelledSlice, TrainingDataError
from etchacell_loop.model.keras_io import ArtifactError, load_model, load_predict_fn, predict_fn_for, read_preset
from etchacell_loop.model.train import TrainResult, train_model

from .support import make_volume, tiny_preset, write_labelled_slices

SPLITS = {"cell01": "train", "cell02": "validation", "cell03": "train"}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[LabelledSlice]:
    root = tmp_path_factory.mktemp("train")
    return write_labelled_slices(make_volume(root / "syn.zarr"), root / "masks", SPLITS)


@pytest.fixture(scope="module")
def trained(
    records: list[LabelledSlice], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, list[dict[str, float]]]:
    reports: list[dict[str, float]] = []
    result = train_model(tiny_preset(), records, tmp_path_factory.mktemp("run"), seed=1, on_epoch=reports.append)
    return result, reports


def test_training_lowers_the_loss_and_reports_every_epoch(trained: tuple[TrainResult, list[dict[str, float]]]) -> None:
    result, reports = trained
    assert result.epochs_run == 3 and not result.stopped
    assert [r["epoch"] for r in reports] == [1.0, 2.0, 3.0]
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert min(result.history["val_loss"]) < result.history["val_loss"][0]
    assert result.val_metrics["loss"] == pytest.approx(min(result.history["val_loss"]), rel=1e-6)
    assert result.best_epoch == 1 + int(np.argmin(result.history["val_loss"]))
    for name in ("f_measure", "precision", "recall", "ahd_px", "ahd_nm"):
        assert np.isfinite(result.val_metrics[name])
    assert result.val_metrics["ahd_nm"] == pytest.approx(result.val_metrics["ahd_px"] * 20.0)


def test_the_artifact_reloads_with_identical_outputs(trained: tuple[TrainResult, list[dict[str, float]]]) -> None:
    result, _ = trained
    assert result.artifact_path.name == "model.keras" and result.artifact_path.exists()
    assert read_preset(result.artifact_path) == result.preset
    model, preset = load_model(result.artifact_path)
    predict_fn, loaded_preset = load_predict_fn(result.artifact_path, batch_size=2)
    assert loaded_preset == preset == result.preset
    batch = np.random.default_rng(3).random((5, *preset.patch_zyx)).astype(np.float32)
    again = predict_fn_for(model, preset)(batch)
    out = predict_fn(batch)
    assert out.shape == batch.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, again, atol=1e-6)
    with pytest.raises(ValueError, match="predict_fn takes"):
        predict_fn(batch[:, :2])


def test_should_stop_ends_training_after_the_epoch(records: list[LabelledSlice], tmp_path: Path) -> None:
    result = train_model(
        replace(tiny_preset(), epochs=5), records, tmp_path, steps_per_epoch=1, should_stop=lambda: True
    )
    assert result.stopped and result.epochs_run == 1
    assert result.artifact_path.exists()


def test_training_without_a_validation_roi_is_refused(records: list[LabelledSlice], tmp_path: Path) -> None:
    only_train = [r for r in records if r.split == "train"]
    with pytest.raises(TrainingDataError, match="no labelled slices in the validation split"):
        train_model(tiny_preset(), only_train, tmp_path)


def test_a_file_that_is_not_an_artifact_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "model.keras"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a model artefact"):
        load_predict_fn(bogus)
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(ArtifactError, match="stored preset"):
        read_preset(tmp_path / "other.keras")


@pytest.mark.slow
def test_the_3d_unet_trains_too(records: list[LabelledSlice], tmp_path: Path) -> None:
    result = train_model(tiny_preset("unet-3d"), records, tmp_path, seed=2)
    assert result.history["loss"][-1] < result.history["loss"][0]
    predict_fn, preset = load_predict_fn(result.artifact_path)
    assert predict_fn(np.zeros((1, *preset.patch_zyx), np.float32)).shape == (1, *preset.patch_zyx)
