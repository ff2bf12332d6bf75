"""A training run's model version is registered under the run's lease, and every attempt at a run
stages its files apart: a worker that lost its run leaves no version and deletes nobody's files."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.config import Settings, TrainingSettings
from etchacell_loop.db.models import Event, ModelVersion, RunStatus, TrainingRun, TrainingTrigger
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop import runs
from etchacell_loop.loop.runs import Lease
from etchacell_loop.loop.train_job import (
    register_and_promote,
    remove_attempt,
    remove_dead_attempts,
    staging_dir,
    train_job,
)
from etchacell_loop.loop.worker import Heartbeat, RunHeartbeat, RunLost, SessionFactory, run_claimed, run_worker
from etchacell_loop.model.training_set import TrainingSet, TrainingSnapshot
from tests.loop.support import read_run
from tests.model.support import make_volume, write_labelled_slices
from tests.model.training_rows import rows_for

TIMEOUT_S = 600
NEVER_S = 3600.0  # a background heartbeat interval longer than any test: only the job's own beats count


def _factory(engine: Engine) -> SessionFactory:
    return functools.partial(Session, engine, expire_on_commit=False)


def _settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, training=TrainingSettings(heartbeat_timeout_s=TIMEOUT_S))


def _queue(engine: Engine, config: Mapping[str, Any] | None = None) -> int:
    with Session(engine) as session:
        run = runs.queue_training_run(session, TrainingTrigger.MANUAL, "tester", "lease", "small", config=config)
        session.commit()
        assert run.id is not None
        return run.id


def _claim(engine: Engine, worker_host: str) -> Lease:
    with Session(engine) as session:
        run = runs.claim_next_run(session, worker_host)
        session.commit()
        assert run is not None and run.id is not None
        return Lease(run.id, worker_host)


def silence_and_claim(session_factory: SessionFactory, run_id: int, worker_host: str) -> Lease:
    """The run's heartbeat ages past the timeout (its worker stalled), the queue re-queues it as
    dead, and the worker ``worker_host`` claims it: what a second worker does."""
    with session_factory() as session:
        aged = utcnow() - timedelta(seconds=2 * TIMEOUT_S)
        session.connection().execute(
            sa.update(TrainingRun).where(col(TrainingRun.id) == run_id).values(heartbeat_at=aged)
        )
        assert runs.requeue_stale_runs(session, TIMEOUT_S) == [run_id]
        session.commit()
        claimed = runs.claim_next_run(session, worker_host)
        session.commit()
        assert claimed is not None and claimed.id == run_id
    return Lease(run_id, worker_host)


def _stand_in_training_set() -> TrainingSet:
    snapshot = TrainingSnapshot(consensus_ids={"train": (1,)}, rois={"train": (1,)}, skipped={}, data_hash="ab" * 32)
    return TrainingSet(slices=(), snapshot=snapshot)


def _staged_artifact(data_dir: Path, lease: Lease) -> Path:
    """What training leaves in its attempt's folder (the registry moves the folder, whatever is in it)."""
    artifact = staging_dir(data_dir, lease.run_id, lease.worker_host) / "model.keras"
    artifact.write_bytes(b"weights of " + lease.worker_host.encode())
    return artifact


def _register(engine: Engine, data_dir: Path, lease: Lease, heartbeat: Heartbeat, artifact: Path) -> int:
    run = read_run(engine, lease.run_id)
    metrics = {"validation": {"consensus": {"f_measure": 0.5}}}
    return register_and_promote(
        _factory(engine), _settings(data_dir), run, artifact, _stand_in_training_set(), metrics, heartbeat,
        architecture="unet-2.5d",
    )  # fmt: skip


def _versions(engine: Engine) -> list[ModelVersion]:
    with Session(engine) as session:
        return list(session.exec(select(ModelVersion)).all())


# --- registration under the lease ---------------------------------------------------------------------


