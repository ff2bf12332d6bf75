"""The monitoring sample is a count per model version, spread over its ROIs' prediction batches
(:func:`etchacell_loop.loop.publish_job.select_for_correction`), on the real database (SQLite and
PostgreSQL): batches that finish predicting one after another share it, it is never exceeded, and
each version has its own."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from etchacell_loop.config import CorrectionSettings, Settings
from etchacell_loop.db.models import (
    ModelVersion,
    PredictionBatch,
    Roi,
    RunStatus,
    SelectionReason,
    SlicePrediction,
    Subject,
    SubjectKind,
    Volume,
)
from etchacell_loop.loop.publish_job import select_for_correction
from tests.factories import row_id

DEPTH = 20  # slices per ROI, none traced: all open
ROIS = 4
BUDGET, MONITORING = 3, 5


def add_rois(session: Session) -> list[int]:
    """Four ROIs of one volume, each with a raw subject per slice and no consensus."""
    volume = Volume(name="hela-1", storage_uri="file:///data/hela-1.zarr", shape_z=DEPTH, shape_y=512, shape_x=512,
                    voxel_size_z_nm=50.0, voxel_size_y_nm=10.0, voxel_size_x_nm=10.0)  # fmt: skip
    session.add(volume)
    session.flush()
    ids = []
    for k in range(ROIS):
        roi = Roi(volume_id=row_id(volume), name=f"cell{k:02d}", x=0, y=0, z=0, width=256, height=256, depth=DEPTH)
        session.add(roi)
        session.flush()
        ids.append(row_id(roi))
        for z in range(DEPTH):
            session.add(Subject(upload_key=f"cell{k:02d}/z{z:04d}", roi_id=row_id(roi), slice_index=z,
                                frames=[z] * 5, target_frame=2, kind=SubjectKind.RAW))  # fmt: skip
    return ids


def add_version(session: Session, name: str, rois: list[int]) -> tuple[int, list[int]]:
    """A model version with one queued prediction batch per ROI."""
    version = ModelVersion(version=name, artifact_uri="/models/m.keras", preset="small", architecture="unet-2.5d",
                           data_hash="0" * 64)  # fmt: skip
    session.add(version)
    session.flush()
    batches = []
    for roi_id in rois:
        batch = PredictionBatch(model_version_id=row_id(version), roi_id=roi_id)
        session.add(batch)
        session.flush()
        batches.append(row_id(batch))
    return row_id(version), batches


def finish(session: Session, batch_id: int, status: RunStatus = RunStatus.SUCCEEDED) -> None:
    """The batch has predicted every slice of its ROI (uncertainty by slice index)."""
    batch = session.get(PredictionBatch, batch_id)
    assert batch is not None
    batch.status = status
    session.add(batch)
    if status is RunStatus.SUCCEEDED:
        for z in range(DEPTH):
            session.add(SlicePrediction(batch_id=batch_id, roi_id=batch.roi_id, slice_index=z,
                                        uncertainty=(z * 7 % DEPTH) / DEPTH, envelope_area_px=100))  # fmt: skip


def monitoring_by_batch(session: Session, version_id: int) -> Counter[int]:
    rows = session.exec(
        select(SlicePrediction.batch_id)
        .join(PredictionBatch, col(PredictionBatch.id) == col(SlicePrediction.batch_id))
        .where(PredictionBatch.model_version_id == version_id, SlicePrediction.selection == SelectionReason.MONITORING)
    ).all()
    return Counter(rows)


def test_a_versions_monitoring_slices_are_shared_by_its_rois_and_never_exceeded(migrated_engine: Engine) -> None:
    settings = Settings(correction=CorrectionSettings(budget_per_round=BUDGET, monitoring_slices=MONITORING))

    def sessions() -> Session:
        return Session(migrated_engine)

    with sessions() as session:
        rois = add_rois(session)
        version, batches = add_version(session, "v0001-sample00", rois)
        finish(session, batches[0])
        session.commit()
    # the first ROI to finish takes its share of the five over the four batches still to choose: 2
    assert select_for_correction(sessions, version, settings) == BUDGET + 2
    with sessions() as session:
        assert monitoring_by_batch(session, version) == {batches[0]: 2}
        finish(session, batches[1])
        finish(session, batches[2], RunStatus.FAILED)  # a failed batch is not waited for
        session.commit()
    assert select_for_correction(sessions, version, settings) == BUDGET + 2  # 3 still needed over 2 batches
    with sessions() as session:
        finish(session, batches[3])
        session.commit()
    assert select_for_correction(sessions, version, settings) == BUDGET + 1
    assert select_for_correction(sessions, version, settings) == 0  # chosen once
    with sessions() as session:
        assert monitoring_by_batch(session, version) == {batches[0]: 2, batches[1]: 2, batches[3]: 1}
        uncertain = session.exec(
            select(SlicePrediction).where(SlicePrediction.selection == SelectionReason.UNCERTAIN)
        ).all()
        assert Counter(r.batch_id for r in uncertain) == {batches[0]: BUDGET, batches[1]: BUDGET, batches[3]: BUDGET}
        # the next version has a sample of its own, from slices not sent before
        second, later = add_version(session, "v0002-sample00", rois[:1])
        finish(session, later[0])
        session.commit()
    assert select_for_correction(sessions, second, settings) == BUDGET + MONITORING
    with sessions() as session:
        assert monitoring_by_batch(session, second) == {later[0]: MONITORING}
        sent = session.exec(
            select(SlicePrediction.slice_index).where(
                SlicePrediction.roi_id == rois[0], SlicePrediction.selection != SelectionReason.NOT_SELECTED
            )
        ).all()
        assert len(sent) == len(set(sent)) == 2 * BUDGET + 2 + MONITORING  # no slice sent twice


def test_no_monitoring_when_the_version_asks_for_none(migrated_engine: Engine) -> None:
    settings = Settings(correction=CorrectionSettings(budget_per_round=BUDGET, monitoring_slices=0))
    with Session(migrated_engine) as session:
        rois = add_rois(session)
        version, batches = add_version(session, "v0001-none0000", rois[:2])
        for batch in batches:
            finish(session, batch)
        session.commit()
    assert select_for_correction(lambda: Session(migrated_engine), version, settings) == 2 * BUDGET
    with Session(migrated_engine) as session:
        assert monitoring_by_batch(session, version) == {}
