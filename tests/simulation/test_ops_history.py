"""The synthetic project history: what it reports is what it wrote, and what it wrote keeps the rules
the loop's own writers keep, on SQLite and PostgreSQL, so the dashboard and the queries can be tried
on it and the loop can go on writing to the same database afterwards.
"""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from etchacell_loop.db.engine import make_engine, session_scope
from etchacell_loop.db.migrate import upgrade
from etchacell_loop.db.models import DecisionOutcome, RetirementState, RunStatus, TrainingRun, TrainingTrigger
from etchacell_loop.loop.runs import queue_training_run
from etchacell_loop.simulation import ops_history
from etchacell_loop.simulation.ops_history import HistoryReport, HistorySpec, write_history
from etchacell_loop.subject_metadata import IMAGE_KEY

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SPEC = HistorySpec(classifications=3000, rendered_slices=2, seed=7, now=NOW)
TABLES = (
    "project",
    "workflow",
    "volume",
    "roi",
    "subject_set",
    "subject",
    "classification",
    "sync_cursor",
    "consensus_result",
    "volunteer_agreement",
    "retirement_decision",
    "training_run",
    "model_version",
    "model_metric",
    "prediction_batch",
    "slice_prediction",
    "job_run",
    "event",
)


def table(name: str) -> sa.Table:
    return SQLModel.metadata.tables[name]


def rows_of(engine: Engine, name: str) -> list[dict[str, Any]]:
    """Every row of a table, typed as the models type them (aware datetimes, enums, JSON), by id."""
    t = table(name)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.id))]


def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: conn.execute(sa.select(sa.func.count()).select_from(table(name))).scalar_one() for name in TABLES}


@pytest.fixture
def history(migrated_engine: Engine, tmp_path: Path) -> HistoryReport:
    return write_history(migrated_engine, tmp_path / "data", SPEC)


def test_report_counts_the_rows_written(migrated_engine: Engine, history: HistoryReport, tmp_path: Path) -> None:
    counts = table_counts(migrated_engine)
    assert dict(history.rows) == counts
    assert history.data_dir == tmp_path / "data"
    assert counts["classification"] == SPEC.classifications
    assert counts["subject"] == SPEC.n_subjects
    assert counts["model_version"] == SPEC.model_versions
    assert all(n > 0 for n in counts.values()), counts


def test_classifications_are_numbered_in_time_order(migrated_engine: Engine, history: HistoryReport) -> None:
    classifications = rows_of(migrated_engine, "classification")
    by_panoptes_id = sorted(classifications, key=lambda c: c["panoptes_id"])
    times = [c["created_at"] for c in by_panoptes_id]
    assert times == sorted(times)
    assert len({c["panoptes_id"] for c in classifications}) == len(classifications)
    assert all(c["created_at"].tzinfo is not None and c["created_at"] <= NOW for c in classifications)
    # the segmentation workflow's cursor has read them all
    (cursor,) = [c for c in rows_of(migrated_engine, "sync_cursor") if c["workflow_id"] == 1]
    assert cursor["last_classification_id"] == by_panoptes_id[-1]["panoptes_id"]
    assert cursor["n_ingested"] == len(classifications)
    # each classification names its subject both ways, consistently
    subjects = {s["id"]: s for s in rows_of(migrated_engine, "subject")}
    assert all(subjects[c["subject_id"]]["panoptes_id"] == c["subject_panoptes_id"] for c in classifications)


def test_model_versions_and_training_runs(migrated_engine: Engine, history: HistoryReport) -> None:
    versions = rows_of(migrated_engine, "model_version")
    promoted = [v for v in versions if v["promoted"]]
    assert len(promoted) == 1
    assert promoted[0]["created_at"] == max(v["created_at"] for v in versions)
    runs = {r["id"]: r for r in rows_of(migrated_engine, "training_run")}
    assert all(runs[v["training_run_id"]]["status"] == RunStatus.SUCCEEDED for v in versions)
    assert sum(1 for r in runs.values() if r["status"] in (RunStatus.QUEUED, RunStatus.RUNNING)) <= 1


