"""The retire job on a real database (SQLite and PostgreSQL) and the sandbox: each consensus judged
once, retirements sent once, kept pending across a dead API and a crash, and sent by the next run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from numpy.typing import NDArray
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from etchacell_loop.config import RetirementSettings, Settings
from etchacell_loop.db.models import (
    Classification,
    ClassificationSource,
    ConsensusKind,
    ConsensusResult,
    DecisionOutcome,
    Event,
    EventLevel,
    Project,
    RetirementDecision,
    RetirementState,
    Subject,
    SubjectKind,
    SyncState,
    WorkflowRole,
)
from etchacell_loop.loop.consensus_job import run_aggregate
from etchacell_loop.loop.retire_job import DECIDE_BATCH, run_retire
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.sandbox.harness import SandboxProcess
from etchacell_loop.simulation.crowd import Behaviour, SimStroke, make_volunteer
from etchacell_loop.simulation.export import (
    ClassificationPlan,
    FrontEnd,
    WorkflowInfo,
    annotations_json,
    metadata_json,
    random_browser,
    record_stroke,
)
from etchacell_loop.subject_metadata import SCALING_KEY, XY_RESOLUTION_KEY, layout_metadata
from tests.factories import add_subject_set, add_workflow, row_id
from tests.panoptes.support import add_loop_rows, session_factory, wait_until

# Retire once two checks in a row agree at Dice 0.9, after at least 3 of the subject's classifications.
RULE = RetirementSettings(min_classifications=3, max_classifications=30, stability_dice=0.9, stable_checks=2)
SHAPE = (120, 160)  # (height, width) of a consensus mask, in subject pixels


@dataclass(frozen=True)
class Step:
    """One aggregation of a slice as the aggregate job leaves it: the subject's own classifications
    so far, the consensus area (a disc) and the consensus's own (leave-latest-out) stability."""

    classifications: int
    centre_x: float
    radius: float = 20.0
    stability: float | None = 1.0


# Each history is checked once per step: the first check has nothing to compare with, the next two
# agree (STABLE: Dice 1.0, then about 0.97) or not (UNSETTLED: the disc jumps, Dice 0).
STABLE = (Step(2, 80.0), Step(3, 80.0, stability=0.93), Step(4, 81.0, stability=0.97))
UNSETTLED = (Step(2, 50.0), Step(3, 110.0, stability=0.41), Step(4, 50.0))


@dataclass
class World:
    engine: Engine
    settings: Settings
    roi_id: int
    subject_set_id: int
    workflow_id: int
    project_id: int
    project_panoptes_id: int
    workflow_panoptes_id: int
    set_panoptes_id: int | None
    next_classification: int = 50_000_000
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(11))


def make_world(engine: Engine, project: dict[str, int], set_panoptes_id: int | None, tmp_path: Path) -> World:
    ids = add_loop_rows(engine, project, set_panoptes_id, "raw")
    settings = Settings(data_dir=tmp_path / "data", retirement=RULE)
    return World(
        engine, settings, ids["roi"], ids["subject_set"], ids["workflow"], ids["project"],
        project["project_id"], project["segmentation_workflow_id"], set_panoptes_id,
    )  # fmt: skip


@pytest.fixture
def live(migrated_engine: Engine, gateway: PanoptesGateway, sandbox_project: dict[str, int], tmp_path: Path) -> World:
    """Rows for a seeded sandbox project whose subject set is linked to the tracing workflow."""
    project, workflow = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    set_id = gateway.ensure_subject_set(project, "raw", workflow_id=workflow)
    return make_world(migrated_engine, sandbox_project, set_id, tmp_path)


@pytest.fixture
def offline(migrated_engine: Engine, tmp_path: Path) -> World:
    """Rows for a project Panoptes is never asked about (decisions only)."""
    return make_world(migrated_engine, {"project_id": 9001, "segmentation_workflow_id": 9002}, None, tmp_path)


