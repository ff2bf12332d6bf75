"""The training-run queue: queue, claim, heartbeat, finish, fail, release and re-queue runs.

Why a table and not a message broker: the database is already the only meeting point of the daemon,
the workers and the dashboard, so a run's whole life (who asked, which worker took it, how far it
got, why it failed) is one row everyone can read. Every state change that a worker makes is a
single guarded ``UPDATE … WHERE id = … AND status = 'running' AND worker_host = …``: a worker whose
run was re-queued (it looked dead) and claimed by another changes nothing, and learns so from the
row count. Claiming is one ``UPDATE`` of the oldest queued row; on PostgreSQL its sub-select takes
the row ``FOR UPDATE SKIP LOCKED``, so concurrent workers each get a different run without waiting
on each other; SQLite serialises writers on the database lock, and the ``status = 'queued'`` guard
in the same statement makes a second claimer miss.

Prediction batches follow the same discipline (:mod:`etchacell_loop.loop.batches`): the claim, the
lease-guarded update and the silent-row re-queue below are written once, over either table.

Pure database functions: each takes a :class:`~sqlmodel.Session` and does not commit.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from etchacell_loop.db.models import (
    Event,
    EventLevel,
    ModelVersion,
    PredictionBatch,
    RunStatus,
    TrainingRun,
    TrainingTrigger,
)
from etchacell_loop.db.types import utcnow

ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)

LeasedTable = type[TrainingRun] | type[PredictionBatch]
"""The tables whose rows workers claim, hold by heartbeat and hand back."""


class RunAlreadyActive(Exception):
    """A run is already queued or running, so another one would train on the same data."""

    def __init__(self, run: TrainingRun) -> None:
        self.run = run
        super().__init__(
            f"training run {run.id} is already {run.status.value} "
            f"(requested by {run.requested_by} at {run.queued_at:%Y-%m-%d %H:%M UTC}); use --force to queue another"
        )


@dataclass(frozen=True)
class Lease:
    """A worker's hold on one claimed row (a training run or a prediction batch, by the queue it
    came from): every later update must match both fields."""

    run_id: int
    worker_host: str


def worker_identity() -> str:
    """``host/pid/nonce``: unique per worker, readable on the dashboard, fits ``worker_host``."""
    return f"{socket.gethostname()}/{os.getpid()}/{os.urandom(3).hex()}"[:255]


def worker_process(worker_host: str) -> tuple[str, int] | None:
    """The machine and process id of a :func:`worker_identity`; None for any other name."""
    parts = worker_host.rsplit("/", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def current_user() -> str:
    """Who is asking, for ``requested_by``: the OS user, else the process id."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"pid-{os.getpid()}"


def active_run(session: Session) -> TrainingRun | None:
    """The oldest queued or running run, if any."""
    statement = (
        select(TrainingRun)
        .where(col(TrainingRun.status).in_(ACTIVE_STATUSES))
        .order_by(col(TrainingRun.queued_at), col(TrainingRun.id))
    )
    return session.exec(statement).first()


def queue_training_run(
    session: Session,
    trigger: TrainingTrigger,
    requested_by: str,
    reason: str | None = None,
    preset: str = "small",
    *,
    force: bool = False,
    config: Mapping[str, Any] | None = None,
) -> TrainingRun:
    """Queue a run; refused with :class:`RunAlreadyActive` while another is queued or running.

    The refusal is what keeps the daemon's automatic trigger and an operator's button from stacking
    up identical runs; ``force`` is for the operator who means it.
    """
    existing = active_run(session)
    if existing is not None and not force:
        raise RunAlreadyActive(existing)
    run = TrainingRun(
        trigger=trigger, requested_by=requested_by, reason=reason, preset=preset, config=dict(config or {})
    )
    session.add(run)
    session.flush()
    _event(session, run.id, "training.queued", f"{trigger.value} training run queued by {requested_by}")
    return run


def claim_next_run(session: Session, worker_host: str) -> TrainingRun | None:
    """Atomically take the oldest queued run for ``worker_host``; None when the queue is empty.

    Must be the first write of its transaction (commit right after it): on SQLite the statement
    takes the write lock, on PostgreSQL the row lock, and both are held until the commit.
    """
    # a re-queued run starts over: the last attempt's epochs are not this one's
    claimed = claim_oldest(session, TrainingRun, col(TrainingRun.queued_at), worker_host, {"progress": {}})
    if claimed is None:
        return None
    _event(session, claimed, "training.claimed", f"training run {claimed} claimed by {worker_host}")
    return session.get(TrainingRun, claimed, populate_existing=True)


def record_heartbeat(session: Session, lease: Lease, progress: Mapping[str, Any] | None = None) -> bool:
    """Mark the run alive (and its progress, when given); False when it is no longer this worker's."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = dict(progress)
    return _update_owned(session, lease, values)


def finish_run(session: Session, lease: Lease, metrics: Mapping[str, Any]) -> bool:
    """The run succeeded; False (and nothing written) when it was taken from this worker."""
    done = _update_owned(
        session, lease, {"status": RunStatus.SUCCEEDED, "metrics": dict(metrics), "finished_at": utcnow()}
    )
    if done:
        _event(session, lease.run_id, "training.succeeded", f"training run {lease.run_id} succeeded")
    return done


def succeeded_metrics(version: ModelVersion) -> dict[str, Any]:
    """What a succeeded run's ``metrics`` hold: its model version, whether it was promoted, its figures."""
    return {"model_version_id": version.id, "version": version.version, "promoted": version.promoted, **version.metrics}


