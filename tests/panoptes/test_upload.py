"""Idempotent subject upload against the sandbox and a real database (SQLite and PostgreSQL):
exactly one Panoptes subject per upload key, with verified media, across faults and a SIGKILL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from etchacell_loop.db.models import Event, Subject, SubjectSet, UploadState
from etchacell_loop.panoptes.gateway import UPLOAD_KEY, PanoptesGateway
from etchacell_loop.panoptes.upload import FrameFile, SubjectUpload, upload_subjects
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.panoptes.support import (
    FAULTS_20,
    add_loop_rows,
    assert_uploaded_once,
    get_row,
    kill_when,
    make_uploads,
    session_factory,
    start_worker,
    upload_to_json,
)

SET_NAME = "hela-1 raw"
STAGING_NAME = SET_NAME + " (staging)"


@dataclass
class Target:
    engine: Engine
    subject_set: SubjectSet
    roi_id: int
    project_id: int  # Panoptes

    @property
    def set_panoptes_id(self) -> int:
        assert self.subject_set.panoptes_id is not None
        return self.subject_set.panoptes_id


@pytest.fixture
def target(migrated_engine: Engine, gateway: PanoptesGateway, sandbox_project: dict[str, int]) -> Target:
    """The real subject set on Panoptes (linked to the tracing workflow) and its rows in the database."""
    project, workflow = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    set_id = gateway.ensure_subject_set(project, SET_NAME, workflow_id=workflow)
    ids = add_loop_rows(migrated_engine, sandbox_project, set_id, SET_NAME)
    return Target(migrated_engine, get_row(migrated_engine, SubjectSet, ids["subject_set"]), ids["roi"], project)


def subject_rows(engine: Engine) -> list[Subject]:
    with Session(engine) as session:
        return list(session.exec(select(Subject).order_by(col(Subject.upload_key))).all())


def test_upload_links_verified_subjects_and_a_rerun_changes_nothing(
    target: Target, gateway: PanoptesGateway, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    uploads = make_uploads(tmp_path / "frames", target.roi_id, count=12)
    progress: list[tuple[int, int]] = []
    result = upload_subjects(
        session_factory(target.engine), gateway, target.subject_set, uploads, link_batch=5,
        progress=lambda done, total: progress.append((done, total)),
    )  # fmt: skip
    assert (result.created, result.adopted, result.linked, result.failed, result.skipped) == (12, 0, 12, 0, 0)
    assert progress[-1] == (12, 12) and len(progress) == 12
    inventory = sandbox.inventory(target.project_id)
    assert_uploaded_once(inventory, uploads, target.set_panoptes_id, STAGING_NAME)
    by_key = {s["metadata"][UPLOAD_KEY]: s for s in inventory["subjects"]}
    rows = subject_rows(target.engine)
    assert [r.upload_state for r in rows] == [UploadState.LINKED] * 12
    assert all(r.upload_attempts == 1 and r.uploaded_at is not None and r.locations for r in rows)
    assert all(r.panoptes_id == by_key[r.upload_key]["id"] for r in rows)
    assert rows[0].frames == [0, 1, 2, 3, 4] and rows[0].target_frame == 2

    again = upload_subjects(session_factory(target.engine), gateway, target.subject_set, uploads)
    assert (again.created, again.adopted, again.linked, again.skipped) == (0, 0, 0, 12)
    assert len(sandbox.inventory(target.project_id)["subjects"]) == 12


def test_a_subject_posted_before_a_crash_is_adopted_not_posted_again(
    target: Target, gateway: PanoptesGateway, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """The state a crash right after the POST leaves: the row says 'attempted', Panoptes has the
    subject (in staging, no media), the database never heard its id."""
    uploads = make_uploads(tmp_path / "frames", target.roi_id, count=3)
    upload_subjects(session_factory(target.engine), gateway, target.subject_set, uploads[:1])
    staging = gateway.ensure_subject_set(target.project_id, STAGING_NAME)
    orphan = gateway.create_subject(
        target.project_id, staging, uploads[1].read_frames(), uploads[1].panoptes_metadata()
    )
    with Session(target.engine) as session:
        session.add(
            Subject(
                upload_key=uploads[1].upload_key, roi_id=target.roi_id, subject_set_id=target.subject_set.id,
                slice_index=1, frames=[1, 2, 3, 4, 5], target_frame=2, upload_attempts=1,
            )
        )  # fmt: skip
        session.commit()
    result = upload_subjects(session_factory(target.engine), gateway, target.subject_set, uploads)
    assert (result.created, result.adopted, result.linked, result.skipped) == (1, 1, 2, 1)
    assert_uploaded_once(sandbox.inventory(target.project_id), uploads, target.set_panoptes_id, STAGING_NAME)
    adopted = next(r for r in subject_rows(target.engine) if r.upload_key == uploads[1].upload_key)
    assert adopted.panoptes_id == orphan.id and adopted.upload_attempts == 1  # no second POST


def test_a_subject_that_keeps_failing_is_marked_failed_and_the_others_go_on(
    target: Target, gateway: PanoptesGateway, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    uploads = make_uploads(tmp_path / "frames", target.roi_id, count=4)
    bad_file = tmp_path / "frames" / "notes.xyz"
    bad_file.write_bytes(b"not an image")
    refused = SubjectUpload(
        upload_key="refused", roi_id=target.roi_id, slice_index=90, frames=(90,), target_frame=0,
        files=(FrameFile(bad_file, mime="application/x-unknown"),),
    )  # fmt: skip
    missing = SubjectUpload(
        upload_key="missing", roi_id=target.roi_id, slice_index=91, frames=(91,), target_frame=0,
        files=(FrameFile(tmp_path / "nowhere.jpg"),),
    )  # fmt: skip
    everything = [uploads[0], refused, uploads[1], missing, *uploads[2:]]
    result = upload_subjects(session_factory(target.engine), gateway, target.subject_set, everything, max_attempts=2)
    assert (result.created, result.linked, result.failed) == (4, 4, 2)
    assert set(result.errors) == {"refused", "missing"}
    rows = {r.upload_key: r for r in subject_rows(target.engine)}
    assert rows["refused"].upload_state == UploadState.FAILED and rows["refused"].upload_attempts == 2
    assert rows["refused"].upload_error and "\n" not in rows["refused"].upload_error
    assert rows["missing"].upload_state == UploadState.FAILED and rows["missing"].upload_attempts == 0
    with Session(target.engine) as session:
        kinds = session.exec(select(Event.kind, Event.subject_id)).all()
    assert sorted(kinds) == sorted([("subject_upload_failed", rows[k].id) for k in ("refused", "missing")])
    assert_uploaded_once(sandbox.inventory(target.project_id), uploads, target.set_panoptes_id, STAGING_NAME)


def test_twenty_percent_faults_still_upload_every_subject_exactly_once(
    target: Target, gateway: PanoptesGateway, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """5xx and 429 on 20% of requests, plus answers lost after processing and dropped blob uploads."""
    uploads = make_uploads(tmp_path / "frames", target.roi_id, count=25)
    sandbox.set_faults(**FAULTS_20, lost_response_rate=0.1, blob_put_failure_rate=0.1, seed=11)
    result = upload_subjects(
        session_factory(target.engine), gateway, target.subject_set, uploads, max_attempts=10, link_batch=10
    )
    sandbox.clear_faults()
    assert result.failed == 0 and result.linked == 25 and result.created + result.adopted >= 25
    assert_uploaded_once(sandbox.inventory(target.project_id), uploads, target.set_panoptes_id, STAGING_NAME)
    assert {r.upload_state for r in subject_rows(target.engine)} == {UploadState.LINKED}


def test_killed_halfway_then_rerun_uploads_every_subject_exactly_once(
    target: Target, gateway: PanoptesGateway, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    uploads = make_uploads(tmp_path / "frames", target.roi_id, count=24)
    sandbox.set_faults(**FAULTS_20, lost_response_rate=0.05, latency_ms=15, seed=5)
    job = {
        "mode": "upload",
        "subject_set": target.subject_set.id,
        "uploads": [upload_to_json(u) for u in uploads],
        "link_batch": 5,
    }
    url = target.engine.url.render_as_string(hide_password=False)
    worker = start_worker(job, tmp_path / "upload-job.json", url, sandbox)

    def some_progress() -> bool:
        with Session(target.engine) as session:
            statement = select(func.count()).select_from(Subject).where(col(Subject.panoptes_id).is_not(None))
            return session.exec(statement).one() >= 7

    kill_when(worker, some_progress)
    rows = subject_rows(target.engine)
    assert any(r.upload_state != UploadState.LINKED for r in rows)  # it really was killed halfway
    sandbox.set_faults(**FAULTS_20, lost_response_rate=0.05, seed=6)  # the rerun meets faults too
    result = upload_subjects(
        session_factory(target.engine), gateway, target.subject_set, uploads, max_attempts=10, link_batch=5
    )
    sandbox.clear_faults()
    assert result.failed == 0
    assert_uploaded_once(sandbox.inventory(target.project_id), uploads, target.set_panoptes_id, STAGING_NAME)
    assert {r.upload_state for r in subject_rows(target.engine)} == {UploadState.LINKED}
