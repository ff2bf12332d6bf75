"""Volunteer effort from the command line: ``etchacell query volunteer_effort`` and ``etchacell status``
on a real database (SQLite and PostgreSQL) holding ``tests/db/effort_world.py``."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from tests.db.effort_world import EXPECTED, build_effort_world

runner = CliRunner()


@pytest.fixture
def effort_db(migrated_engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    build_effort_world(migrated_engine)
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "250")


@pytest.mark.usefixtures("effort_db")
def test_query_prints_the_figures_per_round() -> None:
    result = runner.invoke(app, ["query", "volunteer_effort", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [EXPECTED[0], EXPECTED[1], EXPECTED[2]]
    csv = runner.invoke(app, ["query", "volunteer_effort", "--format", "csv"]).output.splitlines()
    assert csv[0].startswith("round,task,model_version,settled_slices") and csv[2].startswith("1,correction,v0001")


@pytest.mark.usefixtures("effort_db")
def test_status_shows_effort_per_round() -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    effort = result.output.split("Volunteer effort per round", 1)[1]
    assert "v0003-5eed0003" in effort and "0.4 " in effort and "missing 1, too long 1" in effort
