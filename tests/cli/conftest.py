"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.sandbox.harness import SandboxProcess


@pytest.fixture
def configured(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, int]:
    """The CLI pointed at a fresh sandbox project and a fresh, migrated database."""
    env = {
        "ETCHACELL_DATABASE_URL": db_url,
        "ETCHACELL_PANOPTES__ENDPOINT": sandbox.url,
        "ETCHACELL_PANOPTES__CLIENT_ID": sandbox.client_id,
        "ETCHACELL_PANOPTES__CLIENT_SECRET": sandbox.client_secret,
        "ETCHACELL_PANOPTES__PROJECT_ID": str(sandbox_project["project_id"]),
        "ETCHACELL_PANOPTES__SEGMENTATION_WORKFLOW_ID": str(sandbox_project["segmentation_workflow_id"]),
        "ETCHACELL_PANOPTES__CORRECTION_WORKFLOW_ID": str(sandbox_project["correction_workflow_id"]),
        "COLUMNS": "200",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert CliRunner().invoke(app, ["db", "upgrade"]).exit_code == 0
    return sandbox_project
