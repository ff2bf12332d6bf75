"""Retire the subjects whose consensus has settled: decide here, then tell Panoptes.

Why two phases with the database in between: deciding is ours (a stopping rule over the subject's
checks) and must never be lost, while telling Panoptes can fail for a while. Every decision (RETIRE
or KEEP) is committed as a :class:`~etchacell_loop.db.models.RetirementDecision` tied to the
consensus it judged, so each consensus is judged once and a newer one is judged again. A RETIRE
leaves the subject ``retiring`` and the decision ``pending``; the sync phase sends every pending
decision, batch by batch, and only after Panoptes accepts a batch are its decisions ``sent`` and its
subjects ``retired``. A crash anywhere leaves pending rows that the next run sends; re-sending a
retirement Panoptes already has is harmless (it keeps the first one).

A *check* is one decision: the subject's current consensus (volunteer consensus for raw subjects,
corrected consensus for correction subjects) judged against the consensus its previous decision
judged. The job measures what the pure rule (:mod:`etchacell_loop.retirement`) needs: the Dice
between the two consensus masks (read from their files under the data directory), the consensus's
own leave-latest-out stability, and the subject's own classifications (of that subject, in the
workflow its subject set is linked to, as Panoptes counts toward its retirement limit; up to the
newest classification the judged consensus accounts for) now and at the previous check. Each
decision records them (``n_classifications``: the subject's own count; ``stability``: the Dice
between checks; ``details``: the previous consensus id, both counts, the slice's count and, when the
Dice could not be measured, why) so the next check reads the history back from the decisions. A
missing or unreadable mask makes that check not count as stable, with the reason recorded on the
decision and a warning event; it never stops the job.

A KEEP has nothing to send: its ``sync_state`` stays at the column default and the sync phase
reads RETIRE decisions only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlmodel import Session, col, select

from etchacell_loop.config import Settings
from etchacell_loop.cria.consensus import dice
from etchacell_loop.cria.correction import CorrectionState, correction_state
from etchacell_loop.db.models import (
    Classification,
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
from etchacell_loop.model.data import TrainingDataError, read_mask
from etchacell_loop.panoptes.errors import PanoptesAuthError, PanoptesError, PanoptesUnavailable, one_line
from etchacell_loop.panoptes.gateway import BATCH_SIZE, PanoptesGateway
from etchacell_loop.retirement import Decision, StoppingRule, Update, stopping_rule
from etchacell_loop.stored_files import resolve_uri

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
    decide_retirements(
        session_factory,
        rule,
        settings.retirement.panoptes_reason,
        result,
        settings.data_dir,
        stopping_rule(settings.retirement, corrections=True),
    )
    if gateway is None:
        log.info("retire: no Panoptes gateway, retirements stay pending")
    else:
        sync_retirements(session_factory, gateway, result)
    log.info("retire: %s", result)
    return result


# --- phase 1: decide ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """An active subject, the current consensus of its kind that it has not been judged on, and the
    workflow its subject set is linked to (None when it is linked to none)."""

    subject: Subject
    consensus: ConsensusResult
    workflow_id: int | None


@dataclass(frozen=True)
class Check:
    """What one check of a subject compared, as its decision records it.

    ``update`` goes to the stopping rule; ``previous_consensus_id`` is the consensus judged at the
    subject's previous check (None at the first); ``slice_classifications`` the consensus's own
    count (every classification that showed the slice, neighbouring flipbooks' included);
    ``problem`` says why the Dice between checks could not be measured.
    """

    update: Update
    previous_consensus_id: int | None = None
    slice_classifications: int | None = None
    problem: str | None = None

    def details(self) -> dict[str, Any]:
        """The figures stored in ``retirement_decision.details`` (read back by :func:`update_of`)."""
        recorded: dict[str, Any] = {
            "previous_consensus_id": self.previous_consensus_id,
            "check_dice": self.update.check_dice,
            "latest_drawing_stability": self.update.stability,
            "subject_classifications": self.update.classifications,
            "new_classifications": self.update.new_classifications,
            "slice_classifications": self.slice_classifications,
        }
        if self.problem is not None:
            recorded["problem"] = self.problem
        return recorded


class MaskUnreadable(ValueError):
    """A consensus mask that cannot be compared; the message says why."""


def consensus_kind_for(kind: SubjectKind) -> ConsensusKind:
    """Raw subjects are judged on the volunteers' consensus, prediction subjects on the corrected one."""
    return ConsensusKind.CORRECTED if kind == SubjectKind.PREDICTION else ConsensusKind.VOLUNTEER


def decide_retirements(
    session_factory: SessionFactory,
    rule: StoppingRule,
    panoptes_reason: str,
    result: RetireJobResult,
    data_dir: Path,
    correction_rule: StoppingRule | None = None,
) -> None:
    """Record a decision for each active subject whose current consensus has none, batch by batch;
    prediction subjects are judged by ``correction_rule`` when given."""
    after_id = 0
    while True:
        with session_factory() as session:
            batch = undecided_subjects(session, after_id, DECIDE_BATCH)
            if not batch:
                return
            after_id = max(_key(candidate.subject) for candidate in batch)
            for candidate in batch:
                own_rule = rule
                if correction_rule is not None and candidate.subject.kind == SubjectKind.PREDICTION:
                    own_rule = correction_rule
                decision = judge(session, data_dir, candidate, own_rule, panoptes_reason)
                result.decided += 1
                result.retire_decisions += int(decision.outcome == DecisionOutcome.RETIRE)
            session.commit()


def undecided_subjects(session: Session, after_id: int, limit: int) -> list[Candidate]:
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
        select(Subject, ConsensusResult, SubjectSet.workflow_id)
        .join(
            ConsensusResult,
            sa.and_(
                col(ConsensusResult.roi_id) == col(Subject.roi_id),
                col(ConsensusResult.slice_index) == col(Subject.slice_index),
                col(ConsensusResult.is_current).is_(True),
                own_kind,
            ),
        )
        .outerjoin(SubjectSet, col(SubjectSet.id) == col(Subject.subject_set_id))
        .where(col(Subject.retirement_state) == RetirementState.ACTIVE, col(Subject.id) > after_id, ~judged)
        .order_by(col(Subject.id))
        .limit(limit)
    )
    return [Candidate(subject, consensus, workflow_id) for subject, consensus, workflow_id in session.exec(statement)]


