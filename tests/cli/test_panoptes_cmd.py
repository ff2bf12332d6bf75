"""``etchacell panoptes check|register|pull`` against the sandbox and a real database."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.models import Classification, Project, Workflow, WorkflowRole
from etchacell_loop.sandbox.harness import SandboxProcess

runner = CliRunner()


def test_check_shows_workflows_and_roles(configured: dict[str, int]) -> None:
    result = runner.invoke(app, ["panoptes", "check"])
    assert result.exit_code == 0, result.output
    assert "Trace the nuclear envelope" in result.output and "segmentation" in result.output
    assert "correction" in result.output


def test_register_then_pull_is_incremental(configured: dict[str, int], sandbox: SandboxProcess, db_url: str) -> None:
    refused = runner.invoke(app, ["panoptes", "pull"])
    assert refused.exit_code == 2 and "etchacell panoptes register" in refused.stderr
    for _ in range(2):  # idempotent
        registered = runner.invoke(app, ["panoptes", "register"])
        assert registered.exit_code == 0, registered.output
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            (project,) = session.exec(select(Project)).all()
            roles = {w.panoptes_id: w.role for w in session.exec(select(Workflow)).all()}
        assert project.panoptes_id == configured["project_id"]
        assert roles == {
            configured["segmentation_workflow_id"]: WorkflowRole.SEGMENTATION,
            configured["correction_workflow_id"]: WorkflowRole.CORRECTION,
        }
        created = _subject_with_classifications(sandbox, configured, 7)
        first = runner.invoke(app, ["panoptes", "pull"])
        assert first.exit_code == 0, first.output
        assert str(created["last_id"]) in first.output
        again = runner.invoke(app, ["panoptes", "pull", "--workflow", str(configured["segmentation_workflow_id"])])
        assert again.exit_code == 0
        with Session(engine) as session:
            assert len(session.exec(select(Classification)).all()) == 7
    finally:
        engine.dispose()


def _subject_with_classifications(sandbox: SandboxProcess, ids: dict[str, int], n: int) -> dict[str, int]:
    token = sandbox.request(
        "POST",
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "sandbox", "client_secret": "sandbox-secret"},
    ).json()["access_token"]
    created = sandbox.request(
        "POST",
        "/api/subjects",
        headers={"Accept": "application/vnd.api+json; version=1", "Authorization": f"Bearer {token}"},
        json={"subjects": {"locations": ["image/jpeg"], "metadata": {}, "links": {"project": str(ids["project_id"])}}},
    )
    subject_id = int(created.json()["subjects"][0]["id"])
    return sandbox.bulk_classifications(ids["segmentation_workflow_id"], [subject_id], per_subject=n)


def test_bad_credentials_and_misconfigured_workflow_are_one_line(
    configured: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCHACELL_PANOPTES__CLIENT_SECRET", "not-it")
    result = runner.invoke(app, ["panoptes", "check"])
    assert result.exit_code == 2
    assert "rejected the client credentials" in result.stderr and "not-it" not in result.output
    monkeypatch.setenv("ETCHACELL_PANOPTES__CLIENT_SECRET", "sandbox-secret")
    monkeypatch.setenv("ETCHACELL_PANOPTES__SEGMENTATION_WORKFLOW_ID", "1")
    result = runner.invoke(app, ["panoptes", "register"])
    assert result.exit_code == 2
    assert "workflow(s) 1 are not in project" in result.stderr
    monkeypatch.delenv("ETCHACELL_PANOPTES__PROJECT_ID")
    result = runner.invoke(app, ["panoptes", "check"])
    assert result.exit_code == 2 and "panoptes.project_id is not set" in result.stderr
