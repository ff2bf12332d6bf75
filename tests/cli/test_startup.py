"""The quick commands stay quick: what ``--help``, ``status``, ``query`` and ``config`` import.

Timing a command in a test would fail by load; what makes one slow is what it imports, which is
exact. ``bench/bench_startup.py`` measures the seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etchacell_loop.cli import aggregate_cmd, daemon_cmd, predict_cmd
from etchacell_loop.cria.methods import METHODS
from etchacell_loop.loop.jobs import JOBS
from etchacell_loop.model import evaluation, predict, tap

# The model stack, the numerical libraries, the loop's jobs, the dashboard and the Panoptes client:
# seconds of imports that none of the quick commands needs.
HEAVY = (
    "numpy", "scipy", "zarr", "PIL", "keras", "tensorflow", "jax", "torch", "panoptes_client", "uvicorn",
    "fastapi", "jinja2", "httpx", "etchacell_loop.loop.jobs", "etchacell_loop.db.models", "etchacell_loop.cria",
)  # fmt: skip
PROBE = """
import json, sys
from typer.testing import CliRunner
from etchacell_loop.cli.app import app
result = CliRunner().invoke(app, sys.argv[1:])
print(json.dumps({"exit": result.exit_code, "output": result.output, "modules": sorted(sys.modules)}))
"""


def imported_by(args: list[str], data_dir: Path) -> tuple[int, set[str]]:
    """Run ``etchacell ARGS`` in a fresh interpreter: its exit status and every module it imported."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ETCHACELL_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True, text=True, check=True, env={**environ, "ETCHACELL_DATA_DIR": str(data_dir)},
    )  # fmt: skip
    report = json.loads(done.stdout)
    return report["exit"], set(report["modules"])


@pytest.mark.parametrize(
    "args",
    [["--help"], ["status"], ["query", "job_status"], ["query", "--list"], ["config", "show"], ["tick", "--help"]],
)
def test_a_quick_command_imports_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    assert imported_by(["db", "upgrade"], tmp_path)[0] == 0
    code, modules = imported_by(args, tmp_path)
    assert code == 0
    assert sorted(m for m in HEAVY if m in modules) == []


def test_help_imports_no_database_layer_or_settings(tmp_path: Path) -> None:
    code, modules = imported_by(["--help"], tmp_path)
    assert code == 0
    assert not {"sqlalchemy", "sqlmodel", "alembic", "pydantic", "etchacell_loop.config"} & modules


def test_the_names_help_shows_are_the_librarys() -> None:
    assert tuple(JOBS) == daemon_cmd.JOB_NAMES
    assert tuple(METHODS) == aggregate_cmd.METHODS
    assert predict_cmd.TAP_RULES == tap.TAP_RULES
    assert predict_cmd.DEFAULT_MIN_COMPONENT_VOXELS == tap.DEFAULT_MIN_COMPONENT_VOXELS
    assert predict_cmd.DEFAULT_CHUNK_ZYX == predict.DEFAULT_CHUNK_ZYX
    assert predict_cmd.DEFAULT_LABEL == evaluation.DEFAULT_LABEL
