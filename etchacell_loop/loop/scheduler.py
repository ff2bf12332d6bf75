"""The daemon: the loop's jobs on a schedule, one at a time, until told to stop.

Why these choices:
- APScheduler 3 with a single worker thread: jobs never overlap each other or themselves (the
  database sees one writer from the daemon), and a job that falls behind runs once, not once per
  missed period (``coalesce``). Every job runs once at start-up, then on its period.
- Stopping is cooperative: the caller sets ``stop`` (the CLI does on SIGTERM/SIGINT) and the daemon
  lets the running job finish its step, then exits. A harder stop (``kill -9``) is safe too: every
  job is idempotent and commits in small transactions.
- The project's lock (:mod:`.lock`) is held for the daemon's whole life; runs left "running" by a
  daemon that died are closed as interrupted when the next one starts.
- Panoptes is connected lazily and again after a failure: a dead API fails the jobs that need it,
  each period, until it answers again; the others go on.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.engine import Engine
from sqlmodel import Session

from etchacell_loop.config import Settings
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop.jobs import JOBS, Job, JobOutcome, close_interrupted_runs, job_named, run_recorded
from etchacell_loop.loop.lock import ProjectLock
from etchacell_loop.panoptes.gateway import PanoptesGateway

log = logging.getLogger(__name__)


class PanoptesConnection:
    """A gateway made on first use and made again after a failure to connect or a closed session."""

    def __init__(self, connect: Callable[[], PanoptesGateway]) -> None:
        self._connect = connect
        self._gateway: PanoptesGateway | None = None
        self._lock = threading.Lock()

    def __call__(self) -> PanoptesGateway:
        with self._lock:
            if self._gateway is None:
                self._gateway = self._connect()
            return self._gateway

    def reset(self) -> None:
        """Forget the gateway (after a Panoptes error): the next job signs in afresh."""
        with self._lock:
            if self._gateway is not None:
                self._gateway.close()
            self._gateway = None

    def close(self) -> None:
        self.reset()


@dataclass
class LoopRunner:
    """Runs named jobs with their bookkeeping; shared by the daemon and ``etchacell tick``."""

    engine: Engine
    settings: Settings
    panoptes: PanoptesConnection
    host: str = field(default_factory=socket.gethostname)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def run(self, job: Job) -> JobOutcome:
        outcome = run_recorded(job, self.session, self.panoptes, self.settings, self.host)
        if outcome.panoptes_error:
            self.panoptes.reset()
        return outcome


def project_lock(engine: Engine, settings: Settings) -> ProjectLock:
    project_id = settings.panoptes.project_id
    if project_id is None:
        raise ValueError("panoptes.project_id is not set: the daemon runs one project")
    return ProjectLock(engine, project_id)


def tick(runner: LoopRunner, names: Sequence[str]) -> list[JobOutcome]:
    """Run the named jobs once each, in the order given, under the project's lock."""
    jobs = [job_named(name) for name in names]
    with project_lock(runner.engine, runner.settings):
        close_interrupted_runs(runner.session)
        return [runner.run(job) for job in jobs]


def run_daemon(runner: LoopRunner, stop: threading.Event, names: Sequence[str] | None = None) -> None:
    """Run the jobs on their periods until ``stop`` is set; returns after the running job ends."""
    jobs = [job_named(name) for name in names] if names else list(JOBS.values())
    with project_lock(runner.engine, runner.settings):
        interrupted = close_interrupted_runs(runner.session)
        if interrupted:
            log.warning("closed %d job run(s) left running by a daemon that ended", interrupted)
        scheduler = _scheduler(runner, jobs)
        scheduler.start()
        log.info(
            "daemon started: %s", ", ".join(f"{j.name} every {j.interval_s(runner.settings.jobs)} s" for j in jobs)
        )
        try:
            stop.wait()
        finally:
            log.info("stopping: letting the running job finish")
            scheduler.shutdown(wait=True)
            runner.panoptes.close()
    log.info("daemon stopped")


def _scheduler(runner: LoopRunner, jobs: Sequence[Job]) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone="UTC",
    )
    now = utcnow()
    for job in jobs:
        scheduler.add_job(
            runner.run,
            "interval",
            args=[job],
            seconds=job.interval_s(runner.settings.jobs),
            id=job.name,
            name=job.name,
            next_run_time=now,
        )
    return scheduler
