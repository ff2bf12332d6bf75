"""The training worker: a process that claims queued training runs and executes them, one at a time.

Why it is built this way:

* The job is a parameter (``run_worker(..., job=train_job)``): the loop around it (re-queue the
  dead, claim, heartbeat, finish or fail, stop on request) is the same whatever the job does, and
  is tested with plain jobs while the real one needs the ``ml`` extra.
* Two heartbeats: the job calls its :class:`RunHeartbeat` after every epoch (with the progress the
  dashboard shows), and a background thread beats every ``heartbeat_interval_s`` so a long epoch
  does not look like a dead worker. Either one finding that the run is no longer this worker's
  (re-queued after a silence, then claimed elsewhere) marks the heartbeat lost; the next epoch
  callback raises :class:`RunLost` and the worker walks away without writing to the run.
* A stop request (SIGTERM, SIGINT) is honoured at the next epoch: that epoch's heartbeat is recorded,
  the run goes back to the queue for another worker, and the process exits 0.
* Every step commits its own short transaction: the worker is a process, and the run's row must show
  the truth to the dashboard while training takes hours.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from sqlmodel import Session

from etchacell_loop.config import Settings
from etchacell_loop.db.models import ModelVersion, TrainingRun
from etchacell_loop.loop import runs
from etchacell_loop.loop.runs import Lease
from etchacell_loop.loop.train_job import train_job

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
STOP_REASON = "worker stopped"


class RunLost(Exception):
    """The run was taken from this worker (re-queued as dead, maybe claimed by another)."""


class WorkerStopping(Exception):
    """The worker was asked to stop; the run goes back to the queue."""


class Heartbeat(Protocol):
    """What a job gets to report progress and learn whether to stop."""

    def __call__(self, progress: Mapping[str, Any]) -> None: ...

    def should_stop(self) -> bool: ...

    def check(self) -> None: ...


Job = Callable[[SessionFactory, Settings, TrainingRun, Heartbeat], int]


class RunHeartbeat:
    """The heartbeat of one claimed run, shared by the job (per epoch) and a background thread."""

    def __init__(self, session_factory: SessionFactory, lease: Lease, stop: threading.Event) -> None:
        self._session_factory = session_factory
        self._lease = lease
        self._stop = stop
        self._lost = threading.Event()
        self._lock = threading.Lock()
        self._epochs = 0

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def __call__(self, progress: Mapping[str, Any]) -> None:
        """Record one epoch's progress, then stop the job if the run was lost or a stop was asked."""
        self._epochs += 1
        record = {"epoch": self._epochs, **{key: _plain(value) for key, value in progress.items()}}
        self.beat(record)
        self.check()

    def should_stop(self) -> bool:
        """True once the job should end after the current epoch (for ``train_model(should_stop=…)``)."""
        return self._stop.is_set() or self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`RunLost` or :class:`WorkerStopping` when the job must not go on."""
        if self._lost.is_set():
            raise RunLost(f"training run {self._lease.run_id} is no longer held by {self._lease.worker_host}")
        if self._stop.is_set():
            raise WorkerStopping(STOP_REASON)

    def beat(self, progress: Mapping[str, Any] | None = None) -> bool:
        """One heartbeat in its own transaction; False (and marked lost) when the run is not ours."""
        if self._lost.is_set():
            return False
        with self._lock, self._session_factory() as session:
            owned = runs.record_heartbeat(session, self._lease, progress)
            session.commit()
        if not owned:
            log.warning("training run %d was taken from this worker", self._lease.run_id)
            self._lost.set()
        return owned


@dataclass
class WorkerReport:
    """What one worker process did, for its exit message and the tests."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0
    requeued_stale: int = 0


