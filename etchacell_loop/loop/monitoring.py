"""Monitoring that checks correction against tracing, and the guard that keeps unchecked corrections
out of training.

Why: the correction rule of one slice (:mod:`etchacell_loop.cria.correction`) cannot see a crowd that
accepts *everything*: when every corrector keeps a wrong outline, nothing on that slice contradicts
it. So the publish job sends a few random slices of each version (``correction.monitoring_slices``)
to the tracing workflow as well, as ordinary raw subjects that other volunteers trace from scratch,
and the two answers are compared where both exist:

1. **Measure.** For every monitoring slice whose correction subject and traced subject have both
   settled (the stopping rule retired them: a first tracing or two is not the crowd's answer) and
   whose corrected and traced (volunteer) consensus are both current and have masks (whatever the
   correction's verdict), the Dice between the two masks (same crop, same pixels) is stored on the
   slice row (``slice_prediction.monitoring_dice``) and measured again when either consensus
   changes; a ``publish.monitored`` event records which pair it compared.
2. **Guard.** A version's monitoring agreement is the median of its monitoring slices' Dice. Once at
   least ``correction.min_monitoring_slices`` are measured and the median is below
   ``correction.min_monitoring_dice``, the version's corrections are *held*: a warning event
   (``model.corrections_held``) says so and why, once per version, and the training set leaves its
   corrected consensus out (a slice traced too keeps its traced consensus). The hold stands, even if
   later slices lift the median, until an operator decides (``etchacell model trust-corrections``): a
   ``model.corrections_trusted`` event releases it, ``model.corrections_trust_revoked`` holds the
   corrections again (of any version, held by the guard or not). The newest of these events per
   version is its state; nothing else is stored. Until enough monitoring slices are measured the
   version is not judged and its corrections are used.
3. **Truth, in simulation.** Where the volume has truth labels, each consensus' Dice with the truth
   (:func:`monitoring_truth`): which of the two was right.

Library functions take a Session and do not commit, except :func:`measure_monitoring`, which, like
the publish job's other steps, commits each slice it measures.
"""

from __future__ import annotations

import enum
import logging
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from etchacell_loop.config import CorrectionSettings
from etchacell_loop.cria.consensus import dice
from etchacell_loop.db.models import (
    SETTLED_STATES,
    ConsensusKind,
    ConsensusResult,
    Event,
    EventLevel,
    ModelVersion,
    PredictionBatch,
    Roi,
    SelectionReason,
    SlicePrediction,
    Subject,
    Volume,
)
from etchacell_loop.model.data import TrainingDataError, read_mask
from etchacell_loop.simulation.truth import TruthError, VolumeTruth, open_volume_truth, subject_crop, subject_truth
from etchacell_loop.stored_files import resolve_uri

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
Mask = NDArray[np.bool_]

MONITORED_EVENT = "publish.monitored"
HELD_EVENT = "model.corrections_held"
TRUSTED_EVENT = "model.corrections_trusted"
REVOKED_EVENT = "model.corrections_trust_revoked"
GUARD_EVENTS = (HELD_EVENT, TRUSTED_EVENT, REVOKED_EVENT)


class MonitoringError(ValueError):
    """A monitoring slice whose two masks cannot be compared; the message is one line."""


class GuardState(enum.StrEnum):
    """Whether a version's corrections may be training data."""

    USED = "used"  # nothing said: used (not judged yet, or judged and agreeing)
    HELD = "held"  # the guard held them: monitoring disagreed
    TRUSTED = "trusted"  # an operator released them
    REVOKED = "revoked"  # an operator held them

    @property
    def held(self) -> bool:
        return self in (GuardState.HELD, GuardState.REVOKED)


STATE_OF_EVENT = {HELD_EVENT: GuardState.HELD, TRUSTED_EVENT: GuardState.TRUSTED, REVOKED_EVENT: GuardState.REVOKED}


# --- 1. measure -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitoringPair:
    """A monitoring slice with both its current consensus: the corrected and the traced."""

    prediction: SlicePrediction
    version_id: int
    corrected: ConsensusResult
    traced: ConsensusResult

    @property
    def consensus_ids(self) -> tuple[int | None, int | None]:
        return self.corrected.id, self.traced.id