def judge(
    session: Session, data_dir: Path, candidate: Candidate, rule: StoppingRule, panoptes_reason: str
) -> RetirementDecision:
    """One check of one subject: measure it against the subject's previous check, ask the rule over
    every check so far, record the answer."""
    earlier = previous_decisions(session, _key(candidate.subject))
    check = measure_check(session, data_dir, candidate, earlier[-1] if earlier else None)
    if check.problem is not None:
        _report_unmeasured(session, candidate, check)
    updates = [*(update_of(decision) for decision in earlier), check.update]
    return record_decision(
        session, candidate.subject, candidate.consensus, rule, updates, panoptes_reason, check.details()
    )


def previous_decisions(session: Session, subject_id: int) -> list[RetirementDecision]:
    """The subject's decisions so far, oldest first: one per earlier check."""
    statement = (
        select(RetirementDecision)
        .where(RetirementDecision.subject_id == subject_id)
        .order_by(col(RetirementDecision.id))
    )
    return list(session.exec(statement).all())


def measure_check(session: Session, data_dir: Path, candidate: Candidate, previous: RetirementDecision | None) -> Check:
    """The subject's own classifications now and since its previous check, and the Dice between the
    consensus judged now and the one judged then (read from their mask files)."""
    consensus = candidate.consensus
    counted = own_classifications(session, candidate, consensus.last_classification_id)
    if previous is None:
        update = Update(counted, consensus.stability, None, counted)
        return Check(update, None, consensus.n_classifications)
    before = session.get(ConsensusResult, previous.consensus_result_id) if previous.consensus_result_id else None
    counted_before = _recorded_count(previous)
    if counted_before is None:  # a decision recorded without the figure: count as that check would have
        counted_before = own_classifications(session, candidate, before.last_classification_id) if before else 0
    dice_between, problem = check_dice(data_dir, before, consensus)
    update = Update(counted, consensus.stability, dice_between, max(0, counted - counted_before))
    return Check(update, previous.consensus_result_id, consensus.n_classifications, problem)


def own_classifications(session: Session, candidate: Candidate, up_to: int) -> int:
    """The subject's classifications as Panoptes counts them toward its retirement limit: of this
    subject, in the workflow its set is linked to (any workflow when it is linked to none), up to
    the newest classification ``up_to`` the judged consensus accounts for. Classifications stored
    before the subject's row existed are matched by its Panoptes id."""
    subject = candidate.subject
    of_subject = col(Classification.subject_id) == _key(subject)
    if subject.panoptes_id is not None:
        unlinked = sa.and_(
            col(Classification.subject_id).is_(None), col(Classification.subject_panoptes_id) == subject.panoptes_id
        )
        of_subject = sa.or_(of_subject, unlinked)
    statement = (
        select(sa.func.count()).select_from(Classification).where(of_subject, col(Classification.panoptes_id) <= up_to)
    )
    if candidate.workflow_id is not None:
        statement = statement.where(col(Classification.workflow_id) == candidate.workflow_id)
    return int(session.exec(statement).one())


