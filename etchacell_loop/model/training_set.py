"""What a training run learns from: the settled consensus masks, as labelled slices, and a snapshot.

Why: a model version must say exactly which consensus it saw, so that two versions can be compared
fairly and a surprising model can be traced back to its data. The snapshot lists the consensus ids
per split and the counts, and ``data_hash`` (sha256 over every used consensus id, its split and the
sha256 of its mask file) changes whenever a mask, a split or the set of slices changes, even when a
mask file is rewritten under the same name.

Which rows: *settled* consensus only, the answers the stopping rule vouched for. A consensus row is
settled when a RETIRE decision of a subject showing that slice as its own judged that very row (a
raw subject's decision judges the volunteer consensus, a correction subject's the corrected one)
and the subject is still retiring or retired. A consensus still gathering classifications changes
with each of them; training on it would teach the model half-finished answers (the paper trained on
slices retired after 30 classifications, §4.6), and the training trigger already counts only
settled slices. Per slice and kind the newest settled row is used, even when a newer current row
exists: marks made after the decision (a neighbouring flipbook's frame showing the slice, or a
classification still in flight when the subject retired) make rows nobody judged, and a retired
subject is never judged again, so waiting for the current row to be settled would drop the slice
for good. A slice with a current consensus but nothing settled is left out and counted in
``skipped`` as "consensus not settled".

When a slice has both kinds settled, the corrected one is used: volunteers made it looking at the
image *and* at a model's outline, after the volunteer consensus existed — unless the corrected one
may not be training data: its verdict (``params["correction"]["state"]``, from the aggregate job's
correction rule) is ``disputed`` (too few volunteers changed the machine outline: docs/corrections.md),
or it corrects the predictions of a model version whose corrections are held because on its
monitoring slices they disagree with tracing from scratch (:mod:`etchacell_loop.loop.monitoring`,
until an operator trusts them). Such a slice keeps its settled volunteer consensus if it has one;
either way the left-out row is counted in ``skipped`` with its reason. The split is the ROI's;
slices of ROIs without a split are left out (and counted), as are slices whose subject metadata
lacks the crop (``#crop_xywh``, ``Scaling factor``) or whose mask file is missing. Where a row's own
subject does not carry the crop, any subject of the same ROI does: every subject of an ROI shows the
same crop.

Reads the database through the given Session; writes nothing.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from etchacell_loop.db.models import (
    SETTLED_STATES,
    ConsensusKind,
    ConsensusResult,
    DataSplit,
    DecisionOutcome,
    RetirementDecision,
    Roi,
    Subject,
    SubjectKind,
    Volume,
)
from etchacell_loop.imaging.volume import RoiBox
from etchacell_loop.loop.monitoring import held_version_ids
from etchacell_loop.model.data import LabelledSlice
from etchacell_loop.stored_files import resolve_uri
from etchacell_loop.subject_metadata import CROP_XYWH_KEY, SCALING_KEY

KIND_PREFERENCE = {ConsensusKind.CORRECTED: 0, ConsensusKind.VOLUNTEER: 1}
USED_SPLITS = (DataSplit.TRAIN, DataSplit.VALIDATION, DataSplit.TEST)
NOT_SETTLED = "consensus not settled"
DISPUTED = "disputed correction"
HELD = "correction of a model version held by monitoring"
DISPUTED_STATE = "disputed"
CropXYWH = tuple[int, int, int, int]
Row = tuple[ConsensusResult, Roi, Volume, Subject | None]


class TrainingSetError(ValueError):
    """Nothing (or not enough) to train on; the message says what is missing."""


@dataclass(frozen=True)
class TrainingSnapshot:
    """Which consensus a model saw: ids per split, counts, what was skipped and why, the hash."""

    consensus_ids: Mapping[str, tuple[int, ...]]
    rois: Mapping[str, tuple[int, ...]]
    skipped: Mapping[str, int]
    data_hash: str

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(ids) for split, ids in self.consensus_ids.items()}

    def as_json(self) -> dict[str, Any]:
        """The form stored in ``model_version.training_data``."""
        return {
            "consensus_ids": {split: list(ids) for split, ids in self.consensus_ids.items()},
            "counts": self.counts,
            "rois": {split: list(ids) for split, ids in self.rois.items()},
            "skipped": dict(self.skipped),
            "data_hash": self.data_hash,
        }


@dataclass(frozen=True)
class TrainingSet:
    """The labelled slices of every split, and their snapshot."""

    slices: tuple[LabelledSlice, ...]
    snapshot: TrainingSnapshot


@dataclass
class _Candidate:
    consensus: ConsensusResult
    roi: Roi
    volume: Volume
    subject: Subject | None
    skipped: Counter[str] = field(default_factory=Counter)


def build_training_set(session: Session, data_dir: Path) -> TrainingSet:
    """Every usable settled consensus as a :class:`LabelledSlice`; refused when it cannot train.

    Refusals: no usable slice at all, no training slice, or no validation slice (promotion and
    early stopping are judged on the validation ROIs, so a run without them proves nothing).
    """
    skipped: Counter[str] = Counter()
    slices: list[LabelledSlice] = []
    digests: list[tuple[int, str, str]] = []
    ids: dict[str, list[int]] = {split.value: [] for split in USED_SPLITS}
    rois: dict[str, set[int]] = {split.value: set() for split in USED_SPLITS}
    fallback_subjects = _subjects_with_crop(session)
    every_settled = settled_consensus(session)
    usable, left_out = usable_consensus(every_settled, held_version_ids(session))
    settled = _preferred(usable)
    skipped[NOT_SETTLED] = unsettled_slices(current_consensus(session), every_settled)
    skipped.update(left_out)
    for consensus, roi, volume, subject in settled:
        if roi.split not in USED_SPLITS:
            skipped["roi without split"] += 1
            continue
        layout = _crop_and_scale(subject) or _crop_and_scale(fallback_subjects.get(roi.id or -1))
        if layout is None:
            skipped["no #crop_xywh / Scaling factor in subject metadata"] += 1
            continue
        mask_path = resolve_uri(consensus.mask_uri or "", data_dir)
        if not mask_path.is_file():
            skipped["mask file missing"] += 1
            continue
        assert consensus.id is not None and roi.id is not None
        crop, scale = layout
        split = roi.split.value
        slices.append(_labelled_slice(consensus, roi, volume, crop, scale, mask_path))
        digests.append((consensus.id, split, file_digest(mask_path)))
        ids[split].append(consensus.id)
        rois[split].add(roi.id)
    snapshot = TrainingSnapshot(
        consensus_ids={split: tuple(sorted(values)) for split, values in ids.items()},
        rois={split: tuple(sorted(values)) for split, values in rois.items()},
        skipped={why: n for why, n in skipped.items() if n},
        data_hash=data_hash(digests),
    )
    require_trainable(snapshot)
    return TrainingSet(tuple(slices), snapshot)


def settled_consensus(session: Session) -> list[Row]:
    """Volunteer and corrected consensus rows with a mask that a RETIRE decision judged, of a subject
    (still retiring or retired) whose own slice it is and whose kind it serves; joined to ROI,
    volume and the row's own subject, oldest first."""
    judged = aliased(Subject)
    own_kind = sa.or_(
        sa.and_(col(judged.kind) == SubjectKind.RAW, col(ConsensusResult.kind) == ConsensusKind.VOLUNTEER),
        sa.and_(col(judged.kind) == SubjectKind.PREDICTION, col(ConsensusResult.kind) == ConsensusKind.CORRECTED),
    )
    retired_on_it = sa.exists().where(
        col(RetirementDecision.consensus_result_id) == col(ConsensusResult.id),
        col(RetirementDecision.outcome) == DecisionOutcome.RETIRE,
        col(judged.id) == col(RetirementDecision.subject_id),
        col(judged.retirement_state).in_(list(SETTLED_STATES)),
        col(judged.roi_id) == col(ConsensusResult.roi_id),
        col(judged.slice_index) == col(ConsensusResult.slice_index),
        own_kind,
    )
    return consensus_rows(session, retired_on_it)


