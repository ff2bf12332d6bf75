"""The worker: a process that claims queued training runs and prediction batches and executes
them, one at a time; a queued training run goes first, else the oldest queued prediction batch.

Why it is built this way:

* The jobs are parameters (``run_worker(..., job=train_job, prediction_job=prediction_job)``): the
  loop around them (re-queue the dead, claim, heartbeat, finish or fail, stop on request) is the
  same whatever the job does and whichever queue it came from (a :class:`WorkQueue`), and is
  tested with plain jobs while the real ones need the ``ml`` extra.
* Two heartbeats: the job calls its :class:`RunHeartbeat` after every epoch (with the progress the
  dashboard shows), and a background thread beats every ``heartbeat_interval_s`` so a long epoch
  does not look like a dead worker. Either one finding that the run is no longer this worker's
  (re-queued after a silence, then claimed elsewhere) marks the heartbeat lost; the next epoch
  callback raises :class:`RunLost` and the worker walks away without writing to the run. A job
  writes its results under :meth:`RunHeartbeat.hold`: the lease is checked, and the row locked, in
  the very transaction that writes them, so a worker that lost its run never overwrites the new
  holder's results. The training job registers its model version and marks the run succeeded in
  that one transaction, so a run leaves at most one version, and none from a worker that lost it.
* A stop request (SIGTERM, SIGINT) is honoured at the next epoch: that epoch's heartbeat is recorded,
  the run goes back to the queue for another worker, and the process exits 0.
* Every step commits its own short transaction: the worker is a process, and the run's row must show
  the truth to the dashboard while training takes hours.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from sqlmodel import Session

from etchacell_loop.config import Settings
from etchacell_loop.db.models import ModelVersion, PredictionBatch, TrainingRun
from etchacell_loop.loop import batches, fault_points, runs
from etchacell_loop.loop.prediction_job import prediction_job as predict_batch_job
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

    def hold(self, session: Session) -> None: ...

    @property
    def lease(self) -> Lease: ...


Job = Callable[[SessionFactory, Settings, TrainingRun, Heartbeat], int]
BatchJob = Callable[[SessionFactory, Settings, PredictionBatch, Heartbeat], int]


@dataclass(frozen=True)
class WorkQueue:
    """One queue the worker takes work from: what its rows are called and how their lease is kept."""

    noun: str
    claim: Callable[[Session, str], Lease | None]
    heartbeat: Callable[[Session, Lease, Mapping[str, Any] | None], bool]
    fail: Callable[[Session, Lease, str], bool]
    release: Callable[[Session, Lease, str], bool]
    requeue_stale: Callable[[Session, float], list[int]]


def _claim_run(session: Session, worker_host: str) -> Lease | None:
    run = runs.claim_next_run(session, worker_host)
    return None if run is None or run.id is None else Lease(run.id, worker_host)


def _batch_heartbeat(session: Session, lease: Lease, progress: Mapping[str, Any] | None) -> bool:
    """A batch's heartbeat; its progress is not stored (the table has no place for it)."""
    return batches.record_heartbeat(session, lease)


TRAINING_QUEUE = WorkQueue(
    "training run", _claim_run, runs.record_heartbeat, runs.fail_run, runs.release_run, runs.requeue_stale_runs
)
PREDICTION_QUEUE = WorkQueue(
    "prediction batch",
    batches.claim_next_batch,
    _batch_heartbeat,
    batches.fail_batch,
    batches.release_batch,
    batches.requeue_stale_batches,
)
QUEUES = (TRAINING_QUEUE, PREDICTION_QUEUE)
"""In the order the worker looks for work."""


