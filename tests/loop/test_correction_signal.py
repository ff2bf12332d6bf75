"""The promoted model's corrections against its predecessor's: a warning once, only when it is worse."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from etchacell_loop.db.models import Event, ModelVersion, PredictionBatch, RunStatus, SlicePrediction
from etchacell_loop.loop.correction_signal import REGRESSION_EVENT, correction_regression, raise_regression_signal
from etchacell_loop.model.registry import promote_version
from tests.factories import add_roi, row_id


def add_version(session: Session, name: str, roi_id: int, dice: list[float]) -> ModelVersion:
    """A version promoted now, with one batch whose slices were corrected with these Dice values."""
    version = ModelVersion(version=name, artifact_uri=f"models/{name}.keras", preset="small",
                           architecture="unet-2.5d", data_hash=name * 8)  # fmt: skip
    session.add(version)
    session.flush()
    promote_version(session, version, by="test", reason="newest")
    batch = PredictionBatch(model_version_id=row_id(version), roi_id=roi_id, status=RunStatus.SUCCEEDED)
    session.add(batch)
    session.flush()
    for index, value in enumerate(dice):
        session.add(SlicePrediction(batch_id=row_id(batch), roi_id=roi_id, slice_index=index, uncertainty=0.5,
                                    envelope_area_px=100, correction_dice=value))  # fmt: skip
    session.flush()
    return version


def warnings(session: Session) -> list[Event]:
    return list(session.exec(select(Event).where(Event.kind == REGRESSION_EVENT)).all())


def test_a_worse_promoted_model_raises_one_warning(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session:
        roi = row_id(add_roi(session))
        add_version(session, "v1", roi, [0.90, 0.92, 0.88, 0.91, 0.93])
        worse = add_version(session, "v2", roi, [0.70, 0.75, 0.72, 0.71, 0.80])
        message = raise_regression_signal(session)
        session.commit()
        assert message is not None and "v2" in message and "v1" in message and "rollback" in message
        assert raise_regression_signal(session) is None  # once per version
        (event,) = warnings(session)
        assert event.model_version_id == worse.id and event.level == "warning"


def test_no_signal_when_better_within_the_margin_or_on_too_few_slices(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session:
        roi = row_id(add_roi(session))
        add_version(session, "v1", roi, [0.80, 0.82, 0.81, 0.79, 0.80])
        assert correction_regression(session) is None  # nothing promoted before it
        add_version(session, "v2", roi, [0.78, 0.79, 0.77, 0.80, 0.78])  # 0.02 lower: within the margin
        assert correction_regression(session) is None
        add_version(session, "v3", roi, [0.10, 0.20])  # much worse, but two slices say too little
        assert correction_regression(session) is None
        assert raise_regression_signal(session) is None and warnings(session) == []
