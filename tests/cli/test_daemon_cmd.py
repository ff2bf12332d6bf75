"""``etchacell tick``, ``daemon`` and ``status`` end to end against the sandbox and a real database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.db.engine import make_engine
from tests.panoptes.support import wait_until


def job_runs(db_url: str) -> list[tuple[str, str]]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return [(r.job, r.status) for r in conn.execute(sa.text("SELECT job, status FROM job_run ORDER BY id"))]
    finally:
        engine.dispose()


def test_tick_all_runs_a_round_and_status_shows_it(configured: dict[str, int], db_url: str) -> None:
    result = CliRunner().invoke(app, ["tick", "all"])
    assert result.exit_code == 0, result.output
    assert job_runs(db_url) == [(job, "ok") for job in ("ingest", "aggregate", "retire", "train", "publish")]
    status = CliRunner().invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert "Job status" in status.output and "Ingestion cursors" in status.output
    assert str(configured["segmentation_workflow_id"]) in status.output  # registered by the ingest job


def test_tick_of_an_unknown_job_is_a_clear_error(configured: dict[str, int]) -> None:
    result = CliRunner().invoke(app, ["tick", "ingest", "reticulate"])
    assert result.exit_code == 2
    assert "unknown job 'reticulate'" in result.output and "ingest" in result.output


def test_the_daemon_stops_cleanly_on_sigterm_and_a_second_one_is_refused(
    configured: dict[str, int], db_url: str
) -> None:
    command = [sys.executable, "-m", "etchacell_loop", "--log-format", "json", "daemon"]
    daemon = subprocess.Popen(command, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    try:
        done = {"ingest", "aggregate", "retire", "train", "publish"}
        assert wait_until(lambda: {job for job, status in job_runs(db_url) if status == "ok"} == done, 90)
        second = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "another daemon" in second.stderr
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.stderr is not None
    assert '"message": "daemon stopped"' in daemon.stderr.read()
    assert all(status != "running" for _job, status in job_runs(db_url))


def test_the_daemon_needs_a_project(configured: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETCHACELL_PANOPTES__PROJECT_ID")
    result = CliRunner().invoke(app, ["daemon"])
    assert result.exit_code == 2 and "panoptes.project_id is not set" in result.output
