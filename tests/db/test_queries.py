"""The named ops queries run on SQLite and PostgreSQL and return the figures computed here, in Python,
from the very rows the test inserted.

Timestamps are relative to now and kept well away from every window edge (-1d, -2d, -7d, -30d), so
the default windows of the queries include what they should whatever the time of the run.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from etchacell_loop.db.models import (
    Classification,
    ClassificationSource,
    ConsensusKind,
    ConsensusResult,
    DataSplit,
    Event,
    EventLevel,
    JobRun,
    JobStatus,
    MetricReference,
    ModelMetric,
    ModelVersion,
    PredictionBatch,
    RetirementState,
    Roi,
    RunStatus,
    SlicePrediction,
    Subject,
    SubjectKind,
    SubjectSet,
    SyncCursor,
    TrainingRun,
    TrainingTrigger,
    VolunteerAgreement,
    Workflow,
    WorkflowRole,
)
from etchacell_loop.db.queries import QueryError, get_query, load_queries, run_query
from etchacell_loop.effort import EFFORT_COLUMNS
from tests.factories import add_project, add_roi, add_subject_set, add_workflow

QUERIES = load_queries()

EXPECTED_COLUMNS: dict[str, tuple[str, ...]] = {
    "classification_throughput": ("day", "classifications", "volunteers", "anonymous"),
    "consensus_agreement": ("volunteer_key", "user_name", "dice", "classification_id"),
    "consensus_slices": (
        "id",
        "roi",
        "slice_index",
        "kind",
        "method",
        "subject_panoptes_id",
        "classifications",
        "drawers",
        "area_px",
        "stability",
        "disagreeing",
        "created_at",
    ),
    "classifications_per_retired_subject": (
        "subject_panoptes_id",
        "subject_set",
        "classifications",
        "retirement_reason",
        "retired_at",
        "saved_vs_fixed_limit",
    ),
    "cursor_lag": (
        "workflow_panoptes_id",
        "workflow",
        "role",
        "cursor_last_classification_id",
        "cursor_updated_at",
        "newest_classification_id",
        "newest_classification_at",
        "classifications",
    ),
    "event_kinds": ("kind", "events", "newest"),
    "job_status": ("job", "last_started_at", "last_finished_at", "last_status", "runs", "failures"),
    "model_versions": (
        "version",
        "preset",
        "architecture",
        "promoted",
        "promoted_at",
        "created_at",
        "training_run_id",
        "validation_f_measure",
        "validation_ahd_nm",
        "f_measure_consensus",
        "f_measure_truth",
        "ahd_nm_consensus",
        "ahd_nm_truth",
        "consensus_f_measure_truth",
        "mean_correction_dice",
        "corrected_slices",
        "monitored_slices",
        "corrections_guard",
        "corrections_guard_note",
    ),
    "monitoring_slices": (
        "version",
        "roi_id",
        "slice_index",
        "monitoring_subject_panoptes_id",
        "monitoring_upload_state",
        "corrected",
        "traced",
        "correction_dice",
        "monitoring_dice",
    ),
    "recent_events": (
        "id",
        "created_at",
        "level",
        "kind",
        "message",
        "subject_id",
        "classification_id",
        "training_run_id",
        "model_version_id",
        "payload",
    ),
    "retirement_effort": ("subject_set", "classifications", "subjects"),
    "retirement_progress": (
        "subject_set",
        "kind",
        "subject_set_panoptes_id",
        "subjects",
        "retired",
        "retiring",
        "active",
        "share_retired",
        "classifications",
    ),
    "training_runs": (
        "id",
        "status",
        "trigger",
        "requested_by",
        "reason",
        "preset",
        "worker_host",
        "queued_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "error",
        "model_version",
    ),
    "volunteer_activity": ("volunteer_key", "user_name", "classifications", "first_seen", "last_seen", "share"),
    "volunteer_effort": EFFORT_COLUMNS,  # computed in Python from its rows: tests/db/test_effort_query.py
    "volunteer_effort_gini": ("volunteers", "classifications", "gini"),
    "volunteer_reliability": ("volunteer_key", "user_name", "slices", "mean_dice", "shrunk_dice", "flagged"),
}

# Rows a query returns on an empty database (aggregates without GROUP BY still return one row).
EMPTY_ROWS: dict[str, list[tuple[Any, ...]]] = {"volunteer_effort_gini": [(0, 0, None)]}

_panoptes_ids = itertools.count(700_000)


# --- helpers -------------------------------------------------------------------------------------


def query_rows(engine: Engine, name: str, **params: object) -> list[dict[str, Any]]:
    """Run a named query with parameters given as the operator would (text) and return dict rows."""
    return run_query(engine, QUERIES[name], {k: str(v) for k, v in params.items()}).as_dicts()


def as_utc(value: object) -> datetime | None:
    """A timestamp as returned by either backend (SQLite: text, PostgreSQL: ISO text) as aware UTC."""
    if value is None:
        return None
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def gini(counts: list[int]) -> float:
    """Gini coefficient via the mean absolute difference: an independent check of the SQL formula."""
    x = np.asarray(counts, dtype=float)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean()))


# --- factories -----------------------------------------------------------------------------------


def add_subject(
    session: Session,
    roi: Roi,
    subject_set: SubjectSet | None,
    slice_index: int,
    state: RetirementState = RetirementState.ACTIVE,
    retired_at: datetime | None = None,
    reason: str | None = None,
) -> Subject:
    assert roi.id is not None
    subject = Subject(
        panoptes_id=next(_panoptes_ids),
        upload_key=f"roi{roi.id}-z{slice_index}",
        roi_id=roi.id,
        subject_set_id=subject_set.id if subject_set else None,
        slice_index=slice_index,
        frames=[slice_index - 1, slice_index, slice_index + 1],
        target_frame=1,
        kind=subject_set.kind if subject_set else SubjectKind.RAW,
        retirement_state=state,
        retirement_reason=reason,
        retired_at=retired_at,
    )
    session.add(subject)
    session.flush()
    return subject


VOLUNTEERS: dict[str, tuple[int | None, str | None]] = {
    "user:11": (11, "alice"),
    "user:12": (12, "bob"),
    "user:13": (13, "carol"),
    "anon:t1": (None, None),
    "anon:t2": (None, None),
    "user:14": (14, "abe"),  # renamed twice, long ago: see build_world
}


def add_classification(
    session: Session,
    workflow: Workflow,
    subject: Subject | None,
    volunteer_key: str,
    created_at: datetime,
    linked: bool = True,
) -> Classification:
    """A classification; ``linked=False`` leaves ``subject_id`` empty, as before ingestion resolves it."""
    assert workflow.id is not None
    user_id, user_name = VOLUNTEERS[volunteer_key]
    classification = Classification(
        panoptes_id=next(_panoptes_ids),
        workflow_id=workflow.id,
        workflow_version="4.10",
        subject_panoptes_id=subject.panoptes_id if subject and subject.panoptes_id else next(_panoptes_ids),
        subject_id=subject.id if subject and linked else None,
        user_id=user_id,
        user_name=user_name,
        anonymous_token=None if user_id else volunteer_key.removeprefix("anon:"),
        volunteer_key=volunteer_key,
        created_at=created_at,
        source=ClassificationSource.API,
        raw_annotations="[]",
    )
    session.add(classification)
    session.flush()
    return classification


def add_training_run(
    session: Session,
    status: RunStatus,
    queued_at: datetime,
    trigger: TrainingTrigger = TrainingTrigger.MANUAL,
    requested_by: str = "operator",
    reason: str | None = None,
    error: str | None = None,
    worker_host: str | None = None,
) -> TrainingRun:
    started = status != RunStatus.QUEUED
    finished = status in (RunStatus.SUCCEEDED, RunStatus.FAILED)
    run = TrainingRun(
        status=status,
        trigger=trigger,
        requested_by=requested_by,
        reason=reason,
        preset="small",
        worker_host=worker_host,
        error=error,
        queued_at=queued_at,
        started_at=queued_at + timedelta(minutes=2) if started else None,
        heartbeat_at=queued_at + timedelta(minutes=30) if started else None,
        finished_at=queued_at + timedelta(minutes=45) if finished else None,
    )
    session.add(run)
    session.flush()
    return run


def add_model_version(
    session: Session,
    version: str,
    created_at: datetime,
    run: TrainingRun | None = None,
    promoted_at: datetime | None = None,
    metrics: dict[tuple[DataSplit, MetricReference, str], float] | None = None,
) -> ModelVersion:
    model = ModelVersion(
        version=version,
        training_run_id=run.id if run else None,
        artifact_uri=f"file:///models/{version}.keras",
        preset="small",
        architecture="unet2d",
        data_hash="0" * 64,
        promoted=promoted_at is not None,
        promoted_at=promoted_at,
        created_at=created_at,
    )
    session.add(model)
    session.flush()
    assert model.id is not None
    for (split, reference, name), value in (metrics or {}).items():
        session.add(ModelMetric(model_version_id=model.id, split=split, reference=reference, name=name, value=value))
    session.flush()
    return model


def add_prediction_batch(
    session: Session, model: ModelVersion, roi: Roi, dice: list[float | None], first_slice: int = 0
) -> PredictionBatch:
    assert model.id is not None and roi.id is not None
    batch = PredictionBatch(model_version_id=model.id, roi_id=roi.id, status=RunStatus.SUCCEEDED)
    session.add(batch)
    session.flush()
    assert batch.id is not None
    for offset, value in enumerate(dice):
        session.add(
            SlicePrediction(
                batch_id=batch.id,
                roi_id=roi.id,
                slice_index=first_slice + offset,
                uncertainty=0.1,
                envelope_area_px=1000,
                correction_dice=value,
            )
        )
    session.flush()
    return batch


def add_job_run(
    session: Session, job: str, status: JobStatus, started_at: datetime, error: str | None = None
) -> JobRun:
    finished_at = None if status == JobStatus.RUNNING else started_at + timedelta(seconds=20)
    run = JobRun(job=job, status=status, host="loop-1", error=error, started_at=started_at, finished_at=finished_at)
    session.add(run)
    session.flush()
    return run


def add_event(
    session: Session, level: EventLevel, kind: str, created_at: datetime, subject: Subject | None = None
) -> Event:
    event = Event(
        level=level,
        kind=kind,
        message=f"{kind} happened",
        created_at=created_at,
        subject_id=subject.id if subject else None,
        payload={"kind": kind, "n": 3},
    )
    session.add(event)
    session.flush()
    return event


_consensus_sizes = itertools.count(1)


def add_consensus(
    session: Session,
    roi: Roi,
    slice_index: int,
    kind: ConsensusKind,
    subject: Subject | None,
    created_at: datetime,
    current: bool = True,
    stability: float | None = None,
) -> ConsensusResult:
    """A consensus of one slice; sizes differ from row to row so a swapped column shows."""
    assert roi.id is not None
    size = next(_consensus_sizes)
    consensus = ConsensusResult(
        roi_id=roi.id,
        slice_index=slice_index,
        subject_id=subject.id if subject else None,
        kind=kind,
        method="cria" if kind == ConsensusKind.VOLUNTEER else "cria-corrected",
        n_classifications=3 + 2 * size,
        n_volunteers=2 + size,
        last_classification_id=next(_panoptes_ids),
        area_px=1000 * size + 7,
        stability=stability,
        is_current=current,
        created_at=created_at,
    )
    session.add(consensus)
    session.flush()
    return consensus


def add_agreement(
    session: Session, consensus: ConsensusResult, volunteer_key: str, dice: float, classification: Classification | None
) -> VolunteerAgreement:
    assert consensus.id is not None
    agreement = VolunteerAgreement(
        consensus_result_id=consensus.id,
        classification_id=classification.id if classification else None,
        volunteer_key=volunteer_key,
        dice=dice,
    )
    session.add(agreement)
    session.flush()
    return agreement


# --- the populated database ----------------------------------------------------------------------


@dataclass
class World:
    """What the test inserted, kept as ORM objects to compute the expected figures from."""

    now: datetime
    workflows: list[Workflow] = field(default_factory=list)
    subject_sets: list[SubjectSet] = field(default_factory=list)
    subjects: list[Subject] = field(default_factory=list)
    classifications: list[Classification] = field(default_factory=list)
    cursors: list[SyncCursor] = field(default_factory=list)
    training_runs: list[TrainingRun] = field(default_factory=list)
    model_versions: list[ModelVersion] = field(default_factory=list)
    dice: dict[str, list[float | None]] = field(default_factory=dict)
    metrics: dict[str, dict[tuple[DataSplit, MetricReference, str], float]] = field(default_factory=dict)
    job_runs: list[JobRun] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    rois: list[Roi] = field(default_factory=list)
    consensus: list[ConsensusResult] = field(default_factory=list)
    agreements: list[VolunteerAgreement] = field(default_factory=list)

    def ago(self, **delta: float) -> datetime:
        return self.now - timedelta(**delta)

    def classifications_since(self, cutoff: datetime) -> list[Classification]:
        return [c for c in self.classifications if c.created_at >= cutoff]

    def classifications_of(self, subject: Subject) -> list[Classification]:
        return [c for c in self.classifications if c.subject_panoptes_id == subject.panoptes_id]

    def agreements_of(self, consensus: ConsensusResult) -> list[VolunteerAgreement]:
        return [a for a in self.agreements if a.consensus_result_id == consensus.id]

    def newest_user_name(self, volunteer_key: str) -> str | None:
        """The user name of the volunteer's newest classification (by id) that has one."""
        named = [c for c in self.classifications if c.volunteer_key == volunteer_key and c.user_name is not None]
        return max(named, key=lambda c: c.id or 0).user_name if named else None