def test_a_worker_whose_run_was_taken_registers_nothing(migrated_engine: Engine, tmp_path: Path) -> None:
    """Worker A has not beaten since its claim, so it believes the run is its own; worker B holds it
    now. A's registration is refused in the database, and B's staged files are untouched."""
    run_id = _queue(migrated_engine)
    lease_a = _claim(migrated_engine, "worker-a")
    heartbeat_a = RunHeartbeat(_factory(migrated_engine), lease_a, threading.Event())
    artifact_a = _staged_artifact(tmp_path, lease_a)
    lease_b = silence_and_claim(_factory(migrated_engine), run_id, "worker-b")
    artifact_b = _staged_artifact(tmp_path, lease_b)
    assert not heartbeat_a.lost  # nothing in memory says so: only the database knows

    with pytest.raises(RunLost):
        _register(migrated_engine, tmp_path, lease_a, heartbeat_a, artifact_a)

    assert _versions(migrated_engine) == []
    run = read_run(migrated_engine, run_id)
    assert (run.status, run.worker_host) == (RunStatus.RUNNING, "worker-b")
    assert artifact_a.is_file() and artifact_b.read_bytes() == b"weights of worker-b"
    assert heartbeat_a.lost


def test_registration_marks_the_run_succeeded_in_the_same_transaction(migrated_engine: Engine, tmp_path: Path) -> None:
    """Once its version is in, the run is over: it cannot go silent, be re-queued and trained again."""
    run_id = _queue(migrated_engine)
    lease = _claim(migrated_engine, "worker-a")
    heartbeat = RunHeartbeat(_factory(migrated_engine), lease, threading.Event())
    version_id = _register(migrated_engine, tmp_path, lease, heartbeat, _staged_artifact(tmp_path, lease))

    run = read_run(migrated_engine, run_id)
    assert run.status == RunStatus.SUCCEEDED and run.finished_at is not None
    assert run.metrics["model_version_id"] == version_id and run.metrics["version"] == "v0001-abababab"
    with Session(migrated_engine) as session:
        aged = utcnow() - timedelta(seconds=2 * TIMEOUT_S)
        session.connection().execute(sa.update(TrainingRun).values(heartbeat_at=aged))
        assert runs.requeue_stale_runs(session, TIMEOUT_S) == []
        kinds = [e.kind for e in session.exec(select(Event).order_by(col(Event.id))).all()]
    assert {"model.registered", "training.succeeded"} <= set(kinds)
    (version,) = _versions(migrated_engine)
    assert Path(version.artifact_uri).read_bytes() == b"weights of worker-a"


