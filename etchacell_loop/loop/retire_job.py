"""Retire the subjects whose consensus has settled: decide here, then tell Panoptes.

Why two phases with the database in between: deciding is ours (a stopping rule over the slice's
consensus history) and must never be lost, while telling Panoptes can fail for a while. Every
decision (RETIRE or KEEP) is committed as a :class:`~etchacell_loop.db.models.RetirementDecision`
tied to the consensus it judged, so each consensus is judged once and a newer one is judged again.
A RETIRE leaves the subject ``retiring`` and the decision ``pending``; the sync phase sends every
pending decision, batch by batch, and only after Panoptes accepts a batch are its decisions ``sent``
and its subjects ``retired``. A crash anywhere leaves pending rows that the next run sends;
re-sending a retirement Panoptes already has is harmless (it keeps the first one).

A KEEP has nothing to send: its ``sync_state`` stays at the column default and the sync phase
reads RETIRE decisions only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from etchacell_loop.config import Settings
from etchacell_loop.db.models import (
    ConsensusKind,
    ConsensusResult,
    DecisionOutcome,
    Event,
    EventLevel,
    RetirementDecision,
    RetirementState,
    Subject,
    SubjectKind,
    SubjectSet,
    SyncState,
    Workflow,
)
from etchacell_loop.db.types import utcnow
from etchacell_loop.panoptes.errors import PanoptesAuthError, PanoptesError, PanoptesUnavailable, one_line
from etchacell_loop.panoptes.gateway import BATCH_SIZE, PanoptesGateway
from etchacell_loop.retirement import StoppingRule, Update, stopping_rule

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
DEFAULT_REASON = "consensus"  # for a decision recorded without one
DECIDE_BATCH = 100  # subjects judged per transaction: a crash loses at most one uncommitted batch


@dataclass
class RetireJobResult:
    """What one retire run did.

    ``decided``: decisions recorded (``retire_decisions`` of them RETIRE); ``sent``/``failed``:
    retirements Panoptes accepted or refused this run; ``unsendable``: pending retirements of
    subjects without a Panoptes id or a linked workflow; ``deferred``: pending retirements not tried
    because Panoptes was unavailable. Everything not sent stays pending for the next run.
    """

    decided: int = 0
    retire_decisions: int = 0
    sent: int = 0
    failed: int = 0
    unsendable: int = 0
    deferred: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PendingRetirement:
    """A RETIRE decision not yet accepted by Panoptes, with what sending it needs."""

    decision_id: int
    subject_id: int
    subject_panoptes_id: int | None
    workflow_panoptes_id: int | None
    reason: str


def run_retire(session_factory: SessionFactory, gateway: PanoptesGateway | None, settings: Settings) -> RetireJobResult:
    """Judge every subject with a consensus not judged yet, then send the pending retirements.

    Without a gateway only the decisions are made; they wait, pending, for a run that has one.
    """
    rule = stopping_rule(settings.retirement)
    result = RetireJobResult()
    decide_retirements(session_factory, rule, settings.retirement.panoptes_reason, result)
    if gateway is None:
        log.info("retire: no Panoptes gateway, retirements stay pending")
    else:
        sync_retirements(session_factory, gateway, result)
    log.info("retire: %s", result)
    return result


# --- phase 1: decide ---------------------------------------------------------------------------------


def consensus_kind_for(kind: SubjectKind) -> ConsensusKind:
    """Raw subjects are judged on the volunteers' consensus, prediction subjects on the corrected one."""
    return ConsensusKind.CORRECTED if kind == SubjectKind.PREDICTION else ConsensusKind.VOLUNTEER


def decide_retirements(
    session_factory: SessionFactory, rule: StoppingRule, panoptes_reason: str, result: RetireJobResult
) -> None:
    """Record a decision for each active subject whose current consensus has none, batch by batch."""
    after_id = 0
    while True:
        with session_factory() as session:
            batch = undecided_subjects(session, after_id, DECIDE_BATCH)
            if not batch:
                return
            after_id = max(_key(subject) for subject, _ in batch)
            for subject, consensus in batch:
                updates = consensus_history(session, consensus)
                decision = record_decision(session, subject, consensus, rule, updates, panoptes_reason)
                result.decided += 1
                result.retire_decisions += int(decision.outcome == DecisionOutcome.RETIRE)
            session.commit()


