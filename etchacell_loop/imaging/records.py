"""Database rows for a manifest's volumes and ROIs, and the uploads its subjects become.

Why: every subject row hangs off an ROI row, and consensus, training and prediction later find
their pixels through the volume row (``storage_uri``, voxel size) and the ROI's box. Rows are
found by name (volume name; ROI name within its volume) and made when missing, so uploading the
same manifest again, or a second manifest of the same volume, reuses them. The caller commits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from sqlmodel import Session, select

from etchacell_loop.db.models import DataSplit, Roi, Volume
from etchacell_loop.imaging.manifest import ManifestEntry, VolumeRecord
from etchacell_loop.imaging.volume import RoiBox
from etchacell_loop.model.data import assign_splits
from etchacell_loop.panoptes.upload import FrameFile, SubjectUpload

RoiKey = tuple[str, str]  # (volume name, ROI name)


def ensure_volume(session: Session, record: VolumeRecord) -> Volume:
    """The volume row called ``record.name``, made from the record when missing."""
    row = session.exec(select(Volume).where(Volume.name == record.name)).first()
    if row is None:
        z, y, x = record.shape_zyx
        vz, vy, vx = record.voxel_size_nm
        row = Volume(
            name=record.name,
            storage_uri=record.path,
            truth_uri=f"{record.path}/labels" if record.labels else None,
            shape_z=z, shape_y=y, shape_x=x,
            voxel_size_z_nm=vz, voxel_size_y_nm=vy, voxel_size_x_nm=vx,
            dtype=record.dtype,
        )  # fmt: skip
        session.add(row)
        session.flush()
    return row


def ensure_roi(session: Session, volume: Volume, box: RoiBox) -> Roi:
    """The ROI row ``box.name`` of ``volume``, made from the box when missing."""
    assert volume.id is not None
    query = select(Roi).where(Roi.volume_id == volume.id, Roi.name == box.name)
    row = session.exec(query).first()
    if row is None:
        row = Roi(
            volume_id=volume.id, name=box.name, x=box.x, y=box.y, z=box.z,
            width=box.width, height=box.height, depth=box.depth,
        )  # fmt: skip
        session.add(row)
        session.flush()
    return row


def assign_roi_splits(session: Session, volume: Volume) -> dict[str, DataSplit]:
    """Give the volume's ROIs without a split one (train, validation or test, by ROI as the paper
    split its data, so validation and test ROIs are never trained on), and return every ROI's split.

    Splits are drawn over all the volume's ROI names with a seed made from the volume's name, so the
    same ROIs always get the same splits; an ROI that has a split keeps it for good (a model version's
    validation figures must stay comparable with the next one's)."""
    assert volume.id is not None
    rois = list(session.exec(select(Roi).where(Roi.volume_id == volume.id)).all())
    seed = int.from_bytes(hashlib.sha256(volume.name.encode()).digest()[:4], "big")
    drawn = assign_splits([roi.name for roi in rois], seed=seed)
    for roi in rois:
        if roi.split is DataSplit.UNASSIGNED:
            roi.split = DataSplit(drawn[roi.name])
            session.add(roi)
    session.flush()
    return {roi.name: roi.split for roi in rois}


class SplitError(ValueError):
    """An ROI asked for a split other than the one it already has."""


def ensure_manifest_rows(
    session: Session, entries: Sequence[ManifestEntry], splits: Mapping[str, DataSplit] | None = None
) -> dict[RoiKey, int]:
    """Volume and ROI rows for every entry; (volume name, ROI name) → ROI row id. ROIs named in
    ``splits`` get that split (refused, :class:`SplitError`, when they already have another: a model's
    validation figures must stay comparable), the others one drawn by :func:`assign_roi_splits`."""
    volumes: dict[str, Volume] = {}
    roi_ids: dict[RoiKey, int] = {}
    for entry in entries:
        key = (entry.volume.name, entry.roi.name)
        if key in roi_ids:
            continue
        if entry.volume.name not in volumes:
            volumes[entry.volume.name] = ensure_volume(session, entry.volume)
        roi = ensure_roi(session, volumes[entry.volume.name], entry.roi)
        assert roi.id is not None
        roi_ids[key] = roi.id
        _fix_split(session, roi, (splits or {}).get(roi.name))
    for volume in volumes.values():
        assign_roi_splits(session, volume)
    return roi_ids


def _fix_split(session: Session, roi: Roi, wanted: DataSplit | None) -> None:
    if wanted is None or roi.split is wanted:
        return
    if roi.split is not DataSplit.UNASSIGNED:
        raise SplitError(f"ROI {roi.name} is already in the {roi.split.value} split, not {wanted.value}")
    roi.split = wanted
    session.add(roi)


def manifest_uploads(
    entries: Sequence[ManifestEntry], directory: Path, roi_ids: Mapping[RoiKey, int]
) -> list[SubjectUpload]:
    """What :func:`~etchacell_loop.panoptes.upload.upload_subjects` takes, one per manifest entry."""
    return [
        SubjectUpload(
            upload_key=entry.upload_key,
            roi_id=roi_ids[(entry.volume.name, entry.roi.name)],
            slice_index=entry.z,
            frames=entry.frame_z,
            target_frame=entry.target_frame,
            files=tuple(FrameFile(directory / path) for path in entry.frames),
            metadata=dict(entry.metadata),
        )
        for entry in entries
    ]