def build_world(session: Session, now: datetime) -> World:
    world = World(now=now)
    ago = world.ago
    project = add_project(session)
    seg = add_workflow(session, project, 2001, WorkflowRole.SEGMENTATION, "Trace the nuclear envelope")
    cor = add_workflow(session, project, 2002, WorkflowRole.CORRECTION, "Correct the machine")
    idle = add_workflow(session, project, 2003, WorkflowRole.SEGMENTATION, "Not started")
    world.workflows = [seg, cor, idle]
    raw = add_subject_set(session, project, seg, "raw slices", 3001, SubjectKind.RAW)
    pred = add_subject_set(session, project, cor, "predictions v1", 3002, SubjectKind.PREDICTION)
    empty = add_subject_set(session, project, None, "not uploaded yet", None, SubjectKind.RAW)
    world.subject_sets = [raw, pred, empty]
    roi = add_roi(session)

    retired, retiring = RetirementState.RETIRED, RetirementState.RETIRING
    s1 = add_subject(session, roi, raw, 10, retired, ago(hours=1), "consensus_stable")
    s2 = add_subject(session, roi, raw, 11, retired, ago(days=3), "consensus_stable")
    s3 = add_subject(session, roi, raw, 12, retiring)
    s4 = add_subject(session, roi, raw, 13)
    s5 = add_subject(session, roi, raw, 14)
    p1 = add_subject(session, roi, pred, 20, retired, ago(days=10), "classification_count")
    p2 = add_subject(session, roi, pred, 21)
    p3 = add_subject(session, roi, pred, 22)
    orphan = add_subject(session, roi, None, 30, retired, ago(hours=5), "other")
    world.subjects = [s1, s2, s3, s4, s5, p1, p2, p3, orphan]

    # (workflow, subject, volunteer, age in hours); one classification of a subject we do not hold,
    # and one whose subject_id is not resolved yet (queries match subjects by Panoptes id).
    plan: list[tuple[Workflow, Subject | None, str, float]] = [
        (seg, s1, "user:11", 2),
        (seg, s1, "user:12", 3),
        (seg, s1, "anon:t1", 4),
        (seg, s1, "user:11", 30),
        (seg, s2, "user:11", 96),
        (seg, s2, "user:13", 97),
        (seg, s2, "anon:t2", 120),
        (seg, s3, "user:11", 1),
        (seg, s3, "user:12", 26),
        (seg, s4, "user:11", 40 * 24),
        (cor, p1, "user:11", 12 * 24),
        (cor, p1, "user:12", 12 * 24 + 1),
        (cor, p1, "user:13", 11 * 24),
        (cor, p1, "anon:t1", 15 * 24),
        (cor, p1, "user:11", 20 * 24),
        (cor, p1, "user:12", 35 * 24),
        (cor, p2, "user:11", 6),
        (cor, p2, "anon:t2", 7),
        (seg, orphan, "user:13", 8),
        (seg, orphan, "user:11", 9),
        (seg, None, "anon:t1", 10),
    ]
    world.classifications = [
        add_classification(session, workflow, subject, key, ago(hours=hours)) for workflow, subject, key, hours in plan
    ]
    world.classifications.append(add_classification(session, seg, s2, "user:12", ago(hours=98), linked=False))
    seg_ids = sorted(c.panoptes_id for c in world.classifications if c.workflow_id == seg.id)
    cor_ids = sorted(c.panoptes_id for c in world.classifications if c.workflow_id == cor.id)
    for workflow, last_id in ((seg, seg_ids[-3]), (cor, cor_ids[-1])):
        assert workflow.id is not None
        cursor = SyncCursor(workflow_id=workflow.id, last_classification_id=last_id, updated_at=ago(minutes=5))
        session.add(cursor)
        world.cursors.append(cursor)
    session.flush()

    tr1 = add_training_run(
        session, RunStatus.SUCCEEDED, ago(days=3), TrainingTrigger.AUTOMATIC, "daemon", "200 new slices", None, "gpu-1"
    )
    tr2 = add_training_run(
        session, RunStatus.FAILED, ago(days=1), TrainingTrigger.MANUAL, "alice", "retry", "CUDA OOM", "gpu-2"
    )
    tr3 = add_training_run(session, RunStatus.QUEUED, ago(minutes=10), TrainingTrigger.MANUAL, "bob")
    tr4 = add_training_run(session, RunStatus.SUCCEEDED, ago(hours=12), TrainingTrigger.AUTOMATIC, "daemon")
    world.training_runs = [tr1, tr2, tr3, tr4]

    test, validation, train = DataSplit.TEST, DataSplit.VALIDATION, DataSplit.TRAIN
    consensus, truth = MetricReference.CONSENSUS, MetricReference.TRUTH
    world.metrics = {
        "v1": {
            (test, consensus, "f_measure"): 0.81,
            (test, truth, "f_measure"): 0.78,
            (test, consensus, "ahd_nm"): 42.0,
            (test, truth, "ahd_nm"): 55.5,
            (validation, consensus, "f_measure"): 0.95,
            (validation, consensus, "ahd_nm"): 20.5,
            (test, truth, "consensus_f_measure"): 0.91,
            (train, truth, "ahd_nm"): 12.0,  # another split: not in the pivot
            (test, consensus, "dice"): 0.9,  # another metric: not in the pivot
        },
        "v2": {
            (test, consensus, "f_measure"): 0.86,
            (validation, truth, "ahd_nm"): 30.0,
        },  # validation vs truth: not shown
        "v0": {},
    }
    v1 = add_model_version(session, "v1", ago(days=2), tr1, metrics=world.metrics["v1"])
    v2 = add_model_version(session, "v2", ago(hours=11), tr4, promoted_at=ago(hours=10), metrics=world.metrics["v2"])
    v0 = add_model_version(session, "v0", ago(days=5), metrics=world.metrics["v0"])
    world.model_versions = [v1, v2, v0]
    world.dice = {"v1": [0.8, 0.9, None], "v2": [0.5, None, 0.7, 0.6], "v0": []}
    add_prediction_batch(session, v1, roi, world.dice["v1"])
    add_prediction_batch(session, v2, roi, world.dice["v2"][:2])
    add_prediction_batch(session, v2, roi, world.dice["v2"][2:], first_slice=50)

    world.job_runs = [
        add_job_run(session, "ingest", JobStatus.OK, ago(minutes=30)),
        add_job_run(session, "ingest", JobStatus.FAILED, ago(hours=2), "timeout"),
        add_job_run(session, "ingest", JobStatus.OK, ago(days=2)),
        add_job_run(session, "train_check", JobStatus.FAILED, ago(days=3), "no worker"),
        add_job_run(session, "aggregate", JobStatus.OK, ago(hours=3)),
        add_job_run(session, "aggregate", JobStatus.RUNNING, ago(minutes=1)),
    ]

    world.events = [
        add_event(session, EventLevel.INFO, "ingest", ago(minutes=1)),
        add_event(session, EventLevel.WARNING, "parse", ago(hours=2), s1),
        add_event(session, EventLevel.ERROR, "upload", ago(hours=3), s4),
        add_event(session, EventLevel.INFO, "ingest", ago(days=1)),
        add_event(session, EventLevel.WARNING, "ingest", ago(days=3)),
        add_event(session, EventLevel.ERROR, "upload", ago(days=10)),
    ]

    # user:14 renamed themselves twice, then sent one classification without a name, all long ago
    # (outside every window above, on a subject we do not hold): their name is the newest non-empty
    # one, "mid", neither the alphabetically first nor the last.
    for days, name in ((45, "abe"), (44, "zed"), (43, "mid"), (42, None)):
        renamed = add_classification(session, seg, None, "user:14", ago(days=days))
        renamed.user_name = name
        world.classifications.append(renamed)
    session.flush()

    # Consensus: one current row per (roi, slice, kind) and older ones kept as history; a second
    # ROI; one slice with both kinds; two rows without a subject; two made at the same moment.
    assert roi.id is not None
    roi2 = Roi(volume_id=roi.volume_id, name="nucleus-2", x=300, y=0, z=0, width=256, height=256, depth=100)
    session.add(roi2)
    session.flush()
    world.rois = [roi, roi2]
    volunteer, corrected = ConsensusKind.VOLUNTEER, ConsensusKind.CORRECTED
    c_s1_old = add_consensus(session, roi, 10, volunteer, s1, ago(days=2), current=False)
    c_s1 = add_consensus(session, roi, 10, volunteer, s1, ago(hours=1), stability=0.93)
    c_s2_old = add_consensus(session, roi, 11, volunteer, s2, ago(days=4), current=False)
    c_s2 = add_consensus(session, roi, 11, volunteer, s2, ago(hours=3), stability=0.71)
    c_s3 = add_consensus(session, roi, 12, volunteer, s3, c_s2.created_at, stability=0.88)
    c_s4 = add_consensus(session, roi, 13, volunteer, s4, ago(hours=8))
    c_p1 = add_consensus(session, roi, 20, corrected, p1, ago(hours=2), stability=0.97)
    c_z10 = add_consensus(session, roi, 10, corrected, None, ago(hours=4), stability=0.5)
    c_r2 = add_consensus(session, roi2, 5, volunteer, None, ago(hours=6), stability=0.99)
    c_r2_old = add_consensus(session, roi2, 5, volunteer, None, ago(days=1), current=False)
    world.consensus = [c_s1_old, c_s1, c_s2_old, c_s2, c_s3, c_s4, c_p1, c_z10, c_r2, c_r2_old]

    subject_of = {s.id: s for s in world.subjects}

    def drawn_by(consensus: ConsensusResult, key: str) -> Classification | None:
        """The volunteer's classification of the consensus's subject, if we hold one."""
        subject = subject_of.get(consensus.subject_id)
        mine = [c for c in world.classifications_of(subject) if c.volunteer_key == key] if subject else []
        return mine[0] if mine else None

    # user:13 agrees poorly with every current consensus but well with the old ones: counting only
    # the current consensus flags them. user:98 drew only on replaced consensus; user:99 never
    # classified anything we hold (no user name). 0.5 itself is not "disagreeing".
    plan_agreements: list[tuple[ConsensusResult, str, float]] = [
        (c_s1, "user:11", 0.92),
        (c_s1, "user:12", 0.45),
        (c_s1, "anon:t1", 0.5),
        (c_s2, "user:11", 0.88),
        (c_s2, "user:13", 0.2),
        (c_s2, "anon:t2", 0.1),
        (c_s3, "user:11", 0.95),
        (c_s3, "user:12", 0.2),
        (c_s3, "anon:t2", 0.2),
        (c_p1, "user:11", 0.9),
        (c_p1, "user:12", 0.4),
        (c_p1, "anon:t1", 0.7),
        (c_z10, "user:13", 0.1),
        (c_z10, "user:14", 0.6),
        (c_r2, "user:11", 0.85),
        (c_r2, "user:13", 0.3),
        (c_r2, "user:99", 0.08),
        (c_s1_old, "user:11", 0.2),
        (c_s1_old, "user:13", 0.95),
        (c_s2_old, "user:13", 0.97),
        (c_s2_old, "user:98", 0.3),
        (c_r2_old, "user:13", 0.99),
    ]
    world.agreements = [
        add_agreement(session, consensus, key, dice, drawn_by(consensus, key))
        for consensus, key, dice in plan_agreements
    ]
    return world