def test_one_current_consensus_per_slice_and_kind(migrated_engine: Engine, history: HistoryReport) -> None:
    consensus = rows_of(migrated_engine, "consensus_result")
    current = Counter((c["roi_id"], c["slice_index"], c["kind"]) for c in consensus if c["is_current"])
    assert current
    assert max(current.values()) == 1
    # and it is what the subject got: its classifications counted
    per_subject = Counter(c["subject_id"] for c in rows_of(migrated_engine, "classification"))
    subjects = {s["id"]: s for s in rows_of(migrated_engine, "subject")}
    for c in consensus:
        subject = subjects[c["subject_id"]]
        assert (c["roi_id"], c["slice_index"]) == (subject["roi_id"], subject["slice_index"])
        assert c["n_classifications"] == per_subject[c["subject_id"]]
    agreements = rows_of(migrated_engine, "volunteer_agreement")
    ids = {c["id"] for c in consensus}
    assert all(a["consensus_result_id"] in ids and 0.0 <= a["dice"] <= 1.0 for a in agreements)


def test_consensus_images_are_on_disk(migrated_engine: Engine, history: HistoryReport, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    subjects = {s["id"]: s for s in rows_of(migrated_engine, "subject")}
    checked: set[tuple[str, ...]] = set()
    for c in rows_of(migrated_engine, "consensus_result"):
        uris = (c["mask_uri"], c["band_uri"], c["confidence_uri"])
        assert all(uris), c["id"]
        if uris in checked:
            continue
        checked.add(uris)
        sizes = set()
        for uri in uris:
            path = data_dir / uri
            assert path.is_file(), path
            with Image.open(io.BytesIO(path.read_bytes())) as image:
                assert image.format == "PNG"
                sizes.add(image.size)
        assert len(sizes) == 1, (c["id"], sizes)
        # drawn over the frame of its subject: the same size
        subject = subjects[c["subject_id"]]
        frame = data_dir / subject["local_dir"] / subject["panoptes_metadata"][f"Image {subject['target_frame']}"]
        with Image.open(frame) as image:
            assert {image.size} == sizes
    assert len(checked) == SPEC.rendered_slices


def test_subject_frames_are_on_disk(migrated_engine: Engine, history: HistoryReport, tmp_path: Path) -> None:
    frames = set()
    for subject in rows_of(migrated_engine, "subject"):
        assert 0 <= subject["target_frame"] < len(subject["frames"])
        name = subject["panoptes_metadata"][IMAGE_KEY.format(index=subject["target_frame"])]
        frames.add(tmp_path / "data" / subject["local_dir"] / name)
    assert len(frames) == SPEC.rendered_slices
    for frame in frames:
        assert frame.is_file(), frame
        with Image.open(frame) as image:
            assert image.format == "JPEG"
            assert image.size == (ops_history.FRAME_SIZE_PX, ops_history.FRAME_SIZE_PX)


def test_retired_subjects_have_a_retirement_decision(migrated_engine: Engine, history: HistoryReport) -> None:
    subjects = rows_of(migrated_engine, "subject")
    retired = {s["id"]: s for s in subjects if s["retirement_state"] == RetirementState.RETIRED}
    assert 0 < len(retired) < len(subjects)
    decisions = rows_of(migrated_engine, "retirement_decision")
    assert {d["subject_id"] for d in decisions} == set(retired)
    consensus = {c["id"]: c for c in rows_of(migrated_engine, "consensus_result")}
    per_subject = Counter(c["subject_id"] for c in rows_of(migrated_engine, "classification"))
    for d in decisions:
        subject = retired[d["subject_id"]]
        assert d["outcome"] == DecisionOutcome.RETIRE
        assert consensus[d["consensus_result_id"]]["subject_id"] == d["subject_id"]
        assert d["n_classifications"] == per_subject[d["subject_id"]]
        assert d["decided_at"] == subject["retired_at"]
        assert subject["created_at"] <= subject["retired_at"] <= NOW
    assert all(s["retired_at"] is None for s in subjects if s["id"] not in retired)


def test_a_volunteer_with_html_in_the_name_is_present(migrated_engine: Engine, history: HistoryReport) -> None:
    names = {c["user_name"] for c in rows_of(migrated_engine, "classification")}
    unsafe = names & set(ops_history.UNSAFE_NAMES)
    assert any("<" in name for name in unsafe), unsafe
    flagged = [e for e in rows_of(migrated_engine, "event") if e["kind"] == "volunteer.flagged"]
    assert [e["payload"]["user_name"] for e in flagged] == [ops_history.UNSAFE_NAMES[0]]


def test_a_second_history_is_refused(migrated_engine: Engine, history: HistoryReport, tmp_path: Path) -> None:
    before = table_counts(migrated_engine)
    with pytest.raises(ValueError, match="empty database"):
        write_history(migrated_engine, tmp_path / "again", SPEC)
    assert table_counts(migrated_engine) == before
    assert not (tmp_path / "again").exists()


def test_the_loop_can_write_afterwards(migrated_engine: Engine, history: HistoryReport) -> None:
    runs_before = max(r["id"] for r in rows_of(migrated_engine, "training_run"))
    events_before = max(e["id"] for e in rows_of(migrated_engine, "event"))
    with session_scope(migrated_engine) as session:
        run = queue_training_run(session, TrainingTrigger.MANUAL, "t", "r", "small", force=True)
        run_id = run.id
    assert run_id == runs_before + 1
    (stored,) = [r for r in rows_of(migrated_engine, "training_run") if r["id"] == run_id]
    assert (stored["status"], stored["requested_by"], stored["reason"]) == (RunStatus.QUEUED, "t", "r")
    queued = [e for e in rows_of(migrated_engine, "event") if e["id"] > events_before]
    assert [(e["kind"], e["training_run_id"]) for e in queued] == [("training.queued", run_id)]
    with session_scope(migrated_engine) as session:
        assert session.get(TrainingRun, runs_before) is not None  # the history's own rows untouched


def test_every_id_sequence_was_moved_past_the_rows(migrated_engine: Engine, history: HistoryReport) -> None:
    """On PostgreSQL the bulk insert with explicit ids leaves the sequences behind unless moved."""
    if migrated_engine.dialect.name != "postgresql":
        pytest.skip("SQLite takes the next rowid from the table itself")
    with migrated_engine.connect() as conn:
        for name in TABLES:
            sequence = conn.execute(sa.text(f"SELECT pg_get_serial_sequence('{name}', 'id')")).scalar_one()
            assert sequence, name
            highest = conn.execute(sa.text(f'SELECT MAX(id) FROM "{name}"')).scalar_one()
            last, called = conn.execute(sa.text(f"SELECT last_value, is_called FROM {sequence}")).one()
            assert (last, called) == (highest + 1, False), name  # the next id handed out is highest + 1


def _second_history(tmp_path: Path, spec: HistorySpec) -> tuple[Engine, HistoryReport]:
    """The same history written into a fresh SQLite database (the migrated_engine may be PostgreSQL)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'second.db'}")
    upgrade(engine)
    return engine, write_history(engine, tmp_path / "second", spec)


def test_the_same_seed_gives_the_same_history(migrated_engine: Engine, history: HistoryReport, tmp_path: Path) -> None:
    other, report = _second_history(tmp_path, SPEC)
    try:
        assert dict(report.rows) == dict(history.rows)
        mine = rows_of(migrated_engine, "classification")
        theirs = rows_of(other, "classification")
        assert [c["volunteer_key"] for c in mine] == [c["volunteer_key"] for c in theirs]
        assert Counter(c["subject_panoptes_id"] for c in mine) == Counter(c["subject_panoptes_id"] for c in theirs)
        for name in TABLES:
            assert rows_of(migrated_engine, name) == rows_of(other, name), name
        files = sorted(p.relative_to(history.data_dir) for p in history.data_dir.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(report.data_dir) for p in report.data_dir.rglob("*") if p.is_file())
        assert all((history.data_dir / f).read_bytes() == (report.data_dir / f).read_bytes() for f in files)
    finally:
        other.dispose()


def test_another_seed_gives_another_history(migrated_engine: Engine, history: HistoryReport, tmp_path: Path) -> None:
    other, report = _second_history(tmp_path, HistorySpec(classifications=3000, rendered_slices=2, seed=8, now=NOW))
    try:
        assert report.rows["classification"] == history.rows["classification"]
        mine = [c["volunteer_key"] for c in rows_of(migrated_engine, "classification")]
        assert mine != [c["volunteer_key"] for c in rows_of(other, "classification")]
    finally:
        other.dispose()
