"""The retire job on a real database (SQLite and PostgreSQL) and the sandbox: each consensus judged
once, retirements sent once, kept pending across a dead API and a crash, and sent by the next run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.config import RetirementSettings, Settings
from etchacell_loop.db.models import (
    ConsensusKind,
    ConsensusResult,
    DecisionOutcome,
    Event,
    EventLevel,
    RetirementDecision,
    RetirementState,
    Subject,
    SubjectKind,
    SyncState,
)
from etchacell_loop.loop.retire_job import DECIDE_BATCH, run_retire
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.panoptes.support import add_loop_rows, session_factory, wait_until

# Retire once two updates in a row reach Dice 0.9, after at least 3 classifications.
RULE = RetirementSettings(min_classifications=3, max_classifications=30, stability_dice=0.9, stable_checks=2)
History = list[tuple[int, float | None]]  # (classifications, stability) after each aggregation
STABLE: History = [(2, None), (3, 0.93), (4, 0.97)]
UNSETTLED: History = [(2, None), (3, 0.41)]


@dataclass
class World:
    engine: Engine
    settings: Settings
    roi_id: int
    subject_set_id: int
    project_panoptes_id: int
    workflow_panoptes_id: int
    set_panoptes_id: int | None


def make_world(engine: Engine, project: dict[str, int], set_panoptes_id: int | None, tmp_path: Path) -> World:
    ids = add_loop_rows(engine, project, set_panoptes_id, "raw")
    settings = Settings(data_dir=tmp_path, retirement=RULE)
    return World(
        engine, settings, ids["roi"], ids["subject_set"],
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


def add_subject(world: World, slice_index: int, panoptes_id: int | None, kind: SubjectKind = SubjectKind.RAW) -> int:
    with Session(world.engine) as session:
        subject = Subject(
            panoptes_id=panoptes_id, upload_key=f"hela/nucleus-1/z{slice_index:04d}/{kind.value}",
            roi_id=world.roi_id, subject_set_id=world.subject_set_id, slice_index=slice_index,
            frames=[slice_index - 1, slice_index, slice_index + 1], target_frame=1, kind=kind,
        )  # fmt: skip
        session.add(subject)
        session.commit()
        assert subject.id is not None
        return subject.id


def sandbox_subject(gateway: PanoptesGateway, world: World) -> int:
    """A subject on the sandbox, in the world's subject set."""
    assert world.set_panoptes_id is not None
    return gateway.create_subject(world.project_panoptes_id, world.set_panoptes_id, [("image/jpeg", b"x")], {}).id


def add_consensus(
    world: World,
    slice_index: int,
    history: list[tuple[int, float | None]],
    kind: ConsensusKind = ConsensusKind.VOLUNTEER,
) -> None:
    """Aggregations of one slice, oldest first: each becomes the current row, as the aggregate job does."""
    for n_classifications, stability in history:
        with Session(world.engine) as session:
            session.execute(
                sa.update(ConsensusResult)
                .where(
                    col(ConsensusResult.roi_id) == world.roi_id,
                    col(ConsensusResult.slice_index) == slice_index,
                    col(ConsensusResult.kind) == kind,
                )
                .values(is_current=False)
            )
            session.add(
                ConsensusResult(
                    roi_id=world.roi_id, slice_index=slice_index, kind=kind, n_classifications=n_classifications,
                    n_volunteers=n_classifications, last_classification_id=n_classifications, stability=stability,
                )
            )  # fmt: skip
            session.commit()


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
    add_consensus(live, 10, STABLE)
    add_consensus(live, 11, UNSETTLED)

    first = run_retire(session_factory(live.engine), gateway, live.settings)

    assert (first.decided, first.retire_decisions, first.sent, first.failed) == (2, 1, 1, 0)
    assert retired_on_panoptes(gateway, live.workflow_panoptes_id, stable_panoptes)
    assert panoptes_status(gateway, live.workflow_panoptes_id, stable_panoptes)["retirement_reason"] == "consensus"
    (decision,) = decisions(live, stable)
    assert decision.outcome == DecisionOutcome.RETIRE and decision.sync_state == SyncState.SENT
    assert decision.sent_at is not None and decision.error is None and decision.panoptes_reason == "consensus"
    assert (decision.policy, decision.n_classifications, decision.stability) == ("stable-consensus", 4, 0.97)
    assert decision.details["reason"] == "stable"
    retired = subject_row(live, stable)
    assert retired.retirement_state == RetirementState.RETIRED and retired.retirement_reason == "consensus"
    assert retired.retired_at is not None
    assert [e.subject_id for e in events(live, "subject.retired")] == [stable]
    (kept,) = decisions(live, unsettled)
    assert kept.outcome == DecisionOutcome.KEEP and kept.panoptes_reason is None
    assert subject_row(live, unsettled).retirement_state == RetirementState.ACTIVE

    second = run_retire(session_factory(live.engine), gateway, live.settings)

    assert (second.decided, second.sent, second.failed) == (0, 0, 0)
    assert len(decisions(live, stable)) == 1 and len(decisions(live, unsettled)) == 1
    assert len(events(live, "subject.retired")) == 1
    inventory = sandbox.inventory(sandbox_project["project_id"])["retired"]
    assert [r["subject_id"] for r in inventory] == [stable_panoptes]
    assert not panoptes_status(gateway, live.workflow_panoptes_id, unsettled_panoptes).get("retired_at")