def run_worker(
    session_factory: SessionFactory,
    settings: Settings,
    job: Job = train_job,
    *,
    once: bool = False,
    stop: threading.Event | None = None,
    worker_host: str | None = None,
    poll_s: float = 10.0,
    heartbeat_interval_s: float | None = None,
) -> WorkerReport:
    """Claim and run training runs until ``stop`` is set (or, with ``once``, after one claim attempt).

    Before each claim, runs silent for longer than ``training.heartbeat_timeout_s`` are re-queued.
    The background heartbeat beats every quarter of that timeout unless told otherwise.
    """
    stop = stop or threading.Event()
    host = worker_host or runs.worker_identity()
    timeout_s = settings.training.heartbeat_timeout_s
    interval_s = heartbeat_interval_s or timeout_s / 4
    report = WorkerReport()
    while not stop.is_set():
        report.requeued_stale += len(_requeue_stale(session_factory, timeout_s))
        lease = _claim(session_factory, host)
        if lease is None:
            if once:
                break
            stop.wait(poll_s)
            continue
        report.claimed += 1
        outcome = run_claimed(session_factory, settings, job, lease, stop, interval_s)
        setattr(report, outcome, getattr(report, outcome) + 1)
        if once:
            break
    return report


def run_claimed(
    session_factory: SessionFactory,
    settings: Settings,
    job: Job,
    lease: Lease,
    stop: threading.Event,
    heartbeat_interval_s: float,
) -> str:
    """Run the job of one claimed run and record how it ended: the name of a WorkerReport counter."""
    with session_factory() as session:
        run = session.get(TrainingRun, lease.run_id)
        assert run is not None
        session.expunge(run)
    heartbeat = RunHeartbeat(session_factory, lease, stop)
    log.info("training run %d (%s) started on %s", lease.run_id, run.preset, lease.worker_host)
    try:
        with _beating(heartbeat, heartbeat_interval_s):
            version_id = job(session_factory, settings, run, heartbeat)
    except RunLost:
        log.warning("training run %d abandoned: another worker holds it now", lease.run_id)
        return "lost"
    except WorkerStopping:
        return _release(session_factory, lease)
    except Exception:
        return _fail(session_factory, lease, traceback.format_exc())
    return _finish(session_factory, lease, version_id)


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: the current run is handed back after its epoch, then exit 0."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.warning("%s received: stopping after the current epoch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def _requeue_stale(session_factory: SessionFactory, timeout_s: float) -> list[int]:
    with session_factory() as session:
        requeued = runs.requeue_stale_runs(session, timeout_s)
        session.commit()
    for run_id in requeued:
        log.warning("training run %d re-queued: its worker went silent", run_id)
    return requeued


def _claim(session_factory: SessionFactory, worker_host: str) -> Lease | None:
    with session_factory() as session:
        run = runs.claim_next_run(session, worker_host)
        session.commit()
    if run is None or run.id is None:
        return None
    return Lease(run.id, worker_host)


def _finish(session_factory: SessionFactory, lease: Lease, version_id: int) -> str:
    with session_factory() as session:
        version = session.get(ModelVersion, version_id)
        metrics: dict[str, Any] = {"model_version_id": version_id}
        if version is not None:
            metrics |= {"version": version.version, "promoted": version.promoted, **version.metrics}
        owned = runs.finish_run(session, lease, metrics)
        session.commit()
    if not owned:
        log.warning("training run %d finished, but another worker holds it now: not recorded", lease.run_id)
        return "lost"
    log.info("training run %d succeeded: model version %d", lease.run_id, version_id)
    return "succeeded"


def _fail(session_factory: SessionFactory, lease: Lease, error: str) -> str:
    with session_factory() as session:
        owned = runs.fail_run(session, lease, error)
        session.commit()
    if not owned:
        return "lost"
    log.error("training run %d failed: %s", lease.run_id, error.strip().splitlines()[-1])
    return "failed"


def _release(session_factory: SessionFactory, lease: Lease) -> str:
    with session_factory() as session:
        owned = runs.release_run(session, lease, STOP_REASON)
        session.commit()
    if not owned:
        return "lost"
    log.warning("training run %d handed back to the queue: %s", lease.run_id, STOP_REASON)
    return "released"


@contextmanager
def _beating(heartbeat: RunHeartbeat, interval_s: float) -> Iterator[None]:
    """A daemon thread that beats every ``interval_s`` while the job runs."""
    done = threading.Event()

    def beat_until_done() -> None:
        while not done.wait(interval_s):
            try:
                if not heartbeat.beat():
                    return
            except Exception:  # a database hiccup must not kill the thread; the next beat retries
                log.exception("heartbeat failed")

    thread = threading.Thread(target=beat_until_done, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _plain(value: Any) -> Any:
    """numpy scalars and the like as JSON-friendly Python values (NaN and infinities as None)."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None