def undecided_subjects(session: Session, after_id: int, limit: int) -> list[tuple[Subject, ConsensusResult]]:
    """Active subjects (id above ``after_id``) and their current consensus that no decision has judged."""
    judged = sa.exists().where(
        col(RetirementDecision.subject_id) == col(Subject.id),
        col(RetirementDecision.consensus_result_id) == col(ConsensusResult.id),
    )
    own_kind = sa.or_(
        sa.and_(col(Subject.kind) == SubjectKind.RAW, col(ConsensusResult.kind) == ConsensusKind.VOLUNTEER),
        sa.and_(col(Subject.kind) == SubjectKind.PREDICTION, col(ConsensusResult.kind) == ConsensusKind.CORRECTED),
    )
    statement = (
        select(Subject, ConsensusResult)
        .join(
            ConsensusResult,
            sa.and_(
                col(ConsensusResult.roi_id) == col(Subject.roi_id),
                col(ConsensusResult.slice_index) == col(Subject.slice_index),
                col(ConsensusResult.is_current).is_(True),
                own_kind,
            ),
        )
        .where(col(Subject.retirement_state) == RetirementState.ACTIVE, col(Subject.id) > after_id, ~judged)
        .order_by(col(Subject.id))
        .limit(limit)
    )
    return [(subject, consensus) for subject, consensus in session.exec(statement).all()]


def consensus_history(session: Session, current: ConsensusResult) -> list[Update]:
    """The slice's consensus after each aggregation, oldest first, up to and including ``current``."""
    statement = (
        select(ConsensusResult.n_classifications, ConsensusResult.stability)
        .where(
            ConsensusResult.roi_id == current.roi_id,
            ConsensusResult.slice_index == current.slice_index,
            ConsensusResult.kind == current.kind,
            col(ConsensusResult.id) <= _key(current),
        )
        .order_by(col(ConsensusResult.id))
    )
    return [Update(n, stability) for n, stability in session.exec(statement).all()]


def record_decision(
    session: Session,
    subject: Subject,
    consensus: ConsensusResult,
    rule: StoppingRule,
    updates: Sequence[Update],
    panoptes_reason: str,
) -> RetirementDecision:
    """Ask the rule and write its answer; a RETIRE also marks the subject ``retiring``."""
    verdict = rule.decide(updates)
    decision = RetirementDecision(
        subject_id=_key(subject),
        consensus_result_id=_key(consensus),
        policy=rule.name,
        outcome=DecisionOutcome.RETIRE if verdict.retire else DecisionOutcome.KEEP,
        panoptes_reason=panoptes_reason if verdict.retire else None,
        n_classifications=consensus.n_classifications,
        stability=consensus.stability,
        details={"reason": verdict.reason, "updates": len(updates)},
        sync_state=SyncState.PENDING,
    )
    session.add(decision)
    if verdict.retire:
        subject.retirement_state = RetirementState.RETIRING
        session.add(subject)
        message = (
            f"subject {subject.id} to retire ({verdict.reason}) after "
            f"{consensus.n_classifications} classifications, stability {_shown(consensus.stability)}"
        )
        payload = {"reason": verdict.reason, "consensus_result_id": consensus.id, "policy": rule.name}
        session.add(Event(kind="retirement.decided", message=message, subject_id=subject.id, payload=payload))
    return decision


# --- phase 2: sync -----------------------------------------------------------------------------------


def sync_retirements(session_factory: SessionFactory, gateway: PanoptesGateway, result: RetireJobResult) -> None:
    """Send every pending RETIRE decision to Panoptes, one committed batch at a time.

    A refused batch stays pending with its error and the others go on; when Panoptes is unavailable
    (or refuses our credentials) the rest is left for the next run instead of failing batch after batch.
    """
    with session_factory() as session:
        pending = pending_retirements(session)
    sendable = [p for p in pending if not unsendable_reason(p)]
    unsendable = [p for p in pending if unsendable_reason(p)]
    if unsendable:
        record_unsendable(session_factory, unsendable)
        result.unsendable += len(unsendable)
    batches = list(retirement_batches(sendable))
    for index, batch in enumerate(batches):
        try:
            send_batch(gateway, batch)
        except PanoptesError as exc:
            record_failure(session_factory, batch, exc)
            result.failed += len(batch)
            if isinstance(exc, PanoptesUnavailable | PanoptesAuthError):
                result.deferred += sum(len(rest) for rest in batches[index + 1 :])
                return
            continue
        record_sent(session_factory, batch)
        result.sent += len(batch)


def pending_retirements(session: Session) -> list[PendingRetirement]:
    """RETIRE decisions waiting for Panoptes, with the subject and the workflow its set is linked to."""
    statement = (
        select(RetirementDecision, Subject.panoptes_id, Workflow.panoptes_id)
        .join(Subject, col(Subject.id) == col(RetirementDecision.subject_id))
        .outerjoin(SubjectSet, col(SubjectSet.id) == col(Subject.subject_set_id))
        .outerjoin(Workflow, col(Workflow.id) == col(SubjectSet.workflow_id))
        .where(
            col(RetirementDecision.outcome) == DecisionOutcome.RETIRE,
            col(RetirementDecision.sync_state) == SyncState.PENDING,
        )
        .order_by(col(RetirementDecision.id))
    )
    return [
        PendingRetirement(
            decision_id=decision.id,
            subject_id=decision.subject_id,
            subject_panoptes_id=subject_panoptes_id,
            workflow_panoptes_id=workflow_panoptes_id,
            reason=decision.panoptes_reason or DEFAULT_REASON,
        )
        for decision, subject_panoptes_id, workflow_panoptes_id in session.exec(statement).all()
        if decision.id is not None
    ]