def monitoring_pairs(session: Session) -> list[MonitoringPair]:
    """Every monitoring slice whose correction subject and traced subject have both settled (the
    stopping rule retired them), with their current corrected and traced consensus, with masks.

    Why settled: the hold stands once made, and a consensus of the first one or two tracings is not
    what the volunteers say: in the demo, 10 s after the monitoring subjects went up, their first
    tracings gave a median Dice of 0.08 against the corrections, the version's corrections were held,
    and the same slices agreed at 0.97 once settled. Training counts settled consensus only; so does
    the check of what it trains on."""
    corrected, traced = aliased(ConsensusResult), aliased(ConsensusResult)
    correction_subject, traced_subject = aliased(Subject), aliased(Subject)

    def current(row: type[ConsensusResult], kind: ConsensusKind) -> sa.ColumnElement[bool]:
        return sa.and_(
            col(row.roi_id) == col(SlicePrediction.roi_id),
            col(row.slice_index) == col(SlicePrediction.slice_index),
            col(row.kind) == kind,
            col(row.is_current).is_(True),
            col(row.mask_uri).is_not(None),
        )

    statement = (
        select(SlicePrediction, PredictionBatch.model_version_id, corrected, traced)
        .join(PredictionBatch, col(PredictionBatch.id) == col(SlicePrediction.batch_id))
        .join(corrected, current(corrected, ConsensusKind.CORRECTED))
        .join(traced, current(traced, ConsensusKind.VOLUNTEER))
        .join(correction_subject, col(correction_subject.id) == col(SlicePrediction.subject_id))
        .join(traced_subject, col(traced_subject.id) == col(SlicePrediction.monitoring_subject_id))
        .where(
            col(SlicePrediction.selection) == SelectionReason.MONITORING,
            col(correction_subject.retirement_state).in_(list(SETTLED_STATES)),
            col(traced_subject.retirement_state).in_(list(SETTLED_STATES)),
        )
        .order_by(col(SlicePrediction.id))
    )
    return [MonitoringPair(row, version_id, c, t) for row, version_id, c, t in session.exec(statement).all()]


def measure_monitoring(session_factory: SessionFactory, data_dir: Path) -> int:
    """Store the Dice between corrected and traced consensus of every monitoring slice whose pair
    changed since it was last measured; each slice in its own transaction. How many were measured."""
    with session_factory() as session:
        pairs = monitoring_pairs(session)
        measured = _last_monitored(session)
    count = 0
    for pair in pairs:
        row = pair.prediction
        if row.monitoring_dice is not None and measured.get(row.id or 0) == pair.consensus_ids:
            continue
        try:
            value = consensus_dice(data_dir, pair.corrected, pair.traced)
        except MonitoringError as exc:
            log.warning("publish: monitoring slice %d of ROI %d not measured: %s", row.slice_index, row.roi_id, exc)
            continue
        _record_monitoring(session_factory, pair, value)
        count += 1
    return count


def consensus_dice(data_dir: Path, corrected: ConsensusResult, traced: ConsensusResult) -> float:
    """Dice between two consensus masks of one slice (both at the subject's pixels)."""
    first, second = consensus_mask(data_dir, corrected), consensus_mask(data_dir, traced)
    if first.shape != second.shape:
        raise MonitoringError(f"masks of consensus {corrected.id} {first.shape} and {traced.id} {second.shape} differ")
    return dice(first, second)


def consensus_mask(data_dir: Path, consensus: ConsensusResult) -> Mask:
    """A consensus row's area mask, or a :class:`MonitoringError` saying why not."""
    if not consensus.mask_uri:
        raise MonitoringError(f"consensus {consensus.id} has no mask")
    try:
        return read_mask(resolve_uri(consensus.mask_uri, data_dir))
    except TrainingDataError as exc:
        raise MonitoringError(str(exc)) from None