@pytest.fixture
def world(migrated_engine: Engine) -> World:
    with Session(migrated_engine, expire_on_commit=False) as session:
        built = build_world(session, datetime.now(UTC))
        session.commit()
    return built


# --- every query, empty database -----------------------------------------------------------------


def test_every_query_has_expected_columns_listed() -> None:
    assert set(QUERIES) == set(EXPECTED_COLUMNS)
    for query in QUERIES.values():
        assert query.title and query.description, query.name


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_query_runs_on_empty_database(migrated_engine: Engine, name: str) -> None:
    result = run_query(migrated_engine, QUERIES[name])
    assert result.columns == EXPECTED_COLUMNS[name]
    assert result.rows == EMPTY_ROWS.get(name, [])


# --- figures on a populated database -------------------------------------------------------------


def test_classification_throughput(migrated_engine: Engine, world: World) -> None:
    def expected(keep: Callable[[Classification], bool]) -> list[tuple[str, int, int, int]]:
        by_day: dict[str, list[Classification]] = defaultdict(list)
        for c in world.classifications_since(world.ago(days=30)):
            if keep(c):
                by_day[c.created_at.astimezone(UTC).date().isoformat()].append(c)
        return [
            (
                day,
                len(items),
                len({c.volunteer_key for c in items}),
                sum(1 for c in items if c.user_id is None),
            )
            for day, items in sorted(by_day.items())
        ]

    got = [tuple(r.values()) for r in query_rows(migrated_engine, "classification_throughput")]
    assert got == expected(lambda c: True)
    cor = world.workflows[1]
    got = [tuple(r.values()) for r in query_rows(migrated_engine, "classification_throughput", workflow_id=2002)]
    assert got == expected(lambda c: c.workflow_id == cor.id)


