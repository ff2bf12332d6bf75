"""Shared fixtures: a real database on SQLite and, when configured, on PostgreSQL.

Every database test takes ``db_url`` (or ``engine``/``migrated_engine``) and so runs once per
backend. PostgreSQL runs when ``ETCHACELL_TEST_POSTGRES_URL`` names a role allowed to create
databases (``.ci/run`` sets it); each test gets a brand-new database, dropped afterwards, so a
second run never trips over the first.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.migrate import upgrade
from etchacell_loop.sandbox.harness import SandboxProcess, free_port, running_sandbox

POSTGRES_ENV = "ETCHACELL_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgresql"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's ETCHACELL_* variables or ./etchacell.toml."""
    for name in list(os.environ):
        if name.startswith("ETCHACELL_") and name != POSTGRES_ENV:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def postgres_database(admin_url: str) -> Iterator[str]:
    """A URL to a brand-new database on the server of ``admin_url`` (a role that may create databases),
    dropped when the generator is closed."""
    name = f"etchacell_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(admin, name)
        admin.dispose()


def _drop_database(admin: Engine, name: str, attempts: int = 50) -> None:
    """Plain DROP (it cancels autovacuum by itself; FORCE would need pg_signal_backend), retried
    briefly while a just-closed connection of the test is still going away."""
    for attempt in range(attempts):
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            return
        except sa.exc.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"PostgreSQL: set {POSTGRES_ENV} (bash .ci/postgres.sh prints one)")
    yield from postgres_database(admin_url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on an empty database."""
    eng = make_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def migrated_engine(engine: Engine) -> Engine:
    """An engine on a database migrated to the newest revision."""
    upgrade(engine)
    return engine


# --- the Panoptes sandbox --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """One sandbox process for the whole run (tests seed their own projects in it)."""
    with running_sandbox(tmp_path_factory.mktemp("sandbox") / "state") as process:
        yield process


@pytest.fixture
def sandbox_project(sandbox: SandboxProcess) -> Iterator[dict[str, int]]:
    """A fresh project in the shared sandbox, with faults cleared before and after the test."""
    sandbox.clear_faults()
    try:
        yield sandbox.seed()
    finally:
        sandbox.clear_faults()


@pytest.fixture
def start_sandbox(tmp_path: Path) -> Iterator[Callable[..., SandboxProcess]]:
    """Start a private sandbox (e.g. with a short token lifetime): ``start_sandbox("--token-lifetime-s", "125")``."""
    started: list[SandboxProcess] = []

    def start(*serve_args: str, state_dir: Path | None = None) -> SandboxProcess:
        process = SandboxProcess(
            state_dir=state_dir or tmp_path / f"sandbox-{len(started)}", port=free_port(), serve_args=serve_args
        )
        started.append(process.start())
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()
