"""The daemon's *publish* job: the promoted model's predictions go back to volunteers for correction.

Four steps, each committing as it goes, so a run killed anywhere is finished by the next one:

1. **Queue predictions.** An ROI with slices that have no current consensus yet gets one
   prediction batch of the promoted version (a worker runs it: the daemon has no deep-learning
   stack). A failed batch is not queued again by itself: that needs an operator's look.
2. **Select.** Of a succeeded batch's slices that still have no consensus and were never sent, the
   ``budget_per_round`` most uncertain (the TAP axes disagree most: that is where volunteers teach
   the model most) and a random monitoring sample of the rest (so the model's real-world quality
   is measured without the bias of looking only where it is unsure). The monitoring sample is
   ``monitoring_slices`` per model version, spread over its ROIs' batches: the guard judges a
   version, not an ROI, and needs a few slices whatever the round's size. Seeded by the batch id,
   so a rerun chooses the same; recorded on the slice rows in one transaction.
3. **Build and upload.** One correction subject per selected slice (:mod:`.correction_subjects`),
   into a subject set named after the model version and linked to the correction workflow, through
   the idempotent upload (rows committed first, with their slice's link, then the POSTs). ``#priority``
   is the serving rank (1 first: the sandbox and Panoptes serve the lowest first), monitoring slices
   spread evenly among the uncertain ones. With Caesar data fetching the outline then becomes the
   subject's ``machineLearnt`` marks; a subject whose marks are not pushed yet (a crash, a dead
   Caesar) is pushed by the next run. Each monitoring slice is also uploaded as an ordinary raw
   subject, the same flipbook, into a set named after the version (``monitoring <version>``) and
   linked to the tracing workflow, through the same idempotent upload: other volunteers trace it
   from scratch, and its volunteer consensus arrives through the normal aggregate path.
4. **Measure corrections.** Once a sent slice has a current corrected consensus, the Dice between
   the prediction and that consensus is the model's real-world quality: stored on the slice row,
   measured again when the consensus changes. On a monitoring slice traced too, the Dice between
   its corrected and traced consensus checks the correction; a version whose corrections disagree
   with tracing has them held from training (:mod:`.monitoring`).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from PIL import Image
from sqlmodel import Session, col, select

from etchacell_loop.config import CorrectionSettings, Settings
from etchacell_loop.db.models import (
    ConsensusKind,
    ConsensusResult,
    Event,
    EventLevel,
    ModelVersion,
    PredictionBatch,
    Project,
    RunStatus,
    SelectionReason,
    SlicePrediction,
    Subject,
    SubjectKind,
    SubjectSet,
    UploadState,
    Workflow,
)
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop.batches import queue_prediction_batch
from etchacell_loop.loop.correction_signal import raise_regression_signal
from etchacell_loop.loop.correction_subjects import (
    OUTLINE_KEY,
    OUTLINE_MARKS,
    OUTLINE_OVERLAY,
    CorrectionSubjectError,
    RawSubject,
    SubjectGeometry,
    area_on_subject,
    build_overlay,
    correction_upload,
    monitoring_upload,
    overlay_uri,
)
from etchacell_loop.loop.machine_marks import envelope_marks
from etchacell_loop.loop.monitoring import measure_monitoring, monitoring_agreement, raise_hold_signals
from etchacell_loop.loop.prediction_job import PredictionReadError, predicted_area, read_geometry
from etchacell_loop.model.registry import promoted_version
from etchacell_loop.panoptes.caesar import connect_caesar
from etchacell_loop.panoptes.errors import PanoptesAuthError, PanoptesError, PanoptesUnavailable
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.panoptes.upload import SubjectUpload, upload_subjects
from etchacell_loop.stored_files import resolve_uri

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
CORRECTED_EVENT = "publish.corrected"
BAD_DATA = (CorrectionSubjectError, PredictionReadError, OSError, ValueError)
Mask = NDArray[np.bool_]


@dataclass
class PublishJobResult:
    """What one publish run did; ``median_correction_dice``: per model version, over all its
    measured slices so far; ``median_monitoring_dice``: the same for corrected against traced
    consensus on its monitoring slices; ``corrections_held``: the guard's new holds, one line each."""

    batches_queued: int = 0
    selected: int = 0
    uploaded: int = 0
    monitoring_uploaded: int = 0
    marks_pushed: int = 0
    corrections_measured: int = 0
    monitoring_measured: int = 0
    median_correction_dice: dict[str, float] = field(default_factory=dict)
    median_monitoring_dice: dict[str, float] = field(default_factory=dict)
    correction_regression: str | None = None  # the promoted version's predictions changed more than before
    corrections_held: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run_publish(
    session_factory: SessionFactory, gateway: PanoptesGateway | None, settings: Settings
) -> PublishJobResult:
    """The daemon's *publish* job (see the module docstring); safe to run at any time, and again."""
    result = PublishJobResult()
    with session_factory() as session:
        promoted = promoted_version(session)
        version_id = promoted.id if promoted is not None else None
    if version_id is not None:
        result.batches_queued = queue_predictions(session_factory, version_id, settings.correction)
        result.selected = select_for_correction(session_factory, version_id, settings)
    if gateway is None:
        log.info("publish: no connection to Panoptes, nothing uploaded or pushed")
    else:
        result.uploaded = upload_corrections(session_factory, gateway, settings)
        result.monitoring_uploaded = upload_monitoring(session_factory, gateway, settings)
        result.marks_pushed = push_machine_marks(session_factory, gateway, settings)
    result.corrections_measured = measure_corrections(session_factory, settings.data_dir)
    result.monitoring_measured = measure_monitoring(session_factory, settings.data_dir)
    with session_factory() as session:
        result.median_correction_dice = median_correction_dice(session)
        result.median_monitoring_dice = {
            found.version: found.median for found in monitoring_agreement(session).values() if found.median is not None
        }
        result.correction_regression = raise_regression_signal(session)
        result.corrections_held = raise_hold_signals(session, settings.correction)
        session.commit()
    for message in filter(None, [result.correction_regression, *result.corrections_held]):
        log.warning("publish: %s", message)
    return result