def test_a_dead_api_leaves_the_retirement_pending_and_a_later_run_sends_it(
    live: World, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    panoptes_id = sandbox_subject(gateway, live)
    subject = add_subject(live, 20, panoptes_id)
    add_consensus(live, 20, STABLE)
    sandbox.set_faults(error_rate=1.0, error_statuses=[503], path_prefixes=["/api/workflows"])

    failed = run_retire(session_factory(live.engine), gateway, live.settings)

    assert (failed.decided, failed.retire_decisions, failed.sent, failed.failed) == (1, 1, 0, 1)
    (decision,) = decisions(live, subject)
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
    (decision,) = decisions(live, subject)
    assert decision.sync_state == SyncState.SENT and decision.error is None
    assert subject_row(live, subject).retirement_state == RetirementState.RETIRED


def test_a_crash_after_deciding_or_after_sending_is_finished_by_the_next_run(
    live: World, gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    ids = [sandbox_subject(gateway, live) for _ in range(3)]
    subjects = [add_subject(live, 30 + i, panoptes_id) for i, panoptes_id in enumerate(ids)]
    for i in range(3):
        add_consensus(live, 30 + i, STABLE)

    decided_only = run_retire(session_factory(live.engine), None, live.settings)  # the sync never ran

    assert (decided_only.decided, decided_only.retire_decisions, decided_only.sent) == (3, 3, 0)
    assert all(decisions(live, s)[0].sync_state == SyncState.PENDING for s in subjects)
    assert all(subject_row(live, s).retirement_state == RetirementState.RETIRING for s in subjects)
    gateway.retire_subjects(live.workflow_panoptes_id, ids[:1], "consensus")  # sent before a crash, not recorded

    resumed = run_retire(session_factory(live.engine), gateway, live.settings)

    assert (resumed.decided, resumed.sent, resumed.failed) == (0, 3, 0)
    assert all(retired_on_panoptes(gateway, live.workflow_panoptes_id, i) for i in ids)
    inventory = sandbox.inventory(sandbox_project["project_id"])["retired"]
    assert sorted(r["subject_id"] for r in inventory) == sorted(ids)  # re-sending added nothing
    assert all(subject_row(live, s).retirement_state == RetirementState.RETIRED for s in subjects)
    assert all(len(decisions(live, s)) == 1 for s in subjects)


def test_a_retirement_that_cannot_be_sent_waits_with_its_reason_and_one_warning(
    live: World, gateway: PanoptesGateway
) -> None:
    subject = add_subject(live, 40, None)  # never uploaded
    add_consensus(live, 40, STABLE)
    first = run_retire(session_factory(live.engine), gateway, live.settings)
    second = run_retire(session_factory(live.engine), gateway, live.settings)
    assert (first.retire_decisions, first.unsendable, first.sent) == (1, 1, 0)
    assert (second.decided, second.unsendable, second.sent) == (0, 1, 0)
    (decision,) = decisions(live, subject)
    assert decision.sync_state == SyncState.PENDING and decision.error == "the subject has no Panoptes id"
    assert [e.subject_id for e in events(live, "retirement.unsendable")] == [subject]


def test_keep_decisions_are_recorded_and_each_new_consensus_is_judged_again(offline: World) -> None:
    subject = add_subject(offline, 5, None)
    factory = session_factory(offline.engine)
    add_consensus(offline, 5, UNSETTLED)
    assert run_retire(factory, None, offline.settings).decided == 1
    assert run_retire(factory, None, offline.settings).decided == 0  # the same consensus is not judged twice
    add_consensus(offline, 5, [(4, 0.95)])  # one stable update: not enough
    add_consensus(offline, 5, [(5, 0.96)])  # the aggregate job ran twice before the retire job
    last = run_retire(factory, None, offline.settings)
    assert (last.decided, last.retire_decisions) == (1, 1)
    history = decisions(offline, subject)
    assert [d.outcome for d in history] == [DecisionOutcome.KEEP, DecisionOutcome.RETIRE]
    assert [d.n_classifications for d in history] == [3, 5]
    assert history[0].details["reason"].startswith("not stable yet") and history[1].details["reason"] == "stable"
    assert history[1].details["updates"] == 4
    assert subject_row(offline, subject).retirement_state == RetirementState.RETIRING
    add_consensus(offline, 5, [(6, 0.99)])  # a retiring subject is not judged again
    assert run_retire(factory, None, offline.settings).decided == 0


def test_prediction_subjects_are_judged_on_the_corrected_consensus_of_their_slice(offline: World) -> None:
    raw = add_subject(offline, 7, None)
    correction = add_subject(offline, 7, None, SubjectKind.PREDICTION)
    add_consensus(offline, 7, STABLE, ConsensusKind.VOLUNTEER)
    add_consensus(offline, 7, UNSETTLED, ConsensusKind.CORRECTED)
    result = run_retire(session_factory(offline.engine), None, offline.settings)
    assert (result.decided, result.retire_decisions) == (2, 1)
    (raw_decision,), (correction_decision,) = decisions(offline, raw), decisions(offline, correction)
    assert raw_decision.outcome == DecisionOutcome.RETIRE and raw_decision.n_classifications == 4
    assert correction_decision.outcome == DecisionOutcome.KEEP and correction_decision.n_classifications == 3
    assert result.as_json()["decided"] == 2


def test_more_subjects_than_one_transaction_holds_are_each_judged_once(offline: World) -> None:
    count = DECIDE_BATCH + 30
    with Session(offline.engine) as session:
        for slice_index in range(count):
            session.add(
                Subject(
                    upload_key=f"bulk/z{slice_index:04d}", roi_id=offline.roi_id, subject_set_id=offline.subject_set_id,
                    slice_index=slice_index, frames=[slice_index], target_frame=0,
                )
            )  # fmt: skip
            session.add(
                ConsensusResult(
                    roi_id=offline.roi_id, slice_index=slice_index, n_classifications=30, n_volunteers=30,
                    last_classification_id=slice_index, stability=0.2,
                )
            )  # fmt: skip
        session.commit()
    result = run_retire(session_factory(offline.engine), None, offline.settings)
    assert (result.decided, result.retire_decisions) == (count, count)  # at the 30-classification limit
    with Session(offline.engine) as session:
        judged = session.exec(select(RetirementDecision.subject_id)).all()
        retiring = session.exec(select(Subject).where(Subject.retirement_state == RetirementState.RETIRING)).all()
    assert len(judged) == len(set(judged)) == count and len(retiring) == count
