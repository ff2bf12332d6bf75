"""Queue an automatic training run once enough new consensus has accumulated since the last one.

Why count from the newest run's ``queued_at``: a run trains on the consensus that exists when it
starts, so what came after the last request (whatever became of it, unless it was cancelled) is
what a new model would add. Cancelled runs do not count: nobody trained on their behalf. The
trigger never stacks runs: while one is queued or running it only reports the count. Dead workers'
runs are re-queued first, so a crashed worker does not block the loop for ever.

One transaction: re-queueing, counting and queueing commit together or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, func, select

from etchacell_loop.config import Settings
from etchacell_loop.db.models import DecisionOutcome, RetirementDecision, RunStatus, TrainingRun, TrainingTrigger
from etchacell_loop.loop.runs import active_run, queue_training_run, requeue_stale_runs
from etchacell_loop.panoptes.gateway import PanoptesGateway

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
REQUESTED_BY = "daemon"


@dataclass
class TrainTriggerResult:
    """What one trigger run did: the new consensus counted, the run queued (if any), the runs of
    dead workers put back in the queue, and the active run that kept a new one from being queued."""

    new_consensus: int = 0
    queued_run_id: int | None = None
    requeued_run_ids: list[int] = field(default_factory=list)
    blocked_by_run_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LastRun:
    """The newest non-cancelled training run: where counting new consensus starts."""

    id: int
    queued_at: datetime


def run_train_trigger(
    session_factory: SessionFactory, gateway: PanoptesGateway | None, settings: Settings
) -> TrainTriggerResult:
    """Re-queue dead workers' runs; queue an automatic run when the new consensus reaches the threshold.

    ``gateway`` is unused (the trigger only reads the database); it keeps the shape every job shares.
    """
    del gateway
    training = settings.training
    result = TrainTriggerResult()
    with session_factory() as session:
        result.requeued_run_ids = requeue_stale_runs(session, training.heartbeat_timeout_s)
        last = last_run(session)
        result.new_consensus = new_consensus_count(session, last.queued_at if last else None)
        if result.new_consensus >= training.min_new_consensus_slices:
            reason = trigger_reason(result.new_consensus, last)
            queue_if_idle(session, result, reason, training.preset, training.run_config())
        session.commit()
    log.info("train trigger: %s", result)
    return result


def last_run(session: Session) -> LastRun | None:
    """The newest run by queue time, whatever its status except cancelled."""
    statement = (
        select(TrainingRun.id, TrainingRun.queued_at)
        .where(col(TrainingRun.status) != RunStatus.CANCELLED)
        .order_by(col(TrainingRun.queued_at).desc(), col(TrainingRun.id).desc())
        .limit(1)
    )
    row = session.exec(statement).first()
    if row is None or row[0] is None:
        return None
    return LastRun(row[0], row[1])


def new_consensus_count(session: Session, since: datetime | None) -> int:
    """Slices whose consensus has settled since ``since`` (all when None): subjects the retire job
    decided to retire. A consensus still gathering classifications changes with each of them, and
    counting it would queue runs on half-finished answers (and one re-aggregated slice many times)."""
    statement = select(func.count(func.distinct(RetirementDecision.subject_id))).where(
        col(RetirementDecision.outcome) == DecisionOutcome.RETIRE
    )
    if since is not None:
        statement = statement.where(col(RetirementDecision.decided_at) > since)
    return int(session.exec(statement).one())


def trigger_reason(new_consensus: int, last: LastRun | None) -> str:
    since = f"since run {last.id}" if last else "since the start"
    return f"{new_consensus} newly settled consensus slices {since}"


def queue_if_idle(
    session: Session, result: TrainTriggerResult, reason: str, preset: str, config: Mapping[str, Any] | None = None
) -> None:
    """Queue an automatic run unless one is queued or running (then note which one)."""
    existing = active_run(session)
    if existing is not None:
        result.blocked_by_run_id = existing.id
        log.info("train trigger: %s, but run %s is %s", reason, existing.id, existing.status.value)
        return
    run = queue_training_run(
        session,
        trigger=TrainingTrigger.AUTOMATIC,
        requested_by=REQUESTED_BY,
        reason=reason,
        preset=preset,
        config=config,
    )
    result.queued_run_id = run.id
