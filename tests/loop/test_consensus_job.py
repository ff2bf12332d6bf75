"""The aggregate job on a real database (SQLite and PostgreSQL): classifications stored as ingest
stores them, drawn by simulated volunteers around known nuclei with both front ends, become consensus
rows and images that match the nuclei; a rerun does nothing; bad data is recorded and passed over."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from etchacell_loop.config import Settings
from etchacell_loop.cria.consensus import dice
from etchacell_loop.db.models import (
    Classification,
    ClassificationSource,
    ConsensusKind,
    ConsensusResult,
    Event,
    ParseStatus,
    Subject,
    SubjectKind,
    VolunteerAgreement,
    WorkflowRole,
)
from etchacell_loop.loop.consensus_job import AggregateJobResult, run_aggregate, slice_updates
from etchacell_loop.simulation.crowd import Behaviour, SimStroke, make_volunteer, trace
from etchacell_loop.simulation.export import (
    ClassificationPlan,
    FrontEnd,
    WorkflowInfo,
    annotations_json,
    metadata_json,
    random_browser,
    record_stroke,
)
from etchacell_loop.simulation.shapes import SliceTruth
from etchacell_loop.stored_files import resolve_uri
from etchacell_loop.subject_metadata import SCALING_KEY, XY_RESOLUTION_KEY, layout_metadata
from tests.factories import add_project, add_roi, add_workflow, row_id
from tests.panoptes.support import session_factory

SHAPE = (120, 160)  # (height, width) of every frame, in subject pixels
N_SLICES = 9
OFFSETS = (-2, -1, 0, 1, 2)  # the slices each flipbook frame shows, relative to the subject's own
TARGET_FRAME = 2
WORKFLOW = WorkflowInfo()


def nucleus(z: int) -> NDArray[np.bool_]:
    """The truth of slice ``z``: a disc that moves right and shrinks through the stack, so each
    slice's consensus can only match its own slice."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    cx, radius = 50.0 + 7.0 * z, 34.0 - 1.5 * z
    return np.asarray((xx - cx) ** 2 + (yy - 60.0) ** 2 <= radius**2)


def truth(z: int) -> SliceTruth:
    blank = np.zeros(SHAPE, dtype=bool)
    return SliceTruth(z, nucleus(z), blank, ())


def frame_slices(z: int) -> list[int]:
    return [min(max(z + offset, 0), N_SLICES - 1) for offset in OFFSETS]


@dataclass
class Seeded:
    """A project, a tracing workflow and one ROI, with helpers to add subjects and classifications."""

    engine: Engine
    settings: Settings
    workflow_id: int
    roi_id: int
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    next_id: int = 187_000_000
    subjects: dict[int, int] = field(default_factory=dict)  # own slice → raw subject row id

    def add_subject(self, z: int, kind: SubjectKind = SubjectKind.RAW, metadata: dict[str, str] | None = None) -> int:
        frames = frame_slices(z)
        if metadata is None:
            metadata = {
                **layout_metadata("cell01", TARGET_FRAME, frames, 2.0),
                XY_RESOLUTION_KEY: "10",
                SCALING_KEY: "2",
            }
        with Session(self.engine) as session:
            subject = Subject(
                panoptes_id=31_400_000 + len(self.subjects) + (1000 if kind is SubjectKind.PREDICTION else 0),
                upload_key=f"hela/cell01/z{z:04d}-{kind.value}",
                roi_id=self.roi_id,
                slice_index=z,
                frames=frames,
                target_frame=TARGET_FRAME,
                kind=kind,
                panoptes_metadata=metadata,
            )
            session.add(subject)
            session.commit()
            if kind is SubjectKind.RAW:
                self.subjects[z] = row_id(subject)
            return row_id(subject)

    def classify(
        self,
        subject_id: int,
        behaviour: Behaviour = Behaviour.CAREFUL,
        front_end: FrontEnd = FrontEnd.FEM,
        target_frame: int = TARGET_FRAME,
        annotations: str | None = None,
    ) -> int:
        """A classification as ingest stores it: the front end's annotations and metadata, verbatim."""
        with Session(self.engine) as session:
            subject = session.get(Subject, subject_id)
            assert subject is not None and subject.panoptes_id is not None
            self.next_id += 1 + int(self.rng.integers(0, 20))
            key = f"v{self.next_id}"
            volunteer = make_volunteer(key, behaviour, self.rng, user_id=self.next_id % 100_000)
            strokes = trace(volunteer, [truth(z) for z in subject.frames], target_frame, self.rng)
            recorded = [r for r in (record_stroke(s, front_end) for s in strokes) if r is not None]
            plan = ClassificationPlan(
                self.next_id, subject.panoptes_id, volunteer, random_browser(self.rng), 1.7e9, 60.0, key, front_end
            )
            session.add(
                Classification(
                    panoptes_id=self.next_id,
                    workflow_id=self.workflow_id,
                    subject_panoptes_id=subject.panoptes_id,
                    subject_id=subject_id,
                    user_id=volunteer.user_id,
                    volunteer_key=f"user:{volunteer.user_id}",
                    created_at=datetime(2024, 3, 4, tzinfo=UTC),
                    source=ClassificationSource.API,
                    raw_annotations=annotations or annotations_json(recorded, front_end, WORKFLOW),
                    raw_metadata=metadata_json(plan, _frames_drawn(recorded), SHAPE),
                )
            )
            session.commit()
        return self.next_id

    def run(self) -> AggregateJobResult:
        return run_aggregate(session_factory(self.engine), None, self.settings)


