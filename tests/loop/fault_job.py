"""A process that runs one recorded job committing ``N`` events, as the daemon runs its jobs:
``python -m tests.loop.fault_job DB_URL N``. Its environment may name a fault point
(:mod:`etchacell_loop.loop.fault_points`) where it kills itself; it prints ``ended`` if it lives."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from etchacell_loop.config import Settings
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.models import Event
from etchacell_loop.loop.jobs import Job, SessionFactory, run_recorded
from etchacell_loop.panoptes.gateway import PanoptesGateway

JOB_NAME = "committer"


@dataclass(frozen=True)
class Committed:
    commits: int

    def as_json(self) -> dict[str, Any]:
        return {"commits": self.commits}


def committer(
    n: int, session_factory: SessionFactory, _gateway: PanoptesGateway | None, _settings: Settings
) -> Committed:
    """``n`` transactions, one event each."""
    for i in range(n):
        with session_factory() as session:
            session.add(Event(kind="test.commit", message=f"commit {i + 1}"))
            session.commit()
    return Committed(n)


def main(db_url: str, n: int) -> int:
    engine = make_engine(db_url)
    try:
        factory = functools.partial(Session, engine, expire_on_commit=False)
        job = Job(JOB_NAME, functools.partial(committer, n), needs_panoptes=False)
        outcome = run_recorded(job, factory, None, Settings(), "fault-job")
    finally:
        engine.dispose()
    print("ended", outcome.ok, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
