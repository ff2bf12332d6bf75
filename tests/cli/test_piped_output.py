"""Output read by the next program: when stdout is not a terminal, tables keep every row on one line
(whole timestamps, version names, variable names), figures are rounded, and ``--help`` shows flags
without a type and arguments by their plain names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.cli.query_cmd import print_result, table_cell
from etchacell_loop.config import env_var_for, known_keys
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.queries import NamedQuery, QueryResult
from etchacell_loop.model import registry

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a pipe from a shell that exports no COLUMNS: Rich would fall back to 80 columns."""
    monkeypatch.delenv("COLUMNS", raising=False)


def test_config_show_piped_keeps_every_key_and_variable_whole(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS" and not k.startswith("ETCHACELL_")}
    done = subprocess.run(
        [sys.executable, "-m", "etchacell_loop", "config", "show"],
        capture_output=True, text=True, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for key in known_keys():
        assert any(key in line and env_var_for(key) in line for line in lines), key


def test_a_query_table_keeps_each_row_on_one_line_and_rounds_figures(capsys: pytest.CaptureFixture[str]) -> None:
    columns = (*(f"column_{i}_with_a_long_name" for i in range(8)), "gini")
    stamp = "2026-12-04T17:03:22.123456+00:00"
    rows = [(*(f"{stamp}" for _ in range(8)), 0.6284048044470916) for _ in range(3)]
    named = NamedQuery(name="wide", title="a wide result", description="", params=(), sql="", path=Path("wide.sql"))
    print_result(named, QueryResult(columns, rows))
    lines = capsys.readouterr().out.splitlines()
    body = [line for line in lines if stamp in line]
    assert len(body) == 3 and all(line.count(stamp) == 8 and "0.6284" in line for line in body)
    assert "0.6284048" not in "\n".join(lines)
    assert all(name in next(line for line in lines if "gini" in line) for name in columns)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.6284048044470916, "0.6284"), (12.3456, "12.35"), (123456.7, "123457"), (3.0, "3"), (None, ""), (7, "7"),
     (True, "True"), (0.000123456, "0.0001235"), ("v0002-44ab", "v0002-44ab"), (float("nan"), "nan")],
)  # fmt: skip
def test_table_cells_round_figures_to_four_significant_digits(value: object, shown: str) -> None:
    assert table_cell(value) == shown


def test_model_list_piped_shows_whole_version_names(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", db_url)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            for i in range(2):
                model = tmp_path / f"train-{i}" / "model.keras"
                model.parent.mkdir()
                model.write_bytes(b"w")
                version = registry.register_model_version(
                    session, artifact_path=model, data_dir=tmp_path / "data", preset="small",
                    architecture="unet-2.5d", metrics={"validation": {"consensus": {"f_measure": 0.7123456,
                    "ahd_nm": 50.0}}}, training_data={}, data_hash=f"{i}" * 64,
                )  # fmt: skip
                registry.auto_promote(session, version)
            session.commit()
            names = [v.version for v in registry.list_versions(session)]
    finally:
        engine.dispose()
    listing = runner.invoke(app, ["model", "list"])
    assert listing.exit_code == 0, listing.output
    assert "…" not in listing.stdout
    shown = [line.split()[1] for line in listing.stdout.splitlines() if line.startswith("│ v")]
    assert shown == names  # as `model promote` takes them: copied from the listing, they work
    promoted = runner.invoke(app, ["model", "promote", shown[0]])
    assert promoted.exit_code == 0, promoted.output


@pytest.mark.parametrize(
    "command", [[], ["aggregate"], ["predict"], ["synth", "volume"], ["query"], ["model", "promote"], ["tick"]]
)
def test_help_shows_flags_without_a_type_and_arguments_by_name(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage


def test_usage_lines_name_arguments_in_capitals() -> None:
    assert "etchacell aggregate [OPTIONS] EXPORT" in runner.invoke(app, ["aggregate", "--help"]).output
    assert "etchacell tick [OPTIONS] JOBS..." in runner.invoke(app, ["tick", "--help"]).output
    assert "etchacell query [OPTIONS] [NAME]" in runner.invoke(app, ["query", "--help"]).output
