"""The training job scores a model as the loop deploys it, and keeps training's own figures beside."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from etchacell_loop.config import CorrectionSettings, Settings
from etchacell_loop.db.models import ModelVersion, PredictionBatch
from etchacell_loop.loop.batches import queue_prediction_batch, tap_params
from etchacell_loop.loop.publish_job import tap_settings
from etchacell_loop.loop.train_job import deployed_tap, merge_metrics, metric_table
from etchacell_loop.model.tap import TapParams
from tests.factories import add_roi, row_id

PATCH = (12, 256, 256)


def settings_with(tmp_path: Path, **correction: object) -> Settings:
    return Settings(data_dir=tmp_path, correction=CorrectionSettings.model_validate(correction))


def test_the_default_deployment_is_the_papers_tap(tmp_path: Path) -> None:
    tap = deployed_tap(settings_with(tmp_path), PATCH)
    assert (tap.rule, tap.min_component_voxels, tap.axes) == ("all", 10_000, (0, 1, 2))
    assert tap == TapParams(patch_zyx=PATCH, keep_largest=tap.keep_largest)
    assert tap.keep_largest == CorrectionSettings().keep_largest


@pytest.mark.parametrize(
    "correction",
    [{}, {"tap_rule": "majority"}, {"tap_rule": "any", "min_component_voxels": 123, "keep_largest": False}],
)
def test_a_model_is_scored_with_what_its_prediction_batches_will_get(
    migrated_engine: Engine, tmp_path: Path, correction: dict[str, object]
) -> None:
    settings = settings_with(tmp_path, **correction)
    with Session(migrated_engine) as session:
        roi = add_roi(session)
        version = ModelVersion(
            version="v0001-00000000", artifact_uri="/m.keras", preset="paper", architecture="unet-2.5d",
            data_hash="0" * 64, promoted=True,
        )  # fmt: skip
        session.add(version)
        session.commit()
        version_id, roi_id = row_id(version), row_id(roi)
    with Session(migrated_engine) as session:  # as the publish job queues a promoted version's batches
        queue_prediction_batch(
            session, version_id, roi_id, settings.correction.tap_rule, tap_settings(settings.correction)
        )
        session.commit()
    with Session(migrated_engine) as session:  # and as the worker reads one back
        batch = session.exec(select(PredictionBatch)).one()
        deployed = tap_params(PATCH, batch.tap_rule, batch.params)
    assert deployed_tap(settings, PATCH) == deployed


def test_training_figures_are_kept_beside_and_never_replace_the_deployed_ones() -> None:
    deployed = {"validation": {"consensus": {"f_measure": 0.71, "ahd_nm": 15.0}, "truth": {"f_measure": 0.69}}}
    training = metric_table({"val_loss": 0.3, "loss": 0.2, "f_measure": 0.52, "ahd_px": 2.5})
    merged = merge_metrics(deployed, training)
    assert merged["validation"]["consensus"] == {
        "f_measure": 0.71,
        "ahd_nm": 15.0,
        "loss": 0.3,  # the validation loss, as training reports it
        "z_only_f_measure": 0.52,
        "z_only_ahd_px": 2.5,
    }
    assert merged["validation"]["truth"] == {"f_measure": 0.69}