# --- 1. queue predictions -------------------------------------------------------------------------


def tap_settings(correction: CorrectionSettings) -> dict[str, Any]:
    """The prediction batch's TAP parameters from the ``correction`` section (unset: TAP's defaults).

    An unset ``tap_batch_size`` is left out, so the batch is sized where it runs: the worker that
    claims it knows whether it has an accelerator (:func:`etchacell_loop.model.tap.resolve_batch_size`),
    the daemon that queues it does not."""
    params: dict[str, Any] = {"keep_largest": correction.keep_largest}
    if correction.min_component_voxels is not None:
        params["min_component_voxels"] = correction.min_component_voxels
    if correction.tap_batch_size is not None:
        params["batch_size"] = correction.tap_batch_size
    return params


def queue_predictions(session_factory: SessionFactory, version_id: int, correction: CorrectionSettings) -> int:
    """Queue a batch of the version for every ROI with open slices and no batch of it yet, with the
    configured TAP rule and clean-up."""
    queued = 0
    with session_factory() as session:
        predicted = set(
            session.exec(select(PredictionBatch.roi_id).where(PredictionBatch.model_version_id == version_id))
        )
        for roi_id in sorted(set(open_slices(session)) - predicted):
            batch = queue_prediction_batch(session, version_id, roi_id, correction.tap_rule, tap_settings(correction))
            session.add(
                Event(
                    kind="publish.batch_queued",
                    message=f"prediction batch {batch.id} queued for ROI {roi_id}: slices without consensus",
                    model_version_id=version_id,
                    payload={"prediction_batch_id": batch.id, "roi_id": roi_id},
                )
            )
            session.commit()
            queued += 1
    return queued


def open_slices(session: Session) -> dict[int, set[int]]:
    """ROI id → slices with a raw subject and no current consensus (of either kind)."""
    raw = session.exec(
        select(Subject.roi_id, Subject.slice_index).where(Subject.kind == SubjectKind.RAW).distinct()
    ).all()
    done = set(
        session.exec(
            select(ConsensusResult.roi_id, ConsensusResult.slice_index).where(col(ConsensusResult.is_current))
        ).all()
    )
    found: dict[int, set[int]] = defaultdict(set)
    for roi_id, z in raw:
        if (roi_id, z) not in done:
            found[roi_id].add(z)
    return dict(found)


# --- 2. select --------------------------------------------------------------------------------------


def monitoring_share(still_needed: int, batches_left: int) -> int:
    """This batch's part of its version's monitoring sample: what the version still needs, spread
    evenly over its batches not selected from yet (this one included), so that the sample covers
    several ROIs rather than the first to finish predicting."""
    if still_needed <= 0:
        return 0
    return math.ceil(still_needed / max(batches_left, 1))


def choose_slices(
    uncertainty: Mapping[int, float], budget: int, monitoring: int, seed: int
) -> dict[int, SelectionReason]:
    """Slice → why it is sent: the ``budget`` most uncertain, then a seeded random sample of
    ``monitoring`` of the rest (fewer when fewer are left)."""
    ranked = sorted(uncertainty, key=lambda z: (-uncertainty[z], z))
    chosen = {z: SelectionReason.UNCERTAIN for z in ranked[:budget]}
    rest = sorted(ranked[budget:])
    size = min(max(monitoring, 0), len(rest))
    picks = np.random.default_rng(seed).choice(len(rest), size=size, replace=False)
    chosen.update({rest[int(k)]: SelectionReason.MONITORING for k in picks})
    return chosen


