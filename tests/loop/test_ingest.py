"""Classification ingest against the sandbox and a real database (SQLite and PostgreSQL): every
classification stored once, verbatim, the cursor moving only with the rows — across faults and a SIGKILL,
poisoned pages (malformed classifications recorded and skipped, never a stall) and classifications
committed below ids already read."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from panoptes_client import Panoptes
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from etchacell_loop.config import PanoptesSettings, Settings
from etchacell_loop.db.models import (
    Classification,
    ClassificationSource,
    Event,
    ParseStatus,
    Subject,
    SyncCursor,
    Workflow,
)
from etchacell_loop.loop.ingest import (
    MAX_CLASSIFICATION_CHARS,
    SKIPPED_EVENT,
    cursor_position,
    ingest_classifications,
    run_ingest,
)
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.sandbox.config import POISON_KINDS, FaultPlan
from etchacell_loop.sandbox.harness import SandboxProcess
from etchacell_loop.sandbox.poison import poison_kind
from tests.panoptes.support import FAULTS_20, add_loop_rows, get_row, kill_when, session_factory, start_worker

ANNOTATIONS: list[Any] = [
    {
        "task": "T0",
        "taskType": "drawing",
        "value": [
            {"toolType": "freehandLine", "pathX": [1.5, 2.25, 3.0], "pathY": [4.0, 5.5, 6.75], "frame": 2},
            {"zeta": "keys stay in the order sent", "alpha": "Kernhülle · é"},
        ],
    }
]
METADATA = {"session": "f00dcafe", "utc_offset": "0", "note": "ünïcödé"}


@dataclass
class Pull:
    engine: Engine
    workflow: Workflow
    project_id: int  # Panoptes
    workflow_panoptes_id: int
    known_subject: int  # Panoptes id of a subject we have a row for
    unknown_subject: int  # ... and of one we do not
    known_row_id: int


@pytest.fixture
def pull(migrated_engine: Engine, gateway: PanoptesGateway, sandbox_project: dict[str, int]) -> Pull:
    project, workflow = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    set_id = gateway.ensure_subject_set(project, "raw", workflow_id=workflow)
    known = gateway.create_subject(project, set_id, [("image/jpeg", b"x")], {}).id
    unknown = gateway.create_subject(project, set_id, [("image/jpeg", b"y")], {}).id
    ids = add_loop_rows(migrated_engine, sandbox_project, set_id, "raw")
    with Session(migrated_engine) as session:
        row = Subject(
            panoptes_id=known, upload_key="k", roi_id=ids["roi"], subject_set_id=ids["subject_set"],
            slice_index=3, frames=[1, 2, 3, 4, 5], target_frame=2,
        )  # fmt: skip
        session.add(row)
        session.commit()
        assert row.id is not None
        known_row = row.id
    workflow_row = get_row(migrated_engine, Workflow, ids["workflow"])
    return Pull(migrated_engine, workflow_row, project, workflow, known, unknown, known_row)


def stored(engine: Engine) -> list[Classification]:
    with Session(engine) as session:
        return list(session.exec(select(Classification).order_by(col(Classification.panoptes_id))).all())


def cursor(engine: Engine) -> SyncCursor | None:
    with Session(engine) as session:
        return session.exec(select(SyncCursor)).first()


def test_ingest_stores_every_classification_verbatim_and_moves_the_cursor(
    pull: Pull, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    bulk = sandbox.bulk_classifications(
        pull.workflow_panoptes_id, [pull.known_subject, pull.unknown_subject], per_subject=15,
        annotations=ANNOTATIONS, metadata=METADATA,
    )  # fmt: skip
    result = ingest_classifications(session_factory(pull.engine), gateway, pull.workflow, pull.project_id, page_size=7)
    assert (result.pages, result.fetched, result.inserted, result.skipped) == (5, 30, 30, 0)
    assert result.last_id == bulk["last_id"]
    rows = stored(pull.engine)
    assert [r.panoptes_id for r in rows] == list(range(bulk["first_id"], bulk["last_id"] + 1))
    first = rows[0]
    assert json.loads(first.raw_annotations) == ANNOTATIONS
    assert list(json.loads(first.raw_annotations)[0]["value"][1]) == ["zeta", "alpha"]  # order kept
    assert "Kernhülle · é" in first.raw_annotations  # non-ASCII kept as text, not \\u escapes
    assert first.raw_metadata is not None
    # The API adds the workflow version to the metadata; it is also kept in its own column (as text).
    assert json.loads(first.raw_metadata) == {**METADATA, "workflow_version": first.workflow_version}
    assert first.workflow_version == "1.1" and first.workflow_id == pull.workflow.id
    assert first.source == ClassificationSource.API and first.parse_status == ParseStatus.PENDING
    assert first.user_id is None and first.volunteer_key == "anon:f00dcafe" and first.anonymous_token == "f00dcafe"
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)
    assert abs(first.created_at - datetime.now(UTC)) < timedelta(minutes=5)
    by_subject = {r.subject_panoptes_id: r.subject_id for r in rows}
    assert by_subject == {pull.known_subject: pull.known_row_id, pull.unknown_subject: None}
    saved = cursor(pull.engine)
    assert saved is not None and saved.last_classification_id == bulk["last_id"] and saved.n_ingested == 30


def test_ingest_is_incremental_and_a_replayed_range_adds_nothing(
    pull: Pull, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    factory = session_factory(pull.engine)
    sandbox.bulk_classifications(pull.workflow_panoptes_id, [pull.known_subject], per_subject=12)
    assert ingest_classifications(factory, gateway, pull.workflow, pull.project_id).inserted == 12
    nothing_new = ingest_classifications(factory, gateway, pull.workflow, pull.project_id)
    assert (nothing_new.inserted, nothing_new.skipped) == (0, 12)  # the look-back read them again
    nothing_new = ingest_classifications(factory, gateway, pull.workflow, pull.project_id, lookback_ids=0)
    assert (nothing_new.pages, nothing_new.inserted) == (0, 0)
    more = sandbox.bulk_classifications(pull.workflow_panoptes_id, [pull.unknown_subject], per_subject=5)
    assert ingest_classifications(factory, gateway, pull.workflow, pull.project_id).inserted == 5
    with Session(pull.engine) as session:  # as if a crash had lost the cursor's last moves
        saved = session.exec(select(SyncCursor)).one()
        saved.last_classification_id = 0
        session.add(saved)
        session.commit()
    replay = ingest_classifications(factory, gateway, pull.workflow, pull.project_id, page_size=4)
    assert (replay.inserted, replay.skipped) == (0, 17)
    assert len(stored(pull.engine)) == 17 and cursor_position(factory, pull.workflow.id or 0) == more["last_id"]


def test_signed_in_volunteers_are_keyed_by_user_and_anonymous_ones_without_session_alone(
    pull: Pull, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    login = f"volunteer-{uuid.uuid4().hex[:8]}"  # the sandbox outlives the test: a new login each time
    user_id = sandbox.create_user(login, "pw-1")
    volunteer = Panoptes(endpoint=sandbox.url, username=login, password="pw-1")
    with volunteer:
        volunteer.post(
            "/classifications",
            json={
                "classifications": {
                    "annotations": ANNOTATIONS, "metadata": {"workflow_version": "4.10"}, "completed": True,
                    "links": {"project": str(pull.project_id), "workflow": str(pull.workflow_panoptes_id),
                              "subjects": [str(pull.known_subject)]},
                }
            },
        )  # fmt: skip
    sandbox.bulk_classifications(pull.workflow_panoptes_id, [pull.unknown_subject], per_subject=2)
    ingest_classifications(session_factory(pull.engine), gateway, pull.workflow, pull.project_id)
    signed_in, *anonymous = stored(pull.engine)
    assert signed_in.user_id == user_id and signed_in.volunteer_key == f"user:{user_id}"
    assert signed_in.anonymous_token is None
    assert [a.volunteer_key for a in anonymous] == [f"anon:classification-{a.panoptes_id}" for a in anonymous]


def test_twenty_percent_faults_still_store_every_classification_once(
    pull: Pull, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    bulk = sandbox.bulk_classifications(pull.workflow_panoptes_id, [pull.known_subject, pull.unknown_subject], 150)
    sandbox.set_faults(**FAULTS_20, lost_response_rate=0.05, seed=3)
    result = ingest_classifications(session_factory(pull.engine), gateway, pull.workflow, pull.project_id, 25)
    sandbox.clear_faults()
    assert result.inserted == 300
    assert [r.panoptes_id for r in stored(pull.engine)] == list(range(bulk["first_id"], bulk["last_id"] + 1))
    saved = cursor(pull.engine)
    assert saved is not None and saved.last_classification_id == bulk["last_id"]


def test_killed_halfway_then_rerun_stores_every_classification_once(
    pull: Pull, gateway: PanoptesGateway, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    bulk = sandbox.bulk_classifications(pull.workflow_panoptes_id, [pull.known_subject, pull.unknown_subject], 300)
    sandbox.set_faults(**FAULTS_20, latency_ms=40, seed=9)
    job = {"mode": "ingest", "workflow": pull.workflow.id, "project": pull.project_id, "page_size": 20}
    url = pull.engine.url.render_as_string(hide_password=False)
    worker = start_worker(job, tmp_path / "ingest-job.json", url, sandbox)

    def halfway() -> bool:
        with Session(pull.engine) as session:
            return session.exec(select(func.count()).select_from(Classification)).one() >= 100

    kill_when(worker, halfway)
    at_kill = cursor(pull.engine)
    assert at_kill is not None and at_kill.last_classification_id < bulk["last_id"]
    assert len(stored(pull.engine)) == at_kill.n_ingested  # the cursor never ran ahead of the rows
    sandbox.set_faults(**FAULTS_20, seed=10)
    ingest_classifications(session_factory(pull.engine), gateway, pull.workflow, pull.project_id, page_size=50)
    sandbox.clear_faults()
    assert [r.panoptes_id for r in stored(pull.engine)] == list(range(bulk["first_id"], bulk["last_id"] + 1))
    saved = cursor(pull.engine)
    assert saved is not None and saved.last_classification_id == bulk["last_id"] and saved.n_ingested == 600


# --- malformed classifications ------------------------------------------------------------------

# What ingest says of each kind of poison the sandbox serves (a fragment of the one-line reason).
SKIP_REASONS = {
    "user_not_a_number": "links.user 'volunteer-",
    "fractional_id": ".9 is not an id",
    "id_not_a_number": "id 'classification-",
    "id_out_of_range": "is out of range",
    "missing_id": "no id",
    "not_an_object": "not a JSON object but str",
    "links_not_an_object": "links is list, not an object",
    "missing_subjects": "no links.subjects",
    "subject_not_a_number": "links.subjects[0] 'subject-",
    "missing_annotations": "no annotations",
    "annotations_not_a_list": "annotations are dict, not a list",
    "metadata_not_an_object": "metadata is str, not an object",
    "bad_created_at": "created_at is not an ISO 8601 time",
    "long_version": "metadata.workflow_version is longer than 32",
    "nul_in_session": "metadata.session holds a NUL",
    "huge": "characters of JSON, more than",
}


def skip_events(engine: Engine) -> list[Event]:
    with Session(engine) as session:
        return list(session.exec(select(Event).where(Event.kind == SKIPPED_EVENT).order_by(col(Event.id))).all())


def test_every_kind_of_malformed_classification_is_recorded_once_and_skipped(
    pull: Pull, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    assert set(SKIP_REASONS) == set(POISON_KINDS)
    bulk = sandbox.bulk_classifications(
        pull.workflow_panoptes_id, [pull.known_subject, pull.unknown_subject], per_subject=12,
        annotations=ANNOTATIONS, metadata=METADATA,
    )  # fmt: skip
    ids = list(range(bulk["first_id"], bulk["last_id"] + 1))
    poisoned = dict(zip(ids[8:], POISON_KINDS, strict=True))  # the last 16 of 24, in pages of 5
    sandbox.set_faults(poison_ids=list(poisoned), poison_kinds=list(poisoned.values()))
    factory = session_factory(pull.engine)
    result = ingest_classifications(factory, gateway, pull.workflow, pull.project_id, page_size=5)
    assert (result.inserted, result.unusable, result.last_id) == (8, 16, bulk["last_id"])
    assert [r.panoptes_id for r in stored(pull.engine)] == ids[:8]
    saved = cursor(pull.engine)
    assert saved is not None and saved.last_classification_id == bulk["last_id"] and saved.n_ingested == 8
    events = skip_events(pull.engine)
    assert len(events) == 16
    for kind, fragment in SKIP_REASONS.items():
        (event,) = [e for e in events if fragment in e.message]
        assert "\n" not in event.message and len(event.message) < 200, event.message
        assert event.payload["reason"] in event.message and event.payload["workflow"] == pull.workflow_panoptes_id
        raw = json.loads(event.payload["raw"]) if kind != "huge" else None
        if kind == "huge":
            assert event.payload["raw_truncated"] and event.payload["raw_chars"] > MAX_CLASSIFICATION_CHARS
        elif kind == "not_an_object":
            assert raw == f"classification {event_id(poisoned, kind)}"
        else:
            assert isinstance(raw, dict) and raw.get("created_at") is not None  # the item as served
        if kind in ("user_not_a_number", "missing_subjects", "bad_created_at", "huge", "long_version"):
            assert event.payload["panoptes_id"] == event_id(poisoned, kind)  # named by its id, when it has one
    user_event = next(e for e in events if "links.user" in e.message)
    assert json.loads(user_event.payload["raw"])["links"]["user"].startswith("volunteer-")  # kept as received
    again = ingest_classifications(factory, gateway, pull.workflow, pull.project_id, page_size=5)
    assert (again.inserted, again.unusable) == (0, 0) and len(skip_events(pull.engine)) == 16  # recorded once


def event_id(poisoned: dict[int, str], kind: str) -> int:
    return next(i for i, k in poisoned.items() if k == kind)


def test_poison_at_random_with_failing_requests_still_stores_every_good_classification_once(
    pull: Pull, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    bulk = sandbox.bulk_classifications(pull.workflow_panoptes_id, [pull.known_subject, pull.unknown_subject], 60)
    ids = range(bulk["first_id"], bulk["last_id"] + 1)
    plan = {"poison_rate": 0.2, "poison_kinds": [k for k in POISON_KINDS if k != "huge"], "seed": 4}
    sandbox.set_faults(**FAULTS_20, **plan)
    bad = {i for i in ids if poison_kind(FaultPlan.from_dict(plan), i) is not None}
    assert 10 < len(bad) < 40
    result = ingest_classifications(session_factory(pull.engine), gateway, pull.workflow, pull.project_id, 10)
    sandbox.clear_faults()
    assert [r.panoptes_id for r in stored(pull.engine)] == [i for i in ids if i not in bad]
    assert (result.inserted, result.unusable, len(skip_events(pull.engine))) == (120 - len(bad), len(bad), len(bad))
    saved = cursor(pull.engine)
    assert saved is not None and saved.last_classification_id >= max(set(ids) - bad)


def test_awkward_but_valid_text_is_stored_not_skipped(
    pull: Pull, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    bulk = sandbox.bulk_classifications(pull.workflow_panoptes_id, [pull.known_subject], 3, annotations=ANNOTATIONS)
    odd = bulk["first_id"] + 1
    sandbox.set_faults(poison_ids=[odd], poison_kinds=["odd_text"])
    result = ingest_classifications(session_factory(pull.engine), gateway, pull.workflow, pull.project_id)
    assert (result.inserted, result.unusable) == (3, 0)
    row = next(r for r in stored(pull.engine) if r.panoptes_id == odd)
    assert json.loads(row.raw_annotations)[-1]["value"] == "half an emoji \ud83d, a NUL \x00 and ünïcödé"
    assert row.raw_metadata is not None and json.loads(row.raw_metadata)["comment"] == "\ud83d\x00"


def test_one_bad_classification_does_not_stall_the_ingest_job_or_its_other_workflows(
    migrated_engine: Engine, gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int],
    tmp_path: Path,
) -> None:  # fmt: skip
    project = sandbox_project["project_id"]
    segmentation, correction = sandbox_project["segmentation_workflow_id"], sandbox_project["correction_workflow_id"]
    raw_set = gateway.ensure_subject_set(project, "raw", workflow_id=segmentation)
    subject = gateway.create_subject(project, raw_set, [("image/jpeg", b"x")], {}).id
    traced = sandbox.bulk_classifications(segmentation, [subject], per_subject=3)
    corrected = sandbox.bulk_classifications(correction, [subject], per_subject=2)
    sandbox.set_faults(poison_ids=[traced["first_id"]], poison_kinds=["user_not_a_number"])  # the case
    settings = Settings(
        data_dir=tmp_path / "data",
        panoptes=PanoptesSettings(
            project_id=project, segmentation_workflow_id=segmentation, correction_workflow_id=correction
        ),
    )
    factory = session_factory(migrated_engine)
    result = run_ingest(factory, gateway, settings)
    assert result.failed == {}
    assert (result.workflows[segmentation].inserted, result.workflows[segmentation].unusable) == (2, 1)
    assert result.workflows[correction].inserted == 2
    (event,) = skip_events(migrated_engine)
    assert event.message == (
        f"workflow {segmentation}: classification {traced['first_id']} skipped: "
        f"links.user 'volunteer-{traced['first_id'] % 1000}' is not an id"
    )
    with Session(migrated_engine) as session:
        positions = sorted(c.last_classification_id for c in session.exec(select(SyncCursor)).all())
    assert positions == sorted([traced["last_id"], corrected["last_id"]])  # both moved, past the bad one too
    again = run_ingest(factory, gateway, settings)  # the next tick: nothing new, nothing recorded twice
    assert again.failed == {} and again.inserted == 0 and len(skip_events(migrated_engine)) == 1


# --- classifications committed out of id order --------------------------------------------------


def test_a_classification_committed_below_the_cursor_is_picked_up_on_the_next_tick(
    pull: Pull, gateway: PanoptesGateway, sandbox: SandboxProcess
) -> None:
    factory = session_factory(pull.engine)
    sandbox.bulk_classifications(pull.workflow_panoptes_id, [pull.known_subject], per_subject=3)
    (late,) = sandbox.reserve_classification_ids()  # its insert has begun; it commits later
    after = sandbox.bulk_classifications(pull.workflow_panoptes_id, [pull.unknown_subject], per_subject=4)
    first = ingest_classifications(factory, gateway, pull.workflow, pull.project_id, page_size=3)
    assert (first.inserted, first.last_id) == (7, after["last_id"]) and late < after["first_id"]
    sandbox.bulk_classifications(pull.workflow_panoptes_id, [pull.known_subject], ids=[late])  # commits now
    blind = ingest_classifications(factory, gateway, pull.workflow, pull.project_id, page_size=3, lookback_ids=0)
    assert blind.inserted == 0  # paging from the cursor alone never sees it
    second = ingest_classifications(factory, gateway, pull.workflow, pull.project_id, page_size=3)
    assert (second.inserted, second.skipped, second.last_id) == (1, 7, after["last_id"])
    assert late in [r.panoptes_id for r in stored(pull.engine)] and len(stored(pull.engine)) == 8
    saved = cursor(pull.engine)
    assert saved is not None and saved.n_ingested == 8
    third = ingest_classifications(factory, gateway, pull.workflow, pull.project_id, page_size=3)
    assert (third.inserted, third.skipped) == (0, 8)  # read again, stored once
