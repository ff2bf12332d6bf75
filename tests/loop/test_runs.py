"""The training-run queue on a real database (SQLite and PostgreSQL): queueing, claiming, leases."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.db.models import Event, RunStatus, TrainingRun, TrainingTrigger
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop import runs
from etchacell_loop.loop.runs import Lease, RunAlreadyActive
from tests.loop.support import claim_concurrently, read_run


def _queue(engine: Engine, n: int) -> list[int]:
    ids = []
    with Session(engine) as session:
        for i in range(n):
            run = runs.queue_training_run(session, TrainingTrigger.AUTOMATIC, "daemon", f"batch {i}", force=True)
            assert run.id is not None
            ids.append(run.id)
        session.commit()
    return ids


def _claim(engine: Engine, host: str) -> TrainingRun | None:
    with Session(engine, expire_on_commit=False) as session:
        run = runs.claim_next_run(session, host)
        session.commit()
    return run


def test_second_run_is_refused_while_one_is_active_unless_forced(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session:
        first = runs.queue_training_run(session, TrainingTrigger.MANUAL, "alice", "new corrections", "small")
        session.commit()
        with pytest.raises(RunAlreadyActive, match=f"training run {first.id} is already queued"):
            runs.queue_training_run(session, TrainingTrigger.AUTOMATIC, "daemon")
        forced = runs.queue_training_run(session, TrainingTrigger.MANUAL, "bob", force=True)
        session.commit()
        assert forced.id != first.id
        kinds = session.exec(select(Event.kind).where(Event.kind == "training.queued")).all()
        assert len(kinds) == 2
    assert _claim(migrated_engine, "w1") is not None
    assert _claim(migrated_engine, "w1") is not None
    with Session(migrated_engine) as session:
        for run in session.exec(select(TrainingRun)).all():
            assert run.id is not None
            assert runs.finish_run(session, Lease(run.id, "w1"), {})
        session.commit()
        assert runs.active_run(session) is None
        runs.queue_training_run(session, TrainingTrigger.MANUAL, "alice")  # finished runs do not block


def test_claim_takes_the_oldest_queued_run_and_marks_it_running(migrated_engine: Engine) -> None:
    ids = _queue(migrated_engine, 3)
    claimed = _claim(migrated_engine, "gpu-1/42/abc")
    assert claimed is not None and claimed.id == ids[0]
    assert claimed.status == RunStatus.RUNNING and claimed.worker_host == "gpu-1/42/abc"
    assert claimed.started_at is not None and claimed.heartbeat_at is not None
    second = _claim(migrated_engine, "gpu-2/7/def")
    assert second is not None and second.id == ids[1]
    assert read_run(migrated_engine, ids[2]).status == RunStatus.QUEUED


def test_claim_on_an_empty_queue_returns_none(migrated_engine: Engine) -> None:
    assert _claim(migrated_engine, "w") is None


def test_updates_need_the_lease(migrated_engine: Engine) -> None:
    (run_id,) = _queue(migrated_engine, 1)
    assert _claim(migrated_engine, "owner") is not None
    with Session(migrated_engine) as session:
        assert runs.record_heartbeat(session, Lease(run_id, "owner"), {"epoch": 1, "loss": 0.5})
        assert not runs.record_heartbeat(session, Lease(run_id, "intruder"), {"epoch": 9})
        assert not runs.finish_run(session, Lease(run_id, "intruder"), {"f": 1.0})
        assert not runs.fail_run(session, Lease(run_id, "intruder"), "boom")
        session.commit()
    run = read_run(migrated_engine, run_id)
    assert run.status == RunStatus.RUNNING and run.progress == {"epoch": 1, "loss": 0.5}
    with Session(migrated_engine) as session:
        assert runs.fail_run(session, Lease(run_id, "owner"), "Traceback …\nValueError: bad mask")
        assert not runs.record_heartbeat(session, Lease(run_id, "owner"))  # finished: no longer running
        session.commit()
        event = session.exec(select(Event).where(Event.kind == "training.failed")).one()
        assert "ValueError: bad mask" in event.message
    failed = read_run(migrated_engine, run_id)
    assert failed.status == RunStatus.FAILED and failed.error is not None and failed.finished_at is not None


def test_stale_runs_are_requeued_and_their_old_worker_cannot_write(migrated_engine: Engine) -> None:
    stale_id, fresh_id = _queue(migrated_engine, 2)
    assert _claim(migrated_engine, "dead") is not None
    assert _claim(migrated_engine, "alive") is not None
    with Session(migrated_engine) as session:
        run = session.get(TrainingRun, stale_id)
        assert run is not None
        run.heartbeat_at = utcnow() - timedelta(seconds=700)
        session.commit()
        assert runs.requeue_stale_runs(session, timeout_s=600) == [stale_id]
        session.commit()
        assert runs.requeue_stale_runs(session, timeout_s=600) == []
        event = session.exec(select(Event).where(Event.kind == "training.requeued")).one()
        assert event.training_run_id == stale_id and event.payload["worker_host"] == "dead"
    assert read_run(migrated_engine, fresh_id).status == RunStatus.RUNNING
    reclaimed = _claim(migrated_engine, "rescuer")
    assert reclaimed is not None and reclaimed.id == stale_id
    with Session(migrated_engine) as session:
        assert not runs.finish_run(session, Lease(stale_id, "dead"), {"f": 0.1})
        session.commit()
    assert read_run(migrated_engine, stale_id).worker_host == "rescuer"


def test_release_puts_the_run_back_in_line(migrated_engine: Engine) -> None:
    first, _second = _queue(migrated_engine, 2)
    assert _claim(migrated_engine, "w") is not None
    with Session(migrated_engine) as session:
        assert runs.release_run(session, Lease(first, "w"), "worker stopped")
        session.commit()
    run = read_run(migrated_engine, first)
    assert run.status == RunStatus.QUEUED and run.worker_host is None
    again = _claim(migrated_engine, "other")
    assert again is not None and again.id == first  # kept its place ahead of `second`


def test_concurrent_workers_claim_each_run_exactly_once(db_url: str, migrated_engine: Engine) -> None:
    n_runs, n_workers = 40, 4
    ids = _queue(migrated_engine, n_runs)
    claims = claim_concurrently(db_url, n_workers, lambda engine, host: _run_id(_claim(engine, host)))
    counted = Counter(run_id for mine in claims.values() for run_id in mine)
    assert sorted(counted) == sorted(ids) and set(counted.values()) == {1}
    with Session(migrated_engine) as session:
        rows = session.exec(select(TrainingRun).order_by(col(TrainingRun.id))).all()
        owner = {run_id: host for host, mine in claims.items() for run_id in mine}
        assert all(row.status == RunStatus.RUNNING and row.worker_host == owner[row.id] for row in rows if row.id)
        claimed_events = session.exec(select(Event).where(Event.kind == "training.claimed")).all()
        assert len(claimed_events) == n_runs


def _run_id(run: TrainingRun | None) -> int | None:
    return None if run is None else run.id