def serving_ranks(uncertainty: Mapping[int, float], selection: Mapping[int, SelectionReason]) -> dict[int, float]:
    """Slice → ``#priority`` (1 is served first): most uncertain first, the monitoring slices spread
    evenly among them so that they are classified as the round goes, not only at its end."""
    uncertain = sorted(
        (z for z, why in selection.items() if why is SelectionReason.UNCERTAIN), key=lambda z: (-uncertainty[z], z)
    )
    monitoring = sorted(z for z, why in selection.items() if why is SelectionReason.MONITORING)
    order: list[int] = list(uncertain)
    for index, z in enumerate(monitoring):
        position = round((index + 1) * len(uncertain) / (len(monitoring) + 1)) + index
        order.insert(position, z)
    return {z: float(rank) for rank, z in enumerate(order, start=1)}


def select_for_correction(session_factory: SessionFactory, version_id: int, settings: Settings) -> int:
    """Record the selection of every succeeded batch of the version not selected from yet."""
    with session_factory() as session:
        batch_ids = session.exec(
            select(PredictionBatch.id)
            .where(PredictionBatch.model_version_id == version_id, PredictionBatch.status == RunStatus.SUCCEEDED)
            .order_by(col(PredictionBatch.id))
        ).all()
    return sum(_select_batch(session_factory, batch_id, settings) for batch_id in batch_ids if batch_id is not None)


def _select_batch(session_factory: SessionFactory, batch_id: int, settings: Settings) -> int:
    with session_factory() as session:
        rows = session.exec(select(SlicePrediction).where(SlicePrediction.batch_id == batch_id)).all()
        if not rows or any(row.selection is not SelectionReason.NOT_SELECTED for row in rows):
            return 0
        roi_id = rows[0].roi_id
        sent = set(
            session.exec(
                select(SlicePrediction.slice_index).where(
                    SlicePrediction.roi_id == roi_id, SlicePrediction.selection != SelectionReason.NOT_SELECTED
                )
            ).all()
        )
        still_open = open_slices(session).get(roi_id, set()) - sent
        candidates = {row.slice_index: row.uncertainty for row in rows if row.slice_index in still_open}
        version_id = _batch_version(session, batch_id)
        monitoring = monitoring_share(
            settings.correction.monitoring_slices - _monitoring_chosen(session, version_id),
            _batches_not_selected(session, version_id),
        )
        chosen = choose_slices(candidates, settings.correction.budget_per_round, monitoring, seed=batch_id)
        if not chosen:
            return 0
        for row in rows:
            if row.slice_index in chosen:
                row.selection = chosen[row.slice_index]
                session.add(row)
        counts = {why.value: sum(1 for v in chosen.values() if v is why) for why in set(chosen.values())}
        session.add(
            Event(
                kind="publish.selected",
                message=f"prediction batch {batch_id}: {len(chosen)} of {len(candidates)} open slices chosen",
                model_version_id=version_id,
                payload={"prediction_batch_id": batch_id, "roi_id": roi_id, "candidates": len(candidates), **counts},
            )
        )
        session.commit()
    return len(chosen)


def _batch_version(session: Session, batch_id: int) -> int | None:
    batch = session.get(PredictionBatch, batch_id)
    return batch.model_version_id if batch is not None else None


def _monitoring_chosen(session: Session, version_id: int | None) -> int:
    """How many monitoring slices the version's batches have had chosen so far."""
    statement = (
        select(sa.func.count())
        .select_from(SlicePrediction)
        .join(PredictionBatch, col(PredictionBatch.id) == col(SlicePrediction.batch_id))
        .where(
            PredictionBatch.model_version_id == version_id,
            SlicePrediction.selection == SelectionReason.MONITORING,
        )
    )
    return int(session.exec(statement).one())


def _batches_not_selected(session: Session, version_id: int | None) -> int:
    """The version's batches, failed ones aside, that no slice has been chosen from yet: the ones a
    monitoring sample still to be chosen is spread over."""
    batches = session.exec(
        select(PredictionBatch.id).where(
            PredictionBatch.model_version_id == version_id, PredictionBatch.status != RunStatus.FAILED
        )
    ).all()
    selected = set(
        session.exec(
            select(SlicePrediction.batch_id)
            .where(
                col(SlicePrediction.batch_id).in_(batches),
                SlicePrediction.selection != SelectionReason.NOT_SELECTED,
            )
            .distinct()
        ).all()
    )
    return sum(1 for batch in batches if batch not in selected)


