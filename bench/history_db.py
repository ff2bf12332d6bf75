"""A throw-away database holding a synthetic project history, for the benchmarks that read one.

SQLite in a temporary folder, or a fresh PostgreSQL database made through an admin URL and dropped
afterwards; filled by :func:`etchacell_loop.simulation.ops_history.write_history` and analysed, as a
production database would be.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.migrate import upgrade
from etchacell_loop.simulation.ops_history import HistoryReport, HistorySpec, write_history


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of ``admin_url``; dropped on exit."""
    name = f"etchacell_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def filled_engine(url: str, data_dir: Path, classifications: int) -> tuple[Engine, HistoryReport, float]:
    """An engine on ``url`` migrated and filled with a history of ``classifications``; the report and
    the seconds the fill took (ANALYZE included)."""
    engine = make_engine(url)
    upgrade(engine)
    started = time.perf_counter()
    report = write_history(engine, data_dir, HistorySpec(classifications=classifications))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    return engine, report, time.perf_counter() - started
