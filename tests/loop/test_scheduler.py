"""The daemon and ``tick``: jobs recorded in job_run, failures contained, one holder of the project,
a stop request honoured after the running job."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.config import PanoptesSettings, Settings
from etchacell_loop.db.models import Event, JobRun, JobStatus, Workflow
from etchacell_loop.loop.jobs import Job, run_recorded
from etchacell_loop.loop.lock import DaemonAlreadyRunning, ProjectLock
from etchacell_loop.loop.scheduler import LoopRunner, PanoptesConnection, run_daemon, tick
from etchacell_loop.panoptes.errors import PanoptesError
from etchacell_loop.panoptes.gateway import PanoptesGateway, connect
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.panoptes.support import FAST_POLICY, panoptes_settings, session_factory, wait_until

PROJECT = 4242


class _Figures:
    def __init__(self, **figures: Any) -> None:
        self.figures = figures

    def as_json(self) -> dict[str, Any]:
        return dict(self.figures)


def _explode(_factory: Any, _gateway: PanoptesGateway | None, _settings: Settings) -> _Figures:
    raise RuntimeError("the disk is full")


def _count(_factory: Any, _gateway: PanoptesGateway | None, _settings: Settings) -> _Figures:
    return _Figures(slices=3)


def _unreachable() -> PanoptesGateway:
    raise PanoptesError("cannot reach https://panoptes.invalid")


def settings_for(tmp_path: Path, project_id: int = PROJECT, **panoptes: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", panoptes=PanoptesSettings(project_id=project_id, **panoptes))


def runs(engine: Engine) -> list[JobRun]:
    with Session(engine) as session:
        return list(session.exec(select(JobRun).order_by(col(JobRun.id))).all())


def test_a_job_that_fails_is_recorded_with_its_traceback_and_an_event(migrated_engine: Engine, tmp_path: Path) -> None:
    factory = session_factory(migrated_engine)
    failing = Job("explode", _explode, needs_panoptes=False)
    outcome = run_recorded(failing, factory, None, settings_for(tmp_path), "host-a")
    assert not outcome.ok and outcome.error == "RuntimeError: the disk is full"
    fine = run_recorded(Job("count", _count, needs_panoptes=False), factory, None, settings_for(tmp_path), "h")
    assert fine.ok and fine.result["slices"] == 3
    failed, done = runs(migrated_engine)
    assert (failed.job, failed.status, failed.host) == ("explode", JobStatus.FAILED, "host-a")
    assert failed.error is not None and "the disk is full" in failed.error and "Traceback" in failed.error
    assert failed.finished_at is not None
    assert (done.status, done.result["slices"]) == (JobStatus.OK, 3)
    with Session(migrated_engine) as session:
        events = session.exec(select(Event).where(Event.kind == "job.failed")).all()
    assert [e.payload["job_run_id"] for e in events] == [failed.id]


def test_a_dead_api_fails_only_the_jobs_that_need_it(migrated_engine: Engine, tmp_path: Path) -> None:
    runner = LoopRunner(migrated_engine, settings_for(tmp_path), PanoptesConnection(_unreachable))
    outcomes = tick(runner, ["ingest", "aggregate", "train"])
    assert [(o.job, o.ok) for o in outcomes] == [("ingest", False), ("aggregate", True), ("train", True)]
    assert outcomes[0].panoptes_error and "cannot reach" in (outcomes[0].error or "")


def test_tick_is_refused_while_another_process_holds_the_project(migrated_engine: Engine, tmp_path: Path) -> None:
    runner = LoopRunner(migrated_engine, settings_for(tmp_path), PanoptesConnection(_unreachable))
    with ProjectLock(migrated_engine, PROJECT), pytest.raises(DaemonAlreadyRunning):
        tick(runner, ["train"])
    assert runs(migrated_engine) == []


def test_runs_left_running_by_a_dead_daemon_are_closed_by_the_next_holder(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    with Session(migrated_engine) as session:
        session.add(JobRun(job="aggregate", status=JobStatus.RUNNING, host="gone"))
        session.commit()
    tick(LoopRunner(migrated_engine, settings_for(tmp_path), PanoptesConnection(_unreachable)), ["train"])
    interrupted, train = runs(migrated_engine)
    assert interrupted.status is JobStatus.FAILED and "interrupted" in (interrupted.error or "")
    assert train.status is JobStatus.OK


def test_the_daemon_runs_every_job_at_start_and_stops_after_the_running_one(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    runner = LoopRunner(migrated_engine, settings_for(tmp_path), PanoptesConnection(_unreachable))
    stop = threading.Event()
    daemon = threading.Thread(target=run_daemon, args=(runner, stop, ["aggregate", "train"]))
    daemon.start()
    try:
        assert wait_until(
            lambda: {r.job for r in runs(migrated_engine) if r.status is JobStatus.OK} == {"aggregate", "train"}, 60
        )
        with pytest.raises(DaemonAlreadyRunning):  # it holds the project while it runs
            ProjectLock(migrated_engine, PROJECT).acquire()
    finally:
        stop.set()
        daemon.join(60)
    assert not daemon.is_alive()
    assert all(r.status is not JobStatus.RUNNING for r in runs(migrated_engine))
    with ProjectLock(migrated_engine, PROJECT) as lock:  # released on the way out
        assert lock.held


def test_the_ingest_job_registers_the_workflows_and_stores_classifications(
    migrated_engine: Engine, sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path
) -> None:
    project, workflow = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    settings = settings_for(
        tmp_path,
        project_id=project,
        endpoint=sandbox.url,
        client_id=sandbox.client_id,
        client_secret=panoptes_settings(sandbox).client_secret,
        segmentation_workflow_id=workflow,
    )
    with connect(settings.panoptes, FAST_POLICY) as gateway:
        set_id = gateway.ensure_subject_set(project, "raw", workflow_id=workflow)
        subject = gateway.create_subject(project, set_id, [("image/jpeg", b"x")], {}).id
    sandbox.bulk_classifications(workflow, [subject] * 3)
    runner = LoopRunner(migrated_engine, settings, PanoptesConnection(lambda: connect(settings.panoptes, FAST_POLICY)))
    first, again = tick(runner, ["ingest"]), tick(runner, ["ingest"])
    runner.panoptes.close()
    assert first[0].ok and first[0].result["inserted"] == 3
    assert again[0].ok and again[0].result["inserted"] == 0
    with Session(migrated_engine) as session:
        assert [w.panoptes_id for w in session.exec(select(Workflow)).all()] == [workflow]