def retirement_batches(pending: Sequence[PendingRetirement]) -> Iterator[list[PendingRetirement]]:
    """Up to one API request's worth of retirements sharing a workflow and a reason."""

    def key(item: PendingRetirement) -> tuple[int, str]:
        return (item.workflow_panoptes_id or 0, item.reason)

    for _, group in groupby(sorted(pending, key=key), key=key):
        items = list(group)
        for start in range(0, len(items), BATCH_SIZE):
            yield items[start : start + BATCH_SIZE]


def send_batch(gateway: PanoptesGateway, batch: Sequence[PendingRetirement]) -> None:
    first = batch[0]
    assert first.workflow_panoptes_id is not None
    subject_ids = [p.subject_panoptes_id for p in batch if p.subject_panoptes_id is not None]
    gateway.retire_subjects(first.workflow_panoptes_id, subject_ids, reason=first.reason)


def record_sent(session_factory: SessionFactory, batch: Sequence[PendingRetirement]) -> None:
    """Panoptes accepted the batch: decisions ``sent``, subjects ``retired``, one event per subject."""
    now = utcnow()
    with session_factory() as session:
        for item in batch:
            decision = session.get(RetirementDecision, item.decision_id)
            subject = session.get(Subject, item.subject_id)
            if decision is None or subject is None or decision.sync_state != SyncState.PENDING:
                continue
            decision.sync_state, decision.sent_at, decision.error = SyncState.SENT, now, None
            subject.retirement_state, subject.retired_at = RetirementState.RETIRED, now
            subject.retirement_reason = item.reason
            session.add_all([decision, subject])
            message = f"subject {subject.id} retired on Panoptes (subject {item.subject_panoptes_id}, {item.reason})"
            payload = {
                "decision_id": item.decision_id,
                "subject_panoptes_id": item.subject_panoptes_id,
                "workflow_panoptes_id": item.workflow_panoptes_id,
                "reason": item.reason,
            }
            session.add(Event(kind="subject.retired", message=message, subject_id=subject.id, payload=payload))
        session.commit()


def record_failure(session_factory: SessionFactory, batch: Sequence[PendingRetirement], exc: PanoptesError) -> None:
    """Panoptes did not take the batch: the decisions stay pending with the error; one warning event."""
    error = one_line(str(exc))
    first = batch[0]
    with session_factory() as session:
        _set_error(session, batch, error)
        message = f"{len(batch)} retirement(s) in workflow {first.workflow_panoptes_id} not sent: {error}"
        payload = {
            "workflow_panoptes_id": first.workflow_panoptes_id,
            "subject_panoptes_ids": [p.subject_panoptes_id for p in batch],
            "error_type": type(exc).__name__,
        }
        session.add(Event(kind="retirement.sync_failed", level=EventLevel.WARNING, message=message, payload=payload))
        session.commit()
    log.warning("retire: %s", message)


def record_unsendable(session_factory: SessionFactory, pending: Sequence[PendingRetirement]) -> None:
    """Retirements that cannot be sent yet (no Panoptes id, no linked workflow): the reason is recorded
    on the decision, with a warning event the first time only, so a waiting subject does not flood the log."""
    with session_factory() as session:
        for item in pending:
            error = unsendable_reason(item)
            decision = session.get(RetirementDecision, item.decision_id)
            if error is None or decision is None or decision.error == error:
                continue
            decision.error = error
            session.add(decision)
            message = f"retirement of subject {item.subject_id} cannot be sent: {error}"
            session.add(
                Event(
                    kind="retirement.unsendable",
                    level=EventLevel.WARNING,
                    message=message,
                    subject_id=item.subject_id,
                    payload={"decision_id": item.decision_id},
                )
            )
        session.commit()


def unsendable_reason(item: PendingRetirement) -> str | None:
    """Why the retirement cannot be sent yet, or None when it can."""
    if item.subject_panoptes_id is None:
        return "the subject has no Panoptes id"
    if item.workflow_panoptes_id is None:
        return "the subject's subject set is not linked to a workflow"
    return None


def _set_error(session: Session, batch: Sequence[PendingRetirement], error: str) -> None:
    statement = (
        sa.update(RetirementDecision)
        .where(
            col(RetirementDecision.id).in_([p.decision_id for p in batch]),
            col(RetirementDecision.sync_state) == SyncState.PENDING,
        )
        .values(error=error)
    )
    session.connection().execute(statement)


def _key(row: Subject | ConsensusResult) -> int:
    assert row.id is not None
    return row.id


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