class RunHeartbeat:
    """The heartbeat of one claimed run or batch, shared by the job and a background thread."""

    def __init__(
        self, session_factory: SessionFactory, lease: Lease, stop: threading.Event, queue: WorkQueue = TRAINING_QUEUE
    ) -> None:
        self._session_factory = session_factory
        self._lease = lease
        self._stop = stop
        self._queue = queue
        self._lost = threading.Event()
        self._lock = threading.Lock()
        self._epochs = 0

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def lease(self) -> Lease:
        """The hold this heartbeat keeps (a job names its own files after it)."""
        return self._lease

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
            raise RunLost(f"{self._queue.noun} {self._lease.run_id} is no longer held by {self._lease.worker_host}")
        if self._stop.is_set():
            raise WorkerStopping(STOP_REASON)

    def hold(self, session: Session) -> None:
        """Beat inside the caller's transaction, or raise :class:`RunLost`: what the caller writes
        next in that transaction commits only while the run is this worker's (the guarded update
        locks the row until the commit)."""
        if self._lost.is_set() or not self._queue.heartbeat(session, self._lease, None):
            self._lost.set()
            self.check()

    def beat(self, progress: Mapping[str, Any] | None = None) -> bool:
        """One heartbeat in its own transaction; False (and marked lost) when the run is not ours."""
        if self._lost.is_set():
            return False
        with self._lock, self._session_factory() as session:
            owned = self._queue.heartbeat(session, self._lease, progress)
            session.commit()
        if not owned:
            log.warning("%s %d was taken from this worker", self._queue.noun, self._lease.run_id)
            self._lost.set()
        return owned


@dataclass
class WorkerReport:
    """What one worker process did, for its exit message and the tests."""

    claimed: int = 0  # runs and batches alike; the counters below count both
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0
    requeued_stale: int = 0
    batches_claimed: int = 0  # how many of the claimed were prediction batches


def run_worker(
    session_factory: SessionFactory,
    settings: Settings,
    job: Job = train_job,
    *,
    prediction_job: BatchJob = predict_batch_job,
    once: bool = False,
    stop: threading.Event | None = None,
    worker_host: str | None = None,
    poll_s: float = 10.0,
    heartbeat_interval_s: float | None = None,
) -> WorkerReport:
    """Claim and run training runs and prediction batches until ``stop`` is set (or, with ``once``,
    after one claim attempt).

    Before each claim, runs and batches silent for longer than ``training.heartbeat_timeout_s`` are
    re-queued. The background heartbeat beats every quarter of that timeout unless told otherwise.
    """
    stop = stop or threading.Event()
    host = worker_host or runs.worker_identity()
    timeout_s = settings.training.heartbeat_timeout_s
    interval_s = heartbeat_interval_s or timeout_s / 4
    report = WorkerReport()
    while not stop.is_set():
        report.requeued_stale += len(_requeue_stale(session_factory, timeout_s))
        claimed = _claim(session_factory, host)
        if claimed is None:
            if once:
                break
            stop.wait(poll_s)
            continue
        queue, lease = claimed
        report.claimed += 1
        if queue is TRAINING_QUEUE:
            outcome = run_claimed(session_factory, settings, job, lease, stop, interval_s)
        else:
            report.batches_claimed += 1
            outcome = run_claimed_batch(session_factory, settings, prediction_job, lease, stop, interval_s)
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
    log.info("training run %d (%s) started on %s", lease.run_id, run.preset, lease.worker_host)
    fault_points.reach("train:claimed")
    heartbeat = RunHeartbeat(session_factory, lease, stop, TRAINING_QUEUE)
    return _run_leased(
        session_factory,
        TRAINING_QUEUE,
        lease,
        _beating(heartbeat, heartbeat_interval_s),
        functools.partial(job, session_factory, settings, run, heartbeat),
        functools.partial(_finish, session_factory, lease),
    )


