"""What the dashboard tests share: settings, a populated database and a dashboard served on a port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
import uvicorn
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from etchacell_loop.config import DashboardSettings, Settings
from etchacell_loop.dashboard.app import create_app
from etchacell_loop.sandbox.harness import free_port
from etchacell_loop.simulation.ops_history import HistoryReport, HistorySpec, write_history

TOKEN = "operator-token-for-tests"
SMALL_HISTORY = HistorySpec(classifications=3000, rendered_slices=2, seed=3)


def dashboard_settings(data_dir: Path, token: str | None = TOKEN, public_read: bool = False) -> Settings:
    """Settings for a dashboard over the test's database (the engine is passed separately)."""
    return Settings(
        data_dir=data_dir,
        dashboard=DashboardSettings(operator_token=SecretStr(token) if token else None, public_read=public_read),
    )


def populate(engine: Engine, data_dir: Path) -> HistoryReport:
    """A small synthetic project history: every page has something to show."""
    return write_history(engine, data_dir, SMALL_HISTORY)


def count_rows(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


@contextmanager
def serving(settings: Settings, engine: Engine) -> Iterator[str]:
    """The dashboard served by uvicorn on a free local port, in a thread; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=free_port(), log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