# --- 3. build and upload ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Round:
    """One batch's selected slices still to be brought onto Panoptes."""

    batch: PredictionBatch
    version: ModelVersion
    pending: tuple[SlicePrediction, ...]
    ranks: Mapping[int, float]


def upload_corrections(session_factory: SessionFactory, gateway: PanoptesGateway, settings: Settings) -> int:
    """Build and upload the subjects of every selected slice not yet linked on Panoptes."""
    rounds = _pending_rounds(session_factory)
    if not rounds:
        return 0
    workflow = _workflow(session_factory, settings.panoptes.correction_workflow_id)
    if workflow is None:
        _event(session_factory, "publish.upload_skipped", "no correction workflow is registered "
               "(set panoptes.correction_workflow_id and run ingest)", EventLevel.WARNING)  # fmt: skip
        return 0
    caesar = settings.correction.mode == "caesar" and workflow.caesar_data_fetching
    outline = OUTLINE_MARKS if caesar else OUTLINE_OVERLAY
    return _upload_each(
        session_factory,
        rounds,
        lambda work: _upload_round(session_factory, gateway, settings.data_dir, workflow, work, outline),
    )


class _VersionWork(Protocol):
    """A version's subjects still to upload: a correction round or its monitoring slices."""

    @property
    def version(self) -> ModelVersion: ...


_Work = TypeVar("_Work", bound=_VersionWork)


def _upload_each(
    session_factory: SessionFactory, rounds: Sequence[_Work], upload: Callable[[_Work], int], what: str = ""
) -> int:
    """``upload`` each version's work in turn, the subjects linked in all. A Panoptes failure is
    logged and recorded as a ``publish.upload_failed`` warning against its version (``what`` names
    the upload in both: empty for corrections, ``monitoring``), and the other versions still go: the
    failed one's rows are committed, so the next run resumes it without duplicates."""
    linked = 0
    for work in rounds:
        try:
            linked += upload(work)
        except PanoptesError as exc:
            version = work.version
            log.warning("publish: %supload for model %s failed: %s", f"{what} " if what else "", version.version, exc)
            message = f"{what} of model {version.version}: {exc}" if what else f"model {version.version}: {exc}"
            _event(session_factory, "publish.upload_failed", message, EventLevel.WARNING, version.id)
    return linked


def _pending_rounds(session_factory: SessionFactory) -> list[_Round]:
    with session_factory() as session:
        statement = (
            select(SlicePrediction, Subject)
            .outerjoin(Subject, col(Subject.id) == col(SlicePrediction.subject_id))
            .where(SlicePrediction.selection != SelectionReason.NOT_SELECTED)
            .order_by(col(SlicePrediction.batch_id), col(SlicePrediction.slice_index))
        )
        by_batch: dict[int, list[SlicePrediction]] = defaultdict(list)
        pending: set[int] = set()
        for row, subject in session.exec(statement).all():
            by_batch[row.batch_id].append(row)
            if subject is None or subject.upload_state is not UploadState.LINKED:
                pending.add(row.id or 0)
        rounds = []
        for batch_id, rows in by_batch.items():
            todo = tuple(row for row in rows if row.id in pending)
            batch = session.get(PredictionBatch, batch_id)
            version = session.get(ModelVersion, batch.model_version_id) if batch is not None else None
            if todo and batch is not None and version is not None:
                uncertainty = {row.slice_index: row.uncertainty for row in rows}
                ranks = serving_ranks(uncertainty, {row.slice_index: row.selection for row in rows})
                rounds.append(_Round(batch, version, todo, ranks))
        return rounds


def _workflow(session_factory: SessionFactory, workflow_id: int | None) -> Workflow | None:
    """The registered workflow of a configured Panoptes id (None: not configured, or not registered)."""
    if workflow_id is None:
        return None
    with session_factory() as session:
        return session.exec(select(Workflow).where(Workflow.panoptes_id == workflow_id)).first()


def _upload_round(
    session_factory: SessionFactory,
    gateway: PanoptesGateway,
    data_dir: Path,
    workflow: Workflow,
    work: _Round,
    outline: str,
) -> int:
    name = subject_set_name(work.version.version)
    set_row = _subject_set(session_factory, gateway, workflow, name, SubjectKind.PREDICTION)
    uploads = _build_uploads(session_factory, data_dir, work, outline)
    if not uploads:
        return 0
    _register(session_factory, set_row, work, uploads)
    result = upload_subjects(session_factory, gateway, set_row, [upload for _, upload in uploads])
    if result.linked:
        message = f"{result.linked} correction subjects of model {work.version.version} in {set_row.display_name!r}"
        payload = {"prediction_batch_id": work.batch.id, "linked": result.linked, "failed": result.failed}
        _event(session_factory, "publish.uploaded", message, model_version_id=work.version.id, payload=payload)
    return result.linked


