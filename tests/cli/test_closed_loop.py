"""One full round of the loop, end to end through the commands an operator runs, on real components:
a synthetic volume, its subjects in the sandbox, simulated volunteers, the daemon's jobs (``tick``),
the worker (a small model trained on the CPU), Caesar marks, corrections, and the corrected consensus
folded into the next model's training set."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.models import (
    ConsensusKind,
    ConsensusResult,
    JobRun,
    JobStatus,
    ModelVersion,
    SlicePrediction,
    Subject,
    SubjectKind,
)
from etchacell_loop.panoptes.caesar import connect_caesar
from etchacell_loop.panoptes.gateway import connect
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.panoptes.support import panoptes_settings

runner = CliRunner()
LOOP_SETTINGS = {
    "ETCHACELL_IMAGING__CROP_SIZE_PX": "360",
    "ETCHACELL_IMAGING__SUBJECT_SIZE_PX": "180",
    "ETCHACELL_RETIREMENT__POLICY": "fixed-count",
    "ETCHACELL_RETIREMENT__MIN_CLASSIFICATIONS": "3",
    "ETCHACELL_RETIREMENT__MAX_CLASSIFICATIONS": "3",
    "ETCHACELL_TRAINING__MIN_NEW_CONSENSUS_SLICES": "2",
    "ETCHACELL_TRAINING__EPOCHS": "2",
    "ETCHACELL_TRAINING__STEPS_PER_EPOCH": "3",
    "ETCHACELL_CORRECTION__BUDGET_PER_ROUND": "4",
    "ETCHACELL_CORRECTION__MONITORING_SLICES": "1",
    "ETCHACELL_CORRECTION__MIN_MONITORING_SLICES": "1",
    "ETCHACELL_CORRECTION__MIN_COMPONENT_VOXELS": "0",
    "ETCHACELL_CORRECTION__KEEP_LARGEST": "true",
}


def ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_round_of_the_loop_folds_volunteers_corrections_into_the_next_model(
    configured: dict[str, int],
    sandbox: SandboxProcess,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("keras")
    for name, value in {**LOOP_SETTINGS, "ETCHACELL_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ETCHACELL_PANOPTES__CAESAR_ENDPOINT", sandbox.url)
    segmentation, correction = configured["segmentation_workflow_id"], configured["correction_workflow_id"]
    volume, subjects = tmp_path / "hela.zarr", tmp_path / "subjects"

    ok("synth", "volume", str(volume), "--shape", "12,768,768", "--cells", "3", "--seed", "2")
    ok("subjects", "prepare", str(volume), "--all-rois", "--out", str(subjects))
    ok("subjects", "upload", str(subjects), "--subject-set", "traced", "--roi", "cell01", "--roi", "cell02",
       "--split", "cell01=train", "--split", "cell02=validation")  # fmt: skip
    ok("subjects", "upload", str(subjects), "--subject-set", "held back", "--roi", "cell03",
       "--split", "cell03=train", "--no-workflow")  # fmt: skip
    crowd = ["sandbox", "volunteers", "--url", sandbox.url, "--truth", str(volume), "--mix", "careful=1"]

    # Volunteers trace; the daemon's jobs settle, retire and queue a run; the worker trains model 1.
    ok(*crowd, "--workflow", str(segmentation), "--max-classifications", str(24 * 3 + 12), "--seed", "1")
    ok("tick", "ingest", "aggregate", "retire", "train")
    ok("worker", "--once")
    # Model 1 is promoted: publish queues its predictions, the worker predicts, publish sends the most
    # uncertain held-back slices to the correction workflow with their outlines as Caesar marks.
    ok("tick", "publish")
    ok("worker", "--once")
    ok("tick", "publish")
    # Volunteers correct the marks in place; their corrections become corrected consensus, are measured
    # against the prediction, settle, and queue the next run, which trains on them.
    ok(*crowd, "--workflow", str(correction), "--max-classifications", str(5 * 3), "--seed", "2")
    ok("tick", "ingest", "aggregate", "retire", "publish", "train")
    ok("worker", "--once")

    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            versions = session.exec(select(ModelVersion).order_by(col(ModelVersion.id))).all()
            sent = session.exec(select(Subject).where(Subject.kind == SubjectKind.PREDICTION)).all()
            measured = session.exec(select(SlicePrediction).where(col(SlicePrediction.correction_dice).is_not(None)))
            corrected_ids = set(
                session.exec(select(ConsensusResult.id).where(ConsensusResult.kind == ConsensusKind.CORRECTED)).all()
            )
            failed_jobs = session.exec(select(JobRun).where(JobRun.status != JobStatus.OK)).all()
            dice = [m.correction_dice for m in measured]
    finally:
        engine.dispose()
    assert len(versions) == 2 and failed_jobs == []
    assert len(sent) == 5 and all(s.machine_marks_pushed_at is not None for s in sent)  # 4 uncertain + 1 monitoring
    assert dice and all(d is not None and 0.0 <= d <= 1.0 for d in dice)
    second_training = {i for ids in versions[1].training_data["consensus_ids"].values() for i in ids}
    assert second_training & corrected_ids  # the corrections are training data now
    assert not {i for ids in versions[0].training_data["consensus_ids"].values() for i in ids} & corrected_ids
    settings = panoptes_settings(sandbox).model_copy(update={"caesar_endpoint": sandbox.url})
    with connect(settings) as gateway, connect_caesar(gateway, settings) as caesar:
        for subject in sent:
            assert subject.panoptes_id is not None
            (reduction,) = caesar.reductions(correction, subject.panoptes_id)
            assert isinstance(reduction["data"]["data"], list)  # the outline as marks (none: nothing predicted)
