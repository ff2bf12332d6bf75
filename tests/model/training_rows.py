"""Database rows for labelled slices, as the loop leaves them: volume, ROI with its split, the
slice's subject with its crop metadata, the current consensus pointing at its mask, and the
retirement decision that settled it (the retire job's own ``record_decision`` at the fixed limit)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, select

from etchacell_loop.db.models import (
    ConsensusKind,
    ConsensusResult,
    DataSplit,
    DecisionOutcome,
    Roi,
    Subject,
    SubjectKind,
    Volume,
)
from etchacell_loop.loop.retire_job import record_decision
from etchacell_loop.model.data import LabelledSlice
from etchacell_loop.retirement import FixedCount, Update
from etchacell_loop.subject_metadata import CROP_XYWH_KEY, SCALING_KEY


def add_volume(session: Session, name: str, storage_uri: str) -> Volume:
    volume = Volume(
        name=name, storage_uri=storage_uri, shape_z=16, shape_y=256, shape_x=256,
        voxel_size_z_nm=50.0, voxel_size_y_nm=10.0, voxel_size_x_nm=10.0,
    )  # fmt: skip
    session.add(volume)
    session.flush()
    return volume


def add_consensus(
    session: Session,
    roi: Roi,
    z: int,
    mask_uri: str | None,
    *,
    crop_xywh: tuple[int, int, int, int] | None,
    scaling_factor: float = 2.0,
    kind: ConsensusKind = ConsensusKind.VOLUNTEER,
    settled: bool = True,
) -> ConsensusResult:
    """A subject for slice ``z`` (with crop metadata unless ``crop_xywh`` is None; a correction
    subject for corrected consensus) and its consensus, settled unless ``settled`` is False."""
    assert roi.id is not None
    metadata = {SCALING_KEY: f"{scaling_factor:g}"}
    if crop_xywh is not None:
        metadata[CROP_XYWH_KEY] = ",".join(str(v) for v in crop_xywh)
    subject_kind = SubjectKind.PREDICTION if kind is ConsensusKind.CORRECTED else SubjectKind.RAW
    subject = Subject(
        upload_key=f"{roi.name}/z{z:04d}/{kind.value}", roi_id=roi.id, slice_index=z, frames=[z], target_frame=0,
        kind=subject_kind, panoptes_metadata=metadata,
    )  # fmt: skip
    session.add(subject)
    session.flush()
    consensus = ConsensusResult(
        roi_id=roi.id, slice_index=z, subject_id=subject.id, kind=kind, n_classifications=8, n_volunteers=8,
        last_classification_id=1, mask_uri=mask_uri,
    )  # fmt: skip
    session.add(consensus)
    session.flush()
    if settled:
        settle(session, subject, consensus)
    return consensus


def settle(session: Session, subject: Subject, consensus: ConsensusResult) -> None:
    """The retire job's decision at the paper's fixed limit, reached by the consensus's classifications."""
    limit = consensus.n_classifications
    decision = record_decision(session, subject, consensus, FixedCount(limit), [Update(limit, None)], "consensus")
    assert decision.outcome == DecisionOutcome.RETIRE
    session.flush()


def rows_for(session: Session, records: Sequence[LabelledSlice], volume_name: str) -> dict[int, int]:
    """Rows for E1-style records of one volume; record consensus id → database consensus id."""
    volume = add_volume(session, volume_name, records[0].volume_path)
    assert volume.id is not None
    rois: dict[str, Roi] = {}
    ids: dict[int, int] = {}
    for record in records:
        if record.roi.name not in rois:
            box = record.roi
            roi = Roi(
                volume_id=volume.id, name=box.name, x=box.x, y=box.y, z=box.z, width=box.width, height=box.height,
                depth=box.depth, split=DataSplit(record.split),
            )  # fmt: skip
            session.add(roi)
            session.flush()
            rois[box.name] = roi
        row = add_consensus(
            session, rois[record.roi.name], record.z, record.mask_path,
            crop_xywh=record.crop_xywh, scaling_factor=record.scaling_factor,
        )  # fmt: skip
        assert record.consensus_id is not None and row.id is not None
        ids[record.consensus_id] = row.id
    return ids


def roi_named(session: Session, name: str) -> Roi:
    return session.exec(select(Roi).where(Roi.name == name)).one()