def add_subject(
    world: World,
    slice_index: int,
    panoptes_id: int | None,
    kind: SubjectKind = SubjectKind.RAW,
    subject_set_id: int | None = None,
) -> int:
    frames = [slice_index - 1, slice_index, slice_index + 1]
    metadata = {**layout_metadata(str(world.roi_id), 1, frames, 2.0), XY_RESOLUTION_KEY: "10", SCALING_KEY: "2"}
    with Session(world.engine) as session:
        subject = Subject(
            panoptes_id=panoptes_id, upload_key=f"hela/nucleus-1/z{slice_index:04d}/{kind.value}",
            roi_id=world.roi_id, subject_set_id=subject_set_id or world.subject_set_id, slice_index=slice_index,
            frames=frames, target_frame=1, kind=kind, panoptes_metadata=metadata,
        )  # fmt: skip
        session.add(subject)
        session.commit()
        return row_id(subject)


def sandbox_subject(gateway: PanoptesGateway, world: World) -> int:
    """A subject on the sandbox, in the world's subject set."""
    assert world.set_panoptes_id is not None
    return gateway.create_subject(world.project_panoptes_id, world.set_panoptes_id, [("image/jpeg", b"x")], {}).id


def add_correction_workflow(world: World) -> tuple[int, int]:
    """A correction workflow and a prediction subject set linked to it: (workflow id, set id)."""
    with Session(world.engine) as session:
        project = session.get(Project, world.project_id)
        assert project is not None
        workflow = add_workflow(session, project, 9003, WorkflowRole.CORRECTION, "Correct")
        subject_set = add_subject_set(session, project, workflow, "predictions", None, SubjectKind.PREDICTION)
        session.commit()
        return row_id(workflow), row_id(subject_set)


def classify(
    world: World,
    subject_id: int,
    workflow_id: int | None = None,
    annotations: str = "[]",
    metadata: str | None = None,
) -> int:
    """One classification of the subject, stored as ingest stores it; its Panoptes id."""
    world.next_classification += 1 + int(world.rng.integers(0, 5))
    with Session(world.engine) as session:
        subject = session.get(Subject, subject_id)
        assert subject is not None
        session.add(
            Classification(
                panoptes_id=world.next_classification, workflow_id=workflow_id or world.workflow_id,
                subject_panoptes_id=subject.panoptes_id or 0, subject_id=subject_id,
                volunteer_key=f"user:{world.next_classification}", created_at=datetime(2024, 3, 4, tzinfo=UTC),
                source=ClassificationSource.API, raw_annotations=annotations, raw_metadata=metadata,
            )
        )  # fmt: skip
        session.commit()
    return world.next_classification


def own_count(world: World, subject_id: int) -> int:
    with Session(world.engine) as session:
        statement = select(func.count()).select_from(Classification).where(Classification.subject_id == subject_id)
        return int(session.exec(statement).one())


def disc(centre_x: float, radius: float) -> NDArray[np.bool_]:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return np.asarray((xx - centre_x) ** 2 + (yy - 60.0) ** 2 <= radius**2)


def aggregated(
    world: World,
    subject_id: int,
    step: Step,
    kind: ConsensusKind = ConsensusKind.VOLUNTEER,
    workflow_id: int | None = None,
) -> int:
    """One aggregation of the subject's slice, as the aggregate job stores it: the subject's new
    classifications, the mask file, and the new current consensus (the old one demoted); its id."""
    last = 0
    for _ in range(step.classifications - own_count(world, subject_id)):
        last = classify(world, subject_id, workflow_id)
    last = last or world.next_classification
    with Session(world.engine) as session:
        subject = session.get(Subject, subject_id)
        assert subject is not None
        uri = f"consensus/roi{world.roi_id}/z{subject.slice_index:05d}-{kind.value}-c{last}-mask.png"
        path = world.settings.data_dir / uri
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(disc(step.centre_x, step.radius), 255, 0).astype(np.uint8)).save(path)
        session.execute(
            sa.update(ConsensusResult)
            .where(
                col(ConsensusResult.roi_id) == world.roi_id,
                col(ConsensusResult.slice_index) == subject.slice_index,
                col(ConsensusResult.kind) == kind,
            )
            .values(is_current=False)
        )
        row = ConsensusResult(
            roi_id=world.roi_id, slice_index=subject.slice_index, subject_id=subject_id, kind=kind,
            n_classifications=step.classifications, n_volunteers=step.classifications, last_classification_id=last,
            mask_uri=uri, stability=step.stability,
        )  # fmt: skip
        session.add(row)
        session.commit()
        return row_id(row)