def subject_set_name(version: str) -> str:
    return f"predictions {version}"


def monitoring_set_name(version: str) -> str:
    return f"monitoring {version}"


def _subject_set(
    session_factory: SessionFactory, gateway: PanoptesGateway, workflow: Workflow, name: str, kind: SubjectKind
) -> SubjectSet:
    """A version's subject set, on Panoptes (linked to ``workflow``) and as a row."""
    with session_factory() as session:
        project = session.get(Project, workflow.project_id)
        assert project is not None
        query = select(SubjectSet).where(SubjectSet.project_id == project.id, SubjectSet.display_name == name)
        row = session.exec(query).first()
        if row is None or row.panoptes_id is None:
            panoptes_id = gateway.ensure_subject_set(project.panoptes_id, name, workflow_id=workflow.panoptes_id)
            row = row or SubjectSet(project_id=workflow.project_id, display_name=name, kind=kind)
            row.panoptes_id, row.workflow_id = panoptes_id, workflow.id
            session.add(row)
            session.commit()
        return row


def _build_uploads(
    session_factory: SessionFactory, data_dir: Path, work: _Round, outline: str
) -> list[tuple[SlicePrediction, SubjectUpload]]:
    """The uploads of the round's pending slices; a slice that cannot be shown is reported."""
    built = []
    with session_factory() as session:
        for row in work.pending:
            existing = session.get(Subject, row.subject_id) if row.subject_id is not None else None
            mode = str(existing.panoptes_metadata.get(OUTLINE_KEY, outline)) if existing is not None else outline
            try:
                raw = _raw_subject(session, data_dir, row.roi_id, row.slice_index)
                overlay = _overlay(data_dir, work, raw) if mode == OUTLINE_OVERLAY else None
                upload = correction_upload(
                    raw, work.version.version, work.version.id or 0, work.ranks[row.slice_index], mode, overlay
                )
            except BAD_DATA as exc:
                log.warning("publish: slice %d of ROI %d not sent: %s", row.slice_index, row.roi_id, exc)
                session.add(_skip_event(work, row, str(exc)))
                session.commit()
                continue
            built.append((row, upload))
    return built


def _raw_subject(session: Session, data_dir: Path, roi_id: int, slice_index: int) -> RawSubject:
    raw = session.exec(
        select(Subject)
        .where(Subject.roi_id == roi_id, Subject.slice_index == slice_index, Subject.kind == SubjectKind.RAW)
        .order_by(col(Subject.id))
    ).first()
    if raw is None or not raw.local_dir:
        raise CorrectionSubjectError(f"ROI {roi_id} slice {slice_index} has no raw subject with frame files")
    return RawSubject(
        upload_key=raw.upload_key, roi_id=roi_id, slice_index=slice_index, frames=tuple(raw.frames),
        target_frame=raw.target_frame, frame_dir=resolve_uri(raw.local_dir, data_dir),
        metadata=dict(raw.panoptes_metadata),
    )  # fmt: skip


def _overlay(data_dir: Path, work: _Round, raw: RawSubject) -> Path:
    target = raw.frame_files()[raw.target_frame]
    with Image.open(target) as image:
        size_wh = image.size
    geometry = SubjectGeometry.from_metadata(raw.metadata)
    area = predicted_on_subject(data_dir, work.batch, raw.slice_index, geometry, size_wh)
    out = data_dir / overlay_uri(work.version.version, raw.roi_id, raw.slice_index)
    return build_overlay(target, area, out)


def predicted_on_subject(
    data_dir: Path,
    batch: PredictionBatch,
    slice_index: int,
    geometry: SubjectGeometry,
    size_wh: tuple[int, int] | None = None,
) -> Mask:
    """The batch's predicted nucleus area of a slice, at a subject's pixels."""
    if batch.output_uri is None:
        raise PredictionReadError(f"prediction batch {batch.id} has no prediction yet")
    region = read_geometry(resolve_uri(batch.output_uri, data_dir)).region
    area = predicted_area(data_dir, batch, slice_index)
    return area_on_subject(area, (region.x, region.y), geometry, size_wh)