def run_claimed_batch(
    session_factory: SessionFactory,
    settings: Settings,
    job: BatchJob,
    lease: Lease,
    stop: threading.Event,
    heartbeat_interval_s: float,
) -> str:
    """Run the job of one claimed prediction batch and record how it ended (a WorkerReport counter)."""
    with session_factory() as session:
        batch = session.get(PredictionBatch, lease.run_id)
        assert batch is not None
        session.expunge(batch)
    log.info("prediction batch %d (ROI %d) started on %s", lease.run_id, batch.roi_id, lease.worker_host)
    heartbeat = RunHeartbeat(session_factory, lease, stop, PREDICTION_QUEUE)
    return _run_leased(
        session_factory,
        PREDICTION_QUEUE,
        lease,
        _beating(heartbeat, heartbeat_interval_s),
        functools.partial(job, session_factory, settings, batch, heartbeat),
        functools.partial(_finish_batch, session_factory, lease),
    )


def _run_leased(
    session_factory: SessionFactory,
    queue: WorkQueue,
    lease: Lease,
    beating: AbstractContextManager[None],
    work: Callable[[], int],
    finish: Callable[[int], str],
) -> str:
    """Run ``work`` while the heartbeat beats; record how it ended (``finish`` on success) and
    return the name of the WorkerReport counter that says so."""
    try:
        with beating:
            result = work()
    except RunLost:
        log.warning("%s %d abandoned: another worker holds it now", queue.noun, lease.run_id)
        return "lost"
    except WorkerStopping:
        return _release(session_factory, lease, queue)
    except Exception:
        return _fail(session_factory, lease, traceback.format_exc(), queue)
    return finish(result)


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: the current run is handed back after its epoch, then exit 0."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.warning("%s received: stopping after the current epoch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def _requeue_stale(session_factory: SessionFactory, timeout_s: float) -> list[int]:
    requeued: list[int] = []
    for queue in QUEUES:
        with session_factory() as session:
            found = queue.requeue_stale(session, timeout_s)
            session.commit()
        for row_id in found:
            log.warning("%s %d re-queued: its worker went silent", queue.noun, row_id)
        requeued += found
    return requeued


def _claim(session_factory: SessionFactory, worker_host: str) -> tuple[WorkQueue, Lease] | None:
    """The first queue's oldest queued row, each claim in its own transaction."""
    for queue in QUEUES:
        with session_factory() as session:
            lease = queue.claim(session, worker_host)
            session.commit()
        if lease is not None:
            return queue, lease
    return None


def _finish(session_factory: SessionFactory, lease: Lease, version_id: int) -> str:
    """Mark the run succeeded with its version, unless its job already did so under this lease."""
    with session_factory() as session:
        version = session.get(ModelVersion, version_id)
        metrics = runs.succeeded_metrics(version) if version is not None else {"model_version_id": version_id}
        owned = runs.finish_run(session, lease, metrics) or runs.succeeded_under(session, lease)
        session.commit()
    if not owned:
        log.warning("training run %d finished, but another worker holds it now: not recorded", lease.run_id)
        return "lost"
    log.info("training run %d succeeded: model version %d", lease.run_id, version_id)
    return "succeeded"


def _finish_batch(session_factory: SessionFactory, lease: Lease, n_slices: int) -> str:
    with session_factory() as session:
        owned = batches.finish_batch(session, lease)
        session.commit()
    if not owned:
        log.warning("prediction batch %d finished, but another worker holds it now: not recorded", lease.run_id)
        return "lost"
    log.info("prediction batch %d succeeded: %d slices", lease.run_id, n_slices)
    return "succeeded"


def _fail(session_factory: SessionFactory, lease: Lease, error: str, queue: WorkQueue = TRAINING_QUEUE) -> str:
    with session_factory() as session:
        owned = queue.fail(session, lease, error)
        session.commit()
    if not owned:
        return "lost"
    log.error("%s %d failed: %s", queue.noun, lease.run_id, error.strip().splitlines()[-1])
    return "failed"


def _release(session_factory: SessionFactory, lease: Lease, queue: WorkQueue = TRAINING_QUEUE) -> str:
    with session_factory() as session:
        owned = queue.release(session, lease, STOP_REASON)
        session.commit()
    if not owned:
        return "lost"
    log.warning("%s %d handed back to the queue: %s", queue.noun, lease.run_id, STOP_REASON)
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
