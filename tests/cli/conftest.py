"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.panoptes.support import sandbox_environment


@pytest.fixture
def configured(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, int]:
    """The CLI pointed at a fresh sandbox project and a fresh, migrated database."""
    env = {**sandbox_environment(sandbox, sandbox_project, db_url), "COLUMNS": "200"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert CliRunner().invoke(app, ["db", "upgrade"]).exit_code == 0
    return sandbox_project