def _register(
    session_factory: SessionFactory,
    set_row: SubjectSet,
    work: _Round,
    uploads: Sequence[tuple[SlicePrediction, SubjectUpload]],
) -> None:
    """The subject rows and their slices' links, in one transaction, before anything is posted."""
    with session_factory() as session:
        for row, upload in uploads:
            if row.subject_id is not None:
                continue
            subject = session.exec(select(Subject).where(Subject.upload_key == upload.upload_key)).first()
            if subject is None:
                subject = Subject(
                    upload_key=upload.upload_key, roi_id=upload.roi_id, subject_set_id=set_row.id,
                    slice_index=upload.slice_index, frames=list(upload.frames), target_frame=upload.target_frame,
                    kind=SubjectKind.PREDICTION, model_version_id=work.version.id, prediction_batch_id=work.batch.id,
                    local_dir=str(upload.files[0].path.parent.resolve()), panoptes_metadata=upload.panoptes_metadata(),
                    priority=upload.priority,
                )  # fmt: skip
                session.add(subject)
                session.flush()
            session.connection().execute(
                sa.update(SlicePrediction).where(col(SlicePrediction.id) == row.id).values(subject_id=subject.id)
            )
            row.subject_id = subject.id
        session.commit()


def _skip_event(work: _Round, row: SlicePrediction, reason: str) -> Event:
    return Event(
        level=EventLevel.WARNING,
        kind="publish.skipped",
        message=f"ROI {row.roi_id} slice {row.slice_index} not sent for correction: {reason}",
        model_version_id=work.version.id,
        payload={"prediction_batch_id": work.batch.id, "slice_prediction_id": row.id, "reason": reason},
    )


# --- 3b. monitoring subjects: the same slices, traced from scratch ----------------------------------


@dataclass(frozen=True)
class _Monitoring:
    """One version's monitoring slices still to be brought onto Panoptes as raw tracing subjects."""

    version: ModelVersion
    pending: tuple[SlicePrediction, ...]


def upload_monitoring(session_factory: SessionFactory, gateway: PanoptesGateway, settings: Settings) -> int:
    """Upload the raw tracing subject of every monitoring slice not yet linked on Panoptes."""
    rounds = _pending_monitoring(session_factory)
    if not rounds:
        return 0
    workflow = _workflow(session_factory, settings.panoptes.segmentation_workflow_id)
    if workflow is None:
        _event(session_factory, "publish.monitoring_skipped", "monitoring slices not sent for tracing: no tracing "
               "workflow is registered (set panoptes.segmentation_workflow_id and run ingest)",
               EventLevel.WARNING)  # fmt: skip
        return 0
    return _upload_each(
        session_factory,
        rounds,
        lambda work: _upload_monitoring_round(session_factory, gateway, settings.data_dir, workflow, work),
        "monitoring",
    )


def _pending_monitoring(session_factory: SessionFactory) -> list[_Monitoring]:
    """Per version, its monitoring slices whose raw tracing subject is missing or not linked yet."""
    with session_factory() as session:
        statement = (
            select(SlicePrediction, ModelVersion, Subject)
            .join(PredictionBatch, col(PredictionBatch.id) == col(SlicePrediction.batch_id))
            .join(ModelVersion, col(ModelVersion.id) == col(PredictionBatch.model_version_id))
            .outerjoin(Subject, col(Subject.id) == col(SlicePrediction.monitoring_subject_id))
            .where(SlicePrediction.selection == SelectionReason.MONITORING)
            .order_by(col(ModelVersion.id), col(SlicePrediction.id))
        )
        versions: dict[int, ModelVersion] = {}
        pending: dict[int, list[SlicePrediction]] = defaultdict(list)
        for row, version, subject in session.exec(statement).all():
            if subject is None or subject.upload_state is not UploadState.LINKED:
                versions[version.id or 0] = version
                pending[version.id or 0].append(row)
        return [_Monitoring(versions[vid], tuple(rows)) for vid, rows in pending.items()]


def _upload_monitoring_round(
    session_factory: SessionFactory, gateway: PanoptesGateway, data_dir: Path, workflow: Workflow, work: _Monitoring
) -> int:
    """Rows first (each slice linked to its monitoring subject, in one transaction), then the POSTs."""
    name = monitoring_set_name(work.version.version)
    set_row = _subject_set(session_factory, gateway, workflow, name, SubjectKind.RAW)
    uploads = _build_monitoring_uploads(session_factory, data_dir, work)
    if not uploads:
        return 0
    _register_monitoring(session_factory, set_row, uploads)
    result = upload_subjects(session_factory, gateway, set_row, [upload for _, upload in uploads])
    if result.linked:
        message = f"{result.linked} monitoring subjects of model {work.version.version} in {name!r}, to trace"
        payload = {"linked": result.linked, "failed": result.failed}
        _event(session_factory, "publish.monitoring_uploaded", message, model_version_id=work.version.id,
               payload=payload)  # fmt: skip
    return result.linked