def test_retirement_progress(migrated_engine: Engine, world: World) -> None:
    rows = query_rows(migrated_engine, "retirement_progress")
    expected: list[dict[str, Any]] = []
    for subject_set in sorted(world.subject_sets, key=lambda s: s.display_name):
        members = [s for s in world.subjects if s.subject_set_id == subject_set.id]
        states = Counter(s.retirement_state for s in members)
        expected.append(
            {
                "subject_set": subject_set.display_name,
                "kind": subject_set.kind.value,
                "subject_set_panoptes_id": subject_set.panoptes_id,
                "subjects": len(members),
                "retired": states[RetirementState.RETIRED],
                "retiring": states[RetirementState.RETIRING],
                "active": states[RetirementState.ACTIVE],
                "share_retired": states[RetirementState.RETIRED] / len(members) if members else None,
                "classifications": sum(len(world.classifications_of(s)) for s in members),
            }
        )
    for e in expected:
        if e["share_retired"] is not None:
            e["share_retired"] = pytest.approx(e["share_retired"])
    assert rows == expected
    # The figures themselves, spelled out once so a wrong helper above cannot hide a wrong query.
    raw = next(r for r in rows if r["subject_set"] == "raw slices")
    assert (raw["subjects"], raw["retired"], raw["retiring"], raw["active"]) == (5, 2, 1, 2)
    assert raw["share_retired"] == pytest.approx(0.4)
    assert raw["classifications"] == 11


def test_classifications_per_retired_subject(migrated_engine: Engine, world: World) -> None:
    set_names = {s.id: s.display_name for s in world.subject_sets}

    def expected(cutoff: datetime | None, limit: int) -> list[dict[str, Any]]:
        retired = [
            s
            for s in world.subjects
            if s.retirement_state == RetirementState.RETIRED
            and (cutoff is None or (s.retired_at is not None and s.retired_at >= cutoff))
        ]
        retired.sort(key=lambda s: (s.retired_at, s.id), reverse=True)
        return [
            {
                "subject_panoptes_id": s.panoptes_id,
                "subject_set": set_names.get(s.subject_set_id),
                "classifications": len(world.classifications_of(s)),
                "retirement_reason": s.retirement_reason,
                "retired_at": s.retired_at,
                "saved_vs_fixed_limit": limit - len(world.classifications_of(s)),
            }
            for s in retired
        ]

    def normalised(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "retired_at": as_utc(r["retired_at"])} for r in rows]

    rows = normalised(query_rows(migrated_engine, "classifications_per_retired_subject"))
    assert rows == expected(None, 30)
    assert [r["saved_vs_fixed_limit"] for r in rows] == [26, 28, 26, 24]  # s1, orphan, s2, p1
    assert rows[1]["subject_set"] is None
    assert normalised(query_rows(migrated_engine, "classifications_per_retired_subject", fixed_limit=5)) == expected(
        None, 5
    )
    recent = normalised(query_rows(migrated_engine, "classifications_per_retired_subject", since="-2d"))
    assert recent == expected(world.ago(days=2), 30)
    assert len(recent) == 2
    iso = world.ago(days=4).isoformat()
    assert normalised(query_rows(migrated_engine, "classifications_per_retired_subject", since=iso)) == expected(
        world.ago(days=4), 30
    )


def _expected_activity(world: World, cutoff: datetime) -> list[dict[str, Any]]:
    window = world.classifications_since(cutoff)
    per: dict[str, list[Classification]] = defaultdict(list)
    for c in window:
        per[c.volunteer_key].append(c)
    ordered = sorted(per.items(), key=lambda item: (-len(item[1]), item[0]))
    return [
        {
            "volunteer_key": key,
            "user_name": VOLUNTEERS[key][1],
            "classifications": len(items),
            "first_seen": min(c.created_at for c in items),
            "last_seen": max(c.created_at for c in items),
            "share": pytest.approx(len(items) / len(window)),
        }
        for key, items in ordered
    ]


