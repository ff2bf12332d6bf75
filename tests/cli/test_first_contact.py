"""What a new user meets first: credentials not set yet, commands run before ``db upgrade``, a
misspelt job, and read-only commands pointed at a data directory without a database. Each is one
line that says what to do, exit status 2, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import tifffile
from typer.testing import CliRunner, Result

from etchacell_loop.cli.app import app
from etchacell_loop.db.engine import make_engine

runner = CliRunner()
# Nothing listens here: a command that sent anything would fail with a connection error instead.
NOWHERE = "http://127.0.0.1:9"


def one_line(result: Result) -> str:
    """The single stderr line of a command that failed as an operator error (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def fresh_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory with no database in it, as after the demo (whose data lives elsewhere)."""
    data = tmp_path / "data"
    monkeypatch.setenv("ETCHACELL_DATA_DIR", str(data))
    return data


def test_no_client_id_names_the_setting_and_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHACELL_PANOPTES__ENDPOINT", NOWHERE)
    monkeypatch.setenv("ETCHACELL_PANOPTES__PROJECT_ID", "5")
    line = one_line(runner.invoke(app, ["panoptes", "check"]))
    assert "ETCHACELL_PANOPTES__CLIENT_ID" in line and "panoptes.client_id" in line
    assert "rejected" not in line and "(none)" not in line


def test_no_client_secret_names_the_setting_and_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHACELL_PANOPTES__ENDPOINT", NOWHERE)
    monkeypatch.setenv("ETCHACELL_PANOPTES__PROJECT_ID", "5")
    monkeypatch.setenv("ETCHACELL_PANOPTES__CLIENT_ID", "my-app")
    line = one_line(runner.invoke(app, ["panoptes", "check"]))
    assert "no client secret for client id my-app" in line and "ETCHACELL_PANOPTES__CLIENT_SECRET" in line
    assert "rejected" not in line


def test_a_job_that_talks_to_panoptes_needs_the_credentials_first(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", db_url)
    monkeypatch.setenv("ETCHACELL_PANOPTES__ENDPOINT", NOWHERE)
    monkeypatch.setenv("ETCHACELL_PANOPTES__PROJECT_ID", "5")
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert "ETCHACELL_PANOPTES__CLIENT_ID" in one_line(runner.invoke(app, ["tick", "ingest"]))


def test_a_misspelt_job_is_named_before_the_project(fresh_dir: Path) -> None:
    line = one_line(runner.invoke(app, ["tick", "ingest", "nosuch"]))
    assert "unknown job 'nosuch'" in line and "ingest, aggregate, retire, train, publish" in line
    assert "unknown job 'nosuch'" in one_line(runner.invoke(app, ["daemon", "--job", "nosuch"]))
    assert not fresh_dir.exists()


def test_predict_before_db_upgrade_says_to_run_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "etchacell.db"
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", f"sqlite:///{database}")
    args = ["predict", str(tmp_path / "volume.zarr"), "--model", "promoted", "--out", str(tmp_path / "p.zarr")]
    assert "etchacell db upgrade" in one_line(runner.invoke(app, args))
    assert not database.exists()
    make_engine(f"sqlite:///{database}").connect().close()  # an empty database file: no schema yet
    line = one_line(runner.invoke(app, args))
    assert "etchacell db upgrade" in line and "no such table" not in line


def test_predict_before_db_upgrade_on_postgresql(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", db_url)
    args = ["predict", str(tmp_path / "volume.zarr"), "--model", "v0001-abc", "--out", str(tmp_path / "p.zarr")]
    assert "etchacell db upgrade" in one_line(runner.invoke(app, args))


@pytest.mark.parametrize(
    "command", [["status"], ["query", "job_status"], ["model", "list"], ["tick", "all"], ["db", "downgrade"]]
)
def test_a_command_on_a_missing_database_says_where_and_creates_nothing(fresh_dir: Path, command: list[str]) -> None:
    line = one_line(runner.invoke(app, command))
    assert f"no database at {fresh_dir / 'etchacell.db'}" in line
    assert "etchacell db upgrade" in line and "ETCHACELL_DATA_DIR" in line
    assert not fresh_dir.exists()


def test_config_show_and_db_current_read_without_creating_a_database(fresh_dir: Path) -> None:
    assert runner.invoke(app, ["config", "show"]).exit_code == 0
    current = runner.invoke(app, ["db", "current"])
    assert current.exit_code == 0 and "base (empty)" in current.stdout and "etchacell db upgrade" in current.stdout
    assert not fresh_dir.exists()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0  # the one command that creates it
    engine = make_engine(f"sqlite:///{fresh_dir / 'etchacell.db'}")
    try:
        assert "model_version" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert runner.invoke(app, ["status"]).exit_code == 0


def test_predict_checks_the_roi_against_the_volume_before_loading_a_model(tmp_path: Path) -> None:
    """The model file here is not a model: the ROI outside the volume must be what is reported,
    before the model stack (seconds to import) is loaded at all."""
    volume = tmp_path / "volume.tif"
    tifffile.imwrite(volume, np.zeros((4, 32, 32), np.uint8), photometric="minisblack")
    model = tmp_path / "model.keras"
    model.write_bytes(b"not a model")
    args = ["predict", str(volume), "--model", str(model), "--out", str(tmp_path / "p.zarr")]
    line = one_line(runner.invoke(app, [*args, "--voxel-size-nm", "50,10,10", "--roi", "100,100,0,10,10,2"]))
    assert "--roi '100,100,0,10,10,2'" in line and "outside the volume" in line