@dataclass(frozen=True)
class History:
    """A subject's slice aggregated step by step (of the subject's kind, classified in its workflow)."""

    subject_id: int
    steps: tuple[Step, ...]
    kind: ConsensusKind = ConsensusKind.VOLUNTEER
    workflow_id: int | None = None


def checked_until_the_last(world: World, *histories: History) -> None:
    """Each history aggregated step by step with a retire run (decisions only) after each step but
    the last: the last consensus is left for the test's own run to judge."""
    rounds = max(len(h.steps) for h in histories)
    for index in range(rounds):
        for history in histories:
            if index < len(history.steps):
                aggregated(world, history.subject_id, history.steps[index], history.kind, history.workflow_id)
        if index < rounds - 1:
            run_retire(session_factory(world.engine), None, world.settings)


def decisions(world: World, subject_id: int) -> list[RetirementDecision]:
    with Session(world.engine) as session:
        statement = (
            select(RetirementDecision)
            .where(RetirementDecision.subject_id == subject_id)
            .order_by(col(RetirementDecision.id))
        )
        return list(session.exec(statement).all())


def subject_row(world: World, subject_id: int) -> Subject:
    with Session(world.engine) as session:
        subject = session.get(Subject, subject_id)
        assert subject is not None
        return subject


def events(world: World, kind: str) -> list[Event]:
    with Session(world.engine) as session:
        return list(session.exec(select(Event).where(Event.kind == kind).order_by(col(Event.id))).all())


def panoptes_status(gateway: PanoptesGateway, workflow: int, subject: int) -> dict[str, Any]:
    """The subject's status in the workflow, read through panoptes-client as any API user would."""
    params = {"subject_id": subject, "workflow_id": workflow}
    response, _ = gateway.client.get("/subject_workflow_statuses", params=params)
    statuses = response["subject_workflow_statuses"]
    return dict(statuses[0]) if statuses else {}


def retired_on_panoptes(gateway: PanoptesGateway, workflow: int, subject: int) -> bool:
    """Panoptes retires in the background: wait a little for the status to show it."""
    return wait_until(lambda: bool(panoptes_status(gateway, workflow, subject).get("retired_at")), 5, 0.1)


