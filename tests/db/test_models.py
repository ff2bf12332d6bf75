"""The schema's promises, checked on SQLite and PostgreSQL through real sessions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, StatementError
from sqlmodel import Session, select

from etchacell_loop.db.models import (
    Classification,
    ClassificationSource,
    ConsensusKind,
    ConsensusResult,
    ModelVersion,
    Roi,
    Subject,
    SubjectKind,
    UploadState,
    Workflow,
    WorkflowRole,
)
from tests.factories import add_project, add_roi, add_workflow, row_id

BIG_PANOPTES_ID = 9_876_543_210  # Panoptes ids pass 2**31


def _project_and_workflow(session: Session) -> Workflow:
    return add_workflow(session, add_project(session), 28090, WorkflowRole.SEGMENTATION, "Draw")


def _roi(session: Session) -> Roi:
    return add_roi(session)


def _classification(workflow: Workflow, panoptes_id: int, raw: str = "[]") -> Classification:
    return Classification(
        panoptes_id=panoptes_id,
        workflow_id=row_id(workflow),
        subject_panoptes_id=BIG_PANOPTES_ID,
        volunteer_key="user:108",
        user_id=108,
        created_at=datetime(2025, 1, 21, 16, 8, 41, tzinfo=UTC),
        source=ClassificationSource.API,
        raw_annotations=raw,
    )


def test_raw_annotations_kept_verbatim_and_ids_unique(migrated_engine: Engine) -> None:
    raw = '[{"task":"T0", "value": [ {"pathX":[1.50,2], "pathY":[3,4]} ]}]  '
    with Session(migrated_engine) as session:
        workflow = _project_and_workflow(session)
        session.add(_classification(workflow, BIG_PANOPTES_ID, raw))
        session.commit()
        stored = session.exec(select(Classification)).one()
        assert stored.raw_annotations == raw
        assert stored.panoptes_id == BIG_PANOPTES_ID
        assert stored.subject_panoptes_id == BIG_PANOPTES_ID

        session.add(_classification(workflow, BIG_PANOPTES_ID))
        with pytest.raises(IntegrityError):
            session.commit()


def test_timestamps_come_back_aware_utc_and_naive_is_refused(migrated_engine: Engine) -> None:
    paris = timezone(timedelta(hours=1))
    with Session(migrated_engine) as session:
        workflow = _project_and_workflow(session)
        row = _classification(workflow, 1)
        row.created_at = datetime(2025, 1, 21, 17, 8, 41, tzinfo=paris)
        session.add(row)
        session.commit()
        session.expire_all()
        stored = session.exec(select(Classification)).one()
        assert stored.created_at == datetime(2025, 1, 21, 16, 8, 41, tzinfo=UTC)
        assert stored.created_at.utcoffset() == timedelta(0)

        naive = _classification(workflow, 2)
        naive.created_at = datetime(2025, 1, 21, 16, 8, 41)
        session.add(naive)
        with pytest.raises(StatementError, match="naive datetime"):
            session.commit()


def test_enums_are_stored_as_their_values(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session:
        roi = _roi(session)
        session.add(
            Subject(
                upload_key="roi-1/z-40/raw",
                roi_id=row_id(roi),
                slice_index=40,
                frames=[30, 35, 40, 45, 50],
                target_frame=2,
            )
        )
        session.commit()
        subject = session.exec(select(Subject)).one()
        assert subject.kind is SubjectKind.RAW
        assert subject.upload_state is UploadState.PENDING
        assert subject.frames == [30, 35, 40, 45, 50]
    with migrated_engine.connect() as conn:
        kind, state = conn.execute(sa.text("SELECT kind, upload_state FROM subject")).one()
    assert (kind, state) == ("raw", "pending")


def test_upload_key_makes_subject_creation_idempotent(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session:
        roi = _roi(session)
        for _ in range(2):
            session.add(
                Subject(upload_key="roi-1/z-40/raw", roi_id=row_id(roi), slice_index=40, frames=[40], target_frame=0)
            )
        with pytest.raises(IntegrityError):
            session.commit()


def test_at_most_one_promoted_model_version(migrated_engine: Engine) -> None:
    def version(name: str, promoted: bool) -> ModelVersion:
        return ModelVersion(
            version=name,
            artifact_uri=f"file:///models/{name}.keras",
            preset="small",
            architecture="unet-2.5d",
            data_hash="0" * 64,
            promoted=promoted,
        )

    with Session(migrated_engine) as session:
        session.add_all([version("v1", False), version("v2", False), version("v3", True)])
        session.commit()
        session.add(version("v4", True))
        with pytest.raises(IntegrityError):
            session.commit()


def test_one_current_consensus_per_slice_and_kind(migrated_engine: Engine) -> None:
    def consensus(kind: ConsensusKind, current: bool) -> ConsensusResult:
        return ConsensusResult(
            roi_id=roi_id,
            slice_index=40,
            kind=kind,
            n_classifications=10,
            n_volunteers=9,
            last_classification_id=BIG_PANOPTES_ID,
            is_current=current,
        )

    with Session(migrated_engine) as session:
        roi_id = row_id(_roi(session))
        session.add_all(
            [
                consensus(ConsensusKind.VOLUNTEER, False),
                consensus(ConsensusKind.VOLUNTEER, True),
                consensus(ConsensusKind.CORRECTED, True),
            ]
        )
        session.commit()
        session.add(consensus(ConsensusKind.VOLUNTEER, True))
        with pytest.raises(IntegrityError):
            session.commit()


def test_foreign_keys_are_enforced(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session:
        session.add(Subject(upload_key="orphan", roi_id=424242, slice_index=0, frames=[0], target_frame=0))
        with pytest.raises(IntegrityError):
            session.commit()
