"""The publish job on a real database (SQLite and PostgreSQL), real subjects prepared from an OME-Zarr
volume, a prediction written by the real prediction job (with a stand-in model whose envelope is
known), and the sandbox's correction workflow and Caesar: selection, upload, machine marks, fallback
subjects and the correction's Dice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.config import CorrectionSettings, ImagingSettings
from etchacell_loop.cria.raster import fill_even_odd
from etchacell_loop.db.models import (
    ConsensusKind,
    ConsensusResult,
    Event,
    PredictionBatch,
    SelectionReason,
    SlicePrediction,
    Subject,
    SubjectKind,
    SubjectSet,
    UploadState,
)
from etchacell_loop.imaging.prepare import prepare_subjects
from etchacell_loop.imaging.subjects import SubjectFormat
from etchacell_loop.imaging.volume import RoiBox, open_volume
from etchacell_loop.loop import publish_job
from etchacell_loop.loop.machine_marks import mark_loops
from etchacell_loop.loop.prediction_job import predicted_area, read_geometry
from etchacell_loop.loop.publish_job import choose_slices, monitoring_share, run_publish, serving_ranks
from etchacell_loop.panoptes.caesar import connect_caesar
from etchacell_loop.panoptes.errors import PanoptesUnavailable
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.panoptes.upload import SubjectUpload, UploadResult
from etchacell_loop.panoptes.upload import upload_subjects as real_upload
from etchacell_loop.sandbox.harness import SandboxProcess, free_port
from tests.loop.publish_world import World, make_publish_world, run_queued_batch
from tests.loop.test_prediction_job import ROI_XYZ_WHD, shell_volume

VERSION = "v0001-publish0"
BUDGET, MONITORING = 3, 1  # three most uncertain slices and one monitoring slice of the ROI's seven


def make_world(
    engine: Engine, sandbox: SandboxProcess, project: dict[str, int], tmp_path: Path, mode: str = "caesar"
) -> World:
    """Raw subjects of a shell volume's ROI (prepared, not uploaded), the project's rows and a
    promoted model version (:func:`tests.loop.publish_world.make_publish_world`); no tracing workflow
    named, so monitoring slices are only corrected here (``test_monitoring`` sends them for tracing)."""
    data_dir = tmp_path / "data"
    volume_path = shell_volume(tmp_path / "shell.zarr")
    imaging = ImagingSettings(crop_size_px=120, subject_size_px=60)
    x, y, z, width, height, depth = ROI_XYZ_WHD
    with open_volume(volume_path) as volume:
        prepare_subjects(volume, [RoiBox("cell01", x, y, z, width, height, depth)], data_dir / "subjects",
                         SubjectFormat.from_settings(imaging))  # fmt: skip
    correction = CorrectionSettings(
        mode=mode,
        budget_per_round=BUDGET,
        monitoring_slices=MONITORING,
        min_monitoring_slices=1,
        min_component_voxels=0,
    )  # the shell is far below the default min_component_voxels
    return make_publish_world(
        engine, sandbox, project, data_dir, imaging=imaging, correction=correction, version=VERSION
    )


def slice_rows(world: World) -> list[SlicePrediction]:
    with Session(world.engine) as session:
        return list(session.exec(select(SlicePrediction).order_by(col(SlicePrediction.slice_index))).all())


def prediction_subjects(world: World) -> list[Subject]:
    with Session(world.engine) as session:
        statement = select(Subject).where(Subject.kind == SubjectKind.PREDICTION).order_by(col(Subject.slice_index))
        return list(session.exec(statement).all())


def expected_area(world: World, batch: PredictionBatch, subject: Subject, shape: tuple[int, int]) -> np.ndarray:
    """The predicted area sampled at the centres of the subject's pixels (nearest source pixel)."""
    region = read_geometry(world.settings.data_dir / str(batch.output_uri)).region
    area = predicted_area(world.settings.data_dir, batch, subject.slice_index)
    x, y, _, _ = (int(v) for v in str(subject.panoptes_metadata["#crop_xywh"]).split(","))
    scale = float(subject.panoptes_metadata["Scaling factor"])
    rows = np.floor(y + (np.arange(shape[0]) + 0.5) * scale).astype(int) - region.y
    cols = np.floor(x + (np.arange(shape[1]) + 0.5) * scale).astype(int) - region.x
    inside = (
        (rows[:, None] >= 0) & (rows[:, None] < area.shape[0]) & (cols[None, :] >= 0) & (cols[None, :] < area.shape[1])
    )
    sampled = area[np.clip(rows, 0, area.shape[0] - 1)][:, np.clip(cols, 0, area.shape[1] - 1)]
    return np.asarray(sampled & inside)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def sandbox_subjects(sandbox: SandboxProcess, world: World) -> dict[str, list[dict[str, Any]]]:
    """The project's Panoptes subjects with ``#kind`` = prediction, by upload key."""
    found: dict[str, list[dict[str, Any]]] = {}
    for subject in sandbox.inventory(world.project["project_id"])["subjects"]:
        if subject["metadata"].get("#kind") == "prediction":
            found.setdefault(subject["metadata"]["#upload_key"], []).append(subject)
    return found


