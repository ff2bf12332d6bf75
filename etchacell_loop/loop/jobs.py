"""The daemon's jobs by name, and one recorded run of a job.

Why one place: the scheduler and ``etchacell tick JOB`` must run exactly the same function with the
same bookkeeping, so that a job run by hand is indistinguishable from a scheduled one on the
dashboard. Each run leaves a :class:`~etchacell_loop.db.models.JobRun` row (the daemon's heartbeat:
started, finished, result or error); a job that raises is recorded as failed with an ``Event``, and
the caller goes on — a daemon never dies of one job's failure.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlmodel import Session, select

from etchacell_loop.config import JobSettings, Settings
from etchacell_loop.db.models import Event, EventLevel, JobRun, JobStatus
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop import fault_points
from etchacell_loop.loop.consensus_job import run_aggregate
from etchacell_loop.loop.ingest import run_ingest
from etchacell_loop.loop.publish_job import run_publish
from etchacell_loop.loop.retire_job import run_retire
from etchacell_loop.loop.train_trigger import run_train_trigger
from etchacell_loop.panoptes.errors import PanoptesError
from etchacell_loop.panoptes.gateway import PanoptesGateway

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]


class JobResult(Protocol):
    def as_json(self) -> dict[str, Any]: ...


JobFunction = Callable[[SessionFactory, PanoptesGateway | None, Settings], JobResult]


@dataclass(frozen=True)
class Job:
    """A job: its function, how often the daemon runs it, whether it talks to Panoptes."""

    name: str
    function: JobFunction
    needs_panoptes: bool

    def interval_s(self, settings: JobSettings) -> int:
        """Seconds between the daemon's runs of this job."""
        return settings.intervals()[self.name]


JOBS: Mapping[str, Job] = {
    job.name: job
    for job in (
        Job("ingest", run_ingest, needs_panoptes=True),
        Job("aggregate", run_aggregate, needs_panoptes=False),
        Job("retire", run_retire, needs_panoptes=True),
        Job("train", run_train_trigger, needs_panoptes=False),
        Job("publish", run_publish, needs_panoptes=True),
    )
}
"""In the order one round of the loop runs them."""


class UnknownJob(KeyError):
    def __str__(self) -> str:
        return f"unknown job {self.args[0]!r}; jobs: {', '.join(JOBS)}"


def job_named(name: str) -> Job:
    try:
        return JOBS[name]
    except KeyError:
        raise UnknownJob(name) from None


@dataclass(frozen=True)
class JobOutcome:
    """What one recorded run of a job did."""

    job: str
    job_run_id: int
    ok: bool
    seconds: float
    result: dict[str, Any]
    error: str | None = None
    panoptes_error: bool = False  # it failed talking to Panoptes: sign in afresh before the next


GatewayProvider = Callable[[], PanoptesGateway]


def run_recorded(
    job: Job, session_factory: SessionFactory, gateway: GatewayProvider | None, settings: Settings, host: str
) -> JobOutcome:
    """Run ``job`` once between a ``JobRun`` row marked running and the same row marked ok or
    failed. ``gateway`` is called only for jobs that talk to Panoptes (so a dead API fails those
    jobs alone, each run, until it is back). A fault test may have the process kill itself at the
    job's start, after one of its commits or at its end (:mod:`.fault_points`)."""
    run_id = _start(session_factory, job.name, host)
    fault_points.reach(f"job:{job.name}:start")
    started = time.perf_counter()
    try:
        result = _call(job, session_factory, gateway, settings)
    except Exception as exc:  # a job's failure is recorded, never the daemon's end
        seconds = time.perf_counter() - started
        error = f"{type(exc).__name__}: {exc}"
        log.error("job %s failed after %.1f s: %s", job.name, seconds, error)
        _finish(session_factory, run_id, JobStatus.FAILED, {"seconds": round(seconds, 3)}, traceback.format_exc())
        _failure_event(session_factory, job.name, run_id, error)
        return JobOutcome(job.name, run_id, False, seconds, {}, error, isinstance(exc, PanoptesError))
    seconds = time.perf_counter() - started
    result = {**result, "seconds": round(seconds, 3)}
    _finish(session_factory, run_id, JobStatus.OK, result, None)
    log.info("job %s done in %.1f s: %s", job.name, seconds, _brief(result))
    return JobOutcome(job.name, run_id, True, seconds, result)


def _call(
    job: Job, session_factory: SessionFactory, gateway: GatewayProvider | None, settings: Settings
) -> dict[str, Any]:
    """The job's function, passing its fault points (after each commit; at its end, however it ends)."""
    commits = fault_points.CommitPoints(f"job:{job.name}:commit")
    try:
        connection = gateway() if job.needs_panoptes and gateway is not None else None
        return job.function(commits.wrap(session_factory), connection, settings).as_json()
    finally:
        commits.ended()
        fault_points.reach(f"job:{job.name}:end")


def close_interrupted_runs(session_factory: SessionFactory) -> int:
    """Mark job runs still "running" as failed (interrupted): called by whoever has just taken the
    project's lock, so no live process can own them — their process died mid-job."""
    with session_factory() as session:
        rows = session.exec(select(JobRun).where(JobRun.status == JobStatus.RUNNING)).all()
        for row in rows:
            row.status = JobStatus.FAILED
            row.error = "interrupted: the process running it ended before it finished"
            row.finished_at = utcnow()
            session.add(row)
        session.commit()
        return len(rows)


def _start(session_factory: SessionFactory, job: str, host: str) -> int:
    with session_factory() as session:
        row = JobRun(job=job, status=JobStatus.RUNNING, host=host)
        session.add(row)
        session.commit()
        assert row.id is not None
        return row.id


def _finish(
    session_factory: SessionFactory, run_id: int, status: JobStatus, result: dict[str, Any], error: str | None
) -> None:
    with session_factory() as session:
        row = session.get(JobRun, run_id)
        if row is None:  # pragma: no cover - the row was committed by _start
            return
        row.status = status
        row.result = result
        row.error = error
        row.finished_at = utcnow()
        session.add(row)
        session.commit()


def _failure_event(session_factory: SessionFactory, job: str, run_id: int, error: str) -> None:
    with session_factory() as session:
        session.add(
            Event(
                level=EventLevel.ERROR,
                kind="job.failed",
                message=f"{job}: {error}",
                payload={"job": job, "job_run_id": run_id},
            )
        )
        session.commit()


def _brief(result: Mapping[str, Any]) -> str:
    """The scalar figures of a result, for one log line."""
    return ", ".join(f"{k}={v}" for k, v in result.items() if isinstance(v, int | float | str) or v is None)
