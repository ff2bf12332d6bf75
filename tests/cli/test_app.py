"""The command line as an operator meets it: real databases, real query files, no patching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.db.migrate import head_revision
from etchacell_loop.db.queries import load_queries

runner = CliRunner()


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the CLI at a fresh database on each backend through the environment."""
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "200")
    return db_url


def test_version_and_help() -> None:
    assert runner.invoke(app, ["--version"]).output.startswith("etchacell ")
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("config", "db", "query"):
        assert group in result.output


def test_db_upgrade_current_downgrade(cli_env: str) -> None:
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 0, result.output
    assert "base (empty)" in result.output

    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"to revision {head_revision()}" in result.output
    again = runner.invoke(app, ["db", "upgrade"])  # idempotent
    assert again.exit_code == 0 and "already at revision" in again.output

    result = runner.invoke(app, ["db", "current"])
    assert "up to date" in result.output

    result = runner.invoke(app, ["db", "downgrade", "base"])
    assert result.exit_code == 0, result.output
    assert "base (empty)" in result.output


def test_query_refuses_an_unmigrated_database(cli_env: str) -> None:
    result = runner.invoke(app, ["query", "classification_throughput"])
    assert result.exit_code == 2
    assert "etchacell db upgrade" in result.stderr


def test_every_query_answers_on_an_empty_database(cli_env: str) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    for name, named in load_queries().items():
        as_json = runner.invoke(app, ["query", name, "--format", "json"])
        as_csv = runner.invoke(app, ["query", name, "--format", "csv"])
        as_table = runner.invoke(app, ["query", name])
        for result in (as_json, as_csv, as_table):
            assert result.exit_code == 0, f"{name}: {result.output}"
        rows = json.loads(as_json.output)
        csv_lines = as_csv.output.splitlines()
        assert isinstance(rows, list)
        assert len(csv_lines) == 1 + len(rows), name
        assert all(list(row) == csv_lines[0].split(",") for row in rows), name
        assert named.title in as_table.output


def test_query_list_shows_every_query() -> None:
    result = runner.invoke(app, ["query", "--list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name in load_queries():
        assert name in result.output


def test_query_errors_are_one_line(cli_env: str) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    cases = [
        (["query", "no_such_query"], "no query named 'no_such_query'"),
        (["query", "classification_throughput", "-p", "since=last tuesday"], "parameter since"),
        (["query", "classification_throughput", "-p", "colour=blue"], "unknown parameter 'colour'"),
        (["query", "classification_throughput", "-p", "since"], "expected k=v"),
    ]
    for args, expected in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert expected in result.stderr
        assert "Traceback" not in result.output


def test_query_prints_sql_for_dashboards() -> None:
    grafana = runner.invoke(app, ["query", "classification_throughput", "--sql", "grafana"]).output
    metabase = runner.invoke(app, ["query", "classification_throughput", "--sql", "metabase"]).output
    assert "$since" in grafana and ":since" not in grafana
    assert "{{since}}" in metabase


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ETCHACELL_PANOPTES__CLIENT_SECRET", "very-secret-value")
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", "postgresql://loop:hunter2@db.example/loop")
    monkeypatch.setenv("COLUMNS", "200")
    for output in ("table", "json"):
        result = runner.invoke(app, ["config", "show", "--format", output])
        assert result.exit_code == 0, result.output
        assert "very-secret-value" not in result.output
        assert "hunter2" not in result.output
    shown = json.loads(runner.invoke(app, ["config", "show", "--format", "json"]).output)
    assert shown["panoptes.client_secret"] == "********"
    assert shown["imaging.pixel_size_z_nm"] == 50.0


def test_bad_configuration_is_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text("[training]\nmin_new_consensus_slices = -5\n", encoding="utf-8")
    result = runner.invoke(app, ["--config", str(config), "config", "check"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "training.min_new_consensus_slices = -5" in lines[0]
    ok = runner.invoke(app, ["config", "check"])
    assert ok.exit_code == 0 and "configuration OK" in ok.output


def test_unreachable_database_is_one_line_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", "postgresql://loop:hunter2@127.0.0.1:1/loop")
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 2
    assert "database error" in result.stderr
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output