def _last_monitored(session: Session) -> dict[int, tuple[int | None, int | None]]:
    """Slice prediction id → the (corrected, traced) consensus ids its newest measurement compared."""
    statement = select(Event.payload).where(Event.kind == MONITORED_EVENT).order_by(col(Event.id))
    found: dict[int, tuple[int | None, int | None]] = {}
    for payload in session.exec(statement).all():
        try:
            found[int(payload["slice_prediction_id"])] = (payload.get("corrected_id"), payload.get("traced_id"))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def _record_monitoring(session_factory: SessionFactory, pair: MonitoringPair, value: float) -> None:
    row = pair.prediction
    with session_factory() as session:
        session.connection().execute(
            sa.update(SlicePrediction).where(col(SlicePrediction.id) == row.id).values(monitoring_dice=value)
        )
        session.add(
            Event(
                kind=MONITORED_EVENT,
                message=f"ROI {row.roi_id} slice {row.slice_index}: corrected and traced consensus agree with "
                f"Dice {value:.3f}",
                subject_id=row.monitoring_subject_id,
                model_version_id=pair.version_id,
                payload={
                    "dice": value,
                    "slice_prediction_id": row.id,
                    "corrected_id": pair.corrected.id,
                    "traced_id": pair.traced.id,
                },
            )
        )
        session.commit()


# --- 2. guard ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitoringAgreement:
    """A version's monitoring Dice so far, one per monitoring slice with both consensus."""

    version_id: int
    version: str
    dice: tuple[float, ...]

    @property
    def slices(self) -> int:
        return len(self.dice)

    @property
    def median(self) -> float | None:
        return float(statistics.median(self.dice)) if self.dice else None


def falls_below(agreement: MonitoringAgreement, correction: CorrectionSettings) -> bool:
    """The guard's rule: enough monitoring slices measured, and their median Dice below the threshold."""
    median = agreement.median
    return (
        agreement.slices >= correction.min_monitoring_slices
        and median is not None
        and median < correction.min_monitoring_dice
    )


def monitoring_agreement(session: Session) -> dict[int, MonitoringAgreement]:
    """Model version id → its measured monitoring slices' Dice."""
    statement = (
        select(ModelVersion.id, ModelVersion.version, SlicePrediction.monitoring_dice)
        .join(PredictionBatch, col(PredictionBatch.model_version_id) == col(ModelVersion.id))
        .join(SlicePrediction, col(SlicePrediction.batch_id) == col(PredictionBatch.id))
        .where(
            col(SlicePrediction.selection) == SelectionReason.MONITORING,
            col(SlicePrediction.monitoring_dice).is_not(None),
        )
        .order_by(col(SlicePrediction.id))
    )
    names: dict[int, str] = {}
    values: dict[int, list[float]] = defaultdict(list)
    for version_id, version, value in session.exec(statement).all():
        if version_id is not None and value is not None:
            names[version_id] = version
            values[version_id].append(float(value))
    return {vid: MonitoringAgreement(vid, names[vid], tuple(found)) for vid, found in values.items()}


def guard_states(session: Session) -> dict[int, GuardState]:
    """Model version id → its guard state, from the newest guard event (versions without one: used)."""
    statement = (
        select(Event.model_version_id, Event.kind)
        .where(col(Event.kind).in_(GUARD_EVENTS), col(Event.model_version_id).is_not(None))
        .order_by(col(Event.id))
    )
    states: dict[int, GuardState] = {}
    for version_id, kind in session.exec(statement).all():
        if version_id is not None:
            states[version_id] = STATE_OF_EVENT[kind]
    return states


def held_version_ids(session: Session) -> set[int]:
    """The versions whose corrections are not training data now: held by the guard or an operator."""
    return {version_id for version_id, state in guard_states(session).items() if state.held}


def raise_hold_signals(session: Session, correction: CorrectionSettings) -> list[str]:
    """Hold the corrections of every version whose monitoring agreement falls below the threshold,
    with a warning event, once per version; the messages written. The caller commits."""
    already = set(
        session.exec(
            select(Event.model_version_id).where(Event.kind == HELD_EVENT, col(Event.model_version_id).is_not(None))
        ).all()
    )
    messages = []
    for agreement in monitoring_agreement(session).values():
        if agreement.version_id in already or not falls_below(agreement, correction):
            continue
        message = hold_message(agreement, correction)
        session.add(
            Event(
                level=EventLevel.WARNING,
                kind=HELD_EVENT,
                message=message,
                model_version_id=agreement.version_id,
                payload={
                    "median_dice": round(agreement.median or 0.0, 4),
                    "slices": agreement.slices,
                    "min_monitoring_dice": correction.min_monitoring_dice,
                    "min_monitoring_slices": correction.min_monitoring_slices,
                },
            )
        )
        messages.append(message)
    return messages


