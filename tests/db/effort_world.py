"""A small loop history for the volunteer-effort figures: traced and corrected subjects, settled or not,
of two published model versions (and one never published), classifications with good, missing and bad
``started_at`` / ``finished_at``, correction Dice, and monitoring slices (traced as well as corrected) with
the Dice between their two consensus; the monitoring subjects' tracings are charged to the round they
monitor, not to round 0.

The expected figures below are worked out by hand from these rows, not by the code under test.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from etchacell_loop.db.models import (
    Classification,
    ClassificationSource,
    ModelVersion,
    PredictionBatch,
    RetirementState,
    Roi,
    RunStatus,
    SlicePrediction,
    Subject,
    SubjectKind,
    Workflow,
    WorkflowRole,
)
from tests.factories import add_project, add_roi, add_workflow, row_id

START = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
RETIRED, RETIRING, ACTIVE = RetirementState.RETIRED, RetirementState.RETIRING, RetirementState.ACTIVE

# metadata written by a browser, and the ways it goes wrong
MISSING = None
UNPARSABLE = '{"started_at": "2026-11-02T09:30:00.000Z", "finished_at": '
NEGATIVE = json.dumps({"started_at": "2026-11-02T09:31:00.000Z", "finished_at": "2026-11-02T09:30:00.000Z"})
TOO_LONG = json.dumps({"started_at": "2026-11-02T07:00:00.000Z", "finished_at": "2026-11-02T09:30:00.000Z"})
NOT_ISO = json.dumps({"started_at": "Monday morning", "finished_at": "2026-11-02T09:30:00.000Z"})


def took(seconds: float) -> str:
    """Metadata as the front end posts it, for a classification of ``seconds``."""
    finished = START + timedelta(seconds=seconds)
    return json.dumps(
        {
            "source": "api",
            "started_at": START.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "finished_at": finished.strftime("%Y-%m-%dT%H:%M:%S.") + f"{finished.microsecond // 1000:03d}Z",
            "user_language": "en",
        }
    )


EXPECTED: dict[int, dict[str, Any]] = {
    0: {  # 3 settled traced slices; 30 + 50 + 40 s known, 3 unknown: 40 s each, 2 per slice
        "round": 0,
        "task": "tracing",
        "model_version": None,
        "settled_slices": 3,
        "classifications": 6,
        "classifications_per_slice": 2.0,
        "volunteer_seconds": 120.0,
        "seconds_per_slice": 80.0,
        "seconds_per_classification": 40.0,
        "untimed": 3,
        "untimed_why": "missing 1, negative 1, unparsable 1",
        "saved_vs_tracing": None,
        "median_correction_dice": None,
        "monitored_slices": 0,
        "median_monitoring_dice": None,
        "monitoring_classifications": 0,  # the settled monitoring subjects are not tracing's
    },
    # v0001: 2 settled slices. Corrections: 10 + 20 + 12 s known, one too long: 4 at 14 s = 56 s. Slice 10's
    # monitoring tracing: 20 s known, one missing: 2 at 20 s = 40 s (not at the round's mean, 15.5 s).
    1: {
        "round": 1,
        "task": "correction",
        "model_version": "v0001-5eed0001",
        "settled_slices": 2,
        "classifications": 6,
        "classifications_per_slice": 3.0,
        "volunteer_seconds": 62.0,
        "seconds_per_slice": 48.0,  # (56 + 40) / 2
        "seconds_per_classification": 15.5,
        "untimed": 2,
        "untimed_why": "missing 1, too long 1",
        "saved_vs_tracing": 0.4,  # 1 - 48 / 80
        "median_correction_dice": 0.7,  # 0.6 and 0.8; the unsettled slice's 0.1 is not counted
        "monitored_slices": 1,
        "median_monitoring_dice": 0.75,  # the unsettled slice's 0.2 is not counted
        "monitoring_classifications": 2,
    },
    2: {  # v0003 (v0002 sent nothing: no round): 1 slice, 3 x 8 s (one not yet linked by id)
        "round": 2,
        "task": "correction",
        "model_version": "v0003-5eed0003",
        "settled_slices": 1,
        "classifications": 3,
        "classifications_per_slice": 3.0,
        "volunteer_seconds": 24.0,
        "seconds_per_slice": 24.0,
        "seconds_per_classification": 8.0,
        "untimed": 0,
        "untimed_why": None,
        "saved_vs_tracing": 0.7,  # 1 - 24 / 80
        "median_correction_dice": 0.9,
        "monitored_slices": 1,
        "median_monitoring_dice": 0.95,
        "monitoring_classifications": 0,  # its monitoring subject has not settled
    },
}


class _Writer:
    """Adds the rows, numbering Panoptes ids and upload keys."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.ids = itertools.count(900_000)
        project = add_project(session)
        self.tracing = add_workflow(session, project, 31, WorkflowRole.SEGMENTATION, "trace")
        self.correcting = add_workflow(session, project, 32, WorkflowRole.CORRECTION, "correct")
        self.roi: Roi = add_roi(session)

    def subject(self, z: int, state: RetirementState, version: ModelVersion | None = None) -> Subject:
        subject = Subject(
            panoptes_id=next(self.ids),
            upload_key=f"effort-{next(self.ids)}",
            roi_id=row_id(self.roi),
            slice_index=z,
            frames=[z],
            target_frame=0,
            kind=SubjectKind.RAW if version is None else SubjectKind.PREDICTION,
            model_version_id=None if version is None else row_id(version),
            retirement_state=state,
        )
        self.session.add(subject)
        self.session.flush()
        return subject

    def classifications(self, subject: Subject, *metadata: str | None, linked: bool = True) -> None:
        workflow = self.tracing if subject.kind is SubjectKind.RAW else self.correcting
        for k, text in enumerate(metadata):
            self.session.add(
                self.classification(workflow, subject.panoptes_id, subject.id if linked else None, text, k)
            )
        self.session.flush()

    def classification(
        self, workflow: Workflow, subject_panoptes_id: int | None, subject_id: int | None, text: str | None, k: int
    ) -> Classification:
        assert subject_panoptes_id is not None
        return Classification(
            panoptes_id=next(self.ids),
            workflow_id=row_id(workflow),
            subject_panoptes_id=subject_panoptes_id,
            subject_id=subject_id,
            user_id=100 + k,
            volunteer_key=f"user:{100 + k}",
            created_at=START,
            source=ClassificationSource.API,
            raw_annotations="[]",
            raw_metadata=text,
        )

    def version(self, name: str) -> ModelVersion:
        version = ModelVersion(
            version=name, artifact_uri=f"file:///m/{name}", preset="small", architecture="unet", data_hash="0" * 64
        )
        self.session.add(version)
        self.session.flush()
        return version

    def predicted(
        self,
        version: ModelVersion,
        subject: Subject,
        dice: float,
        monitoring: float | None,
        traced: Subject | None = None,
    ) -> None:
        """The slice's prediction, sent as ``subject``; ``traced``: its monitoring subject (traced from scratch)."""
        batch = PredictionBatch(model_version_id=row_id(version), roi_id=row_id(self.roi), status=RunStatus.SUCCEEDED)
        self.session.add(batch)
        self.session.flush()
        self.session.add(
            SlicePrediction(
                batch_id=row_id(batch),
                roi_id=row_id(self.roi),
                slice_index=subject.slice_index,
                uncertainty=0.2,
                envelope_area_px=900,
                subject_id=subject.id,
                correction_dice=dice,
                monitoring_dice=monitoring,
                monitoring_subject_id=None if traced is None else traced.id,
            )
        )
        self.session.flush()