def succeeded_under(session: Session, lease: Lease) -> bool:
    """The run ended as succeeded while ``lease`` held it (its job recorded the success together
    with its model version, under the lease: :func:`finish_run` in the job's own transaction)."""
    statement = sa.select(col(TrainingRun.id)).where(
        col(TrainingRun.id) == lease.run_id,
        col(TrainingRun.status) == RunStatus.SUCCEEDED,
        col(TrainingRun.worker_host) == lease.worker_host,
    )
    return session.connection().execute(statement).first() is not None


def fail_run(session: Session, lease: Lease, error: str) -> bool:
    """The run failed with ``error`` (a traceback); False when it was taken from this worker."""
    done = _update_owned(session, lease, {"status": RunStatus.FAILED, "error": error, "finished_at": utcnow()})
    if done:
        last_line = error.strip().splitlines()[-1] if error.strip() else "unknown error"
        message = f"training run {lease.run_id} failed: {last_line}"
        _event(session, lease.run_id, "training.failed", message, EventLevel.ERROR)
    return done


def release_run(session: Session, lease: Lease, reason: str) -> bool:
    """Put a running run back in the queue (the worker is stopping); its place in line is kept."""
    values: dict[str, Any] = {"status": RunStatus.QUEUED, "worker_host": None, "started_at": None}
    done = _update_owned(session, lease, values)
    if done:
        message = f"training run {lease.run_id} re-queued by {lease.worker_host}: {reason}"
        _event(session, lease.run_id, "training.requeued", message, EventLevel.WARNING, {"reason": reason})
    return done


def requeue_stale_runs(session: Session, timeout_s: float, now: datetime | None = None) -> list[int]:
    """Re-queue running runs silent for longer than ``timeout_s``: their worker is presumed dead.

    Each run is re-queued by its own guarded update, so a heartbeat that lands in between wins and
    the run stays with its worker. Returns the ids re-queued.
    """
    requeued: list[int] = []
    for run in requeue_silent(session, TrainingRun, timeout_s, now):
        message = f"training run {run.id} re-queued: no heartbeat from {run.worker_host} for over {timeout_s:g} s"
        payload = {"worker_host": run.worker_host, "heartbeat_at": _iso(run.heartbeat_at)}
        _event(session, run.id, "training.requeued", message, EventLevel.WARNING, payload)
        requeued.append(run.id)
    return requeued


# --- the discipline shared by every leased table ---------------------------------------------------


@dataclass(frozen=True)
class SilentRow:
    """A running row re-queued because its worker went silent: who held it, when it last beat."""

    id: int
    worker_host: str | None
    heartbeat_at: datetime | None


def claim_oldest(
    session: Session, table: LeasedTable, queued_at: Any, worker_host: str, reset: Mapping[str, Any]
) -> int | None:
    """Atomically mark the oldest queued row of ``table`` (by ``queued_at``, then id) running for
    ``worker_host``, with ``reset`` for the table's own columns; its id, or None when none is queued."""
    now = utcnow()
    oldest = (
        sa.select(col(table.id))
        .where(col(table.status) == RunStatus.QUEUED)
        .order_by(queued_at, col(table.id))
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        sa.update(table)
        .where(col(table.id) == oldest, col(table.status) == RunStatus.QUEUED)
        .values(
            status=RunStatus.RUNNING,
            worker_host=worker_host,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            error=None,
            **reset,
        )
        .returning(col(table.id))
    )
    claimed: int | None = session.connection().execute(statement).scalar_one_or_none()
    return claimed


def update_leased(session: Session, table: LeasedTable, lease: Lease, values: Mapping[str, Any]) -> bool:
    """Update the leased row only while it is running and held by the lease's worker."""
    statement = (
        sa.update(table)
        .where(
            col(table.id) == lease.run_id,
            col(table.status) == RunStatus.RUNNING,
            col(table.worker_host) == lease.worker_host,
        )
        .values(**values)
    )
    owned: bool = session.connection().execute(statement).rowcount == 1
    return owned


def requeue_silent(
    session: Session, table: LeasedTable, timeout_s: float, now: datetime | None = None
) -> list[SilentRow]:
    """Put back in the queue the running rows of ``table`` silent for longer than ``timeout_s``.

    Each row is re-queued by its own guarded update, so a heartbeat that lands in between wins and
    the row stays with its worker.
    """
    cutoff = (now or utcnow()) - timedelta(seconds=timeout_s)
    silent = sa.or_(col(table.heartbeat_at).is_(None), col(table.heartbeat_at) < cutoff)
    columns = sa.select(col(table.id), col(table.worker_host), col(table.heartbeat_at))
    stale = session.connection().execute(columns.where(col(table.status) == RunStatus.RUNNING, silent)).all()
    requeued: list[SilentRow] = []
    for row_id, worker_host, heartbeat_at in stale:
        assert row_id is not None
        statement = (
            sa.update(table)
            .where(col(table.id) == row_id, col(table.status) == RunStatus.RUNNING, silent)
            .values(status=RunStatus.QUEUED, worker_host=None, started_at=None)
        )
        if session.connection().execute(statement).rowcount == 1:
            requeued.append(SilentRow(row_id, worker_host, heartbeat_at))
    session.expire_all()
    return requeued


def _update_owned(session: Session, lease: Lease, values: Mapping[str, Any]) -> bool:
    return update_leased(session, TrainingRun, lease, values)


def _event(
    session: Session,
    run_id: int | None,
    kind: str,
    message: str,
    level: EventLevel = EventLevel.INFO,
    payload: Mapping[str, Any] | None = None,
) -> None:
    session.add(Event(kind=kind, message=message, level=level, training_run_id=run_id, payload=dict(payload or {})))


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
