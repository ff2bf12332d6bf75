"""The aggregate job's corrected consensus against the machine outline volunteers were shown: a real
prediction (the prediction job with a stand-in model), real correction subjects from the publish job,
classifications as ingest stores them, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from PIL import Image
from scipy import ndimage
from sqlmodel import Session, col, select

from etchacell_loop.cria.consensus import dice
from etchacell_loop.db.models import (
    Classification,
    ClassificationSource,
    ConsensusKind,
    ConsensusResult,
    Subject,
    Workflow,
    WorkflowRole,
)
from etchacell_loop.loop.consensus_job import run_aggregate
from etchacell_loop.loop.machine_marks import outline_loops
from etchacell_loop.loop.publish_job import run_publish
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.simulation.crowd import Behaviour, SimStroke, make_volunteer
from etchacell_loop.simulation.export import (
    ClassificationPlan,
    FrontEnd,
    WorkflowInfo,
    annotations_json,
    metadata_json,
    random_browser,
)
from etchacell_loop.stored_files import resolve_uri
from tests.loop.publish_world import World, run_queued_batch
from tests.loop.test_publish_job import expected_area, prediction_subjects, world

__all__ = ["world"]  # the fixture, shared with the publish job's tests

WORKFLOW = WorkflowInfo()


def _published(world: World, gateway: PanoptesGateway) -> tuple[Subject, np.ndarray]:
    """The correction subject whose machine outline is largest, and that outline at its pixels."""
    factory = world.sessions()
    run_publish(factory, gateway, world.settings)
    batch = run_queued_batch(world)
    run_publish(factory, gateway, world.settings)
    best: tuple[Subject, np.ndarray] | None = None
    for subject in prediction_subjects(world):
        crop_w, crop_h = (int(v) for v in str(subject.panoptes_metadata["#crop_xywh"]).split(",")[2:])
        scale = float(subject.panoptes_metadata["Scaling factor"])
        shape = (round(crop_h / scale), round(crop_w / scale))
        area = expected_area(world, batch, subject, shape)
        if best is None or area.sum() > best[1].sum():
            best = subject, area
    assert best is not None and best[1].sum() > 50
    return best


def _classify(world: World, subject: Subject, loops: list[np.ndarray], index: int, shape: tuple[int, int]) -> None:
    """One correction as ingest stores it (the new front end's marks on the subject's target frame)."""
    rng = np.random.default_rng(index)
    panoptes_id = 600_000_000 + index
    volunteer = make_volunteer(f"c{index}", Behaviour.CAREFUL, rng, user_id=9000 + index)
    strokes = [SimStroke(subject.target_frame, loop[:, 0].copy(), loop[:, 1].copy()) for loop in loops]
    plan = ClassificationPlan(panoptes_id, int(subject.panoptes_id or 0), volunteer, random_browser(rng), 1.7e9, 20.0,
                              f"s{index}", FrontEnd.FEM)  # fmt: skip
    with Session(world.engine) as session:
        workflow = session.exec(select(Workflow).where(Workflow.role == WorkflowRole.CORRECTION)).one()
        assert workflow.id is not None and subject.panoptes_id is not None
        session.add(
            Classification(
                panoptes_id=panoptes_id, workflow_id=workflow.id, subject_panoptes_id=subject.panoptes_id,
                subject_id=subject.id, user_id=volunteer.user_id, volunteer_key=f"user:{volunteer.user_id}",
                created_at=datetime(2026, 12, 1, tzinfo=UTC), source=ClassificationSource.API,
                raw_annotations=annotations_json(strokes, FrontEnd.FEM, WORKFLOW),
                raw_metadata=metadata_json(plan, [subject.target_frame] if strokes else [], shape),
            )
        )  # fmt: skip
        session.commit()


def _corrected(world: World, subject: Subject) -> tuple[ConsensusResult, np.ndarray]:
    with Session(world.engine) as session:
        row = session.exec(
            select(ConsensusResult).where(
                ConsensusResult.slice_index == subject.slice_index,
                ConsensusResult.kind == ConsensusKind.CORRECTED,
                col(ConsensusResult.is_current),
            )
        ).one()
        session.expunge(row)
    assert row.mask_uri is not None
    with Image.open(resolve_uri(row.mask_uri, world.settings.data_dir)) as image:
        return row, np.asarray(image) > 127


def test_acceptors_do_not_outvote_correctors_who_show_the_envelope_is_elsewhere(
    world: World, gateway: PanoptesGateway
) -> None:
    """Eight volunteers keep the machine's outline, six trace the envelope well outside it: the
    corrected consensus is theirs, marked corrected; the machine's outline is not accepted."""
    subject, machine = _published(world, gateway)
    shape = machine.shape
    envelope = ndimage.binary_dilation(machine, iterations=8)  # the envelope the machine drew too small
    for index in range(14):
        drawn = machine if index % 7 < 4 else envelope  # 8 keepers, 6 tracers, interleaved
        _classify(world, subject, outline_loops(drawn, 0.5), index, shape)

    run_aggregate(world.sessions(), None, world.settings)

    row, mask = _corrected(world, subject)
    assert row.params["correction"]["state"] == "corrected"
    assert (row.params["correction"]["kept"], row.params["correction"]["edited"]) == (8, 6)
    assert row.params["method"] == "cria"  # corrections vote plainly, whatever traced slices use
    assert dice(mask, envelope) > 0.95 and dice(mask, machine) < 0.9


def test_a_single_redraw_leaves_the_slice_disputed(world: World, gateway: PanoptesGateway) -> None:
    subject, machine = _published(world, gateway)
    envelope = ndimage.binary_dilation(machine, iterations=8)
    for index, drawn in enumerate((machine, envelope)):
        _classify(world, subject, outline_loops(drawn, 0.5), index, machine.shape)

    run_aggregate(world.sessions(), None, world.settings)

    row, _ = _corrected(world, subject)
    assert row.params["correction"]["state"] == "disputed"
