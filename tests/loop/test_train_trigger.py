"""The automatic training trigger on a real database (SQLite and PostgreSQL): a run queued at the
threshold of newly settled consensus and not below it, never a second while one is queued or running, counting
restarting at the newest run, and dead workers' runs re-queued first."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.config import Settings, TrainingSettings
from etchacell_loop.db.models import (
    ConsensusKind,
    ConsensusResult,
    DecisionOutcome,
    Event,
    RetirementDecision,
    RunStatus,
    Subject,
    TrainingRun,
    TrainingTrigger,
)
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop.train_trigger import run_train_trigger
from tests.factories import add_roi, row_id
from tests.loop.support import read_run
from tests.panoptes.support import session_factory

THRESHOLD = 3
UNSETTLED_SLICE = 10_000


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    training = TrainingSettings(
        min_new_consensus_slices=THRESHOLD, preset="small-3d", heartbeat_timeout_s=60, epochs=3, steps_per_epoch=None
    )
    return Settings(data_dir=tmp_path, training=training)


@pytest.fixture
def roi(migrated_engine: Engine) -> int:
    with Session(migrated_engine) as session:
        key = row_id(add_roi(session))
        session.commit()
        return key


def add_consensus(engine: Engine, roi: int, slices: range, created_at: datetime | None = None) -> None:
    """Each slice's subject decided for retirement at ``created_at``, its consensus settled (a subject
    decided again counts once)."""
    when = created_at or utcnow()
    with Session(engine) as session:
        for slice_index in [*slices, UNSETTLED_SLICE]:
            session.execute(
                sa.update(ConsensusResult)
                .where(col(ConsensusResult.roi_id) == roi, col(ConsensusResult.slice_index) == slice_index)
                .values(is_current=False)
            )
        for slice_index in slices:
            key = f"roi{roi}-z{slice_index}"
            subject = session.exec(select(Subject).where(Subject.upload_key == key)).first()
            if subject is None:
                subject = Subject(upload_key=key, roi_id=roi, slice_index=slice_index, frames=[slice_index],
                                  target_frame=0)  # fmt: skip
                session.add(subject)
                session.flush()
            consensus = ConsensusResult(
                roi_id=roi, slice_index=slice_index, kind=ConsensusKind.VOLUNTEER, n_classifications=5,
                n_volunteers=5, last_classification_id=slice_index, created_at=when,
            )  # fmt: skip
            session.add(consensus)
            session.flush()
            session.add(
                RetirementDecision(
                    subject_id=row_id(subject), consensus_result_id=consensus.id, policy="stable-consensus",
                    outcome=DecisionOutcome.RETIRE, n_classifications=5, decided_at=when,
                )
            )  # fmt: skip
        session.add(  # a slice still being classified: its consensus has not settled, so it does not count
            ConsensusResult(
                roi_id=roi, slice_index=UNSETTLED_SLICE, kind=ConsensusKind.VOLUNTEER, n_classifications=2,
                n_volunteers=2, last_classification_id=1, created_at=when,
            )
        )  # fmt: skip
        session.commit()


def add_run(engine: Engine, status: RunStatus, queued_at: datetime, heartbeat_at: datetime | None = None) -> int:
    with Session(engine) as session:
        run = TrainingRun(
            status=status, trigger=TrainingTrigger.MANUAL, requested_by="alice", queued_at=queued_at,
            heartbeat_at=heartbeat_at, worker_host="gpu-1/42/abc" if status == RunStatus.RUNNING else None,
        )  # fmt: skip
        session.add(run)
        session.commit()
        return row_id(run)


def runs(engine: Engine) -> list[TrainingRun]:
    with Session(engine) as session:
        return list(session.exec(select(TrainingRun).order_by(col(TrainingRun.id))).all())


def queued_events(engine: Engine) -> int:
    with Session(engine) as session:
        return len(session.exec(select(Event).where(Event.kind == "training.queued")).all())


def test_a_run_is_queued_at_the_threshold_and_not_below_it(
    migrated_engine: Engine, roi: int, settings: Settings
) -> None:
    factory = session_factory(migrated_engine)
    add_consensus(migrated_engine, roi, range(THRESHOLD - 1))
    add_consensus(migrated_engine, roi, range(THRESHOLD - 1))  # decided again: still THRESHOLD - 1 subjects

    below = run_train_trigger(factory, None, settings)

    assert (below.new_consensus, below.queued_run_id) == (THRESHOLD - 1, None)
    assert runs(migrated_engine) == [] and queued_events(migrated_engine) == 0
    add_consensus(migrated_engine, roi, range(THRESHOLD - 1, THRESHOLD))

    at = run_train_trigger(factory, None, settings)

    assert at.new_consensus == THRESHOLD and at.queued_run_id is not None
    run = read_run(migrated_engine, at.queued_run_id)
    assert (run.status, run.trigger, run.preset) == (RunStatus.QUEUED, TrainingTrigger.AUTOMATIC, "small-3d")
    assert run.config == {"epochs": 3}  # the configured override travels with the run; steps stay the preset's
    assert run.reason == f"{THRESHOLD} newly settled consensus slices since the start"
    assert queued_events(migrated_engine) == 1
    assert at.as_json()["queued_run_id"] == at.queued_run_id


def test_no_second_run_while_one_is_queued_or_running(migrated_engine: Engine, roi: int, settings: Settings) -> None:
    factory = session_factory(migrated_engine)
    add_consensus(migrated_engine, roi, range(THRESHOLD))
    first = run_train_trigger(factory, None, settings).queued_run_id
    assert first is not None
    add_consensus(migrated_engine, roi, range(10, 10 + 2 * THRESHOLD))

    while_queued = run_train_trigger(factory, None, settings)

    assert while_queued.new_consensus == 2 * THRESHOLD
    assert (while_queued.queued_run_id, while_queued.blocked_by_run_id) == (None, first)
    with Session(migrated_engine) as session:  # a worker takes it and is alive
        session.execute(
            sa.update(TrainingRun)
            .where(col(TrainingRun.id) == first)
            .values(status=RunStatus.RUNNING, worker_host="gpu-1/1/aa", heartbeat_at=utcnow())
        )
        session.commit()

    while_running = run_train_trigger(factory, None, settings)

    assert (while_running.queued_run_id, while_running.blocked_by_run_id) == (None, first)
    assert while_running.requeued_run_ids == []
    assert [r.id for r in runs(migrated_engine)] == [first] and queued_events(migrated_engine) == 1


def test_counting_restarts_at_the_newest_run_that_was_not_cancelled(
    migrated_engine: Engine, roi: int, settings: Settings
) -> None:
    factory = session_factory(migrated_engine)
    start = utcnow() - timedelta(hours=3)
    add_consensus(migrated_engine, roi, range(5), created_at=start)  # what the last model trained on
    finished = add_run(migrated_engine, RunStatus.SUCCEEDED, start + timedelta(hours=1))
    add_run(migrated_engine, RunStatus.CANCELLED, start + timedelta(hours=2))  # nobody trained for it
    add_consensus(migrated_engine, roi, range(100, 100 + THRESHOLD - 1), created_at=start + timedelta(minutes=70))

    below = run_train_trigger(factory, None, settings)

    assert (below.new_consensus, below.queued_run_id) == (THRESHOLD - 1, None)
    add_consensus(migrated_engine, roi, range(0, 1))  # slice 0 aggregated again: new consensus too

    at = run_train_trigger(factory, None, settings)

    assert at.new_consensus == THRESHOLD and at.queued_run_id is not None
    assert (
        read_run(migrated_engine, at.queued_run_id).reason
        == f"{THRESHOLD} newly settled consensus slices since run {finished}"
    )


def test_a_dead_workers_run_is_requeued_first_and_then_blocks_a_new_one(
    migrated_engine: Engine, roi: int, settings: Settings
) -> None:
    silent = utcnow() - timedelta(seconds=settings.training.heartbeat_timeout_s * 2)
    stale = add_run(migrated_engine, RunStatus.RUNNING, silent - timedelta(minutes=5), heartbeat_at=silent)
    add_consensus(migrated_engine, roi, range(THRESHOLD))

    result = run_train_trigger(session_factory(migrated_engine), None, settings)

    assert result.requeued_run_ids == [stale]
    assert read_run(migrated_engine, stale).status == RunStatus.QUEUED
    assert (result.new_consensus, result.queued_run_id, result.blocked_by_run_id) == (THRESHOLD, None, stale)
    assert len(runs(migrated_engine)) == 1
