"""One daemon per project: a lock held in (or beside) the database for as long as the daemon runs.

Why: two daemons on one project would pull the same pages, vote the same slices and race to retire
and publish. Every job is idempotent, so nothing would be lost, but the work and the event log would
double. The lock lives where the loop's state lives:

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection kept open
  for the daemon's life. The server releases it when that connection ends — including when the
  daemon is killed with ``kill -9`` or its machine dies — so a stale lock never needs clearing.
- SQLite: an exclusive ``flock`` on a file beside the database file. The kernel releases it when
  the process ends, for the same reason.

The key is derived from the project's Panoptes id, so daemons of different projects sharing one
database do not block each other.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

LOCK_NAMESPACE = "etchacell-daemon"


class DaemonAlreadyRunning(RuntimeError):
    """Another daemon holds this project's lock."""


def advisory_key(project_panoptes_id: int) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks."""
    digest = hashlib.sha256(f"{LOCK_NAMESPACE}:{project_panoptes_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def sqlite_lock_path(engine: Engine, project_panoptes_id: int) -> Path:
    """The lock file of a project on a SQLite database file."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ValueError("a daemon needs a database file (not an in-memory SQLite database)")
    path = Path(database).expanduser()
    return path.with_name(f"{path.name}.daemon-{project_panoptes_id}.lock")


class ProjectLock:
    """Held from ``acquire`` (or ``with``) until ``release``; raises :class:`DaemonAlreadyRunning`
    when another process holds it."""

    def __init__(self, engine: Engine, project_panoptes_id: int) -> None:
        self._engine = engine
        self._project = project_panoptes_id
        self._connection: Connection | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._connection is not None or self._fd is not None

    def acquire(self) -> ProjectLock:
        if self.held:
            return self
        if self._engine.dialect.name == "postgresql":
            self._acquire_advisory()
        else:
            self._acquire_file()
        return self

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:key)"), {"key": advisory_key(self._project)}
                )
                self._connection.commit()
            finally:
                self._connection.close()
                self._connection = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ProjectLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def _acquire_advisory(self) -> None:
        connection = self._engine.connect()
        try:
            taken = connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": advisory_key(self._project)}
            ).scalar_one()
            connection.commit()
        except BaseException:
            connection.close()
            raise
        if not taken:
            connection.close()
            raise DaemonAlreadyRunning(f"another daemon holds project {self._project}'s lock in this database")
        self._connection = connection

    def _acquire_file(self) -> None:
        path = sqlite_lock_path(self._engine, self._project)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaemonAlreadyRunning(f"another daemon holds project {self._project}'s lock ({path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