def _activity(engine: Engine, **params: object) -> list[dict[str, Any]]:
    return [
        {**r, "first_seen": as_utc(r["first_seen"]), "last_seen": as_utc(r["last_seen"])}
        for r in query_rows(engine, "volunteer_activity", **params)
    ]


def test_volunteer_activity(migrated_engine: Engine, world: World) -> None:
    rows = _activity(migrated_engine)
    assert rows == _expected_activity(world, world.ago(days=30))
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert {r["volunteer_key"]: r["user_name"] for r in rows if r["volunteer_key"].startswith("anon:")} == {
        "anon:t1": None,
        "anon:t2": None,
    }
    top = _activity(migrated_engine, top=2)
    assert top == _expected_activity(world, world.ago(days=30))[:2]
    assert top[0]["volunteer_key"] == "user:11"


def test_relative_since_filters_rows(migrated_engine: Engine, world: World) -> None:
    everything = _activity(migrated_engine, since="-60d")
    recent = _activity(migrated_engine, since="-2d")
    assert recent == _expected_activity(world, world.ago(days=2))
    assert sum(r["classifications"] for r in everything) == len(world.classifications)
    assert sum(r["classifications"] for r in recent) == len(world.classifications_since(world.ago(days=2)))
    assert sum(r["classifications"] for r in recent) < sum(r["classifications"] for r in everything)
    assert query_rows(migrated_engine, "volunteer_activity", since="now") == []


def test_volunteer_effort_gini(migrated_engine: Engine, world: World) -> None:
    for since, cutoff in (("-30d", world.ago(days=30)), ("-2d", world.ago(days=2))):
        counts = list(Counter(c.volunteer_key for c in world.classifications_since(cutoff)).values())
        (row,) = query_rows(migrated_engine, "volunteer_effort_gini", since=since)
        assert row["volunteers"] == len(counts)
        assert row["classifications"] == sum(counts)
        assert row["gini"] == pytest.approx(gini(counts))
        assert 0 < row["gini"] < 1
    (none,) = query_rows(migrated_engine, "volunteer_effort_gini", since="now")
    assert none == {"volunteers": 0, "classifications": 0, "gini": None}


def test_volunteer_effort_gini_of_one_volunteer_is_zero(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session:
        project = add_project(session)
        workflow = add_workflow(session, project, 2001, WorkflowRole.SEGMENTATION, "Trace")
        for hours in (1, 2, 3):
            add_classification(session, workflow, None, "user:11", datetime.now(UTC) - timedelta(hours=hours))
        session.commit()
    (row,) = query_rows(migrated_engine, "volunteer_effort_gini")
    assert row == {"volunteers": 1, "classifications": 3, "gini": pytest.approx(0.0, abs=1e-12)}


def test_training_runs(migrated_engine: Engine, world: World) -> None:
    produced: dict[int | None, str] = {m.training_run_id: m.version for m in world.model_versions}
    produced.pop(None, None)
    ordered = sorted(world.training_runs, key=lambda r: (r.queued_at, r.id), reverse=True)
    rows = query_rows(migrated_engine, "training_runs")
    assert [r["id"] for r in rows] == [r.id for r in ordered]
    for row, run in zip(rows, ordered, strict=True):
        assert row["status"] == run.status.value
        assert row["trigger"] == run.trigger.value
        assert (row["requested_by"], row["reason"], row["preset"]) == (run.requested_by, run.reason, run.preset)
        assert (row["worker_host"], row["error"]) == (run.worker_host, run.error)
        for column in ("queued_at", "started_at", "finished_at", "heartbeat_at"):
            assert as_utc(row[column]) == getattr(run, column), column
        assert row["model_version"] == produced.get(run.id)
    assert [r["model_version"] for r in rows] == [None, "v2", None, "v1"]
    failed = query_rows(migrated_engine, "training_runs", status="failed")
    assert [(r["id"], r["error"]) for r in failed] == [(world.training_runs[1].id, "CUDA OOM")]
    assert query_rows(migrated_engine, "training_runs", status="cancelled") == []


def test_model_versions(migrated_engine: Engine, world: World) -> None:
    rows = query_rows(migrated_engine, "model_versions")
    ordered = sorted(world.model_versions, key=lambda m: (m.created_at, m.id), reverse=True)
    assert [r["version"] for r in rows] == [m.version for m in ordered] == ["v2", "v1", "v0"]
    for row, model in zip(rows, ordered, strict=True):
        metrics = world.metrics[model.version]
        test, validation = DataSplit.TEST, DataSplit.VALIDATION
        expected_metrics = {
            "validation_f_measure": metrics.get((validation, MetricReference.CONSENSUS, "f_measure")),
            "validation_ahd_nm": metrics.get((validation, MetricReference.CONSENSUS, "ahd_nm")),
            "consensus_f_measure_truth": metrics.get((test, MetricReference.TRUTH, "consensus_f_measure")),
            "f_measure_consensus": metrics.get((test, MetricReference.CONSENSUS, "f_measure")),
            "f_measure_truth": metrics.get((test, MetricReference.TRUTH, "f_measure")),
            "ahd_nm_consensus": metrics.get((test, MetricReference.CONSENSUS, "ahd_nm")),
            "ahd_nm_truth": metrics.get((test, MetricReference.TRUTH, "ahd_nm")),
        }
        for column, value in expected_metrics.items():
            assert row[column] == (None if value is None else pytest.approx(value)), (model.version, column)
        corrected = [d for d in world.dice[model.version] if d is not None]
        assert row["corrected_slices"] == len(corrected)
        assert row["mean_correction_dice"] == (pytest.approx(float(np.mean(corrected))) if corrected else None)
        assert bool(row["promoted"]) is model.promoted
        assert as_utc(row["promoted_at"]) == model.promoted_at
        assert as_utc(row["created_at"]) == model.created_at
        assert (row["preset"], row["architecture"], row["training_run_id"]) == (
            model.preset,
            model.architecture,
            model.training_run_id,
        )
    v1 = rows[1]
    assert (v1["f_measure_consensus"], v1["f_measure_truth"]) == (pytest.approx(0.81), pytest.approx(0.78))
    assert (v1["ahd_nm_consensus"], v1["ahd_nm_truth"]) == (pytest.approx(42.0), pytest.approx(55.5))
    assert (v1["validation_f_measure"], v1["consensus_f_measure_truth"]) == (pytest.approx(0.95), pytest.approx(0.91))
    assert rows[0]["validation_ahd_nm"] is None  # v2 has a validation AHD against the truth only
    assert v1["mean_correction_dice"] == pytest.approx(0.85)
    assert rows[0]["mean_correction_dice"] == pytest.approx(0.6)


def test_job_status(migrated_engine: Engine, world: World) -> None:
    def expected(cutoff: datetime) -> list[dict[str, Any]]:
        by_job: dict[str, list[JobRun]] = defaultdict(list)
        for run in world.job_runs:
            by_job[run.job].append(run)
        result = []
        for job, runs in sorted(by_job.items()):
            latest = max(runs, key=lambda r: (r.started_at, r.id))
            window = [r for r in runs if r.started_at >= cutoff]
            finished = [r.finished_at for r in runs if r.finished_at is not None]
            result.append(
                {
                    "job": job,
                    "last_started_at": max(r.started_at for r in runs),
                    "last_finished_at": max(finished) if finished else None,
                    "last_status": latest.status.value,
                    "runs": len(window),
                    "failures": sum(1 for r in window if r.status == JobStatus.FAILED),
                }
            )
        return result

    def normalised(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**r, "last_started_at": as_utc(r["last_started_at"]), "last_finished_at": as_utc(r["last_finished_at"])}
            for r in rows
        ]

    rows = normalised(query_rows(migrated_engine, "job_status"))
    assert rows == expected(world.ago(days=1))
    summary = {r["job"]: (r["last_status"], r["runs"], r["failures"]) for r in rows}
    assert summary == {"aggregate": ("running", 2, 0), "ingest": ("ok", 2, 1), "train_check": ("failed", 0, 0)}
    assert normalised(query_rows(migrated_engine, "job_status", since="-7d")) == expected(world.ago(days=7))