def _frames_drawn(strokes: list[SimStroke]) -> list[int]:
    return sorted({s.frame for s in strokes})


@pytest.fixture
def seeded(migrated_engine: Engine, tmp_path: Path) -> Seeded:
    with Session(migrated_engine) as session:
        project = add_project(session)
        workflow = add_workflow(session, project, 21873, WorkflowRole.SEGMENTATION, "trace")
        roi = add_roi(session)
        session.commit()
        ids = row_id(workflow), row_id(roi)
    return Seeded(migrated_engine, Settings(data_dir=tmp_path / "data"), *ids)


def current(engine: Engine, z: int, kind: ConsensusKind = ConsensusKind.VOLUNTEER) -> ConsensusResult:
    with Session(engine) as session:
        row = session.exec(
            select(ConsensusResult).where(
                ConsensusResult.slice_index == z, ConsensusResult.kind == kind, col(ConsensusResult.is_current)
            )
        ).one()
        session.expunge(row)
        return row


def mask_of(row: ConsensusResult, settings: Settings) -> NDArray[np.bool_]:
    assert row.mask_uri is not None
    with Image.open(resolve_uri(row.mask_uri, settings.data_dir)) as image:
        return np.asarray(image) > 127


def count(engine: Engine, model: type[ConsensusResult] | type[Event] | type[VolunteerAgreement]) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def crowd(seeded: Seeded, subject_id: int, n: int = 6) -> None:
    """Careful and sloppy volunteers, half on each front end."""
    for index in range(n):
        behaviour = Behaviour.SLOPPY if index % 3 == 2 else Behaviour.CAREFUL
        seeded.classify(subject_id, behaviour, FrontEnd.PFE if index % 2 else FrontEnd.FEM)


def test_consensus_matches_the_nuclei_and_a_second_run_does_nothing(seeded: Seeded) -> None:
    for z in (3, 4, 5):
        crowd(seeded, seeded.add_subject(z))

    result = seeded.run()

    assert (result.slices_updated, result.classifications_read, result.invalid) == (3, 18, 0)
    for z in (3, 4, 5):
        row = current(seeded.engine, z)
        mask = mask_of(row, seeded.settings)
        assert mask.shape == SHAPE
        assert dice(mask, nucleus(z)) > 0.9
        assert row.area_px == int(mask.sum())
        assert row.n_classifications == 6 and row.n_volunteers == 6
        assert row.subject_id == seeded.subjects[z]
        assert len(row.agreement) == 6 and min(row.agreement.values()) > 0.5  # every one traced the nucleus
        assert row.params["method"] == seeded.settings.consensus.method
        assert row.params["pixel_size_nm"] == 20.0  # 10 nm source pixels shown at half size
        for uri in (row.band_uri, row.confidence_uri):
            assert uri is not None and resolve_uri(uri, seeded.settings.data_dir).is_file()
    with Session(seeded.engine) as session:
        statuses = session.exec(select(Classification.parse_status, Classification.n_marks)).all()
        assert all(status is ParseStatus.OK and n_marks for status, n_marks in statuses)
        agreements = session.exec(select(VolunteerAgreement)).all()
        assert len(agreements) == 18 and all(a.classification_id is not None for a in agreements)
        updated = session.exec(select(Event).where(Event.kind == "consensus.updated")).all()
        assert sorted(e.payload["slice_index"] for e in updated) == [3, 4, 5]

    before = (count(seeded.engine, ConsensusResult), count(seeded.engine, Event))
    again = seeded.run()
    assert (again.slices_updated, again.slices_unchanged, again.classifications_read) == (0, 0, 0)
    assert (count(seeded.engine, ConsensusResult), count(seeded.engine, Event)) == before


def test_a_new_classification_makes_one_new_current_row_and_demotes_the_old(seeded: Seeded) -> None:
    subject = seeded.add_subject(4)
    crowd(seeded, subject, n=4)
    seeded.run()
    old = current(seeded.engine, 4)

    newest = seeded.classify(subject, Behaviour.CAREFUL, FrontEnd.FEM)
    result = seeded.run()

    assert result.slices_updated == 1
    new = current(seeded.engine, 4)
    assert new.id != old.id
    assert new.last_classification_id == newest > old.last_classification_id
    assert new.n_classifications == old.n_classifications + 1 == 5
    assert new.stability is not None and new.stability > 0.9  # one more careful tracing changes little
    assert new.mask_uri != old.mask_uri
    with Session(seeded.engine) as session:
        rows = session.exec(select(ConsensusResult).where(ConsensusResult.slice_index == 4)).all()
        assert sorted(r.is_current for r in rows) == [False, True]
        history = slice_updates(session, subject)
    assert [u.classifications for u in history] == [4, 5]
    assert history[-1].stability == new.stability


