"""Monitoring that checks correction against tracing, on a real database (SQLite and PostgreSQL) and the
sandbox: subjects prepared from a synthetic volume with truth labels, a prediction written by the real
prediction job (a stand-in model), the publish job sending each monitoring slice to the tracing workflow
as an ordinary raw subject, simulated volunteers tracing it from scratch, ingest and aggregate making
its volunteer consensus; then the guard: a version whose corrected consensus disagrees with the traced
one is held from the training set until an operator trusts it (the real CLI), and the dashboard says so."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.config import CorrectionSettings, ImagingSettings
from etchacell_loop.dashboard.pages import QueryBook, models
from etchacell_loop.db.models import (
    ConsensusKind,
    ConsensusResult,
    DataSplit,
    Event,
    ModelVersion,
    RetirementState,
    Roi,
    SelectionReason,
    SlicePrediction,
    Subject,
    SubjectKind,
    SubjectSet,
    UploadState,
    Volume,
)
from etchacell_loop.imaging.prepare import prepare_subjects
from etchacell_loop.imaging.subjects import SubjectFormat
from etchacell_loop.imaging.volume import open_volume
from etchacell_loop.loop import publish_job
from etchacell_loop.loop.consensus_job import run_aggregate
from etchacell_loop.loop.ingest import run_ingest
from etchacell_loop.loop.monitoring import (
    HELD_EVENT,
    GuardState,
    MonitoringAgreement,
    falls_below,
    guard_states,
    held_version_ids,
    monitoring_truth,
    record_operator_decision,
)
from etchacell_loop.loop.publish_job import run_publish
from etchacell_loop.model.training_set import HELD, build_training_set
from etchacell_loop.panoptes.errors import PanoptesUnavailable
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.panoptes.upload import SubjectUpload, UploadResult
from etchacell_loop.panoptes.upload import upload_subjects as real_upload
from etchacell_loop.sandbox.harness import SandboxProcess
from etchacell_loop.simulation.correction import CorrectorMix
from etchacell_loop.simulation.crowd import CrowdMix
from etchacell_loop.simulation.volunteers import RunOptions, VolunteerCrowd, volumes_by_name
from tests.dashboard.support import dashboard_settings, serving
from tests.factories import row_id
from tests.loop.publish_world import World, make_publish_world, run_queued_batch
from tests.model.training_rows import add_consensus, settle
from tests.simulation.truth_volumes import write_truth_volume

VERSION = "v0001-monitor0"
BUDGET, MONITORING = 3, 3  # the three most uncertain of the ROI's twelve slices, and three monitoring slices
runner = CliRunner()


# --- the world ---------------------------------------------------------------------------------------


def make_world(engine: Engine, sandbox: SandboxProcess, project: dict[str, int], tmp_path: Path) -> World:
    """Raw subjects of a truth volume's ROI (prepared, rows only: not on Panoptes), the project with its
    tracing and correction workflows, a promoted model version, and settings naming both workflows
    (:func:`tests.loop.publish_world.make_publish_world`)."""
    data_dir = tmp_path / "data"
    volume_path = tmp_path / "hela.zarr"
    write_truth_volume(volume_path)
    imaging = ImagingSettings(
        crop_size_px=160, subject_size_px=80, flipbook_offsets_nm=(-100.0, -50.0, 0.0, 50.0, 100.0)
    )
    with open_volume(volume_path) as volume:
        prepare_subjects(volume, list(volume.rois), data_dir / "subjects", SubjectFormat.from_settings(imaging))
    correction = CorrectionSettings(budget_per_round=BUDGET, monitoring_slices=MONITORING, min_component_voxels=0)
    return make_publish_world(
        engine, sandbox, project, data_dir, imaging=imaging, correction=correction, version=VERSION,
        splits={"cell01": DataSplit.TRAIN}, raw_set="held back", tracing_workflow=True,
    )  # fmt: skip


@pytest.fixture
def world(migrated_engine: Engine, sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path) -> World:
    return make_world(migrated_engine, sandbox, sandbox_project, tmp_path)


def published(world: World, gateway: PanoptesGateway) -> publish_job.PublishJobResult:
    """A promoted version's round: its batch queued, predicted by the worker, selected and uploaded."""
    factory = world.sessions()
    run_publish(factory, gateway, world.settings)
    run_queued_batch(world)
    return run_publish(factory, gateway, world.settings)