def test_cursor_lag(migrated_engine: Engine, world: World) -> None:
    cursors: dict[int | None, SyncCursor] = {c.workflow_id: c for c in world.cursors}
    rows = query_rows(migrated_engine, "cursor_lag")
    assert [r["workflow_panoptes_id"] for r in rows] == [2001, 2002, 2003]
    for row, workflow in zip(rows, world.workflows, strict=True):
        stored = [c for c in world.classifications if c.workflow_id == workflow.id]
        cursor = cursors.get(workflow.id)
        assert row["workflow"] == workflow.display_name
        assert row["role"] == workflow.role.value
        assert row["cursor_last_classification_id"] == (cursor.last_classification_id if cursor else None)
        assert as_utc(row["cursor_updated_at"]) == (cursor.updated_at if cursor else None)
        assert row["newest_classification_id"] == (max(c.panoptes_id for c in stored) if stored else None)
        assert as_utc(row["newest_classification_at"]) == (max(c.created_at for c in stored) if stored else None)
        assert row["classifications"] == len(stored)
    seg = rows[0]
    assert seg["newest_classification_id"] > seg["cursor_last_classification_id"]
    assert rows[2]["classifications"] == 0


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({}, lambda e, cutoff: True),
        ({"level": "warning"}, lambda e, cutoff: e.level == EventLevel.WARNING),
        ({"kind": "upload"}, lambda e, cutoff: e.kind == "upload"),
        ({"level": "info", "kind": "ingest"}, lambda e, cutoff: e.level == EventLevel.INFO and e.kind == "ingest"),
        ({"since": "-2d"}, lambda e, cutoff: e.created_at >= cutoff),
        ({"since": "-30d"}, lambda e, cutoff: True),
    ],
)
def test_recent_events(
    migrated_engine: Engine, world: World, params: dict[str, str], keep: Callable[[Event, datetime], bool]
) -> None:
    cutoff = world.ago(days=int(params.get("since", "-7d")[1:-1]))
    expected = sorted(
        (e for e in world.events if e.created_at >= cutoff and keep(e, cutoff)),
        key=lambda e: (e.created_at, e.id),
        reverse=True,
    )
    rows = query_rows(migrated_engine, "recent_events", **params)
    assert [r["id"] for r in rows] == [e.id for e in expected]
    for row, event in zip(rows, expected, strict=True):
        assert (row["level"], row["kind"], row["message"]) == (event.level.value, event.kind, event.message)
        assert row["subject_id"] == event.subject_id
        assert as_utc(row["created_at"]) == event.created_at
        assert json.loads(row["payload"]) == event.payload


def test_recent_events_top(migrated_engine: Engine, world: World) -> None:
    rows = query_rows(migrated_engine, "recent_events", top=2)
    newest = sorted(world.events, key=lambda e: (e.created_at, e.id), reverse=True)[:2]
    assert [r["id"] for r in rows] == [e.id for e in newest]


def test_recent_events_skip_pages_through_the_log(migrated_engine: Engine, world: World) -> None:
    everything = query_rows(migrated_engine, "recent_events")
    assert len(everything) == 5  # the week's events
    pages = [query_rows(migrated_engine, "recent_events", top=2, skip=skip) for skip in (0, 2, 4)]
    assert [len(page) for page in pages] == [2, 2, 1]
    ids = [r["id"] for page in pages for r in page]
    assert ids == [r["id"] for r in everything]
    assert len(set(ids)) == len(ids)  # no event on two pages
    assert query_rows(migrated_engine, "recent_events", skip=5) == []
    assert query_rows(migrated_engine, "recent_events", skip=0) == everything
    assert query_rows(migrated_engine, "recent_events", skip="") == everything  # empty: the default, 0
    # paging applies after the filters
    ingest = [
        e.id for e in sorted(world.events, key=lambda e: (e.created_at, e.id), reverse=True) if e.kind == "ingest"
    ]
    assert [r["id"] for r in query_rows(migrated_engine, "recent_events", kind="ingest", since="-30d", skip=1)] == (
        ingest[1:]
    )


def test_training_runs_top(migrated_engine: Engine, world: World) -> None:
    ordered = [r.id for r in sorted(world.training_runs, key=lambda r: (r.queued_at, r.id), reverse=True)]
    assert [r["id"] for r in query_rows(migrated_engine, "training_runs", top=2)] == ordered[:2]
    assert [r["id"] for r in query_rows(migrated_engine, "training_runs", top=1)] == ordered[:1]
    assert query_rows(migrated_engine, "training_runs", top=0) == []
    assert len(query_rows(migrated_engine, "training_runs", top="")) == len(world.training_runs)
    succeeded = [r.id for r in sorted(world.training_runs, key=lambda r: (r.queued_at, r.id), reverse=True)
                 if r.status == RunStatus.SUCCEEDED]  # fmt: skip
    assert [r["id"] for r in query_rows(migrated_engine, "training_runs", status="succeeded", top=1)] == succeeded[:1]


def test_event_kinds(migrated_engine: Engine, world: World) -> None:
    by_kind: dict[str, list[Event]] = defaultdict(list)
    for event in world.events:
        by_kind[event.kind].append(event)
    expected = [
        {"kind": kind, "events": len(events), "newest": max(e.created_at for e in events)}
        for kind, events in sorted(by_kind.items())
    ]
    rows = [{**r, "newest": as_utc(r["newest"])} for r in query_rows(migrated_engine, "event_kinds")]
    assert rows == expected
    # the 10-day-old upload error counts too: this query has no window
    assert [(r["kind"], r["events"]) for r in rows] == [("ingest", 3), ("parse", 1), ("upload", 2)]
    assert rows[0]["newest"] == world.events[0].created_at


def _expected_reliability(
    world: World,
    min_slices: int = 3,
    flag_below: float = 0.5,
    prior_dice: float = 0.8,
    prior_slices: float = 2.0,
) -> list[dict[str, Any]]:
    current = {c.id for c in world.consensus if c.is_current}
    dice: dict[str, list[float]] = defaultdict(list)
    for agreement in world.agreements:
        if agreement.consensus_result_id in current:
            dice[agreement.volunteer_key].append(agreement.dice)
    rows: list[dict[str, Any]] = []
    for key, values in dice.items():
        shrunk = (sum(values) + prior_dice * prior_slices) / (len(values) + prior_slices)
        rows.append(
            {
                "volunteer_key": key,
                "user_name": world.newest_user_name(key),
                "slices": len(values),
                "mean_dice": float(np.mean(values)),
                "shrunk_dice": shrunk,
                "flagged": int(len(values) >= min_slices and shrunk < flag_below),
            }
        )
    rows.sort(key=lambda r: (-r["flagged"], r["shrunk_dice"], r["volunteer_key"]))
    return [
        {**r, "mean_dice": pytest.approx(r["mean_dice"]), "shrunk_dice": pytest.approx(r["shrunk_dice"])} for r in rows
    ]