def _build_monitoring_uploads(
    session_factory: SessionFactory, data_dir: Path, work: _Monitoring
) -> list[tuple[SlicePrediction, SubjectUpload]]:
    """The raw tracing subjects of the version's pending monitoring slices; a slice without frame
    files is reported and left out."""
    built = []
    with session_factory() as session:
        for row in work.pending:
            try:
                upload = monitoring_upload(_raw_subject(session, data_dir, row.roi_id, row.slice_index),
                                           work.version.version)  # fmt: skip
            except BAD_DATA as exc:
                log.warning("publish: slice %d of ROI %d not sent for tracing: %s", row.slice_index, row.roi_id, exc)
                session.add(
                    Event(
                        level=EventLevel.WARNING,
                        kind="publish.monitoring_skipped",
                        message=f"ROI {row.roi_id} slice {row.slice_index} not sent for tracing: {exc}",
                        model_version_id=work.version.id,
                        payload={"slice_prediction_id": row.id, "reason": str(exc)},
                    )
                )
                session.commit()
                continue
            built.append((row, upload))
    return built


def _register_monitoring(
    session_factory: SessionFactory, set_row: SubjectSet, uploads: Sequence[tuple[SlicePrediction, SubjectUpload]]
) -> None:
    """The monitoring subject rows and their slices' links, in one transaction, before any POST."""
    with session_factory() as session:
        for row, upload in uploads:
            if row.monitoring_subject_id is not None:
                continue
            subject = session.exec(select(Subject).where(Subject.upload_key == upload.upload_key)).first()
            if subject is None:
                subject = Subject(
                    upload_key=upload.upload_key, roi_id=upload.roi_id, subject_set_id=set_row.id,
                    slice_index=upload.slice_index, frames=list(upload.frames), target_frame=upload.target_frame,
                    kind=SubjectKind.RAW, local_dir=str(upload.files[0].path.parent.resolve()),
                    panoptes_metadata=upload.panoptes_metadata(),
                )  # fmt: skip
                session.add(subject)
                session.flush()
            session.connection().execute(
                sa.update(SlicePrediction)
                .where(col(SlicePrediction.id) == row.id)
                .values(monitoring_subject_id=subject.id)
            )
            row.monitoring_subject_id = subject.id
        session.commit()


# --- 3c. machine marks ------------------------------------------------------------------------------


def push_machine_marks(session_factory: SessionFactory, gateway: PanoptesGateway, settings: Settings) -> int:
    """Push the outline of every linked ``marks`` subject whose reduction is not on Caesar yet."""
    workflow_id = settings.panoptes.correction_workflow_id
    with session_factory() as session:
        waiting = [
            (subject, session.get(PredictionBatch, subject.prediction_batch_id))
            for subject in session.exec(
                select(Subject).where(
                    Subject.kind == SubjectKind.PREDICTION,
                    Subject.upload_state == UploadState.LINKED,
                    col(Subject.machine_marks_pushed_at).is_(None),
                    col(Subject.prediction_batch_id).is_not(None),
                )
            ).all()
            if subject.panoptes_metadata.get(OUTLINE_KEY) == OUTLINE_MARKS
        ]
    if not waiting or workflow_id is None:
        return 0
    pushed = 0
    with connect_caesar(gateway, settings.panoptes) as caesar:
        for subject, batch in waiting:
            assert subject.panoptes_id is not None and batch is not None
            try:
                geometry = SubjectGeometry.from_metadata(subject.panoptes_metadata)
                area = predicted_on_subject(settings.data_dir, batch, subject.slice_index, geometry)
                marks = envelope_marks(area, frame=subject.target_frame, subject_id=subject.panoptes_id)
                caesar.push_reduction(workflow_id, subject.panoptes_id, marks)
            except (PanoptesError, *BAD_DATA) as exc:
                log.warning("publish: marks of subject %d not pushed: %s", subject.panoptes_id, exc)
                _event(session_factory, "publish.push_failed", f"subject {subject.panoptes_id}: {exc}",
                       EventLevel.WARNING, subject.model_version_id, subject_id=subject.id)  # fmt: skip
                if isinstance(exc, PanoptesUnavailable | PanoptesAuthError):
                    break  # Caesar is down or refuses us: the others wait for the next run, not for retries
                continue
            _marks_pushed(session_factory, subject, len(marks), workflow_id)
            pushed += 1
    return pushed


def _marks_pushed(session_factory: SessionFactory, subject: Subject, n_marks: int, workflow_id: int) -> None:
    with session_factory() as session:
        session.connection().execute(
            sa.update(Subject).where(col(Subject.id) == subject.id).values(machine_marks_pushed_at=utcnow())
        )
        session.add(
            Event(
                kind="publish.marks_pushed",
                message=f"subject {subject.panoptes_id}: {n_marks} machine marks pushed to Caesar",
                subject_id=subject.id,
                model_version_id=subject.model_version_id,
                payload={"marks": n_marks, "workflow": workflow_id, "panoptes_id": subject.panoptes_id},
            )
        )
        session.commit()


