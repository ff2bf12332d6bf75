"""``etchacell retrain``, ``etchacell model list|promote|rollback`` and ``etchacell worker --once``
through the real CLI on a real database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.models import RunStatus, TrainingRun, TrainingTrigger
from etchacell_loop.model import registry

runner = CliRunner()


@pytest.fixture
def configured(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", db_url)
    monkeypatch.setenv("ETCHACELL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    return db_url


def test_retrain_queues_one_run_and_refuses_a_second(configured: str) -> None:
    first = runner.invoke(app, ["retrain", "--reason", "200 new slices", "--by", "alice"])
    assert first.exit_code == 0, first.output
    run_id = int(first.stdout.strip())
    refused = runner.invoke(app, ["retrain"])
    assert refused.exit_code == 2 and f"training run {run_id} is already queued" in refused.stderr
    assert "Traceback" not in refused.output
    forced = runner.invoke(app, ["retrain", "--force", "--preset", "small-3d"])
    assert forced.exit_code == 0 and int(forced.stdout) == run_id + 1
    engine = make_engine(configured)
    try:
        with Session(engine) as session:
            run = session.get(TrainingRun, run_id)
            assert run is not None
            assert (run.status, run.trigger, run.requested_by, run.reason, run.preset) == (
                RunStatus.QUEUED, TrainingTrigger.MANUAL, "alice", "200 new slices", "small",
            )  # fmt: skip
    finally:
        engine.dispose()


def test_retrain_with_an_unknown_preset_names_the_known_ones(configured: str) -> None:
    result = runner.invoke(app, ["retrain", "--preset", "huge"])
    assert result.exit_code == 2 and "unknown model preset 'huge'" in result.stderr and "small" in result.stderr


def test_model_list_promote_rollback(configured: str, tmp_path: Path) -> None:
    assert "no model versions yet" in runner.invoke(app, ["model", "list"]).stdout
    engine = make_engine(configured)
    try:
        with Session(engine) as session:
            for i, f_measure in enumerate((0.6, 0.8, 0.7)):
                model = tmp_path / f"train-{i}" / "model.keras"
                model.parent.mkdir()
                model.write_bytes(b"w")
                version = registry.register_model_version(
                    session, artifact_path=model, data_dir=tmp_path / "data", preset="small",
                    architecture="unet-2.5d", metrics={"validation": {"consensus": {"f_measure": f_measure,
                    "ahd_nm": 50.0 + i}}}, training_data={}, data_hash=f"{i}" * 64,
                )  # fmt: skip
                registry.auto_promote(session, version)
            session.commit()
            names = [v.version for v in registry.list_versions(session)][::-1]
    finally:
        engine.dispose()
    listing = runner.invoke(app, ["model", "list"])
    assert listing.exit_code == 0, listing.output
    assert all(name in listing.stdout for name in names) and "0.800" in listing.stdout and "51.0" in listing.stdout
    promoted = runner.invoke(app, ["model", "promote", names[2], "--by", "carol"])
    assert promoted.exit_code == 0 and f"{names[2]} promoted" in promoted.stdout
    again = runner.invoke(app, ["model", "promote", names[2]])
    assert again.exit_code == 2 and "already the promoted version" in again.stderr
    unknown = runner.invoke(app, ["model", "promote", "v0099-deadbeef"])
    assert unknown.exit_code == 2 and "no model version 'v0099-deadbeef'" in unknown.stderr
    back = runner.invoke(app, ["model", "rollback"])
    assert back.exit_code == 0 and f"{names[1]} promoted again (rolled back from {names[2]})" in back.stdout
    assert runner.invoke(app, ["model", "rollback"]).exit_code == 0  # back to the first
    last = runner.invoke(app, ["model", "rollback"])
    assert last.exit_code == 2 and "nothing to roll back to" in last.stderr


def test_worker_once_with_an_empty_queue_exits_zero(configured: str) -> None:
    result = runner.invoke(app, ["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "no training run queued" in result.stdout


def test_worker_once_fails_a_run_that_has_nothing_to_train_on(configured: str) -> None:
    assert runner.invoke(app, ["retrain"]).exit_code == 0
    result = runner.invoke(app, ["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "1 claimed, 0 succeeded, 1 failed" in result.stdout
    engine = make_engine(configured)
    try:
        with Session(engine) as session:
            (run,) = session.exec(select(TrainingRun)).all()
            assert run.status == RunStatus.FAILED and run.error is not None
            assert "TrainingSetError: nothing to train on" in run.error
    finally:
        engine.dispose()
