"""The world the publish job's tests share (``test_publish_job``, ``test_monitoring``,
``test_correction_consensus``): raw subjects prepared from a volume, the project's rows, a promoted model
version and settings naming the sandbox's workflows; and what a worker does with the queued batch.

Why one place: the publish job and the monitoring it does read the same rows, so their tests must
build them alike; each test module keeps only what differs (its volume, its ROIs, its budget).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from etchacell_loop.config import CorrectionSettings, ImagingSettings, Settings
from etchacell_loop.db.models import DataSplit, ModelVersion, PredictionBatch, Subject, UploadState, WorkflowRole
from etchacell_loop.imaging.manifest import read_manifest
from etchacell_loop.imaging.records import ensure_manifest_rows, manifest_uploads
from etchacell_loop.loop import batches
from etchacell_loop.loop.prediction_job import batch_source, predict_batch
from etchacell_loop.loop.runs import Lease
from etchacell_loop.loop.worker import PREDICTION_QUEUE, RunHeartbeat, SessionFactory
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.factories import add_project, add_subject_set, add_workflow, row_id
from tests.loop.test_prediction_job import brightness_fn, stand_in_preset
from tests.panoptes.support import panoptes_settings


@dataclass
class World:
    engine: Engine
    settings: Settings
    roi_id: int
    project: dict[str, int]

    def sessions(self) -> SessionFactory:
        return functools.partial(Session, self.engine, expire_on_commit=False)


def make_publish_world(
    engine: Engine,
    sandbox: SandboxProcess,
    project: dict[str, int],
    data_dir: Path,
    *,
    imaging: ImagingSettings,
    correction: CorrectionSettings,
    version: str,
    splits: Mapping[str, DataSplit] | None = None,
    raw_set: str = "raw",
    tracing_workflow: bool = False,
) -> World:
    """The rows of the subjects prepared under ``data_dir/subjects`` (raw, as if linked on Panoptes: not
    uploaded), the project with its tracing and correction workflows (Caesar data fetching on), the
    promoted model ``version``, and settings naming the correction workflow — and the tracing one
    with ``tracing_workflow``, where monitoring slices go. The world's ROI is the first prepared."""
    entries = read_manifest(data_dir / "subjects")
    with Session(engine) as session:
        project_row = add_project(session, panoptes_id=project["project_id"])
        add_workflow(session, project_row, project["segmentation_workflow_id"], WorkflowRole.SEGMENTATION, "Trace")
        correcting = add_workflow(
            session, project_row, project["correction_workflow_id"], WorkflowRole.CORRECTION, "Fix"
        )
        correcting.caesar_data_fetching = True
        set_row = add_subject_set(session, project_row, None, raw_set, None)
        roi_ids = ensure_manifest_rows(session, entries, splits)
        for upload in manifest_uploads(entries, data_dir / "subjects", roi_ids):
            session.add(
                Subject(
                    upload_key=upload.upload_key, roi_id=upload.roi_id, subject_set_id=row_id(set_row),
                    slice_index=upload.slice_index, frames=list(upload.frames), target_frame=upload.target_frame,
                    local_dir=str(upload.files[0].path.parent), panoptes_metadata=upload.panoptes_metadata(),
                    upload_state=UploadState.LINKED,
                )
            )  # fmt: skip
        session.add(
            ModelVersion(version=version, artifact_uri="models/none.keras", preset="small", architecture="unet-2.5d",
                         data_hash="0" * 64, promoted=True)
        )  # fmt: skip
        session.commit()
        roi_id = next(iter(roi_ids.values()))
    workflows = {"correction_workflow_id": project["correction_workflow_id"]}
    if tracing_workflow:
        workflows["segmentation_workflow_id"] = project["segmentation_workflow_id"]
    panoptes = panoptes_settings(sandbox).model_copy(
        update={"caesar_endpoint": sandbox.url, "project_id": project["project_id"], **workflows}
    )
    settings = Settings(data_dir=data_dir, panoptes=panoptes, imaging=imaging, correction=correction)
    return World(engine, settings, roi_id, project)


def run_queued_batch(world: World) -> PredictionBatch:
    """What a worker does with the queued batch: the real prediction job, with the stand-in model."""
    factory = world.sessions()
    with factory() as session:
        queued = session.exec(select(PredictionBatch)).all()
        assert [b.params for b in queued] == [{"keep_largest": True, "min_component_voxels": 0}]
        lease = batches.claim_next_batch(session, "w")
        session.commit()
        assert lease is not None
        batch = session.get(PredictionBatch, lease.run_id)
        assert batch is not None
    heartbeat = RunHeartbeat(factory, Lease(lease.run_id, "w"), threading.Event(), PREDICTION_QUEUE)
    source = batch_source(factory, world.settings.data_dir, batch)
    predict_batch(factory, world.settings.data_dir, batch, heartbeat, brightness_fn, stand_in_preset(), source)
    with factory() as session:
        assert batches.finish_batch(session, lease)
        session.commit()
        done = session.get(PredictionBatch, lease.run_id)
        assert done is not None
        return done