def test_volunteer_reliability(migrated_engine: Engine, world: World) -> None:
    rows = query_rows(migrated_engine, "volunteer_reliability")
    assert rows == _expected_reliability(world)
    # Spelled out: only user:13 is flagged (3 current slices, (0.6 + 1.6) / 5 = 0.44); counting their
    # replaced consensus too would give (3.51 + 1.6) / 8 = 0.64 and no flag. anon:t2 is as poor but
    # seen on 2 slices only. user:98 drew only on replaced consensus: not listed.
    assert [(r["volunteer_key"], r["flagged"]) for r in rows] == [
        ("user:13", 1),
        ("anon:t2", 0),
        ("user:12", 0),
        ("user:99", 0),
        ("anon:t1", 0),
        ("user:14", 0),
        ("user:11", 0),
    ]
    user13 = rows[0]
    assert (user13["slices"], user13["mean_dice"], user13["shrunk_dice"]) == (
        3,
        pytest.approx(0.2),
        pytest.approx(0.44),
    )
    names = {r["volunteer_key"]: r["user_name"] for r in rows}
    assert names == {
        "user:11": "alice",
        "user:12": "bob",
        "user:13": "carol",
        "user:14": "mid",  # newest non-empty name, not MAX or MIN of them
        "user:99": None,  # never classified anything we hold
        "anon:t1": None,
        "anon:t2": None,
    }
    assert rows[-1] == {
        "volunteer_key": "user:11",
        "user_name": "alice",
        "slices": 5,
        "mean_dice": pytest.approx(0.9),
        "shrunk_dice": pytest.approx((4.5 + 1.6) / 7),
        "flagged": 0,
    }


@pytest.mark.parametrize(
    "params",
    [
        {"min_slices": 2},
        {"min_slices": 1, "flag_below": 0.6},
        {"flag_below": 0.3},
        {"prior_slices": 0},
        {"prior_dice": 0.2, "prior_slices": 4},
        {"prior_dice": 0.2, "prior_slices": 4, "min_slices": 1},
    ],
)
def test_volunteer_reliability_parameters(migrated_engine: Engine, world: World, params: dict[str, Any]) -> None:
    expected = _expected_reliability(world, **params)
    assert query_rows(migrated_engine, "volunteer_reliability", **params) == expected
    flagged = [r for r in expected if r["flagged"]]
    assert query_rows(migrated_engine, "volunteer_reliability", flagged_only=1, **params) == flagged
    assert query_rows(migrated_engine, "volunteer_reliability", top=2, **params) == expected[:2]


def test_volunteer_reliability_flagged_only_and_top(migrated_engine: Engine, world: World) -> None:
    flagged = query_rows(migrated_engine, "volunteer_reliability", flagged_only=1)
    assert [r["volunteer_key"] for r in flagged] == ["user:13"]
    assert query_rows(migrated_engine, "volunteer_reliability", flagged_only=0) == query_rows(
        migrated_engine, "volunteer_reliability"
    )
    wide = query_rows(migrated_engine, "volunteer_reliability", flagged_only=1, min_slices=1, flag_below=0.6)
    # flagged, least reliable first: user:13 0.44, anon:t2 0.475, user:12 0.53, user:99 0.56
    assert [r["volunteer_key"] for r in wide] == ["user:13", "anon:t2", "user:12", "user:99"]
    assert all(r["flagged"] == 1 for r in wide)
    top = query_rows(migrated_engine, "volunteer_reliability", top=3)
    assert [r["volunteer_key"] for r in top] == ["user:13", "anon:t2", "user:12"]
    assert query_rows(migrated_engine, "volunteer_reliability", top=0) == []
    assert query_rows(migrated_engine, "volunteer_reliability", flagged_only=1, flag_below=0.1) == []


def test_volunteer_reliability_ignores_replaced_consensus(migrated_engine: Engine, world: World) -> None:
    """Replacing a consensus (is_current false) takes its agreements out of every volunteer's figures."""
    c_s2 = next(c for c in world.consensus if c.is_current and c.slice_index == 11)
    with Session(migrated_engine) as session:
        stored = session.get(ConsensusResult, c_s2.id)
        assert stored is not None
        stored.is_current = False
        session.commit()
    c_s2.is_current = False
    rows = query_rows(migrated_engine, "volunteer_reliability")
    assert rows == _expected_reliability(world)
    by_key = {r["volunteer_key"]: r for r in rows}
    assert (by_key["user:13"]["slices"], by_key["user:13"]["flagged"]) == (2, 0)
    assert by_key["anon:t2"]["slices"] == 1
    assert by_key["user:11"]["slices"] == 4