def test_the_worker_counts_a_run_its_job_finished_under_its_lease_as_succeeded(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    run_id = _queue(migrated_engine)

    def job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
        return _register(
            migrated_engine, tmp_path, heartbeat.lease, heartbeat, _staged_artifact(tmp_path, heartbeat.lease)
        )

    report = run_worker(_factory(migrated_engine), _settings(tmp_path), job, once=True, worker_host="worker-a")
    assert (report.succeeded, report.lost) == (1, 0)
    run = read_run(migrated_engine, run_id)
    (version,) = _versions(migrated_engine)
    assert run.status == RunStatus.SUCCEEDED and run.metrics["model_version_id"] == version.id
    with Session(migrated_engine) as session:
        succeeded = session.exec(select(Event).where(Event.kind == "training.succeeded")).all()
    assert len(succeeded) == 1


# --- staging per attempt -----------------------------------------------------------------------------


def _ended_process_id() -> int:
    """The id of a process that has run and ended (reaped)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_each_attempt_stages_in_its_own_folder_and_never_empties_another(tmp_path: Path) -> None:
    here = socket.gethostname()
    alive = f"{here}/{os.getpid()}/aaaaaa"
    first = staging_dir(tmp_path, 7, alive)
    (first / "model.keras").write_bytes(b"first")
    second = staging_dir(tmp_path, 7, f"{here}/{os.getpid()}/bbbbbb")  # the same run, claimed again
    assert first != second and first.parent == second.parent
    assert (first / "model.keras").read_bytes() == b"first"
    (second / "stale").write_text("from an earlier try of the same lease")
    again = staging_dir(tmp_path, 7, f"{here}/{os.getpid()}/bbbbbb")
    assert again == second and list(again.iterdir()) == []  # its own folder starts clean

    remove_attempt(second)
    assert not second.exists() and (first / "model.keras").is_file()  # the run's folder stays for the other
    remove_attempt(first)
    assert not first.parent.exists()


def test_folders_of_workers_that_died_on_this_machine_are_cleared(tmp_path: Path) -> None:
    """A killed worker leaves its folder; the next attempt clears it. Live workers' folders (a stopped
    one's included), other machines' and names that are not a worker's are left alone."""
    here = socket.gethostname()
    dead = staging_dir(tmp_path, 3, f"{here}/{_ended_process_id()}/dddddd")
    (dead / "model.keras").write_bytes(b"half")
    alive = staging_dir(tmp_path, 3, f"{here}/{os.getpid()}/aaaaaa")
    elsewhere = staging_dir(tmp_path, 3, f"{here}-other-machine/{_ended_process_id()}/eeeeee")
    plain = staging_dir(tmp_path, 3, "worker-a")
    assert not dead.exists()
    assert alive.is_dir() and elsewhere.is_dir() and plain.is_dir()
    assert remove_dead_attempts(alive.parent) == []


# --- two real workers, one real model each -------------------------------------------------------------


class TakenAfterTheEpoch:
    """Worker A's heartbeat as its job sees it, with one thing added: right after the epoch's
    heartbeat is recorded, A goes silent past the timeout, its run is re-queued and worker B claims
    it. A's background beat never runs in between, so nothing in A's memory says so (as after a
    stall): only the database knows."""

    def __init__(self, heartbeat: Heartbeat, session_factory: SessionFactory, run_id: int, thief: str) -> None:
        self._heartbeat = heartbeat
        self._run_id = run_id
        self._session_factory = session_factory
        self._thief = thief
        self.taken: list[Lease] = []

    def __call__(self, progress: Mapping[str, Any]) -> None:
        self._heartbeat(progress)
        if not self.taken:
            self.taken.append(silence_and_claim(self._session_factory, self._run_id, self._thief))

    def should_stop(self) -> bool:
        return self._heartbeat.should_stop()

    def check(self) -> None:
        self._heartbeat.check()

    def hold(self, session: Session) -> None:
        self._heartbeat.hold(session)

    @property
    def lease(self) -> Lease:
        return self._heartbeat.lease


@pytest.mark.slow
def test_a_worker_that_lost_its_run_to_another_leaves_no_version(migrated_engine: Engine, tmp_path: Path) -> None:
    """Two workers, one run: A trains a real model, loses the run after its epoch (aged heartbeat,
    re-queued, claimed by B), and still finishes training and scoring. A registers nothing; B trains
    and registers the run's one version, and no attempt leaves files behind."""
    data_dir = tmp_path / "data"
    records = write_labelled_slices(make_volume(tmp_path / "hela.zarr"), data_dir / "masks", {
        "cell01": "train", "cell02": "validation",
    })  # fmt: skip
    with Session(migrated_engine) as session:
        rows_for(session, records, "hela")
        session.commit()
    run_id = _queue(migrated_engine, {"epochs": 1, "steps_per_epoch": 2, "seed": 1})
    factory = _factory(migrated_engine)
    heartbeats: list[TakenAfterTheEpoch] = []

    def worker_a_job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, beat: Heartbeat) -> int:
        heartbeats.append(TakenAfterTheEpoch(beat, session_factory, run_id, "worker-b"))
        return train_job(session_factory, settings, run, heartbeats[0])

    report_a = run_worker(
        factory, _settings(data_dir), worker_a_job, once=True, worker_host="worker-a", heartbeat_interval_s=NEVER_S
    )
    assert (report_a.lost, report_a.succeeded) == (1, 0)
    assert _versions(migrated_engine) == []  # the run was taken from A before it registered
    (lease_b,) = heartbeats[0].taken

    outcome = run_claimed(factory, _settings(data_dir), train_job, lease_b, threading.Event(), NEVER_S)
    assert outcome == "succeeded", read_run(migrated_engine, run_id).error
    (version,) = _versions(migrated_engine)
    run = read_run(migrated_engine, run_id)
    assert (run.status, run.worker_host) == (RunStatus.SUCCEEDED, "worker-b")
    assert run.metrics["model_version_id"] == version.id and version.training_run_id == run_id
    assert Path(version.artifact_uri).is_file()
    staging = data_dir / "models" / "_training"
    assert not staging.exists() or list(staging.iterdir()) == []