def monitoring_rows(world: World) -> list[SlicePrediction]:
    with Session(world.engine) as session:
        statement = (
            select(SlicePrediction)
            .where(SlicePrediction.selection == SelectionReason.MONITORING)
            .order_by(col(SlicePrediction.slice_index))
        )
        return list(session.exec(statement).all())


def remote_by_key(sandbox: SandboxProcess, world: World) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for subject in sandbox.inventory(world.project["project_id"])["subjects"]:
        found.setdefault(str(subject["metadata"].get("#upload_key")), []).append(subject)
    return found


# --- sending monitoring slices for tracing ---------------------------------------------------------------


def test_each_monitoring_slice_is_also_sent_for_tracing_once(
    world: World, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    first = published(world, gateway)

    assert (first.uploaded, first.monitoring_uploaded) == (BUDGET + 3, 3)
    monitored = monitoring_rows(world)
    assert len(monitored) == 3 and all(r.monitoring_subject_id is not None for r in monitored)
    with Session(world.engine) as session:
        others = session.exec(select(SlicePrediction).where(SlicePrediction.selection != SelectionReason.MONITORING))
        assert all(r.monitoring_subject_id is None for r in others)
        (monitoring_set,) = session.exec(select(SubjectSet).where(SubjectSet.display_name == f"monitoring {VERSION}"))
        assert monitoring_set.kind is SubjectKind.RAW and monitoring_set.workflow_id is not None
        inventory = sandbox.inventory(world.project["project_id"])
        (remote_set,) = [s for s in inventory["subject_sets"] if s["display_name"] == f"monitoring {VERSION}"]
        assert remote_set["workflow_ids"] == [world.project["segmentation_workflow_id"]]
        on_panoptes = remote_by_key(sandbox, world)
        for row in monitored:
            subject = session.get(Subject, row.monitoring_subject_id)
            raw = session.exec(
                select(Subject)
                .where(Subject.roi_id == row.roi_id, Subject.slice_index == row.slice_index, Subject.kind == "raw")
                .order_by(col(Subject.id))
            ).first()
            assert subject is not None and raw is not None and subject.id != raw.id
            assert subject.kind is SubjectKind.RAW and subject.model_version_id is None
            assert subject.upload_state is UploadState.LINKED and subject.subject_set_id == monitoring_set.id
            assert (subject.frames, subject.target_frame) == (raw.frames, raw.target_frame)
            assert subject.upload_key == f"{raw.upload_key}/{VERSION}/monitoring"
            shown = {k: v for k, v in subject.panoptes_metadata.items() if k not in ("#upload_key", "#monitoring")}
            assert shown == {k: v for k, v in raw.panoptes_metadata.items() if k != "#upload_key"}
            assert subject.panoptes_metadata["#monitoring"] == VERSION and "#kind" not in subject.panoptes_metadata
            (remote,) = on_panoptes[subject.upload_key]
            assert remote["subject_set_ids"] == [remote_set["id"]] and len(remote["locations"]) == 5  # type: ignore[arg-type]

    second = run_publish(world.sessions(), gateway, world.settings)

    assert (second.uploaded, second.monitoring_uploaded) == (0, 0)
    again = remote_by_key(sandbox, world)
    assert all(len(again[s]) == 1 for s in again if s.endswith("/monitoring")) and len(again) == len(on_panoptes)
    with Session(world.engine) as session:
        uploaded = session.exec(select(Event).where(Event.kind == "publish.monitoring_uploaded")).all()
    assert len(uploaded) == 1


def test_monitoring_subjects_are_committed_first_and_a_failed_upload_resumes_without_duplicates(
    world: World, gateway: PanoptesGateway, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_tracing = world.settings.model_copy(
        update={"panoptes": world.settings.panoptes.model_copy(update={"segmentation_workflow_id": None})}
    )
    factory = world.sessions()
    run_publish(factory, gateway, no_tracing)
    run_queued_batch(world)
    skipped = run_publish(factory, gateway, no_tracing)
    assert (skipped.uploaded, skipped.monitoring_uploaded) == (BUDGET + 3, 0)
    assert all(r.monitoring_subject_id is None for r in monitoring_rows(world))
    with Session(world.engine) as session:
        said = session.exec(select(Event).where(Event.kind == "publish.monitoring_skipped")).all()
    assert said and all(e.level == "warning" and "segmentation_workflow_id" in e.message for e in said)

    def lost_posts(
        sessions: publish_job.SessionFactory, gw: PanoptesGateway, set_row: SubjectSet, uploads: list[SubjectUpload]
    ) -> UploadResult:
        if set_row.display_name.startswith("monitoring"):
            raise PanoptesUnavailable("502 Bad Gateway")
        return real_upload(sessions, gw, set_row, uploads)

    monkeypatch.setattr("etchacell_loop.loop.publish_job.upload_subjects", lost_posts)
    failed = run_publish(factory, gateway, world.settings)

    assert failed.monitoring_uploaded == 0
    rows = monitoring_rows(world)
    with Session(world.engine) as session:
        pending = [session.get(Subject, r.monitoring_subject_id) for r in rows]
        failures = session.exec(select(Event).where(Event.kind == "publish.upload_failed")).all()
    assert all(s is not None and s.upload_state is UploadState.PENDING for s in pending)  # the intent, committed
    assert len(failures) == 1 and "monitoring" in failures[0].message
    assert not [key for key in remote_by_key(sandbox, world) if key.endswith("/monitoring")]

    monkeypatch.setattr("etchacell_loop.loop.publish_job.upload_subjects", real_upload)
    resumed = run_publish(factory, gateway, world.settings)

    assert resumed.monitoring_uploaded == 3
    assert [r.monitoring_subject_id for r in monitoring_rows(world)] == [r.monitoring_subject_id for r in rows]
    on_panoptes = remote_by_key(sandbox, world)
    assert sorted(len(found) for key, found in on_panoptes.items() if key.endswith("/monitoring")) == [1, 1, 1]
    assert run_publish(factory, gateway, world.settings).monitoring_uploaded == 0


# --- the guard ----------------------------------------------------------------------------------------


def trace_monitoring_subjects(world: World, gateway: PanoptesGateway, sandbox: SandboxProcess) -> None:
    """Careful simulated volunteers trace the tracing workflow's subjects (the monitoring ones) in the
    sandbox; ingest and aggregate make their volunteer consensus, as in the live loop."""
    options = RunOptions(
        workflow_id=world.project["segmentation_workflow_id"], mix=CrowdMix.parse("careful=1"), seed=5,
        max_classifications=18, correctors=CorrectorMix.parse("careful=1"),
    )  # fmt: skip
    volume_path = world.settings.data_dir.parent / "hela.zarr"
    with VolunteerCrowd(sandbox.url, options, volumes_by_name([volume_path])) as crowd:
        report = crowd.run()
    assert report.classifications == 18
    factory = world.sessions()
    assert run_ingest(factory, gateway, world.settings).as_json()
    run_aggregate(factory, None, world.settings)


def current_consensus(session: Session, row: SlicePrediction, kind: ConsensusKind) -> ConsensusResult:
    return session.exec(
        select(ConsensusResult).where(
            ConsensusResult.roi_id == row.roi_id,
            ConsensusResult.slice_index == row.slice_index,
            ConsensusResult.kind == kind,
            col(ConsensusResult.is_current),
        )
    ).one()


def read_mask(world: World, consensus: ConsensusResult) -> np.ndarray:
    with Image.open(world.settings.data_dir / str(consensus.mask_uri)) as image:
        return np.asarray(np.asarray(image.convert("L")) > 127)


def fragments(shape: tuple[int, ...]) -> np.ndarray:
    """The cell04-slice-6 failure: three small pieces of a plainly visible nucleus, kept by correctors."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    pieces = [(shape[0] * 0.3, shape[1] * 0.3), (shape[0] * 0.5, shape[1] * 0.7), (shape[0] * 0.75, shape[1] * 0.4)]
    return np.asarray(np.any([(yy - cy) ** 2 + (xx - cx) ** 2 <= 9 for cy, cx in pieces], axis=0))


def correct(world: World, row: SlicePrediction, mask: np.ndarray, label: str) -> ConsensusResult:
    """A corrected consensus of the slice (the aggregate job's row, its mask written first), made current."""
    uri = f"consensus/test/roi{row.roi_id}-z{row.slice_index:05d}-corrected-{label}.png"
    (world.settings.data_dir / uri).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(world.settings.data_dir / uri)
    with Session(world.engine) as session:
        for old in session.exec(
            select(ConsensusResult).where(
                ConsensusResult.roi_id == row.roi_id, ConsensusResult.slice_index == row.slice_index,
                ConsensusResult.kind == ConsensusKind.CORRECTED,
            )
        ):  # fmt: skip
            old.is_current = False
            session.add(old)
        session.flush()
        consensus = ConsensusResult(
            roi_id=row.roi_id, slice_index=row.slice_index, subject_id=row.subject_id, kind=ConsensusKind.CORRECTED,
            n_classifications=4, n_volunteers=4, last_classification_id=1, mask_uri=uri, area_px=int(mask.sum()),
            params={"correction": {"state": "confirmed"}},
        )  # fmt: skip
        session.add(consensus)
        session.commit()
        session.refresh(consensus)
        return consensus


def settle_all(world: World, corrected: list[ConsensusResult], monitored: list[SlicePrediction]) -> None:
    """The retire job's RETIRE decisions: on each correction subject, and on each monitoring subject."""
    with Session(world.engine) as session:
        for consensus in corrected:
            subject = session.get(Subject, consensus.subject_id)
            assert subject is not None
            settle(session, subject, session.get(ConsensusResult, consensus.id) or consensus)
        for row in monitored:
            subject = session.get(Subject, row.monitoring_subject_id)
            assert subject is not None
            settle(session, subject, current_consensus(session, row, ConsensusKind.VOLUNTEER))
        session.commit()


def retired_by_panoptes(world: World, subject_ids: list[int | None]) -> None:
    """Subjects that Panoptes reports retired (its own rule, or a decision of ours confirmed)."""
    with Session(world.engine) as session:
        for subject_id in subject_ids:
            subject = session.get(Subject, subject_id)
            assert subject is not None
            subject.retirement_state = RetirementState.RETIRED
            session.add(subject)
        session.commit()


def add_validation_roi(world: World) -> None:
    """A validation ROI with one settled traced slice, so that a training set can be built at all."""
    mask = world.settings.data_dir / "consensus" / "validation.png"
    mask.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.pad(np.full((40, 40), 255, np.uint8), 20)).save(mask)
    with Session(world.engine) as session:
        volume = session.exec(select(Volume)).one()
        roi = Roi(volume_id=row_id(volume), name="cell02", x=0, y=0, z=0, width=80, height=80, depth=12,
                  split=DataSplit.VALIDATION)  # fmt: skip
        session.add(roi)
        session.flush()
        add_consensus(session, roi, 4, str(mask), crop_xywh=(0, 0, 160, 160))
        session.commit()


def training_ids(world: World) -> tuple[set[int], dict[str, int]]:
    with Session(world.engine) as session:
        snapshot = build_training_set(session, world.settings.data_dir).snapshot
    return set(snapshot.consensus_ids[DataSplit.TRAIN.value]), dict(snapshot.skipped)


def trust(world: World, db_url: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", db_url)
    monkeypatch.setenv("ETCHACELL_DATA_DIR", str(world.settings.data_dir))
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["model", "trust-corrections", VERSION, "--by", "alice", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def versions_page(world: World) -> str:
    settings = dashboard_settings(world.settings.data_dir, public_read=True)
    with serving(settings, world.engine) as base, httpx.Client(base_url=base) as client:
        response = client.get("/models")
    assert response.status_code == 200, response.text
    found = re.search(r"<h2>Versions</h2>(.*?)</table>", response.text, re.S)
    assert found
    return found.group(1)


def test_the_guard_holds_a_version_whose_corrections_disagree_with_tracing_until_an_operator_trusts_it(
    world: World,
    gateway: PanoptesGateway,
    sandbox: SandboxProcess,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published(world, gateway)
    trace_monitoring_subjects(world, gateway, sandbox)
    monitored = monitoring_rows(world)
    with Session(world.engine) as session:
        traced = [current_consensus(session, row, ConsensusKind.VOLUNTEER) for row in monitored]
    assert [t.subject_id for t in traced] == [r.monitoring_subject_id for r in monitored]  # its own consensus
    factory = world.sessions()

    # correctors who keep the model's fragments, before either subject has settled: a first answer
    # or two is not the crowd's, so nothing is measured and nothing is held (the hold would stand)
    early = [
        correct(world, row, fragments(read_mask(world, consensus).shape), "early")
        for row, consensus in zip(monitored, traced, strict=True)
    ]
    unsettled = run_publish(factory, gateway, world.settings)
    assert unsettled.monitoring_measured == 0 and unsettled.corrections_held == []
    assert [r.monitoring_dice for r in monitoring_rows(world)] == [None, None, None]
    retired_by_panoptes(world, [r.monitoring_subject_id for r in monitored] + [c.subject_id for c in early[:2]])
    assert run_publish(factory, gateway, world.settings).monitoring_measured == 2  # the third is still active

    # correctors who agree with the tracers, every subject settled: measured, nothing held
    for row, consensus in zip(monitored, traced, strict=True):
        correct(world, row, read_mask(world, consensus), "agreeing")
    retired_by_panoptes(world, [early[2].subject_id])
    agreeing = run_publish(factory, gateway, world.settings)
    assert agreeing.monitoring_measured == 3 and agreeing.median_monitoring_dice == {VERSION: 1.0}
    assert agreeing.corrections_held == []
    assert [r.monitoring_dice for r in monitoring_rows(world)] == [1.0, 1.0, 1.0]

    # accept-anything correctors who kept the model's fragments: the changed pairs are measured again
    corrected = [
        correct(world, row, fragments(read_mask(world, consensus).shape), "kept")
        for row, consensus in zip(monitored, traced, strict=True)
    ]
    held = run_publish(factory, gateway, world.settings)

    assert held.monitoring_measured == 3 and held.median_monitoring_dice[VERSION] < 0.3
    (message,) = held.corrections_held
    assert VERSION in message and "correction.min_monitoring_dice 0.8" in message
    with Session(world.engine) as session:
        (event,) = session.exec(select(Event).where(Event.kind == HELD_EVENT)).all()
        assert event.level == "warning" and event.payload["slices"] == 3
        truth = monitoring_truth(session, world.settings.data_dir)
    assert len(truth) == 3
    assert all(t.traced_truth_dice > 0.85 for t in truth)  # the volunteers who traced were right
    assert all(t.corrected_truth_dice < 0.3 for t in truth)  # the kept outline was not
    assert run_publish(factory, gateway, world.settings).corrections_held == []  # once per version

    settle_all(world, corrected, monitored)
    add_validation_roi(world)
    corrected_ids, traced_ids = {c.id for c in corrected}, {t.id for t in traced}
    used, skipped = training_ids(world)
    assert traced_ids <= used and not corrected_ids & used  # each slice keeps what was traced from scratch
    assert skipped[HELD] == 3
    page = versions_page(world)
    assert "<strong>held</strong>" in page and "corrections of v0001-monitor0 held from training" in page
    (shown,) = models(QueryBook(world.engine)).versions
    assert (shown["corrections_guard"], shown["monitored_slices"]) == ("held", 3)
    assert shown["median_monitoring_dice"] == pytest.approx(held.median_monitoring_dice[VERSION])

    assert "trusted" in trust(world, db_url, monkeypatch, "--reason", "looked at the slices")

    used, skipped = training_ids(world)
    assert corrected_ids <= used and not traced_ids & used and HELD not in skipped
    (shown,) = models(QueryBook(world.engine)).versions
    assert shown["corrections_guard"] == "trusted" and "alice" in shown["corrections_guard_note"]
    assert run_publish(factory, gateway, world.settings).corrections_held == []  # the operator has spoken

    assert "held" in trust(world, db_url, monkeypatch, "--revoke")

    used, _ = training_ids(world)
    assert traced_ids <= used and not corrected_ids & used


# --- the rule and the record ----------------------------------------------------------------------------


def test_the_guard_judges_only_with_enough_monitoring_slices() -> None:
    correction = CorrectionSettings(min_monitoring_dice=0.8, min_monitoring_slices=3)
    assert not falls_below(MonitoringAgreement(1, "v1", (0.1, 0.2)), correction)  # too few to judge
    assert falls_below(MonitoringAgreement(1, "v1", (0.1, 0.2, 0.95)), correction)  # median 0.2
    assert not falls_below(MonitoringAgreement(1, "v1", (0.1, 0.85, 0.95)), correction)  # median 0.85
    assert not falls_below(MonitoringAgreement(1, "v1", (0.8, 0.8, 0.8)), correction)  # at the threshold: used
    assert MonitoringAgreement(1, "v1", ()).median is None


def test_the_newest_word_on_a_version_is_its_state(migrated_engine: Engine) -> None:
    factory = functools.partial(Session, migrated_engine, expire_on_commit=False)
    with factory() as session:
        first, second = (
            ModelVersion(version=name, artifact_uri="m.keras", preset="small", architecture="unet-2.5d",
                         data_hash="0" * 64)
            for name in ("v1", "v2")
        )  # fmt: skip
        session.add_all([first, second])
        session.commit()
        assert guard_states(session) == {} and held_version_ids(session) == set()
        session.add(Event(kind=HELD_EVENT, message="held", model_version_id=first.id))
        session.commit()
        assert held_version_ids(session) == {first.id}
        assert record_operator_decision(session, first, trusted=True, by="alice") is GuardState.TRUSTED
        assert record_operator_decision(session, second, trusted=False, by="bob", reason="odd") is GuardState.REVOKED
        session.commit()
        assert guard_states(session) == {first.id: GuardState.TRUSTED, second.id: GuardState.REVOKED}
        assert held_version_ids(session) == {second.id}
        revoked = session.exec(select(Event).where(Event.model_version_id == second.id)).one()
        assert revoked.level == "warning" and revoked.payload == {"by": "bob", "reason": "odd", "trusted": False}
        assert "no monitoring slice measured yet" in revoked.message


def test_trust_corrections_names_an_unknown_version(
    migrated_engine: Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", db_url)
    monkeypatch.setenv("ETCHACELL_DATA_DIR", str(tmp_path / "data"))
    result = runner.invoke(app, ["model", "trust-corrections", "v9999-nothing"])
    assert result.exit_code == 2 and "no model version 'v9999-nothing'" in result.stderr
    assert "Traceback" not in result.output
