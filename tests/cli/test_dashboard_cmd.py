"""``etchacell dashboard`` and ``etchacell synth history`` as an operator meets them: the dashboard as a
real process over a database the history command filled, and one-line refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.sandbox.harness import free_port

runner = CliRunner()


@pytest.fixture
def database(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI pointed at a fresh database and data directory, migrated."""
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", db_url)
    monkeypatch.setenv("ETCHACELL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    return db_url


def test_synth_history_fills_an_empty_database_once(database: str) -> None:
    first = runner.invoke(app, ["synth", "history", "--classifications", "2000", "--seed", "2"])
    assert first.exit_code == 0, first.output
    assert "classification" in first.output and "2,000" in first.output
    again = runner.invoke(app, ["synth", "history", "--classifications", "2000"])
    assert again.exit_code == 2 and "already holds a project" in again.output


def test_dashboard_refuses_when_nobody_could_open_it(database: str) -> None:
    result = runner.invoke(app, ["dashboard", "--port", str(free_port())])
    assert result.exit_code == 2
    assert "ETCHACELL_DASHBOARD__OPERATOR_TOKEN" in result.output and "public_read" in result.output


def test_dashboard_refuses_an_unmigrated_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.setenv("ETCHACELL_DASHBOARD__PUBLIC_READ", "true")
    result = runner.invoke(app, ["dashboard"])
    assert result.exit_code == 2 and "etchacell db upgrade" in result.output


def test_dashboard_serves_the_pages_as_a_process(database: str, tmp_path: Path) -> None:
    assert runner.invoke(app, ["synth", "history", "--classifications", "2000"]).exit_code == 0
    port = free_port()
    token_file = tmp_path / "operator-token"
    token_file.write_text("s3cret-from-a-file\n")
    env = {
        **os.environ,
        "ETCHACELL_DASHBOARD__OPERATOR_TOKEN_FILE": str(token_file),
        "ETCHACELL_DASHBOARD__PUBLIC_READ": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "etchacell_loop", "dashboard", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/login", process)
        with httpx.Client(base_url=base) as client:
            assert client.get("/").status_code == 303  # private: sign in first
            headers = {"Authorization": "Bearer s3cret-from-a-file"}
            for path in ("/", "/subject-sets", "/consensus", "/models", "/events"):
                assert client.get(path, headers=headers).status_code == 200, path
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert f"dashboard on http://127.0.0.1:{port}/" in output
    assert "s3cret" not in output  # the token is never printed


def wait_for(url: str, process: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the dashboard exited: {process.communicate()[0]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the dashboard did not answer in time")