def build_effort_world(engine: Engine) -> None:
    """The rows whose figures :data:`EXPECTED` states."""
    with Session(engine) as session:
        w = _Writer(session)
        w.classifications(w.subject(0, RETIRED), took(30), took(50), MISSING)
        w.classifications(w.subject(1, RETIRING), took(40), UNPARSABLE, NEGATIVE)
        w.subject(3, RETIRED)  # settled without a stored classification: a slice that cost nothing we know of
        w.classifications(w.subject(2, ACTIVE), took(100), NOT_ISO)  # not settled: not counted
        first, unpublished, second = (
            w.version("v0001-5eed0001"),
            w.version("v0002-5eed0002"),
            w.version("v0003-5eed0003"),
        )
        assert unpublished.id is not None
        for z, state, seconds, dice, monitoring, traced in (
            # a monitoring slice, traced from scratch too: both settled, the tracing charged to round 1
            (10, RETIRED, (took(10), took(20)), 0.6, 0.75, (RETIRED, took(20), MISSING)),
            (11, RETIRED, (took(12), TOO_LONG), 0.8, None, None),
            # corrections not settled: neither they nor the settled tracing of the slice count
            (12, ACTIVE, (took(5),), 0.1, 0.2, (RETIRED, took(70))),
        ):
            subject = w.subject(z, state, first)
            w.classifications(subject, *seconds)
            monitoring_subject = None
            if traced is not None:
                monitoring_subject = w.subject(z, traced[0])  # a raw subject, as the publish job uploads it
                w.classifications(monitoring_subject, *traced[1:])
            w.predicted(first, subject, dice, monitoring, monitoring_subject)
        later = w.subject(10, RETIRING, second)
        w.classifications(later, took(8), took(8))
        w.classifications(later, took(8), linked=False)  # matched by Panoptes subject id, as ingest stores it
        still_traced = w.subject(10, ACTIVE)  # its monitoring subject, still being traced: not counted yet
        w.classifications(still_traced, took(30))
        w.predicted(second, later, 0.9, 0.95, still_traced)
        session.add(w.classification(w.tracing, 123_456_789, None, took(99), 0))  # a subject we do not know
        session.commit()
