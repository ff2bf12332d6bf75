"""``kill -9`` of the daemon and the worker at random points changes nothing in the end.

Two identical worlds (same subjects, same classifications already posted) run the loop: one by hand,
undisturbed, the other under the real ``etchacell daemon``, killed with SIGKILL several times inside
its jobs, then the real ``etchacell worker``, killed while it trains. Once both have settled, the
databases and the two sandbox projects hold the same things, and nothing twice.

The inputs are fixed too: simulated volunteers trace every subject until Panoptes retires it, then
every other slice gets three of its classifications (the loop's fixed count: it retires) and the rest
two (they stay), so both ROIs have settled slices to train and validate on, whichever subjects the
sandbox happened to serve to whom.

Where each kill lands is drawn from the seed and named to the process
(:mod:`etchacell_loop.loop.fault_points`), which kills itself there: a job with nothing to do is over
in milliseconds, and a kill sent from outside once the test has *seen* it running may come too late.
"""

from __future__ import annotations

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

from etchacell_loop.loop.fault_points import FAULT_AT_ENV
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
    subjects_by_upload_key,
    tick_until_settled,
    upload_subjects,
)
from tests.panoptes.support import wait_until

DAEMON_KILLS = 5
WORKER_KILLS = 2
SEED = 7
RETIRE_AT = 3  # the worlds' fixed-count retirement (LOOP_SETTINGS), and Panoptes' in the volunteers' project
JOB_POINTS = ("start", "commit:1", "commit:2", "end")  # in a job: see fault_points
WORKER_POINTS = ("train:claimed", "train:epoch", "train:scored")  # in the run, before it registers; drawn apart
KILL_WAIT_S = 240  # only if a process never reaches its point: each daemon runs every job at start-up


@dataclass
class KillLog:
    """Where each SIGKILL landed: the point, and the jobs running (or the training run's status) then."""

    daemon: list[tuple[str, list[str]]] = field(default_factory=list)
    worker: list[tuple[str, str]] = field(default_factory=list)


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
        make_world("volunteers", sandbox, f"sqlite:///{tmp_path / 'source.db'}", tmp_path / "source", RETIRE_AT),
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
               "--until-retired", "--seed", "1")  # fmt: skip
    keys = subjects_by_upload_key(sandbox, source.project["project_id"]).values()
    for world in (calm, rough):
        upload_subjects(world, subjects)
        posted = replay_classifications(sandbox, source.project["project_id"], world, replayed_per_subject)
        assert posted == sum(map(replayed_per_subject, keys))
    clock.lap("inputs")

    tick_until_settled(calm, sandbox)
    clock.lap("undisturbed loop")
    kills, rng = KillLog(), random.Random(SEED)
    kill_the_daemon_repeatedly(rough, processes, rng, kills)
    clock.lap("daemon kills")
    # The last daemon runs undisturbed while the worker, started now to load its deep learning stack,
    # kills itself in the middle of the one training run and is restarted until the run succeeds.
    after = last_job_run_id(rough)
    daemon = processes.start(rough, DAEMON_ARGS, "daemon")
    worker_points = rng.sample(WORKER_POINTS, WORKER_KILLS)
    worker = processes.start(rough, WORKER_ARGS, "worker", fault_at=worker_points[0])
    assert wait_until(lambda: all(ok_runs(rough, after, job) >= 2 for job in LOOP_JOBS), 120, 0.2)
    rough.cli("retrain", "--reason", "fault test")
    kill_the_worker_repeatedly(rough, processes, worker, worker_points, kills)
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
    print(f"\ndaemon kills (point, jobs running at the kill): {kills.daemon}; interrupted job runs: {interrupted}")
    print(f"worker kills (point, training run status at the kill): {kills.worker}; {clock}")
    assert interrupted == [point.split(":")[1] for point, _ in kills.daemon]  # each kill inside its job
    assert [status for _, status in kills.worker] == ["running"] * WORKER_KILLS
    staging = Path(rough.env["ETCHACELL_DATA_DIR"]) / "models" / "_training"
    assert sorted(staging.rglob("*")) == [], "a killed worker's staged files were left behind"


def replayed_per_subject(upload_key: str) -> int:
    """Classifications replayed of a subject (``hela/cell01/z0004``): the loop's fixed count for even
    slices, one fewer for odd ones."""
    z = int(upload_key.rsplit("/z", 1)[1])
    return RETIRE_AT if z % 2 == 0 else RETIRE_AT - 1


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

    def start(
        self, world: World, args: Sequence[str], log_name: str, fault_at: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a loop process; ``fault_at`` names the point where it kills itself."""
        env = world.process_env() | ({FAULT_AT_ENV: fault_at} if fault_at else {})
        with (self.folder / f"{log_name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "etchacell_loop", "--log-format", "json", *args],
                env=env,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> int:
        process.send_signal(signal.SIGKILL)
        return process.wait(timeout=30)

    def killed_itself(self, process: subprocess.Popen[bytes], log_name: str) -> None:
        """Wait for a process started with a fault point to end there, by its own SIGKILL."""
        try:
            code = process.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        assert code == -signal.SIGKILL, f"exit {code}, not killed at its fault point:\n{self.log(log_name)}"

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
    """Start the daemon to have it SIGKILL itself inside a job chosen at random (as it starts, after
    its first or second commit, or with its work done but not recorded); again and again."""
    for _ in range(DAEMON_KILLS):
        point = f"job:{rng.choice(LOOP_JOBS[:3])}:{rng.choice(JOB_POINTS)}"
        after = last_job_run_id(world)
        daemon = processes.start(world, DAEMON_ARGS, "daemon", fault_at=point)
        processes.killed_itself(daemon, "daemon")
        running = running_jobs(world, after)
        assert running == [point.split(":")[1]], processes.log("daemon")  # that job, and only it, was cut short
        kills.daemon.append((point, running))


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
    world: World, processes: Processes, worker: subprocess.Popen[bytes], points: Sequence[str], kills: KillLog
) -> None:
    """Let the worker SIGKILL itself at each of ``points`` of the training run in turn (just claimed,
    after its epoch, trained and scored but not registered: drawn at random), each time starting
    another; the last one finishes the run (re-queued once its heartbeat is older than the timeout)
    and is stopped with SIGTERM."""
    for point, following in zip(points, [*points[1:], None], strict=True):
        processes.killed_itself(worker, "worker")
        (status,) = world.rows("SELECT status FROM training_run")[0]
        kills.worker.append((point, str(status)))
        worker = processes.start(world, WORKER_ARGS, "worker", fault_at=following)
    finished = ("succeeded", "failed", "cancelled")
    assert wait_until(lambda: world.rows("SELECT status FROM training_run")[0].status in finished, 240, 0.2)
    assert processes.stop(worker) == 0, processes.log("worker")