def hold_message(agreement: MonitoringAgreement, correction: CorrectionSettings) -> str:
    """Why a version's corrections are held, and what releases them."""
    return (
        f"corrections of {agreement.version} held from training: on its {agreement.slices} monitoring slices the "
        f"corrected consensus has median Dice {agreement.median or 0.0:.3f} with the consensus traced from scratch, "
        f"below correction.min_monitoring_dice {correction.min_monitoring_dice:g}; "
        f"`etchacell model trust-corrections {agreement.version}` uses them anyway"
    )


def record_operator_decision(
    session: Session, version: ModelVersion, *, trusted: bool, by: str, reason: str | None = None
) -> GuardState:
    """An operator's word on a version's corrections, as the newest guard event: trusted (training
    data again) or revoked (held). The new state; the caller commits."""
    assert version.id is not None
    agreement = monitoring_agreement(session).get(version.id)
    figure = (
        f" (monitoring: median Dice {agreement.median:.3f} over {agreement.slices} slices)"
        if agreement is not None and agreement.median is not None
        else " (no monitoring slice measured yet)"
    )
    verb = "trusted: used as training data" if trusted else "held from training"
    session.add(
        Event(
            level=EventLevel.INFO if trusted else EventLevel.WARNING,
            kind=TRUSTED_EVENT if trusted else REVOKED_EVENT,
            message=f"corrections of {version.version} {verb}, by {by}{figure}" + (f": {reason}" if reason else ""),
            model_version_id=version.id,
            payload={"by": by, "reason": reason, "trusted": trusted},
        )
    )
    session.flush()
    return GuardState.TRUSTED if trusted else GuardState.REVOKED


# --- 3. truth, in simulation ------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitoringTruth:
    """One monitoring slice of a volume with truth: how the two consensus agree, and each with the truth."""

    slice_prediction_id: int
    version_id: int
    roi_id: int
    slice_index: int
    monitoring_dice: float
    corrected_truth_dice: float
    traced_truth_dice: float


def monitoring_truth(session: Session, data_dir: Path) -> list[MonitoringTruth]:
    """Each monitoring slice with both consensus, on a volume with truth labels: the Dice of the
    corrected and of the traced consensus with the truth of the slice, at the subject's pixels.
    Slices of volumes without truth, or whose subject cannot say where it lies, are left out."""
    volumes: dict[int, VolumeTruth] = {}
    found = []
    for pair in monitoring_pairs(session):
        try:
            truth = _slice_truth(session, data_dir, pair, volumes)
            if truth is None:
                continue
            corrected, traced = consensus_mask(data_dir, pair.corrected), consensus_mask(data_dir, pair.traced)
        except (MonitoringError, TruthError) as exc:
            log.info("monitoring truth: slice prediction %s left out: %s", pair.prediction.id, exc)
            continue
        if not corrected.shape == traced.shape == truth.shape:
            continue
        row = pair.prediction
        figures = dice(corrected, traced), dice(corrected, truth), dice(traced, truth)
        found.append(MonitoringTruth(row.id or 0, pair.version_id, row.roi_id, row.slice_index, *figures))
    return found


def _slice_truth(
    session: Session, data_dir: Path, pair: MonitoringPair, volumes: dict[int, VolumeTruth]
) -> Mask | None:
    """The nucleus truth of the pair's slice at its traced consensus' pixels, or None without truth."""
    found = session.exec(
        select(Volume).join(Roi, col(Roi.volume_id) == col(Volume.id)).where(col(Roi.id) == pair.prediction.roi_id)
    ).first()
    if found is None or found.id is None or found.truth_uri is None:
        return None
    if found.id not in volumes:
        volumes[found.id] = open_volume_truth(resolve_uri(found.storage_uri, data_dir))
    volume = volumes[found.id]
    subject = session.get(Subject, pair.traced.subject_id) if pair.traced.subject_id is not None else None
    if subject is None:
        return None
    crop = subject_crop(subject.panoptes_metadata)
    shape = consensus_mask(data_dir, pair.traced).shape
    frames = subject_truth(volume, crop, (int(shape[0]), int(shape[1])))
    on_slice = [frame.nucleus for frame in frames if frame.z == pair.prediction.slice_index]
    return on_slice[0] if on_slice else None
