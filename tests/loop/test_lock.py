"""One daemon per project: the lock refuses a second holder and dies with its process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy.engine import Engine

from etchacell_loop.db.engine import make_engine
from etchacell_loop.loop.lock import DaemonAlreadyRunning, ProjectLock

HOLD_AND_WAIT = """
import sys, time
from etchacell_loop.db.engine import make_engine
from etchacell_loop.loop.lock import ProjectLock
lock = ProjectLock(make_engine(sys.argv[1]), 77).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_holder_is_refused_until_the_first_releases(migrated_engine: Engine) -> None:
    other_engine = make_engine(migrated_engine.url.render_as_string(hide_password=False))
    try:
        with ProjectLock(migrated_engine, 77):
            with pytest.raises(DaemonAlreadyRunning, match="project 77"):
                ProjectLock(other_engine, 77).acquire()
            with ProjectLock(other_engine, 78) as other_project:  # another project is not blocked
                assert other_project.held
        with ProjectLock(other_engine, 77) as again:
            assert again.held
    finally:
        other_engine.dispose()


def test_the_lock_of_a_killed_process_is_free_at_once(migrated_engine: Engine) -> None:
    url = migrated_engine.url.render_as_string(hide_password=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_WAIT, url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DaemonAlreadyRunning):
            ProjectLock(migrated_engine, 77).acquire()
    finally:
        holder.kill()  # SIGKILL: no chance to release anything
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # PostgreSQL notices the closed connection within moments
        try:
            with ProjectLock(migrated_engine, 77) as lock:
                assert lock.held
            return
        except DaemonAlreadyRunning:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_an_in_memory_sqlite_database_cannot_hold_a_daemon() -> None:
    engine = make_engine("sqlite://")
    with pytest.raises(ValueError, match="database file"):
        ProjectLock(engine, 1).acquire()