def usable_consensus(rows: Sequence[Row], held_versions: Collection[int]) -> tuple[list[Row], Counter[str]]:
    """The rows that may be training data, and how many were left out by reason: a corrected
    consensus whose verdict is disputed, or whose correction subject shows a held version's
    predictions. A volunteer consensus, and a corrected one without a verdict, are usable."""
    kept: list[Row] = []
    left_out: Counter[str] = Counter()
    for row in rows:
        why = unusable_reason(row, held_versions)
        if why is None:
            kept.append(row)
        else:
            left_out[why] += 1
    return kept, left_out


def unusable_reason(row: Row, held_versions: Collection[int]) -> str | None:
    """Why a settled consensus row may not be training data, or None when it may."""
    consensus, _, _, subject = row
    if consensus.kind != ConsensusKind.CORRECTED:
        return None
    if is_disputed(consensus.params):
        return DISPUTED
    if subject is not None and subject.model_version_id is not None and subject.model_version_id in held_versions:
        return HELD
    return None


def is_disputed(params: Mapping[str, Any] | None) -> bool:
    """Whether a corrected consensus' stored verdict (``params["correction"]["state"]``) is disputed;
    a row without one (a volunteer consensus, or an older row) is not."""
    verdict = (params or {}).get("correction")
    return isinstance(verdict, Mapping) and verdict.get("state") == DISPUTED_STATE