def test_a_mark_on_frame_0_counts_for_the_slice_that_frame_shows(seeded: Seeded) -> None:
    own = seeded.add_subject(4)  # its frame 0 shows slice 2
    shown = seeded.add_subject(2)  # never classified itself
    for index in range(5):
        seeded.classify(own, Behaviour.CAREFUL, FrontEnd.PFE if index % 2 else FrontEnd.FEM, target_frame=0)

    result = seeded.run()

    assert result.slices_updated == 2
    on_two = current(seeded.engine, 2)
    assert on_two.subject_id == shown and on_two.n_volunteers == 5
    assert dice(mask_of(on_two, seeded.settings), nucleus(2)) > 0.9
    on_four = current(seeded.engine, 4)  # its own five classifications drew nothing on it
    assert (on_four.n_classifications, on_four.n_volunteers, on_four.area_px) == (5, 0, 0)


def test_a_neighbours_classification_without_marks_here_keeps_the_slice_s_consensus(seeded: Seeded) -> None:
    three, four = seeded.add_subject(3), seeded.add_subject(4)
    crowd(seeded, three, n=4)
    crowd(seeded, four, n=4)
    seeded.run()
    kept = current(seeded.engine, 3)

    newest = seeded.classify(four)  # subject 4's frames show slice 3, but the marks are on slice 4
    result = seeded.run()

    assert (result.slices_updated, result.slices_unchanged) == (1, 1)
    still = current(seeded.engine, 3)
    assert still.id == kept.id and still.last_classification_id == newest
    assert seeded.run().slices_unchanged == 0


def test_a_malformed_classification_is_recorded_invalid_and_the_rest_goes_on(seeded: Seeded) -> None:
    subject = seeded.add_subject(4)
    crowd(seeded, subject, n=4)
    broken = seeded.classify(subject, annotations='[{"task": "T0", "value": [{"pathX": [1, 2')

    result = seeded.run()

    assert (result.slices_updated, result.invalid, result.classifications_read) == (1, 1, 5)
    row = current(seeded.engine, 4)
    assert row.n_volunteers == 4 and row.last_classification_id == broken
    assert dice(mask_of(row, seeded.settings), nucleus(4)) > 0.9
    with Session(seeded.engine) as session:
        stored = session.exec(select(Classification).where(Classification.panoptes_id == broken)).one()
        assert stored.parse_status is ParseStatus.INVALID
        assert stored.parse_errors and "malformed-json" in stored.parse_errors[0]
        events = session.exec(select(Event).where(Event.kind == "classification.invalid")).all()
        assert [e.classification_id for e in events] == [stored.id]
    assert seeded.run().slices_updated == 0


def test_a_subject_with_broken_metadata_is_reported_and_left_out(seeded: Seeded) -> None:
    good = seeded.add_subject(4)
    bad_metadata = {**layout_metadata("cell01", TARGET_FRAME, frame_slices(6)), "#frame_slices": "4,5,seven,7,8"}
    bad = seeded.add_subject(6, metadata=bad_metadata)
    crowd(seeded, good, n=3)
    crowd(seeded, bad, n=3)

    result = seeded.run()

    assert result.classifications_read == 3  # the bad subject's classifications are not parsed
    assert result.slices_updated == 1 and result.skipped_slices == 1
    assert current(seeded.engine, 4).n_volunteers == 3
    with Session(seeded.engine) as session:
        reported = session.exec(select(Event).where(Event.kind == "subject.metadata_invalid")).all()
        assert {e.subject_id for e in reported} == {bad}
        assert "seven" in reported[0].message
        skipped = session.exec(select(Event).where(Event.kind == "consensus.skipped")).one()
        assert skipped.payload["slice_index"] == 6
    events = count(seeded.engine, Event)
    assert (seeded.run().skipped_slices, count(seeded.engine, Event)) == (0, events)


def test_corrections_and_tracings_of_a_slice_are_kept_apart(seeded: Seeded) -> None:
    raw = seeded.add_subject(4)
    prediction = seeded.add_subject(4, SubjectKind.PREDICTION)
    crowd(seeded, raw, n=3)
    crowd(seeded, prediction, n=4)

    assert seeded.run().slices_updated == 2

    volunteer = current(seeded.engine, 4, ConsensusKind.VOLUNTEER)
    corrected = current(seeded.engine, 4, ConsensusKind.CORRECTED)
    assert (volunteer.n_volunteers, corrected.n_volunteers) == (3, 4)
    assert (volunteer.subject_id, corrected.subject_id) == (raw, prediction)
    assert volunteer.mask_uri != corrected.mask_uri and "corrected" in str(corrected.mask_uri)
    with Session(seeded.engine) as session:
        assert [u.classifications for u in slice_updates(session, prediction)] == [4]
        assert [u.classifications for u in slice_updates(session, raw)] == [3]


def test_the_result_is_stored_as_json(seeded: Seeded) -> None:
    crowd(seeded, seeded.add_subject(4), n=2)
    stored = json.loads(json.dumps(seeded.run().as_json()))
    assert (stored["slices_updated"], stored["classifications_read"]) == (1, 2)
