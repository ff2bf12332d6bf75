"""Test-only fault points: a process kills (or freezes) itself exactly at the point its environment
names, so a fault test interrupts the step it means to, whatever the timing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.db.models import Event, JobRun, JobStatus
from etchacell_loop.loop.fault_points import FAULT_AT_ENV, armed
from tests.loop.fault_job import JOB_NAME

REPO = Path(__file__).resolve().parents[2]
POINTS_SCRIPT = (
    "from etchacell_loop.loop.fault_points import reach\nfor p in 'abc':\n    reach(p)\n    print(p, flush=True)"
)


def _env(fault_at: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(FAULT_AT_ENV, None)
    return env | ({FAULT_AT_ENV: fault_at} if fault_at else {})


def test_points_and_actions_are_read_from_the_environment() -> None:
    assert armed({}) == {}
    assert armed({FAULT_AT_ENV: " job:ingest:start, train:scored=stop ,"}) == {
        "job:ingest:start": "kill",
        "train:scored": "stop",
    }
    with pytest.raises(ValueError, match="unknown action 'pause'"):
        armed({FAULT_AT_ENV: "train:epoch=pause"})


def test_a_process_kills_itself_at_the_named_point_and_nowhere_else() -> None:
    done = subprocess.run([sys.executable, "-c", POINTS_SCRIPT], env=_env("b"), capture_output=True, text=True)
    assert (done.returncode, done.stdout.split()) == (-signal.SIGKILL, ["a"])
    unarmed = subprocess.run([sys.executable, "-c", POINTS_SCRIPT], env=_env(None), capture_output=True, text=True)
    assert (unarmed.returncode, unarmed.stdout.split()) == (0, ["a", "b", "c"])


def test_a_stopped_process_waits_at_its_point_until_continued() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", POINTS_SCRIPT], env=_env("c=stop"), stdout=subprocess.PIPE, text=True
    )
    try:
        _, status = os.waitpid(process.pid, os.WUNTRACED)  # returns when it stops: no polling
        assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP
        os.kill(process.pid, signal.SIGCONT)
        out, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert (process.returncode, out.split()) == (0, ["a", "b", "c"])


@pytest.mark.parametrize(
    ("point", "committed"),
    [
        ("start", 0),  # the job_run row is in, nothing else
        ("commit:2", 2),  # right after the job's second transaction
        ("commit:9", 3),  # it commits only 3 times: killed where it ends instead
        ("end", 3),  # its work all in, its job_run row not closed
    ],
)
def test_a_job_is_killed_where_its_point_says(db_url: str, migrated_engine: Engine, point: str, committed: int) -> None:
    command = [sys.executable, "-m", "tests.loop.fault_job", db_url, "3"]
    done = subprocess.run(command, cwd=REPO, env=_env(f"job:{JOB_NAME}:{point}"), capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with Session(migrated_engine) as session:
        (run,) = session.exec(select(JobRun)).all()
        events = session.exec(select(Event).where(Event.kind == "test.commit").order_by(col(Event.id))).all()
    assert run.status == JobStatus.RUNNING  # what the next daemon closes as interrupted
    assert [e.message for e in events] == [f"commit {i + 1}" for i in range(committed)]


def test_without_a_point_the_job_runs_to_its_end(db_url: str, migrated_engine: Engine) -> None:
    command = [sys.executable, "-m", "tests.loop.fault_job", db_url, "3"]
    done = subprocess.run(command, cwd=REPO, env=_env(None), capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "ended True"), done.stderr
    with Session(migrated_engine) as session:
        (run,) = session.exec(select(JobRun)).all()
    assert run.status == JobStatus.OK and run.result["commits"] == 3