# --- pure selection --------------------------------------------------------------------------------


def test_the_budget_takes_the_most_uncertain_and_monitoring_samples_the_rest() -> None:
    uncertainty = {z: u for z, u in enumerate([0.1, 0.9, 0.3, 0.8, 0.05, 0.7, 0.2, 0.6])}
    chosen = choose_slices(uncertainty, budget=3, monitoring=2, seed=7)
    assert {z for z, why in chosen.items() if why is SelectionReason.UNCERTAIN} == {1, 3, 5}
    monitoring = {z for z, why in chosen.items() if why is SelectionReason.MONITORING}
    assert len(monitoring) == 2 and not monitoring & {1, 3, 5}
    assert choose_slices(uncertainty, 3, 2, seed=7) == chosen  # deterministic per batch
    seeds = {
        frozenset(z for z, w in choose_slices(uncertainty, 3, 2, s).items() if w is SelectionReason.MONITORING)
        for s in range(20)
    }
    assert len(seeds) > 1  # but random across batches
    assert (
        sum(why is SelectionReason.MONITORING for why in choose_slices(uncertainty, 3, 9, 1).values()) == 5
    )  # all left
    assert all(why is SelectionReason.UNCERTAIN for why in choose_slices(uncertainty, 3, 0, 1).values())
    ranks = serving_ranks(uncertainty, chosen)
    uncertain_order = sorted((z for z in chosen if chosen[z] is SelectionReason.UNCERTAIN), key=ranks.__getitem__)
    assert uncertain_order == [1, 3, 5] and sorted(ranks.values()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert ranks[1] == 1.0 and max(ranks[z] for z in monitoring) < max(ranks.values())  # spread among them


def test_a_versions_monitoring_sample_is_spread_over_its_batches() -> None:
    # five slices over four ROIs' batches, chosen one batch at a time: 2, 1, 1, 1; none once complete
    needed, shares = 5, []
    for batches_left in (4, 3, 2, 1):
        shares.append(monitoring_share(needed, batches_left))
        needed -= shares[-1]
    assert shares == [2, 1, 1, 1] and monitoring_share(needed, 1) == 0
    assert monitoring_share(5, 12) == 1 and monitoring_share(3, 0) == 3 and monitoring_share(-1, 2) == 0


# --- the job --------------------------------------------------------------------------------------


@pytest.fixture
def world(migrated_engine: Engine, sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path) -> World:
    return make_world(migrated_engine, sandbox, sandbox_project, tmp_path)


def test_predictions_are_selected_uploaded_and_pushed_as_machine_marks_once(
    world: World, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    factory = world.sessions()
    queued = run_publish(factory, gateway, world.settings)
    assert (queued.batches_queued, queued.selected, queued.uploaded) == (1, 0, 0)
    assert run_publish(factory, gateway, world.settings).batches_queued == 0  # one batch per version and ROI
    batch = run_queued_batch(world)

    first = run_publish(factory, gateway, world.settings)

    rows = slice_rows(world)
    uncertain = [r for r in rows if r.selection is SelectionReason.UNCERTAIN]
    monitoring = [r for r in rows if r.selection is SelectionReason.MONITORING]
    left = [r for r in rows if r.selection is SelectionReason.NOT_SELECTED]
    assert len(uncertain) == BUDGET and len(monitoring) == 1
    assert min(r.uncertainty for r in uncertain) >= max(r.uncertainty for r in [*monitoring, *left])
    assert (first.selected, first.uploaded, first.marks_pushed) == (4, 4, 4)
    subjects = prediction_subjects(world)
    assert sorted(s.id or 0 for s in subjects) == sorted(r.subject_id or 0 for r in [*uncertain, *monitoring])
    assert all(s.upload_state is UploadState.LINKED and s.machine_marks_pushed_at is not None for s in subjects)
    assert all(s.model_version_id is not None and s.prediction_batch_id == batch.id for s in subjects)
    by_id = {r.subject_id: r for r in rows}
    served = sorted(
        (s for s in subjects if by_id[s.id].selection is SelectionReason.UNCERTAIN), key=lambda s: s.priority or 0
    )
    assert [by_id[s.id].uncertainty for s in served] == sorted((r.uncertainty for r in uncertain), reverse=True)

    on_panoptes = sandbox_subjects(sandbox, world)
    assert sorted(on_panoptes) == sorted(s.upload_key for s in subjects)
    assert all(len(found) == 1 for found in on_panoptes.values())
    inventory = sandbox.inventory(world.project["project_id"])
    (prediction_set,) = [s for s in inventory["subject_sets"] if s["display_name"] == f"predictions {VERSION}"]
    assert prediction_set["workflow_ids"] == [world.project["correction_workflow_id"]]
    for subject in subjects:
        (remote,) = on_panoptes[subject.upload_key]
        assert remote["subject_set_ids"] == [prediction_set["id"]]
        assert float(remote["metadata"]["#priority"]) == subject.priority
        assert remote["metadata"]["#model_version"] == VERSION and len(remote["locations"]) == 5

    caesar_settings = world.settings.panoptes
    with connect_caesar(gateway, caesar_settings) as caesar:
        for subject in subjects:
            assert subject.panoptes_id is not None
            (reduction,) = caesar.reductions(world.project["correction_workflow_id"], subject.panoptes_id)
            marks = reduction["data"]["data"]
            assert marks and all(m["frame"] == subject.target_frame and m["markId"] for m in marks)
            crop_w, crop_h = (int(v) for v in str(subject.panoptes_metadata["#crop_xywh"]).split(",")[2:])
            scale = float(subject.panoptes_metadata["Scaling factor"])
            shape = (round(crop_h / scale), round(crop_w / scale))
            filled = fill_even_odd(mark_loops(marks), shape)
            assert dice(filled, expected_area(world, batch, subject, shape)) > 0.95

    second = run_publish(factory, gateway, world.settings)

    assert (second.batches_queued, second.selected, second.uploaded, second.marks_pushed) == (0, 0, 0, 0)
    assert sandbox_subjects(sandbox, world).keys() == on_panoptes.keys()
    assert all(len(found) == 1 for found in sandbox_subjects(sandbox, world).values())
    with Session(world.engine) as session:
        pushed = session.exec(select(Event).where(Event.kind == "publish.marks_pushed")).all()
    assert len(pushed) == 4


def test_a_corrected_consensus_gives_the_slice_its_correction_dice(world: World, gateway: PanoptesGateway) -> None:
    factory = world.sessions()
    run_publish(factory, gateway, world.settings)
    batch = run_queued_batch(world)
    run_publish(factory, gateway, world.settings)
    subject = prediction_subjects(world)[0]
    crop_w, crop_h = (int(v) for v in str(subject.panoptes_metadata["#crop_xywh"]).split(",")[2:])
    scale = float(subject.panoptes_metadata["Scaling factor"])
    shape = (round(crop_h / scale), round(crop_w / scale))
    predicted = expected_area(world, batch, subject, shape)
    corrected = predicted.copy()
    corrected[: shape[0] // 2] = False  # volunteers removed the top half of the outline
    uri = f"consensus/test/roi{world.roi_id}-z{subject.slice_index}-mask.png"
    (world.settings.data_dir / uri).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(corrected.astype(np.uint8) * 255).save(world.settings.data_dir / uri)
    with Session(world.engine) as session:
        session.add(
            ConsensusResult(roi_id=world.roi_id, slice_index=subject.slice_index, subject_id=subject.id,
                            kind=ConsensusKind.CORRECTED, n_classifications=3, n_volunteers=3,
                            last_classification_id=1, mask_uri=uri, area_px=int(corrected.sum()))
        )  # fmt: skip
        session.commit()

    measured = run_publish(factory, gateway, world.settings)

    assert measured.corrections_measured == 1
    (row,) = [r for r in slice_rows(world) if r.subject_id == subject.id]
    assert row.correction_dice == pytest.approx(dice(predicted, corrected), abs=0.05)
    assert measured.median_correction_dice == {VERSION: row.correction_dice}
    assert run_publish(factory, gateway, world.settings).corrections_measured == 0


def test_a_failed_correction_upload_is_recorded_against_its_version_and_resumed(
    world: World, gateway: PanoptesGateway, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = world.sessions()
    run_publish(factory, gateway, world.settings)
    run_queued_batch(world)

    def lost_posts(
        sessions: publish_job.SessionFactory, gw: PanoptesGateway, set_row: SubjectSet, uploads: list[SubjectUpload]
    ) -> UploadResult:
        raise PanoptesUnavailable("502 Bad Gateway")

    monkeypatch.setattr("etchacell_loop.loop.publish_job.upload_subjects", lost_posts)
    failed = run_publish(factory, gateway, world.settings)

    assert failed.uploaded == 0
    with Session(world.engine) as session:
        (failure,) = session.exec(select(Event).where(Event.kind == "publish.upload_failed")).all()
    assert failure.level == "warning" and failure.message == f"model {VERSION}: 502 Bad Gateway"
    assert all(s.upload_state is UploadState.PENDING for s in prediction_subjects(world))  # the intent, committed
    assert not sandbox_subjects(sandbox, world)

    monkeypatch.setattr("etchacell_loop.loop.publish_job.upload_subjects", real_upload)
    assert run_publish(factory, gateway, world.settings).uploaded == 4
    assert sorted(len(found) for found in sandbox_subjects(sandbox, world).values()) == [1, 1, 1, 1]


def test_fallback_subjects_show_the_slice_and_the_outline(
    migrated_engine: Engine, sandbox: SandboxProcess, sandbox_project: dict[str, int], gateway: PanoptesGateway,
    tmp_path: Path,
) -> None:  # fmt: skip
    world = make_world(migrated_engine, sandbox, sandbox_project, tmp_path, mode="fallback")
    factory = world.sessions()
    run_publish(factory, gateway, world.settings)
    run_queued_batch(world)

    result = run_publish(factory, gateway, world.settings)

    assert (result.uploaded, result.marks_pushed) == (4, 0)
    on_panoptes = sandbox_subjects(sandbox, world)
    for subject in prediction_subjects(world):
        assert subject.frames == [subject.slice_index, subject.slice_index] and subject.target_frame == 0
        assert subject.machine_marks_pushed_at is None
        (remote,) = on_panoptes[subject.upload_key]
        assert len(remote["locations"]) == 2
        assert remote["metadata"]["#frame_slices"] == f"{subject.slice_index},{subject.slice_index}"
    outlines = sorted((world.settings.data_dir / "corrections" / VERSION).glob("*-outline.jpg"))
    assert len(outlines) == 4
    rgb = np.asarray(Image.open(outlines[0]).convert("RGB")).astype(int)
    magenta = (rgb[..., 0] > 180) & (rgb[..., 2] > 180) & (rgb[..., 1] < 90)
    assert magenta.sum() > 20
    assert run_publish(factory, gateway, world.settings).uploaded == 0


def test_marks_caesar_refused_are_pushed_by_the_next_run(
    world: World, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    factory = world.sessions()
    run_publish(factory, gateway, world.settings)
    run_queued_batch(world)
    refusing = world.settings.model_copy(
        update={"panoptes": world.settings.panoptes.model_copy(update={"caesar_endpoint": f"{sandbox.url}/nowhere"})}
    )

    refused = run_publish(factory, gateway, refusing)

    assert (refused.uploaded, refused.marks_pushed) == (4, 0)
    assert all(s.machine_marks_pushed_at is None for s in prediction_subjects(world))
    with Session(world.engine) as session:
        failures = session.exec(select(Event).where(Event.kind == "publish.push_failed")).all()
    assert len(failures) == 4 and all(e.level == "warning" and e.subject_id for e in failures)

    resumed = run_publish(factory, gateway, world.settings)

    assert (resumed.uploaded, resumed.marks_pushed) == (0, 4)
    assert all(s.machine_marks_pushed_at is not None for s in prediction_subjects(world))
    assert all(len(found) == 1 for found in sandbox_subjects(sandbox, world).values())


def test_an_unreachable_caesar_costs_one_attempt_per_run_not_one_per_subject(
    world: World, gateway: PanoptesGateway
) -> None:
    factory = world.sessions()
    run_publish(factory, gateway, world.settings)
    run_queued_batch(world)
    unreachable = world.settings.model_copy(
        update={
            "panoptes": world.settings.panoptes.model_copy(
                update={"caesar_endpoint": f"http://127.0.0.1:{free_port()}"}
            )
        }
    )

    down = run_publish(factory, gateway, unreachable)

    assert (down.uploaded, down.marks_pushed) == (4, 0)
    with Session(world.engine) as session:
        failures = session.exec(select(Event).where(Event.kind == "publish.push_failed")).all()
    assert len(failures) == 1  # the others were not tried: they wait for the next run
    assert run_publish(factory, gateway, world.settings).marks_pushed == 4