def test_a_stable_history_retires_exactly_once_on_panoptes_and_in_the_database(
    live: World, gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    stable_panoptes, unsettled_panoptes = sandbox_subject(gateway, live), sandbox_subject(gateway, live)
    stable, unsettled = add_subject(live, 10, stable_panoptes), add_subject(live, 11, unsettled_panoptes)
    checked_until_the_last(live, History(stable, STABLE), History(unsettled, UNSETTLED))

    first = run_retire(session_factory(live.engine), gateway, live.settings)

    assert (first.decided, first.retire_decisions, first.sent, first.failed) == (2, 1, 1, 0)
    assert retired_on_panoptes(gateway, live.workflow_panoptes_id, stable_panoptes)
    assert panoptes_status(gateway, live.workflow_panoptes_id, stable_panoptes)["retirement_reason"] == "consensus"
    *earlier, decision = decisions(live, stable)
    assert [d.outcome for d in earlier] == [DecisionOutcome.KEEP, DecisionOutcome.KEEP]
    assert decision.outcome == DecisionOutcome.RETIRE and decision.sync_state == SyncState.SENT
    assert decision.sent_at is not None and decision.error is None and decision.panoptes_reason == "consensus"
    assert (decision.policy, decision.n_classifications) == ("stable-consensus", 4)
    assert decision.stability is not None and 0.9 < decision.stability < 1.0  # Dice with the previous check
    assert decision.details["reason"] == "stable"
    assert decision.details["previous_consensus_id"] == earlier[-1].consensus_result_id
    assert (decision.details["latest_drawing_stability"], decision.details["new_classifications"]) == (0.97, 1)
    retired = subject_row(live, stable)
    assert retired.retirement_state == RetirementState.RETIRED and retired.retirement_reason == "consensus"
    assert retired.retired_at is not None
    assert [e.subject_id for e in events(live, "subject.retired")] == [stable]
    kept = decisions(live, unsettled)
    assert all(d.outcome == DecisionOutcome.KEEP and d.panoptes_reason is None for d in kept)
    assert kept[-1].stability == 0.0
    assert subject_row(live, unsettled).retirement_state == RetirementState.ACTIVE

    second = run_retire(session_factory(live.engine), gateway, live.settings)

    assert (second.decided, second.sent, second.failed) == (0, 0, 0)
    assert len(decisions(live, stable)) == len(STABLE) and len(decisions(live, unsettled)) == len(UNSETTLED)
    assert len(events(live, "subject.retired")) == 1
    inventory = sandbox.inventory(sandbox_project["project_id"])["retired"]
    assert [r["subject_id"] for r in inventory] == [stable_panoptes]
    assert not panoptes_status(gateway, live.workflow_panoptes_id, unsettled_panoptes).get("retired_at")


def test_a_dead_api_leaves_the_retirement_pending_and_a_later_run_sends_it(
    live: World, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    panoptes_id = sandbox_subject(gateway, live)
    subject = add_subject(live, 20, panoptes_id)
    checked_until_the_last(live, History(subject, STABLE))
    sandbox.set_faults(error_rate=1.0, error_statuses=[503], path_prefixes=["/api/workflows"])

    failed = run_retire(session_factory(live.engine), gateway, live.settings)

    assert (failed.decided, failed.retire_decisions, failed.sent, failed.failed) == (1, 1, 0, 1)
    decision = decisions(live, subject)[-1]
    assert decision.sync_state == SyncState.PENDING and decision.sent_at is None
    assert decision.error and "\n" not in decision.error
    assert subject_row(live, subject).retirement_state == RetirementState.RETIRING
    (warning,) = events(live, "retirement.sync_failed")
    assert warning.level == EventLevel.WARNING and warning.payload["subject_panoptes_ids"] == [panoptes_id]
    sandbox.clear_faults()
    assert not panoptes_status(gateway, live.workflow_panoptes_id, panoptes_id).get("retirement_reason")

    retry = run_retire(session_factory(live.engine), gateway, live.settings)

    assert (retry.decided, retry.sent, retry.failed) == (0, 1, 0)
    assert retired_on_panoptes(gateway, live.workflow_panoptes_id, panoptes_id)
    decision = decisions(live, subject)[-1]
    assert decision.sync_state == SyncState.SENT and decision.error is None
    assert subject_row(live, subject).retirement_state == RetirementState.RETIRED


def test_a_crash_after_deciding_or_after_sending_is_finished_by_the_next_run(
    live: World, gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    ids = [sandbox_subject(gateway, live) for _ in range(3)]
    subjects = [add_subject(live, 30 + i, panoptes_id) for i, panoptes_id in enumerate(ids)]
    checked_until_the_last(live, *(History(s, STABLE) for s in subjects))

    decided_only = run_retire(session_factory(live.engine), None, live.settings)  # the sync never ran

    assert (decided_only.decided, decided_only.retire_decisions, decided_only.sent) == (3, 3, 0)
    assert all(decisions(live, s)[-1].sync_state == SyncState.PENDING for s in subjects)
    assert all(subject_row(live, s).retirement_state == RetirementState.RETIRING for s in subjects)
    gateway.retire_subjects(live.workflow_panoptes_id, ids[:1], "consensus")  # sent before a crash, not recorded

    resumed = run_retire(session_factory(live.engine), gateway, live.settings)

    assert (resumed.decided, resumed.sent, resumed.failed) == (0, 3, 0)
    assert all(retired_on_panoptes(gateway, live.workflow_panoptes_id, i) for i in ids)
    inventory = sandbox.inventory(sandbox_project["project_id"])["retired"]
    assert sorted(r["subject_id"] for r in inventory) == sorted(ids)  # re-sending added nothing
    assert all(subject_row(live, s).retirement_state == RetirementState.RETIRED for s in subjects)
    assert all(len(decisions(live, s)) == len(STABLE) for s in subjects)


def test_a_retirement_that_cannot_be_sent_waits_with_its_reason_and_one_warning(
    live: World, gateway: PanoptesGateway
) -> None:
    subject = add_subject(live, 40, None)  # never uploaded
    checked_until_the_last(live, History(subject, STABLE))
    first = run_retire(session_factory(live.engine), gateway, live.settings)
    second = run_retire(session_factory(live.engine), gateway, live.settings)
    assert (first.retire_decisions, first.unsendable, first.sent) == (1, 1, 0)
    assert (second.decided, second.unsendable, second.sent) == (0, 1, 0)
    decision = decisions(live, subject)[-1]
    assert decision.sync_state == SyncState.PENDING and decision.error == "the subject has no Panoptes id"
    assert [e.subject_id for e in events(live, "retirement.unsendable")] == [subject]


def test_each_new_consensus_is_one_check_against_the_consensus_judged_before(offline: World) -> None:
    subject = add_subject(offline, 5, None)
    factory = session_factory(offline.engine)
    first = aggregated(offline, subject, Step(3, 80.0))
    assert run_retire(factory, None, offline.settings).decided == 1
    assert run_retire(factory, None, offline.settings).decided == 0  # the same consensus is not judged twice
    aggregated(offline, subject, Step(4, 80.0))
    aggregated(offline, subject, Step(5, 80.0))  # the aggregate job ran twice before the retire job
    assert run_retire(factory, None, offline.settings).decided == 1
    aggregated(offline, subject, Step(6, 80.5))
    last = run_retire(factory, None, offline.settings)
    assert (last.decided, last.retire_decisions) == (1, 1)
    history = decisions(offline, subject)
    assert [d.outcome for d in history] == [DecisionOutcome.KEEP, DecisionOutcome.KEEP, DecisionOutcome.RETIRE]
    assert [d.n_classifications for d in history] == [3, 5, 6]
    assert history[0].details["reason"].startswith("not stable yet") and history[0].stability is None
    assert history[0].details["previous_consensus_id"] is None
    middle = history[1].details
    assert middle["previous_consensus_id"] == first == history[0].consensus_result_id  # skipped the one between
    assert (middle["check_dice"], middle["new_classifications"], middle["subject_classifications"]) == (1.0, 2, 5)
    assert history[2].details["reason"] == "stable" and history[2].details["checks"] == 3
    assert subject_row(offline, subject).retirement_state == RetirementState.RETIRING
    aggregated(offline, subject, Step(7, 80.0))  # a retiring subject is not judged again
    assert run_retire(factory, None, offline.settings).decided == 0


def test_prediction_subjects_are_judged_on_the_corrected_consensus_and_their_own_classifications(
    offline: World,
) -> None:
    """A correction subject goes through the same checks, on the corrected consensus of its slice,
    counting only its own classifications in the correction workflow (not a classification of it
    made in another workflow)."""
    correction_workflow, prediction_set = add_correction_workflow(offline)
    raw = add_subject(offline, 7, None)
    correction = add_subject(offline, 7, None, SubjectKind.PREDICTION, subject_set_id=prediction_set)
    classify(offline, correction, offline.workflow_id)  # the correction subject, in the tracing workflow
    corrections = (Step(3, 80.0), Step(4, 80.0), Step(5, 80.5))
    checked_until_the_last(
        offline,
        History(raw, UNSETTLED),
        History(correction, corrections, ConsensusKind.CORRECTED, correction_workflow),
    )
    result = run_retire(session_factory(offline.engine), None, offline.settings)
    assert (result.decided, result.retire_decisions) == (2, 1)
    raw_last, correction_last = decisions(offline, raw)[-1], decisions(offline, correction)[-1]
    assert raw_last.outcome == DecisionOutcome.KEEP and raw_last.n_classifications == 4
    assert correction_last.outcome == DecisionOutcome.RETIRE and correction_last.details["reason"] == "stable"
    assert [d.n_classifications for d in decisions(offline, correction)] == [2, 3, 4]  # its own workflow only
    with Session(offline.engine) as session:
        judged = session.get(ConsensusResult, correction_last.consensus_result_id)
        assert judged is not None and judged.kind == ConsensusKind.CORRECTED
    assert result.as_json()["decided"] == 2


def test_fixed_count_counts_the_subjects_own_classifications_not_the_slices(offline: World) -> None:
    """Thirty classifications showed the slice (neighbouring flipbooks' drawers included), three of
    them of this subject: the paper's limit is not reached."""
    settings = Settings(data_dir=offline.settings.data_dir, retirement=RetirementSettings(policy="fixed-count"))
    subject = add_subject(offline, 9, None)
    consensus = aggregated(offline, subject, Step(3, 80.0))
    with Session(offline.engine) as session:
        session.execute(
            sa.update(ConsensusResult).where(col(ConsensusResult.id) == consensus).values(n_classifications=30)
        )
        session.commit()
    assert run_retire(session_factory(offline.engine), None, settings).retire_decisions == 0
    (kept,) = decisions(offline, subject)
    assert (kept.n_classifications, kept.details["slice_classifications"]) == (3, 30)
    assert kept.details["reason"] == "3 of 30 classifications"


def test_a_missing_mask_file_is_a_recorded_reason_and_the_next_check_goes_on(offline: World) -> None:
    subject = add_subject(offline, 12, None)
    factory = session_factory(offline.engine)
    first = aggregated(offline, subject, Step(3, 80.0))
    run_retire(factory, None, offline.settings)
    with Session(offline.engine) as session:
        row = session.get(ConsensusResult, first)
        assert row is not None and row.mask_uri is not None
        (offline.settings.data_dir / row.mask_uri).unlink()
    aggregated(offline, subject, Step(4, 80.0))

    unmeasured = run_retire(factory, None, offline.settings)

    assert (unmeasured.decided, unmeasured.retire_decisions) == (1, 0)
    decision = decisions(offline, subject)[-1]
    assert decision.outcome == DecisionOutcome.KEEP and decision.stability is None
    assert f"mask of consensus {first} unreadable" in decision.details["problem"]
    (warning,) = events(offline, "retirement.check_unmeasured")
    assert warning.level == EventLevel.WARNING and warning.subject_id == subject
    aggregated(offline, subject, Step(5, 80.0))
    assert run_retire(factory, None, offline.settings).retire_decisions == 0  # one agreeing check
    aggregated(offline, subject, Step(6, 80.0))
    assert run_retire(factory, None, offline.settings).retire_decisions == 1


def _trace_disc(world: World, subject_id: int, centre_x: float, radius: float) -> None:
    """One volunteer traces a circle on the subject's own frame, with the tracing front end."""
    angles = np.linspace(0.0, 2.0 * np.pi, 90)
    stroke = SimStroke(1, centre_x + radius * np.cos(angles), 60.0 + radius * np.sin(angles))
    recorded = record_stroke(stroke, FrontEnd.FEM)
    assert recorded is not None
    key = world.next_classification + 1
    volunteer = make_volunteer(f"v{key}", Behaviour.CAREFUL, world.rng, user_id=key)
    plan = ClassificationPlan(key, 0, volunteer, random_browser(world.rng), 1.7e9, 60.0, f"s{key}", FrontEnd.FEM)
    annotations = annotations_json([recorded], FrontEnd.FEM, WorkflowInfo())
    classify(world, subject_id, annotations=annotations, metadata=metadata_json(plan, [1], SHAPE))


def test_outline_a_then_a_burst_of_outline_b_waits_whatever_each_consensus_says_of_itself(
    offline: World,
) -> None:
    """Eight tracings of outline A, then ten of outline B arriving together, each batch aggregated by
    the aggregate job and judged by the retire job with the default rule: every consensus is
    perfectly stable against itself without its latest drawing, but the two checks disagree, so the
    subject waits; once B has held for two more checks with new tracings, it retires."""
    settings = Settings(data_dir=offline.settings.data_dir)  # the default rule: min 8, Dice 0.95, 2 checks
    subject = add_subject(offline, 14, 31_400_014)
    factory = session_factory(offline.engine)

    def round_of(count: int, centre_x: float) -> RetirementDecision:
        for _ in range(count):
            _trace_disc(offline, subject, centre_x, 24.0)
        assert run_aggregate(factory, None, settings).slices_updated == 1
        assert run_retire(factory, None, settings).decided == 1
        return decisions(offline, subject)[-1]

    a = round_of(8, 55.0)
    b = round_of(10, 95.0)

    assert (a.outcome, b.outcome) == (DecisionOutcome.KEEP, DecisionOutcome.KEEP)
    with Session(offline.engine) as session:
        judged = [session.get(ConsensusResult, d.consensus_result_id) for d in (a, b)]
    assert [c.stability for c in judged if c is not None] == [1.0, 1.0]  # what the old rule looked at
    assert b.details["previous_consensus_id"] == a.consensus_result_id
    assert b.stability is not None and b.stability < 0.3  # A against B
    assert (b.n_classifications, b.details["new_classifications"]) == (18, 10)
    assert subject_row(offline, subject).retirement_state == RetirementState.ACTIVE
    assert round_of(2, 95.0).outcome == DecisionOutcome.KEEP  # B holds once
    settled = round_of(2, 95.0)
    assert settled.outcome == DecisionOutcome.RETIRE and settled.details["reason"] == "stable"


def test_more_subjects_than_one_transaction_holds_are_each_judged_once(offline: World) -> None:
    count = DECIDE_BATCH + 30
    at_the_limit = Settings(
        data_dir=offline.settings.data_dir, retirement=RetirementSettings(max_classifications=1, min_classifications=1)
    )
    with Session(offline.engine) as session:
        for slice_index in range(count):
            subject = Subject(
                upload_key=f"bulk/z{slice_index:04d}", roi_id=offline.roi_id, subject_set_id=offline.subject_set_id,
                slice_index=slice_index, frames=[slice_index], target_frame=0,
            )  # fmt: skip
            session.add(subject)
            session.flush()
            session.add(
                Classification(
                    panoptes_id=slice_index + 1, workflow_id=offline.workflow_id, subject_panoptes_id=0,
                    subject_id=subject.id, volunteer_key="user:1", created_at=datetime(2024, 3, 4, tzinfo=UTC),
                    source=ClassificationSource.API, raw_annotations="[]",
                )
            )  # fmt: skip
            session.add(
                ConsensusResult(
                    roi_id=offline.roi_id, slice_index=slice_index, n_classifications=1, n_volunteers=1,
                    last_classification_id=slice_index + 1, stability=0.2,
                )
            )  # fmt: skip
        session.commit()
    result = run_retire(session_factory(offline.engine), None, at_the_limit)
    assert (result.decided, result.retire_decisions) == (count, count)  # at the limit of one classification
    with Session(offline.engine) as session:
        judged = session.exec(select(RetirementDecision.subject_id)).all()
        retiring = session.exec(select(Subject).where(Subject.retirement_state == RetirementState.RETIRING)).all()
    assert len(judged) == len(set(judged)) == count and len(retiring) == count


def test_a_disputed_corrected_consensus_is_not_retired_as_stable(offline: World) -> None:
    """The same stable corrections as above, but the last consensus is disputed (one volunteer
    changed the machine outline, cria/correction.py): the subject waits for more volunteers."""
    correction_workflow, prediction_set = add_correction_workflow(offline)
    correction = add_subject(offline, 7, None, SubjectKind.PREDICTION, subject_set_id=prediction_set)
    corrections = (Step(3, 80.0), Step(4, 80.0), Step(5, 80.5))
    checked_until_the_last(offline, History(correction, corrections, ConsensusKind.CORRECTED, correction_workflow))
    with Session(offline.engine) as session:
        last = session.exec(
            select(ConsensusResult).where(ConsensusResult.subject_id == correction, col(ConsensusResult.is_current))
        ).one()
        last.params = {"method": "cria", "correction": {"state": "disputed", "kept": 4, "edited": 1, "deleted": 0}}
        session.add(last)
        session.commit()

    run_retire(session_factory(offline.engine), None, offline.settings)

    decision = decisions(offline, correction)[-1]
    assert decision.outcome == DecisionOutcome.KEEP and "disputed" in decision.details["reason"]
    assert subject_row(offline, correction).retirement_state == RetirementState.ACTIVE


def test_correction_subjects_settle_from_min_corrections(offline: World) -> None:
    """Correction subjects start counting stable checks at ``retirement.min_corrections``, traced
    subjects at ``min_classifications``."""
    settings = offline.settings.model_copy(
        update={"retirement": offline.settings.retirement.model_copy(update={"min_classifications": 8})}
    )
    correction_workflow, prediction_set = add_correction_workflow(offline)
    raw = add_subject(offline, 7, None)
    correction = add_subject(offline, 7, None, SubjectKind.PREDICTION, subject_set_id=prediction_set)
    steady = (Step(3, 80.0), Step(4, 80.0), Step(5, 80.0))
    for history in (History(raw, steady), History(correction, steady, ConsensusKind.CORRECTED, correction_workflow)):
        for step in history.steps:
            aggregated(offline, history.subject_id, step, history.kind, history.workflow_id)
            run_retire(session_factory(offline.engine), None, settings)
    assert settings.retirement.min_corrections <= 4
    assert decisions(offline, correction)[-1].outcome == DecisionOutcome.RETIRE
    assert decisions(offline, raw)[-1].outcome == DecisionOutcome.KEEP