def consensus_rows(session: Session, condition: sa.ColumnElement[bool]) -> list[Row]:
    """Volunteer and corrected consensus rows with a mask that meet ``condition``, joined to ROI,
    volume and the row's own subject, by ROI, slice and age."""
    statement = (
        select(ConsensusResult, Roi, Volume, Subject)
        .join(Roi, col(ConsensusResult.roi_id) == col(Roi.id))
        .join(Volume, col(Roi.volume_id) == col(Volume.id))
        .outerjoin(Subject, col(ConsensusResult.subject_id) == col(Subject.id))
        .where(
            condition,
            col(ConsensusResult.mask_uri).is_not(None),
            col(ConsensusResult.kind).in_(list(KIND_PREFERENCE)),
        )
        .order_by(col(ConsensusResult.roi_id), col(ConsensusResult.slice_index), col(ConsensusResult.id))
    )
    return [(c, r, v, s) for c, r, v, s in session.exec(statement).all()]


def unsettled_slices(current: Sequence[Row], settled: Sequence[Row]) -> int:
    """Slices with a current consensus (of either kind, with a mask) but no settled one."""
    done = {(row[0].roi_id, row[0].slice_index) for row in settled}
    return len({(row[0].roi_id, row[0].slice_index) for row in current} - done)


def current_consensus(session: Session) -> list[Row]:
    """Current volunteer and corrected consensus rows with a mask, joined to ROI, volume, subject."""
    return consensus_rows(session, col(ConsensusResult.is_current).is_(True))


def require_trainable(snapshot: TrainingSnapshot) -> None:
    """Refuse a snapshot without training or validation slices, naming what is missing."""
    counts = snapshot.counts
    skipped = "; skipped: " + ", ".join(f"{n} {why}" for why, n in snapshot.skipped.items()) if snapshot.skipped else ""
    if not any(counts.values()):
        raise TrainingSetError(f"nothing to train on: no settled consensus with a usable mask{skipped}")
    if counts.get(DataSplit.TRAIN.value, 0) == 0:
        raise TrainingSetError(f"no consensus slice in a training ROI (set roi.split = 'train'){skipped}")
    if counts.get(DataSplit.VALIDATION.value, 0) == 0:
        raise TrainingSetError(f"no consensus slice in a validation ROI (set roi.split = 'validation'){skipped}")


def data_hash(entries: Iterable[tuple[int, str, str]]) -> str:
    """sha256 over the sorted (consensus id, split, mask digest) lines."""
    digest = hashlib.sha256()
    for consensus_id, split, mask_digest in sorted(entries):
        digest.update(f"{consensus_id} {split} {mask_digest}\n".encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def parse_crop(text: str) -> CropXYWH:
    """``"x,y,w,h"`` → four ints; ValueError when it is not that."""
    parts = [int(part) for part in str(text).split(",")]
    if len(parts) != 4 or parts[2] <= 0 or parts[3] <= 0:
        raise ValueError(f"not a crop 'x,y,w,h': {text!r}")
    return parts[0], parts[1], parts[2], parts[3]


def _preferred(rows: Sequence[Row]) -> list[Row]:
    """One row per (ROI, slice): corrected before volunteer consensus, then the newest."""
    best: dict[tuple[int, int], Row] = {}
    for row in rows:
        key = (row[0].roi_id, row[0].slice_index)
        if key not in best or _rank(row) < _rank(best[key]):
            best[key] = row
    return list(best.values())


def _rank(row: Row) -> tuple[int, int]:
    consensus = row[0]
    return KIND_PREFERENCE[consensus.kind], -(consensus.id or 0)


def _subjects_with_crop(session: Session) -> dict[int, Subject]:
    """One subject per ROI whose metadata has the crop, raw subjects first."""
    found: dict[int, Subject] = {}
    statement = select(Subject).order_by(col(Subject.roi_id), col(Subject.kind) != SubjectKind.RAW, col(Subject.id))
    for subject in session.exec(statement).all():
        if subject.roi_id not in found and _crop_and_scale(subject) is not None:
            found[subject.roi_id] = subject
    return found


def _crop_and_scale(subject: Subject | None) -> tuple[CropXYWH, float] | None:
    if subject is None:
        return None
    metadata = subject.panoptes_metadata or {}
    try:
        crop = parse_crop(metadata[CROP_XYWH_KEY])
        scale = float(metadata[SCALING_KEY])
    except (KeyError, ValueError, TypeError):
        return None
    return (crop, scale) if scale > 0 else None


def _labelled_slice(
    consensus: ConsensusResult,
    roi: Roi,
    volume: Volume,
    crop: CropXYWH,
    scale: float,
    mask_path: Path,
) -> LabelledSlice:
    box = RoiBox(roi.name, roi.x, roi.y, roi.z, roi.width, roi.height, roi.depth)
    return LabelledSlice(
        volume_path=volume.storage_uri.removeprefix("file://"),
        roi=box,
        z=consensus.slice_index,
        crop_xywh=crop,
        scaling_factor=scale,
        mask_path=str(mask_path),
        split=roi.split.value,
        consensus_id=consensus.id,
    )