def _expected_slices(world: World, roi: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    roi_names = {r.id: r.name for r in world.rois}
    subjects = {s.id: s for s in world.subjects}
    current = [
        c
        for c in world.consensus
        if c.is_current and (roi is None or roi_names[c.roi_id] == roi) and (kind is None or c.kind.value == kind)
    ]
    current.sort(key=lambda c: (c.created_at, c.id), reverse=True)
    rows = []
    for c in current:
        subject = subjects.get(c.subject_id)
        rows.append(
            {
                "id": c.id,
                "roi": roi_names[c.roi_id],
                "slice_index": c.slice_index,
                "kind": c.kind.value,
                "method": c.method,
                "subject_panoptes_id": subject.panoptes_id if subject else None,
                "classifications": c.n_classifications,
                "drawers": c.n_volunteers,
                "area_px": c.area_px,
                "stability": None if c.stability is None else pytest.approx(c.stability),
                "disagreeing": sum(1 for a in world.agreements_of(c) if a.dice < 0.5),
                "created_at": c.created_at,
            }
        )
    return rows


def _slices(engine: Engine, **params: object) -> list[dict[str, Any]]:
    return [{**r, "created_at": as_utc(r["created_at"])} for r in query_rows(engine, "consensus_slices", **params)]


def test_consensus_slices(migrated_engine: Engine, world: World) -> None:
    rows = _slices(migrated_engine)
    assert rows == _expected_slices(world)
    assert len(rows) == 7  # the current ones only
    current_ids = {c.id for c in world.consensus if c.is_current}
    assert {r["id"] for r in rows} == current_ids
    # newest first; c_s2 and c_s3 were made at the same moment: the later id first
    c_s2, c_s3 = (next(c for c in world.consensus if c.is_current and c.slice_index == z) for z in (11, 12))
    assert [r["id"] for r in rows[2:4]] == [c_s3.id, c_s2.id]
    disagreeing = {(r["roi"], r["slice_index"], r["kind"]): r["disagreeing"] for r in rows}
    assert disagreeing == {
        ("nucleus-1", 10, "volunteer"): 1,  # 0.45; 0.5 itself is not below a half
        ("nucleus-1", 11, "volunteer"): 2,
        ("nucleus-1", 12, "volunteer"): 2,
        ("nucleus-1", 13, "volunteer"): 0,  # nobody's agreement stored
        ("nucleus-1", 20, "corrected"): 1,
        ("nucleus-1", 10, "corrected"): 1,
        ("nucleus-2", 5, "volunteer"): 2,
    }
    assert [r["subject_panoptes_id"] is None for r in rows].count(True) == 2


@pytest.mark.parametrize(
    "params",
    [
        {"roi": "nucleus-1"},
        {"roi": "nucleus-2"},
        {"roi": "no-such-roi"},
        {"kind": "volunteer"},
        {"kind": "corrected"},
        {"roi": "nucleus-2", "kind": "corrected"},
        {"roi": "nucleus-1", "kind": "volunteer"},
    ],
)
def test_consensus_slices_filters(migrated_engine: Engine, world: World, params: dict[str, str]) -> None:
    assert _slices(migrated_engine, **params) == _expected_slices(world, params.get("roi"), params.get("kind"))


def test_consensus_slices_filter_figures(migrated_engine: Engine, world: World) -> None:
    assert [r["slice_index"] for r in _slices(migrated_engine, kind="corrected")] == [20, 10]
    assert [r["slice_index"] for r in _slices(migrated_engine, roi="nucleus-2")] == [5]
    assert _slices(migrated_engine, roi="nucleus-2", kind="corrected") == []
    assert _slices(migrated_engine, roi="", kind="") == _slices(migrated_engine)


def test_consensus_slices_paging(migrated_engine: Engine, world: World) -> None:
    everything = _slices(migrated_engine)
    pages = [_slices(migrated_engine, top=3, skip=skip) for skip in (0, 3, 6)]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [r for page in pages for r in page] == everything
    ids = [r["id"] for page in pages for r in page]
    assert len(set(ids)) == len(ids)
    assert _slices(migrated_engine, skip=7) == []
    assert _slices(migrated_engine, top=2, skip=1) == everything[1:3]
    volunteer = _expected_slices(world, kind="volunteer")
    assert _slices(migrated_engine, kind="volunteer", top=2, skip=2) == volunteer[2:4]


def test_consensus_agreement(migrated_engine: Engine, world: World) -> None:
    for consensus in world.consensus:
        expected = [
            {
                "volunteer_key": a.volunteer_key,
                "user_name": world.newest_user_name(a.volunteer_key),
                "dice": pytest.approx(a.dice),
                "classification_id": a.classification_id,
            }
            for a in sorted(world.agreements_of(consensus), key=lambda a: (a.dice, a.volunteer_key))
        ]
        assert query_rows(migrated_engine, "consensus_agreement", consensus_id=consensus.id) == expected
    # spelled out once: the slice where two volunteers agree equally (0.2): by volunteer key
    c_s3 = next(c for c in world.consensus if c.is_current and c.slice_index == 12)
    rows = query_rows(migrated_engine, "consensus_agreement", consensus_id=c_s3.id)
    assert [(r["volunteer_key"], r["user_name"], r["dice"]) for r in rows] == [
        ("anon:t2", None, pytest.approx(0.2)),
        ("user:12", "bob", pytest.approx(0.2)),
        ("user:11", "alice", pytest.approx(0.95)),
    ]
    linked = {r["volunteer_key"]: r["classification_id"] for r in rows}
    s3_classifications = {c.volunteer_key: c.id for c in world.classifications_of(world.subjects[2])}
    assert linked == {
        "anon:t2": None,
        "user:12": s3_classifications["user:12"],
        "user:11": s3_classifications["user:11"],
    }
    c_s4 = next(c for c in world.consensus if c.slice_index == 13)
    assert query_rows(migrated_engine, "consensus_agreement", consensus_id=c_s4.id) == []
    assert query_rows(migrated_engine, "consensus_agreement", consensus_id=10**9) == []


def _expected_effort(world: World, cutoff: datetime | None) -> list[tuple[str | None, int, int]]:
    set_names = {s.id: s.display_name for s in world.subject_sets}
    retired = [
        s
        for s in world.subjects
        if s.retirement_state == RetirementState.RETIRED
        and (cutoff is None or (s.retired_at is not None and s.retired_at >= cutoff))
    ]
    histogram = Counter((set_names.get(s.subject_set_id), len(world.classifications_of(s))) for s in retired)
    return [(name, n, subjects) for (name, n), subjects in histogram.items()]


def _effort(engine: Engine, **params: object) -> list[tuple[str | None, int, int]]:
    return [
        (r["subject_set"], r["classifications"], r["subjects"])
        for r in query_rows(engine, "retirement_effort", **params)
    ]


def test_retirement_effort(migrated_engine: Engine, world: World) -> None:
    rows = _effort(migrated_engine)
    assert sorted(rows, key=str) == sorted(_expected_effort(world, None), key=str)
    # s1 and s2 took 4 each (s2's fourth not linked by subject_id yet: matched by Panoptes id),
    # p1 took 6, the subject outside every set 2. Retiring and active subjects are not counted.
    assert sorted(rows, key=str) == sorted([("raw slices", 4, 2), ("predictions v1", 6, 1), (None, 2, 1)], key=str)
    named = [r for r in rows if r[0] is not None]
    assert named == sorted(named)  # by set, then by number of classifications

    recent = _effort(migrated_engine, since="-2d")
    assert sorted(recent, key=str) == sorted(_expected_effort(world, world.ago(days=2)), key=str)
    assert sorted(recent, key=str) == sorted([("raw slices", 4, 1), (None, 2, 1)], key=str)
    iso = world.ago(days=4).isoformat()
    assert sorted(_effort(migrated_engine, since=iso), key=str) == sorted(
        _expected_effort(world, world.ago(days=4)), key=str
    )
    assert _effort(migrated_engine, since="now") == []
    assert _effort(migrated_engine, since="") == rows


def test_retirement_effort_histogram_bins(migrated_engine: Engine, world: World) -> None:
    """Subjects of one set with different counts make one row per count, in ascending order."""
    raw = world.subject_sets[0]
    with Session(migrated_engine) as session:
        s5 = session.get(Subject, world.subjects[4].id)
        assert s5 is not None and s5.subject_set_id == raw.id
        s5.retirement_state = RetirementState.RETIRED
        s5.retired_at = world.ago(hours=2)
        session.commit()
    rows = [r for r in _effort(migrated_engine) if r[0] == "raw slices"]
    assert rows == [("raw slices", 0, 1), ("raw slices", 4, 2)]  # s5 was never classified


def test_retirement_effort_orders_alike_on_both_backends(migrated_engine: Engine, world: World) -> None:
    """Subjects outside every set come last whatever the database (SQLite sorts NULL first,
    PostgreSQL last: the query says where they go)."""
    rows = _effort(migrated_engine)
    assert rows == [("predictions v1", 6, 1), ("raw slices", 4, 2), (None, 2, 1)]


# --- parameter handling --------------------------------------------------------------------------


def test_unknown_parameter_is_refused(migrated_engine: Engine) -> None:
    with pytest.raises(QueryError, match=r"unknown parameter 'bogus'.*since, top"):
        run_query(migrated_engine, get_query("volunteer_activity"), {"bogus": "1"})


@pytest.mark.parametrize(
    ("name", "param", "value"),
    [
        ("volunteer_activity", "since", "yesterdayish"),
        ("volunteer_activity", "top", "abc"),
        ("recent_events", "top", "1.5"),
        ("classifications_per_retired_subject", "fixed_limit", "thirty"),
        ("job_status", "since", "-1w"),
    ],
)
def test_bad_parameter_value_is_refused(migrated_engine: Engine, name: str, param: str, value: str) -> None:
    with pytest.raises(QueryError, match=rf"{name}: parameter {param} = '{value}' is not a valid"):
        run_query(migrated_engine, QUERIES[name], {param: value})


def test_empty_optional_parameter_means_no_filter(migrated_engine: Engine, world: World) -> None:
    everything = query_rows(migrated_engine, "training_runs")
    assert query_rows(migrated_engine, "training_runs", status="") == everything
    assert len(everything) == len(world.training_runs)


def test_timestamps_print_alike_on_both_backends(migrated_engine: Engine, world: World) -> None:
    """SQLite's bare timestamp text is shown as ISO 8601 UTC, as PostgreSQL's is."""
    rows = query_rows(migrated_engine, "recent_events")
    assert rows
    for row in rows:
        assert isinstance(row["created_at"], str)
        assert row["created_at"].endswith("+00:00"), row["created_at"]
        assert "T" in row["created_at"]


def test_empty_value_falls_back_to_the_default(migrated_engine: Engine, world: World) -> None:
    """`top=` (as a form or a shell might send it) means the default, never LIMIT NULL."""
    assert query_rows(migrated_engine, "recent_events", top="") == query_rows(migrated_engine, "recent_events")
    assert query_rows(migrated_engine, "volunteer_activity", since="") == query_rows(
        migrated_engine, "volunteer_activity"
    )
