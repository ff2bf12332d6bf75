"""The worker loop on a real database with real (small) jobs: success, failure, lost runs, stopping."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from etchacell_loop.config import Settings, TrainingSettings
from etchacell_loop.db.models import (
    Event,
    ModelMetric,
    ModelVersion,
    PredictionBatch,
    Roi,
    RunStatus,
    TrainingRun,
    TrainingTrigger,
    Volume,
)
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop import batches, runs
from etchacell_loop.loop.worker import Heartbeat, RunHeartbeat, SessionFactory, run_worker
from tests.loop.support import read_run
from tests.model.support import make_volume, write_labelled_slices
from tests.model.training_rows import rows_for

REPO = Path(__file__).resolve().parents[2]


def _factory(engine: Engine) -> SessionFactory:
    return functools.partial(Session, engine, expire_on_commit=False)


def _settings(tmp_path: Path, timeout_s: int = 600) -> Settings:
    return Settings(data_dir=tmp_path, training=TrainingSettings(heartbeat_timeout_s=timeout_s))


def _queue(engine: Engine, *reasons: str) -> list[int]:
    with Session(engine) as session:
        ids = []
        for reason in reasons:
            run = runs.queue_training_run(session, TrainingTrigger.MANUAL, "tester", reason, force=True)
            assert run.id is not None
            ids.append(run.id)
        session.commit()
    return ids


def _register(session_factory: SessionFactory, run: TrainingRun, f_measure: float) -> int:
    """What a real job ends with: a model version row."""
    with session_factory() as session:
        version = ModelVersion(
            version=f"v{run.id:04d}-00000000",
            training_run_id=run.id,
            artifact_uri="/models/m.keras",
            preset=run.preset,
            architecture="unet-2.5d",
            metrics={"validation": {"consensus": {"f_measure": f_measure}}},
            data_hash="0" * 64,
        )
        session.add(version)
        session.commit()
        assert version.id is not None
        return version.id


def _steal(session_factory: SessionFactory, run_id: int) -> None:
    """Another party decides the run is dead and a second worker claims it. The heartbeat is aged
    and the run re-queued in one transaction: the worker's heartbeat thread, beating every 50 ms,
    would otherwise refresh it in between."""
    with session_factory() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        run.heartbeat_at = utcnow() - timedelta(hours=1)
        session.flush()
        assert runs.requeue_stale_runs(session, timeout_s=60) == [run_id]
        session.commit()
        thief = runs.claim_next_run(session, "thief")
        session.commit()
        assert thief is not None and thief.id == run_id


def test_runs_jobs_records_progress_and_results(migrated_engine: Engine, tmp_path: Path) -> None:
    first, second = _queue(migrated_engine, "a", "b")
    calls: list[int] = []

    def job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
        assert run.id is not None
        calls.append(run.id)
        for epoch in range(3):
            heartbeat({"loss": 1.0 / (epoch + 1), "val_loss": float("nan")})
        return _register(session_factory, run, 0.5 + 0.1 * len(calls))

    factory = _factory(migrated_engine)
    report = run_worker(factory, _settings(tmp_path), job, once=True)
    assert report.claimed == 1 and report.succeeded == 1
    assert run_worker(factory, _settings(tmp_path), job, once=True).succeeded == 1
    assert run_worker(factory, _settings(tmp_path), job, once=True).claimed == 0
    assert calls == [first, second]
    done = read_run(migrated_engine, first)
    assert done.status == RunStatus.SUCCEEDED and done.finished_at is not None
    assert done.progress == {"epoch": 3, "loss": 1.0 / 3, "val_loss": None}
    assert done.metrics["version"] == f"v{first:04d}-00000000"
    assert done.metrics["validation"]["consensus"]["f_measure"] == 0.6


def test_a_failing_run_is_recorded_and_the_worker_goes_on(migrated_engine: Engine, tmp_path: Path) -> None:
    broken, fine = _queue(migrated_engine, "fail", "ok")
    stop = threading.Event()

    def job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
        if run.reason == "fail":
            raise ValueError("mask 17 is not 0/255")
        stop.set()  # the queue is empty after this one
        return _register(session_factory, run, 0.7)

    report = run_worker(_factory(migrated_engine), _settings(tmp_path), job, stop=stop, poll_s=0.05)
    assert (report.claimed, report.failed, report.succeeded) == (2, 1, 1)
    failed = read_run(migrated_engine, broken)
    assert failed.status == RunStatus.FAILED and failed.error is not None
    assert "Traceback" in failed.error and "ValueError: mask 17 is not 0/255" in failed.error
    assert read_run(migrated_engine, fine).status == RunStatus.SUCCEEDED
    with Session(migrated_engine) as session:
        event = session.exec(select(Event).where(Event.kind == "training.failed")).one()
        assert event.training_run_id == broken


def test_a_worker_whose_run_was_taken_stops_without_writing(migrated_engine: Engine, tmp_path: Path) -> None:
    (run_id,) = _queue(migrated_engine, "x")
    after_loss: list[str] = []

    def job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
        heartbeat({"loss": 0.9})
        _steal(session_factory, run_id)
        heartbeat({"loss": 0.8})  # finds the run gone: raises
        after_loss.append("went on")
        return 0

    report = run_worker(_factory(migrated_engine), _settings(tmp_path), job, once=True)
    assert report.lost == 1 and not after_loss
    run = read_run(migrated_engine, run_id)
    assert run.status == RunStatus.RUNNING and run.worker_host == "thief"
    assert run.progress == {}  # the thief's claim started progress afresh; the loser wrote nothing after it


def test_background_heartbeat_keeps_a_long_epoch_alive_and_notices_loss(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    (run_id,) = _queue(migrated_engine, "slow")
    seen: dict[str, object] = {}

    def job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
        started = read_run(migrated_engine, run_id).heartbeat_at
        time.sleep(0.5)  # one long epoch, no callback
        latest = read_run(migrated_engine, run_id).heartbeat_at
        seen["advanced"] = started is not None and latest is not None and latest > started
        _steal(session_factory, run_id)
        deadline = time.monotonic() + 5
        while not heartbeat.should_stop() and time.monotonic() < deadline:
            time.sleep(0.02)
        seen["noticed"] = heartbeat.should_stop()
        heartbeat.check()
        return 0

    report = run_worker(_factory(migrated_engine), _settings(tmp_path), job, once=True, heartbeat_interval_s=0.05)
    assert seen == {"advanced": True, "noticed": True}
    assert report.lost == 1
    assert read_run(migrated_engine, run_id).worker_host == "thief"


def test_a_stop_request_hands_the_run_back_after_the_epoch(migrated_engine: Engine, tmp_path: Path) -> None:
    (run_id,) = _queue(migrated_engine, "long")
    stop = threading.Event()

    def job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
        heartbeat({"loss": 0.5})
        stop.set()  # SIGTERM arrives during epoch 2
        heartbeat({"loss": 0.4})
        raise AssertionError("not reached")

    report = run_worker(_factory(migrated_engine), _settings(tmp_path), job, stop=stop)
    assert report.released == 1 and report.failed == 0
    run = read_run(migrated_engine, run_id)
    assert run.status == RunStatus.QUEUED and run.worker_host is None
    assert run.progress == {"epoch": 2, "loss": 0.4}  # the last epoch's heartbeat was recorded
    with Session(migrated_engine) as session:
        event = session.exec(select(Event).where(Event.kind == "training.requeued")).one()
        assert event.payload == {"reason": "worker stopped"}


def test_stale_runs_are_requeued_before_claiming(migrated_engine: Engine, tmp_path: Path) -> None:
    (run_id,) = _queue(migrated_engine, "orphan")
    factory = _factory(migrated_engine)
    with factory() as session:
        assert runs.claim_next_run(session, "crashed-host") is not None
        session.commit()
        run = session.get(TrainingRun, run_id)
        assert run is not None
        run.heartbeat_at = utcnow() - timedelta(seconds=30)
        session.commit()

    def job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
        return _register(session_factory, run, 0.5)

    report = run_worker(factory, _settings(tmp_path, timeout_s=10), job, once=True)
    assert (report.requeued_stale, report.succeeded) == (1, 1)
    assert read_run(migrated_engine, run_id).worker_host != "crashed-host"


def test_heartbeat_is_refused_for_a_run_never_claimed(migrated_engine: Engine) -> None:
    (run_id,) = _queue(migrated_engine, "queued only")
    beat = RunHeartbeat(_factory(migrated_engine), runs.Lease(run_id, "nobody"), threading.Event())
    assert not beat.beat() and beat.lost and beat.should_stop()


def test_sigterm_requeues_the_run_and_exits_zero(db_url: str, migrated_engine: Engine, tmp_path: Path) -> None:
    (run_id,) = _queue(migrated_engine, "interrupted")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.loop.endless_worker", db_url, str(tmp_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"training {run_id}"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    run = read_run(migrated_engine, run_id)
    assert run.status == RunStatus.QUEUED and run.worker_host is None
    assert run.progress.get("epoch", 0) >= 1


def _queue_batches(session_factory: SessionFactory, n: int) -> list[int]:
    """``n`` prediction batches of one model version, one per ROI."""
    with session_factory() as session:
        volume = Volume(
            name="v", storage_uri="v.zarr", shape_z=4, shape_y=8, shape_x=8,
            voxel_size_z_nm=50.0, voxel_size_y_nm=10.0, voxel_size_x_nm=10.0,
        )  # fmt: skip
        version = ModelVersion(
            version="v0099-00000000", artifact_uri="m.keras", preset="small", architecture="unet-2.5d",
            data_hash="0" * 64,
        )  # fmt: skip
        session.add_all([volume, version])
        session.flush()
        assert volume.id is not None and version.id is not None
        ids = []
        for i in range(n):
            roi = Roi(volume_id=volume.id, name=f"r{i}", x=0, y=0, z=0, width=8, height=8, depth=4)
            session.add(roi)
            session.flush()
            assert roi.id is not None
            batch = batches.queue_prediction_batch(session, version.id, roi.id)
            assert batch.id is not None
            ids.append(batch.id)
        session.commit()
    return ids


def test_training_runs_go_first_then_prediction_batches(migrated_engine: Engine, tmp_path: Path) -> None:
    factory = _factory(migrated_engine)
    broken, fine = _queue_batches(factory, 2)
    (run_id,) = _queue(migrated_engine, "train")
    order: list[str] = []
    stop = threading.Event()

    def train(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
        order.append(f"run {run.id}")
        return _register(session_factory, run, 0.5)

    def predict(
        session_factory: SessionFactory, settings: Settings, batch: PredictionBatch, heartbeat: Heartbeat
    ) -> int:
        order.append(f"batch {batch.id}")
        if batch.id == broken:
            raise OSError("volume v.zarr is gone")
        with session_factory() as session:
            heartbeat.hold(session)  # results are written under the lease
            session.commit()
        stop.set()
        return 4

    report = run_worker(factory, _settings(tmp_path), train, prediction_job=predict, stop=stop, poll_s=0.05)
    assert order == [f"run {run_id}", f"batch {broken}", f"batch {fine}"]
    assert (report.claimed, report.batches_claimed, report.succeeded, report.failed) == (3, 2, 2, 1)
    with Session(migrated_engine) as session:
        failed, done = session.get(PredictionBatch, broken), session.get(PredictionBatch, fine)
        assert failed is not None and failed.status == RunStatus.FAILED
        assert failed.error is not None and "OSError: volume v.zarr is gone" in failed.error
        assert done is not None and done.status == RunStatus.SUCCEEDED and done.finished_at is not None
        event = session.exec(select(Event).where(Event.kind == "prediction.failed")).one()
        assert event.payload["prediction_batch_id"] == broken


def test_a_stop_request_hands_a_batch_back(migrated_engine: Engine, tmp_path: Path) -> None:
    factory = _factory(migrated_engine)
    (batch_id,) = _queue_batches(factory, 1)
    stop = threading.Event()

    def predict(
        session_factory: SessionFactory, settings: Settings, batch: PredictionBatch, heartbeat: Heartbeat
    ) -> int:
        stop.set()  # SIGTERM arrives while a chunk is predicted
        heartbeat.check()
        raise AssertionError("not reached")

    report = run_worker(factory, _settings(tmp_path), prediction_job=predict, stop=stop)
    assert (report.released, report.failed) == (1, 0)
    with Session(migrated_engine) as session:
        batch = session.get(PredictionBatch, batch_id)
        assert batch is not None and batch.status == RunStatus.QUEUED and batch.worker_host is None


@pytest.mark.slow
def test_the_real_training_job_registers_and_promotes_a_model(migrated_engine: Engine, tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "hela.zarr")
    records = write_labelled_slices(volume, tmp_path / "data" / "masks", {"cell01": "train", "cell02": "validation"})
    with Session(migrated_engine) as session:
        consensus_ids = rows_for(session, records, "hela")
        run = runs.queue_training_run(session, TrainingTrigger.MANUAL, "tester", "integration", "small")
        run.config = {"epochs": 1, "steps_per_epoch": 2, "seed": 1}
        session.commit()
        run_id = run.id
    report = run_worker(_factory(migrated_engine), _settings(tmp_path / "data"), once=True)
    assert report.succeeded == 1, read_run(migrated_engine, run_id or 0).error
    with Session(migrated_engine) as session:
        version = session.exec(select(ModelVersion)).one()
        assert version.promoted and version.training_run_id == run_id and version.preset == "small"
        assert Path(version.artifact_uri).is_file()
        assert Path(version.artifact_uri).parent == (tmp_path / "data" / "models" / version.version).resolve()
        used = {i for ids in version.training_data["consensus_ids"].values() for i in ids}
        expected = {
            consensus_ids[r.consensus_id] for r in records if r.split in ("train", "validation") and r.consensus_id
        }
        assert used == expected
        assert version.version.endswith(version.data_hash[:8])
        # Scored as deployed: the validation ROI predicted whole with TAP, at the source resolution and on
        # the model grid, against its consensus and its truth; training's own figures kept beside them.
        validation = version.metrics["validation"]
        assert 0.0 <= validation["consensus"]["f_measure"] <= 1.0 and validation["consensus"]["rois"] == 1.0
        assert {"grid_f_measure", "ahd_nm", "loss", "z_only_f_measure"} <= set(validation["consensus"])
        assert 0.0 <= validation["truth"]["consensus_f_measure"] <= 1.0
        assert "test" not in version.metrics  # no test ROI in this training set
        with_split = {(m.split.value, m.reference.value, m.name) for m in session.exec(select(ModelMetric)).all()}
        assert ("validation", "consensus", "f_measure") in with_split and (
            "validation",
            "truth",
            "ahd_px",
        ) in with_split
    finished = read_run(migrated_engine, run_id or 0)
    assert finished.status == RunStatus.SUCCEEDED and finished.progress["epoch"] >= 1
