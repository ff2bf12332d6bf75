"""``etchacell sandbox volunteers`` against a real sandbox, with one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.simulation.sandbox_support import flipbooks, project_classifications, upload
from tests.simulation.truth_volumes import write_truth_volume

runner = CliRunner()


@pytest.fixture
def volume_path(tmp_path: Path) -> Path:
    path = tmp_path / "hela.zarr"
    write_truth_volume(path)
    return path


def test_volunteers_classify_and_summarise(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], volume_path: Path, tmp_path: Path
) -> None:
    workflow_id, project_id = sandbox_project["segmentation_workflow_id"], sandbox_project["project_id"]
    upload(sandbox, workflow_id, project_id, flipbooks(tmp_path, [5, 6]))
    args = ["sandbox", "volunteers", "--workflow", str(workflow_id), "--url", sandbox.url]
    result = runner.invoke(
        app, [*args, "--truth", str(volume_path), "--max-classifications", "6", "--seed", "3"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "6 classifications by" in result.output
    assert "Gini of effort" in result.output and "stopped: reached 6 classifications" in result.output
    assert len(project_classifications(sandbox, project_id)) == 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-classifications", "1", "--mix", "careful=1,bogus=2"], "bad mix entry 'bogus=2'"),
        ([], "say when to stop"),
        (["--max-classifications", "1", "--truth", "nowhere.zarr"], "--truth: nowhere.zarr: no such file or folder"),
        (["--max-classifications", "1", "--prolific", "-1"], "--prolific cannot be negative"),
    ],
)
def test_bad_options_are_one_line_errors(extra: list[str], message: str) -> None:
    result = runner.invoke(app, ["sandbox", "volunteers", "--workflow", "1", *extra], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_unreachable_sandbox_is_a_one_line_error() -> None:
    result = runner.invoke(
        app,
        ["sandbox", "volunteers", "--workflow", "1", "--url", "http://127.0.0.1:9", "--max-classifications", "1"],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 2
    assert "GET /workflows/1" in result.output
