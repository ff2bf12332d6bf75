"""Helpers shared by the queue and worker tests."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session

from etchacell_loop.db.models import TrainingRun


def read_run(engine: Engine, run_id: int) -> TrainingRun:
    """The run's row as the database has it now, detached from its session."""
    with Session(engine) as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        session.expunge(run)
        return run
