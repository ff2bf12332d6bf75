"""``kill -9`` of the daemon and the worker at random moments changes nothing in the end.

Two identical worlds (same subjects, same classifications already posted) run the loop: one by hand,
undisturbed, the other under the real ``etchacell daemon``, killed with SIGKILL several times while
its jobs run, then the real ``etchacell worker``, killed while it trains. Once both have settled, the
databases and the two sandbox projects hold the same things, and nothing twice.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from etchacell_loop.sandbox.harness import SandboxProcess
from tests.conftest import POSTGRES_ENV, postgres_database
from tests.loop.worlds import (
    LOOP_JOBS,
    World,
    as_text,
    duplicates,
    make_world,
    replay_classifications,
    snapshot,
    tick_until_settled,
    upload_subjects,
)
from tests.panoptes.support import wait_until

DAEMON_KILLS = 5
WORKER_KILLS = 2
SEED = 7


@dataclass
class KillLog:
    """Where each SIGKILL landed: the jobs (or training run) running at that moment."""

    daemon: list[tuple[str, list[str]]] = field(default_factory=list)
    worker: list[str] = field(default_factory=list)


@pytest.fixture
def twin_db_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database on the same backend as ``db_url``."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'twin.db'}"
        return
    yield from postgres_database(os.environ[POSTGRES_ENV])


@pytest.fixture
def worlds(
    sandbox: SandboxProcess, db_url: str, twin_db_url: str, tmp_path: Path
) -> Iterator[tuple[World, World, World]]:
    """The volunteers' project (on a throwaway SQLite database), then the undisturbed and the
    disturbed world, on the backend under test."""
    sandbox.clear_faults()
    made = (
        make_world("volunteers", sandbox, f"sqlite:///{tmp_path / 'source.db'}", tmp_path / "source"),
        make_world("undisturbed", sandbox, db_url, tmp_path / "calm"),
        make_world("disturbed", sandbox, twin_db_url, tmp_path / "rough"),
    )
    try:
        yield made
    finally:
        for world in made:
            world.engine.dispose()


def test_killing_the_daemon_and_the_worker_leaves_what_an_undisturbed_run_leaves(
    sandbox: SandboxProcess, worlds: tuple[World, World, World], processes: Processes, tmp_path: Path
) -> None:
    if importlib.util.find_spec("keras") is None:
        pytest.skip("the worker trains with keras (the ml extra)")
    source, calm, rough = worlds
    clock = Stopwatch()
    volume, subjects = tmp_path / "hela.zarr", tmp_path / "subjects"
    source.cli("synth", "volume", str(volume), "--shape", "8,640,640", "--cells", "2", "--seed", "3")
    source.cli("subjects", "prepare", str(volume), "--all-rois", "--out", str(subjects))
    upload_subjects(source, subjects)
    (n_subjects,) = source.rows("SELECT COUNT(*) FROM subject")[0]
    source.cli("sandbox", "volunteers", "--url", sandbox.url, "--truth", str(volume), "--mix", "careful=1",
               "--workflow", str(source.project["segmentation_workflow_id"]),
               "--max-classifications", str(2 * n_subjects), "--seed", "1")  # fmt: skip
    for world in (calm, rough):
        upload_subjects(world, subjects)
        assert replay_classifications(sandbox, source.project["project_id"], world) == 2 * n_subjects
    clock.lap("inputs")

    tick_until_settled(calm, sandbox)
    clock.lap("undisturbed loop")
    kills, rng = KillLog(), random.Random(SEED)
    kill_the_daemon_repeatedly(rough, processes, rng, kills)
    clock.lap("daemon kills")
    # The last daemon runs undisturbed while the worker, started now to load its deep learning stack,
    # is killed in the middle of the one training run and restarted until the run succeeds.
    after = last_job_run_id(rough)
    daemon = processes.start(rough, DAEMON_ARGS, "daemon")
    worker = processes.start(rough, WORKER_ARGS, "worker")
    assert wait_until(lambda: all(ok_runs(rough, after, job) >= 2 for job in LOOP_JOBS), 120, 0.2)
    rough.cli("retrain", "--reason", "fault test")
    kill_the_worker_repeatedly(rough, processes, worker, rng, kills)
    assert processes.stop(daemon) == 0
    tick_until_settled(rough, sandbox)
    clock.lap("worker kills")

    expected, found = snapshot(calm, sandbox), snapshot(rough, sandbox)
    for part in expected:
        assert found[part] == expected[part], f"{part} differ:\n{as_text({'undisturbed': expected[part]})}\n" + (
            as_text({"disturbed": found[part]})
        )
    assert expected["retired_on_panoptes"] and len(expected["retired_on_panoptes"]) < n_subjects
    assert duplicates(rough) == {name: [] for name in duplicates(rough)}
    assert rough.rows("SELECT job FROM job_run WHERE status = 'running'") == []
    assert [tuple(r) for r in rough.rows("SELECT status FROM training_run")] == [("succeeded",)]
    assert len(rough.rows("SELECT id FROM model_version")) == 1
    interrupted = [r.job for r in rough.rows("SELECT job FROM job_run WHERE error LIKE 'interrupted%' ORDER BY id")]
    print(f"\ndaemon kills (target, jobs running at the kill): {kills.daemon}; interrupted job runs: {interrupted}")
    print(f"worker kills (training run status at the kill): {kills.worker}; {clock}")
    assert interrupted, "no kill landed inside a job"
    assert "running" in kills.worker, "no kill landed inside a training run"


@dataclass
class Stopwatch:
    """Seconds per phase, printed with the kills so a slow phase shows."""

    laps: dict[str, float] = field(default_factory=dict)
    last: float = field(default_factory=time.monotonic)

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self.last, 1)
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds} s" for name, seconds in self.laps.items())


# --- the daemon and the worker as processes --------------------------------------------------------

DAEMON_ARGS = ("daemon", *(f"--job={job}" for job in LOOP_JOBS))
WORKER_ARGS = ("worker", "--poll-s", "0.5")


@dataclass
class Processes:
    """The loop's processes this test started, each logging to its own file; any still running at
    the end is killed."""

    folder: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, world: World, args: Sequence[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.folder / f"{log_name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "etchacell_loop", "--log-format", "json", *args],
                env=world.process_env(),
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> int:
        process.send_signal(signal.SIGKILL)
        return process.wait(timeout=30)

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        """SIGTERM: the running job (or epoch) finishes, then the process exits."""
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=60)

    def log(self, log_name: str) -> str:
        return (self.folder / f"{log_name}.log").read_text()

    def end_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                self.kill(process)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.end_all()


def kill_the_daemon_repeatedly(world: World, processes: Processes, rng: random.Random, kills: KillLog) -> None:
    """Start the daemon and SIGKILL it inside a job chosen at random (as soon as the job starts, or a
    random moment into it); again and again."""
    for _ in range(DAEMON_KILLS):
        target = rng.choice(LOOP_JOBS[:3])
        after = last_job_run_id(world)
        daemon = processes.start(world, DAEMON_ARGS, "daemon")
        reached = wait_until(functools.partial(job_started, world, daemon, after, target), 60)
        time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.2)]))
        running = running_jobs(world, after)
        assert processes.kill(daemon) == -signal.SIGKILL and reached, processes.log("daemon")
        kills.daemon.append((target, running))


def job_started(world: World, daemon: subprocess.Popen[bytes], after_id: int, job: str) -> bool:
    """``job`` is running in a run newer than ``after_id`` (or the daemon has ended)."""
    return running_jobs(world, after_id, job) != [] or daemon.poll() is not None


def last_job_run_id(world: World) -> int:
    (newest,) = world.rows("SELECT COALESCE(MAX(id), 0) FROM job_run")[0]
    return int(newest)


def running_jobs(world: World, after_id: int, job: str | None = None) -> list[str]:
    rows = world.rows(f"SELECT job FROM job_run WHERE id > {after_id} AND status = 'running'")
    return [r.job for r in rows if job is None or r.job == job]


def ok_runs(world: World, after_id: int, job: str) -> int:
    return len(world.rows(f"SELECT id FROM job_run WHERE id > {after_id} AND status = 'ok' AND job = '{job}'"))


# --- the worker --------------------------------------------------------------------------------------


def kill_the_worker_repeatedly(
    world: World, processes: Processes, worker: subprocess.Popen[bytes], rng: random.Random, kills: KillLog
) -> None:
    """SIGKILL the worker a random moment after it claims the run, and start another, a few times;
    the last one finishes the run (re-queued once its heartbeat is older than the timeout) and is
    stopped with SIGTERM."""
    holders: set[str | None] = {None}
    for _ in range(WORKER_KILLS):
        claimed = wait_until(functools.partial(claimed_anew, world, worker, holders), 120, 0.1)
        holders.add(run_holder(world))
        time.sleep(rng.uniform(0.0, 1.0))
        (status,) = world.rows("SELECT status FROM training_run")[0]
        assert processes.kill(worker) == -signal.SIGKILL and claimed, processes.log("worker")
        kills.worker.append(str(status))
        worker = processes.start(world, WORKER_ARGS, "worker")
    finished = ("succeeded", "failed", "cancelled")
    assert wait_until(lambda: world.rows("SELECT status FROM training_run")[0].status in finished, 240, 0.2)
    assert processes.stop(worker) == 0, processes.log("worker")


def claimed_anew(world: World, worker: subprocess.Popen[bytes], holders: set[str | None]) -> bool:
    """A worker not in ``holders`` holds the run now (or the worker has ended)."""
    return run_holder(world) not in holders or worker.poll() is not None


def run_holder(world: World) -> str | None:
    """The worker holding the (only) training run, None while it is queued."""
    (row,) = world.rows("SELECT status, worker_host FROM training_run")
    return str(row.worker_host) if row.status == "running" else None