# --- 4. measure corrections -------------------------------------------------------------------------


def dice(a: Mask, b: Mask) -> float:
    """Dice of two masks; two empty masks agree fully."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def measure_corrections(session_factory: SessionFactory, data_dir: Path) -> int:
    """Dice between prediction and corrected consensus for every sent slice whose corrected
    consensus is new since it was last measured."""
    with session_factory() as session:
        rows = session.exec(
            select(SlicePrediction, ConsensusResult, Subject, PredictionBatch)
            .join(Subject, col(Subject.id) == col(SlicePrediction.subject_id))
            .join(PredictionBatch, col(PredictionBatch.id) == col(SlicePrediction.batch_id))
            .join(
                ConsensusResult,
                sa.and_(
                    col(ConsensusResult.roi_id) == col(SlicePrediction.roi_id),
                    col(ConsensusResult.slice_index) == col(SlicePrediction.slice_index),
                    col(ConsensusResult.kind) == ConsensusKind.CORRECTED,
                    col(ConsensusResult.is_current),
                ),
            )
            .where(col(ConsensusResult.mask_uri).is_not(None))
        ).all()
        measured = _last_measured(session)
    count = 0
    for prediction, consensus, subject, batch in rows:
        last = measured.get(subject.id or 0)
        if prediction.correction_dice is not None and last is not None and last >= consensus.created_at:
            continue
        try:
            value = _correction_dice(data_dir, batch, subject, consensus)
        except BAD_DATA as exc:
            log.warning("publish: correction of subject %s not measured: %s", subject.id, exc)
            continue
        _record_dice(session_factory, prediction, subject, consensus, value)
        count += 1
    return count


def _last_measured(session: Session) -> dict[int, datetime]:
    statement = (
        select(Event.subject_id, sa.func.max(Event.created_at))
        .where(Event.kind == CORRECTED_EVENT, col(Event.subject_id).is_not(None))
        .group_by(col(Event.subject_id))
    )
    return {subject_id: moment for subject_id, moment in session.exec(statement).all() if subject_id is not None}


def _correction_dice(data_dir: Path, batch: PredictionBatch, subject: Subject, consensus: ConsensusResult) -> float:
    assert consensus.mask_uri is not None
    with Image.open(resolve_uri(consensus.mask_uri, data_dir)) as image:
        corrected = np.asarray(image.convert("L")) > 127
    geometry = SubjectGeometry.from_metadata(subject.panoptes_metadata)
    size_wh = (corrected.shape[1], corrected.shape[0])
    return dice(predicted_on_subject(data_dir, batch, subject.slice_index, geometry, size_wh), corrected)


def _record_dice(
    session_factory: SessionFactory,
    prediction: SlicePrediction,
    subject: Subject,
    consensus: ConsensusResult,
    value: float,
) -> None:
    with session_factory() as session:
        session.connection().execute(
            sa.update(SlicePrediction).where(col(SlicePrediction.id) == prediction.id).values(correction_dice=value)
        )
        session.add(
            Event(
                kind=CORRECTED_EVENT,
                message=f"ROI {prediction.roi_id} slice {prediction.slice_index}: volunteers' correction has "
                f"Dice {value:.3f} with the prediction",
                subject_id=subject.id,
                model_version_id=subject.model_version_id,
                payload={"dice": value, "slice_prediction_id": prediction.id, "consensus_result_id": consensus.id},
            )
        )
        session.commit()


def median_correction_dice(session: Session) -> dict[str, float]:
    """Model version name → median Dice between its predictions and their corrections, so far."""
    statement = (
        select(ModelVersion.version, SlicePrediction.correction_dice)
        .join(PredictionBatch, col(PredictionBatch.model_version_id) == col(ModelVersion.id))
        .join(SlicePrediction, col(SlicePrediction.batch_id) == col(PredictionBatch.id))
        .where(col(SlicePrediction.correction_dice).is_not(None))
    )
    values: dict[str, list[float]] = defaultdict(list)
    for version, value in session.exec(statement).all():
        if value is not None:
            values[version].append(value)
    return {version: float(statistics.median(found)) for version, found in sorted(values.items())}


def _event(
    session_factory: SessionFactory,
    kind: str,
    message: str,
    level: EventLevel = EventLevel.INFO,
    model_version_id: int | None = None,
    *,
    subject_id: int | None = None,
    payload: Mapping[str, Any] | None = None,
) -> None:
    with session_factory() as session:
        session.add(
            Event(
                level=level,
                kind=kind,
                message=message,
                model_version_id=model_version_id,
                subject_id=subject_id,
                payload=dict(payload or {}),
            )
        )
        session.commit()