def check_dice(
    data_dir: Path, previous: ConsensusResult | None, current: ConsensusResult
) -> tuple[float | None, str | None]:
    """Dice between the previous check's consensus mask and the current one, or why it cannot be had."""
    if previous is None:
        return None, "the previous check's consensus no longer exists"
    try:
        before = read_consensus_mask(previous, data_dir)
        now = read_consensus_mask(current, data_dir)
    except MaskUnreadable as exc:
        return None, str(exc)
    if before.shape != now.shape:
        return None, f"masks of consensus {previous.id} {before.shape} and {current.id} {now.shape} differ in size"
    return dice(before, now), None


def read_consensus_mask(consensus: ConsensusResult, data_dir: Path) -> NDArray[np.bool_]:
    """The consensus's area mask (PNG, 0 outside, 255 nucleus) as a bool array."""
    if not consensus.mask_uri:
        raise MaskUnreadable(f"consensus {consensus.id} has no mask")
    try:
        return read_mask(resolve_uri(consensus.mask_uri, data_dir))
    except TrainingDataError as exc:
        raise MaskUnreadable(f"mask of consensus {consensus.id} unreadable: {one_line(str(exc))}") from None


def update_of(decision: RetirementDecision) -> Update:
    """An earlier check as the rule reads it, from what its decision recorded. A decision recorded
    without these figures (by an older rule) gives a check that does not count as stable."""
    details = decision.details if isinstance(decision.details, dict) else {}
    counted = _recorded_count(decision)
    return Update(
        classifications=decision.n_classifications if counted is None else counted,
        stability=_number(details.get("latest_drawing_stability")),
        check_dice=_number(details.get("check_dice")),
        new_classifications=_integer(details.get("new_classifications")) or 0,
    )


def record_decision(
    session: Session,
    subject: Subject,
    consensus: ConsensusResult,
    rule: StoppingRule,
    updates: Sequence[Update],
    panoptes_reason: str,
    details: Mapping[str, Any] | None = None,
) -> RetirementDecision:
    """Ask the rule over the subject's checks (``updates``, the last one judging ``consensus``) and
    write its answer; a RETIRE also marks the subject ``retiring``.

    The row's ``n_classifications`` is the subject's own count the rule used and ``stability`` the
    Dice between checks; ``details`` holds what the check compared (:meth:`Check.details`).
    """
    verdict = held_while_disputed(rule.decide(updates), consensus)
    last = updates[-1] if updates else Update(0, None)
    decision = RetirementDecision(
        subject_id=_key(subject),
        consensus_result_id=_key(consensus),
        policy=rule.name,
        outcome=DecisionOutcome.RETIRE if verdict.retire else DecisionOutcome.KEEP,
        panoptes_reason=panoptes_reason if verdict.retire else None,
        n_classifications=last.classifications,
        stability=last.check_dice,
        details={**(details or Check(last).details()), "reason": verdict.reason, "checks": len(updates)},
        sync_state=SyncState.PENDING,
    )
    session.add(decision)
    if verdict.retire:
        subject.retirement_state = RetirementState.RETIRING
        session.add(subject)
        message = (
            f"subject {subject.id} to retire ({verdict.reason}) after {last.classifications} classifications, "
            f"Dice with the previous check {_shown(last.check_dice)}"
        )
        payload = {"reason": verdict.reason, "consensus_result_id": consensus.id, "policy": rule.name}
        session.add(Event(kind="retirement.decided", message=message, subject_id=subject.id, payload=payload))
    return decision


def held_while_disputed(verdict: Decision, consensus: ConsensusResult) -> Decision:
    """A corrected consensus that too few volunteers changed (:mod:`etchacell_loop.cria.correction`)
    is not retired as stable: the subject waits for more classifications, up to the limit."""
    if verdict.retire and verdict.reason == "stable" and correction_state(consensus.params) is CorrectionState.DISPUTED:
        return Decision(False, "stable but disputed: too few volunteers changed the machine outline; waiting for more")
    return verdict


def _report_unmeasured(session: Session, candidate: Candidate, check: Check) -> None:
    """A check whose Dice could not be measured counts as not stable; say why, once per check."""
    subject = candidate.subject
    message = f"subject {subject.id}: Dice with the previous check not measured ({check.problem})"
    log.warning("retire: %s", message)
    payload = {
        "consensus_result_id": candidate.consensus.id,
        "previous_consensus_id": check.previous_consensus_id,
        "problem": check.problem,
    }
    session.add(
        Event(
            kind="retirement.check_unmeasured",
            level=EventLevel.WARNING,
            message=message,
            subject_id=subject.id,
            payload=payload,
        )
    )


def _recorded_count(decision: RetirementDecision) -> int | None:
    details = decision.details if isinstance(decision.details, dict) else {}
    return _integer(details.get("subject_classifications"))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
