"""Helpers shared by the queue and worker tests."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy.engine import Engine
from sqlmodel import Session

from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.models import TrainingRun


def read_run(engine: Engine, run_id: int) -> TrainingRun:
    """The run's row as the database has it now, detached from its session."""
    with Session(engine) as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        session.expunge(run)
        return run


def claim_concurrently(db_url: str, n_workers: int, claim: Callable[[Engine, str], int | None]) -> dict[str, list[int]]:
    """Start ``n_workers`` claimers at once, each with its own engine, each claiming with ``claim(engine,
    host)`` until it returns None; what each one got, by host (any claimer's exception is raised)."""
    claims: dict[str, list[int]] = {}
    start = threading.Barrier(n_workers)
    errors: list[BaseException] = []

    def work(host: str) -> None:
        engine = make_engine(db_url)  # each claimer its own engine and connections
        mine: list[int] = []
        try:
            start.wait()
            while (claimed := claim(engine, host)) is not None:
                mine.append(claimed)
        except BaseException as exc:
            errors.append(exc)
        finally:
            claims[host] = mine
            engine.dispose()

    threads = [threading.Thread(target=work, args=(f"worker-{i}",)) for i in range(n_workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return claims
