"""Test-only: named points where a loop process kills or freezes itself, so that a fault test hits
the step it names instead of hoping to catch one.

Why: a test that sends ``kill -9`` from outside must first *see* the step it wants to interrupt, and
a step with nothing to do is over in a few milliseconds, between two looks. A process that kills
itself at a named point is interrupted there every time, on any machine, however loaded.

``ETCHACELL_TEST_FAULT_AT`` (test-only; never set it in production) names the points, comma
separated, each ``point`` or ``point=action``:

- ``kill`` (the default): SIGKILL, exactly as ``kill -9`` from outside, at that step;
- ``stop``: SIGSTOP, the whole process frozen there (heartbeat thread included) until someone sends
  SIGCONT, as a stalled machine would be. A parent sees it with ``waitpid(pid, WUNTRACED)``;
- ``kill-once``: SIGKILL the first time any process reaches the point, and never again (a marker
  file in ``ETCHACELL_TEST_FAULT_STATE``, a folder the test owns, remembers it): a Dask worker that
  dies there has its task retried by another worker, which must get through.

The points:

- ``job:<name>:start``: a daemon job's ``job_run`` row is committed as running; nothing done yet;
- ``job:<name>:commit:<n>``: right after the job's n-th committed transaction, or where it ends if
  it commits fewer (so the point is reached whatever work there is);
- ``job:<name>:end``: the job's work is committed; its ``job_run`` row is still "running";
- ``train:claimed``: a worker holds a training run and has not started the job;
- ``train:epoch``: the first epoch's heartbeat is recorded;
- ``train:scored``: the model is trained and scored; it is not registered yet;
- ``tap:chunk:<i>``: a block-wise TAP task has written chunk ``i``'s probabilities and labels and
  not yet recorded it as done (``compute.tap_blocks``);
- ``tap:collected:<n>``: the process driving a block-wise TAP has seen ``n`` chunks predicted.

Unset, every point costs one look at the environment.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

log = logging.getLogger(__name__)

FAULT_AT_ENV = "ETCHACELL_TEST_FAULT_AT"
FAULT_STATE_ENV = "ETCHACELL_TEST_FAULT_STATE"
ACTIONS: Mapping[str, signal.Signals] = {
    "kill": signal.SIGKILL,
    "stop": signal.SIGSTOP,
    "kill-once": signal.SIGKILL,
}


def armed(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The points the environment names, with their action."""
    text = (os.environ if environ is None else environ).get(FAULT_AT_ENV, "")
    points: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        point, _, action = item.partition("=")
        action = action.strip() or "kill"
        if action not in ACTIONS:
            raise ValueError(f"{FAULT_AT_ENV}: unknown action {action!r} for {point!r} (known: {', '.join(ACTIONS)})")
        points[point.strip()] = action
    return points


def reach(point: str) -> None:
    """This process is at ``point``: kill or freeze it there if the environment says so."""
    action = armed().get(point)
    if action is None or (action == "kill-once" and not _first_time(point)):
        return
    log.warning("test fault point %s: %s (%s)", point, action, FAULT_AT_ENV)
    for handler in logging.getLogger().handlers:  # the line must be out before the process is
        handler.flush()
    os.kill(os.getpid(), ACTIONS[action])


def _first_time(point: str) -> bool:
    """Whether no process has reached ``point`` before (a ``kill-once`` point), remembered by
    creating a marker file atomically in ``ETCHACELL_TEST_FAULT_STATE``."""
    folder = os.environ.get(FAULT_STATE_ENV)
    if not folder:
        raise ValueError(f"{FAULT_AT_ENV}: kill-once needs {FAULT_STATE_ENV}, a folder to remember it in")
    marker = os.path.join(folder, re.sub(r"[^A-Za-z0-9_.-]", "_", point))
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


SessionFactory = Callable[[], Session]


class CommitPoints:
    """Counts the commits of the sessions a job makes and reaches ``<prefix>:<n>`` after the n-th."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.commits = 0
        pattern = re.compile(rf"{re.escape(prefix)}:(\d+)")
        self.wanted = sorted(int(m.group(1)) for point in armed() if (m := pattern.fullmatch(point)))

    def wrap(self, session_factory: SessionFactory) -> SessionFactory:
        """``session_factory`` whose sessions count their commits; itself when no point is armed."""
        if not self.wanted:
            return session_factory

        def counted() -> Session:
            session = session_factory()
            sa.event.listen(session, "after_commit", self._committed)
            return session

        return counted

    def ended(self) -> None:
        """The job is over: a point it never reached (it committed fewer times) is reached now."""
        for n in self.wanted:
            if n > self.commits:
                reach(f"{self.prefix}:{n}")

    def _committed(self, _session: Any) -> None:
        self.commits += 1
        reach(f"{self.prefix}:{self.commits}")
