"""The daemon's *aggregate* job: new classifications in the database → the consensus of each slice
they touch, stored with its history.

The pipeline is the offline ``etchacell aggregate``'s, fed from rows instead of an export:
:func:`~etchacell_loop.annotations.parse_classification` on the raw JSON kept at ingest, the subject's
:func:`~etchacell_loop.subject_metadata.subject_layout`, :func:`~etchacell_loop.cria.assembly.place_tracings`,
a :class:`~etchacell_loop.cria.assembly.SliceAssembler`, then
:func:`~etchacell_loop.cria.consensus.slice_consensus` with the configured CRIA parameters. Marks on
every flipbook frame count for the slice that frame shows, so one classification can change several
slices.

Which slices: a slice (ROI, z) of a kind (``volunteer`` for raw subjects, ``corrected`` for
predictions sent for correction) is aggregated when it is some subject's own slice and a
classification of any subject of that kind whose frames show it is newer (a higher Panoptes id)
than the slice's current consensus. That is decided from three aggregate queries (subjects, the
newest classification per subject, current consensus), never a query per subject.

When newer classifications only came from neighbouring subjects and drew nothing on the slice, its
inputs (how many classifications showed it, which drawings) are those of its current consensus:
that row stands and only records the newest classification it has accounted for, so the slice gets
a new row (one more check for the retire job) only when its consensus could have changed.

Crash safety: each slice is one transaction (old current row demoted, new row, agreements, parse
status of its subjects' classifications, event). The images are written first, under names made
of the slice, the kind and the newest classification included, so a run killed before its commit
leaves files the rerun overwrites, and a committed row always names complete files. A slice that
cannot be aggregated yet is recorded once as a ``consensus.skipped`` event for that newest
classification, so running the job again does nothing until something new arrives.

The subject's ROI and slices come from the database (what was uploaded); the subject's metadata
may refine the layout but must agree with it, else the subject is reported and left out.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from etchacell_loop.aggregate.outputs import consensus_pngs
from etchacell_loop.annotations import ParsedClassification, parse_classification
from etchacell_loop.config import Settings
from etchacell_loop.cria.assembly import SliceAssembler, SliceDrawings, place_tracings
from etchacell_loop.cria.consensus import Consensus, CriaParams, slice_consensus
from etchacell_loop.cria.correction import (
    CorrectionVerdict,
    correction_consensus,
    correction_params,
    rule_from_settings,
)
from etchacell_loop.cria.raster import Mask
from etchacell_loop.db.models import (
    Classification,
    ConsensusKind,
    ConsensusResult,
    Event,
    EventLevel,
    ParseStatus,
    PredictionBatch,
    SlicePrediction,
    Subject,
    SubjectKind,
    VolunteerAgreement,
)
from etchacell_loop.loop.correction_subjects import SubjectGeometry
from etchacell_loop.loop.publish_job import BAD_DATA, predicted_on_subject
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.retirement import Update
from etchacell_loop.subject_metadata import (
    ROI_KEY,
    SLICE_KEY,
    TARGET_FRAME_KEY,
    SliceKey,
    SubjectLayout,
    layout_metadata,
    subject_layout,
)

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
SliceRef = tuple[int, int, ConsensusKind]  # (roi_id, slice_index, kind)

SLICES_PER_BATCH = 16  # neighbouring slices aggregated from one read: a classification is parsed ~once
CONSENSUS_DIR = "consensus"
IMAGE_NAMES = {"masks": "mask", "envelope": "band", "confidence": "confidence"}
UPDATED_EVENT = "consensus.updated"
SKIPPED_EVENT = "consensus.skipped"
INVALID_EVENT = "classification.invalid"
SUBJECT_SKIPPED_EVENT = "subject.metadata_invalid"
CORRECTED = ConsensusKind.CORRECTED
CONSENSUS_OF_SUBJECT = {SubjectKind.RAW: ConsensusKind.VOLUNTEER, SubjectKind.PREDICTION: ConsensusKind.CORRECTED}


@dataclass
class AggregateJobResult:
    """What one aggregate run did: slices given a new consensus, classifications parsed (invalid
    ones among them), slices that could not be aggregated yet, and the wall time."""

    slices_updated: int = 0
    slices_unchanged: int = 0  # newer classifications, none of them drawn on the slice: consensus kept
    classifications_read: int = 0
    invalid: int = 0
    skipped_slices: int = 0
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SubjectRef:
    """What slice selection needs of a subject (its metadata is read only when it is aggregated)."""

    id: int
    panoptes_id: int | None
    roi_id: int
    slice_index: int
    frames: frozenset[int]
    kind: ConsensusKind

    @property
    def own(self) -> SliceRef:
        return self.roi_id, self.slice_index, self.kind

    def shows(self) -> Iterator[SliceRef]:
        return ((self.roi_id, z, self.kind) for z in self.frames)


@dataclass(frozen=True)
class _Read:
    """One classification as read for this run."""

    id: int
    panoptes_id: int
    subject: SubjectRef
    old_status: ParseStatus
    parsed: ParsedClassification | None  # None: its subject was left out, so it was not parsed


@dataclass
class _Batch:
    """Everything read for a run of neighbouring slices of one ROI and kind."""

    assembler: SliceAssembler
    reads: list[_Read] = field(default_factory=list)
    layouts: dict[int, SubjectLayout] = field(default_factory=dict)  # subject id → usable layout


def run_aggregate(
    session_factory: SessionFactory, gateway: PanoptesGateway | None, settings: Settings
) -> AggregateJobResult:
    """The daemon's *aggregate* job (``gateway`` is not used: everything needed is in the database)."""
    del gateway
    started = time.perf_counter()
    result = AggregateJobResult()
    with session_factory() as session:
        subjects = subject_refs(session)
        pending = slices_to_update(session, subjects)
    for batch in _batches(pending):
        _aggregate_batch(session_factory, settings, batch, subjects, result)
    result.seconds = round(time.perf_counter() - started, 3)
    log.info("aggregate: %s", result)
    return result


def subject_refs(session: Session) -> list[SubjectRef]:
    """Every subject's ROI, own slice, the slices its frames show, and the consensus kind it feeds."""
    statement = sa.select(
        col(Subject.id),
        col(Subject.panoptes_id),
        col(Subject.roi_id),
        col(Subject.slice_index),
        col(Subject.frames),
        col(Subject.kind),
    )
    return [
        SubjectRef(row_id, panoptes_id, roi_id, z, _frame_set(frames, z), CONSENSUS_OF_SUBJECT[SubjectKind(kind)])
        for row_id, panoptes_id, roi_id, z, frames, kind in session.connection().execute(statement).all()
        if row_id is not None
    ]


def slices_to_update(session: Session, subjects: Sequence[SubjectRef]) -> dict[SliceRef, int]:
    """The slices whose newest classification (the value) is newer than their current consensus and
    than the last time they were found impossible to aggregate."""
    newest = newest_by_slice(subjects, newest_classification_by_subject(session, subjects))
    own = {s.own for s in subjects}
    current = _current_last_ids(session)
    stale = {key: last for key, last in newest.items() if key in own and last > current.get(key, 0)}
    skipped = _skipped_before(session, stale, _primary_subjects(subjects))
    return {key: last for key, last in stale.items() if (*key, last) not in skipped}


def newest_classification_by_subject(session: Session, subjects: Sequence[SubjectRef]) -> dict[int, int]:
    """Subject id → the highest Panoptes classification id stored for it (one grouped query on the
    (subject_id, panoptes_id) index; classifications ingested before their subject's row existed
    are matched by the subject's Panoptes id)."""
    linked = (
        select(Classification.subject_id, sa.func.max(Classification.panoptes_id))
        .where(col(Classification.subject_id).is_not(None))
        .group_by(col(Classification.subject_id))
    )
    newest: dict[int, int] = {int(sid): int(last) for sid, last in session.exec(linked).all() if sid is not None}
    unlinked = (
        select(Classification.subject_panoptes_id, sa.func.max(Classification.panoptes_id))
        .where(col(Classification.subject_id).is_(None))
        .group_by(col(Classification.subject_panoptes_id))
    )
    by_panoptes = {s.panoptes_id: s.id for s in subjects if s.panoptes_id is not None}
    for panoptes_id, last in session.exec(unlinked).all():
        subject_id = by_panoptes.get(panoptes_id)
        if subject_id is not None:
            newest[subject_id] = max(newest.get(subject_id, 0), int(last))
    return newest


def newest_by_slice(subjects: Iterable[SubjectRef], newest: Mapping[int, int]) -> dict[SliceRef, int]:
    """The newest classification of any subject whose frames show each slice."""
    by_slice: dict[SliceRef, int] = {}
    for subject in subjects:
        last = newest.get(subject.id)
        if last is None:
            continue
        for key in subject.shows():
            by_slice[key] = max(by_slice.get(key, 0), last)
    return by_slice


def slice_updates(session: Session, subject_id: int) -> list[Update]:
    """The history of the consensus of the subject's own slice (of the subject's kind), oldest first:
    one record per aggregation (not per retirement check), with the classifications that showed the
    slice and the consensus's own stability; the Dice between checks is the retire job's to measure."""
    subject = session.get(Subject, subject_id)
    if subject is None:
        return []
    statement = (
        select(ConsensusResult.n_classifications, ConsensusResult.stability)
        .where(
            ConsensusResult.roi_id == subject.roi_id,
            ConsensusResult.slice_index == subject.slice_index,
            ConsensusResult.kind == CONSENSUS_OF_SUBJECT[subject.kind],
        )
        .order_by(col(ConsensusResult.id))
    )
    return [Update(n, stability) for n, stability in session.exec(statement).all()]


# --- selection helpers ----------------------------------------------------------------------------


def _frame_set(frames: Any, slice_index: int) -> frozenset[int]:
    """The slices a subject's frames show (its own always among them; unreadable entries ignored)."""
    shown = {slice_index}
    if isinstance(frames, list):
        shown.update(int(z) for z in frames if isinstance(z, int) and not isinstance(z, bool))
    return frozenset(shown)


def _current_last_ids(session: Session) -> dict[SliceRef, int]:
    statement = select(
        ConsensusResult.roi_id,
        ConsensusResult.slice_index,
        ConsensusResult.kind,
        ConsensusResult.last_classification_id,
    ).where(col(ConsensusResult.is_current))
    return {(roi, z, ConsensusKind(kind)): last for roi, z, kind, last in session.exec(statement).all()}


def _primary_subjects(subjects: Iterable[SubjectRef]) -> dict[SliceRef, int]:
    """The subject a slice's consensus is reported under: the newest whose own slice it is."""
    primary: dict[SliceRef, int] = {}
    for subject in subjects:
        primary[subject.own] = max(primary.get(subject.own, 0), subject.id)
    return primary


def _skipped_before(
    session: Session, stale: Mapping[SliceRef, int], primary: Mapping[SliceRef, int]
) -> set[tuple[int, int, ConsensusKind, int]]:
    """(roi, z, kind, newest classification) of the stale slices already recorded as skipped."""
    subject_ids = {primary[key] for key in stale}
    if not subject_ids:
        return set()
    statement = select(Event.payload).where(Event.kind == SKIPPED_EVENT, col(Event.subject_id).in_(subject_ids))
    done: set[tuple[int, int, ConsensusKind, int]] = set()
    for payload in session.exec(statement).all():
        try:
            kind = ConsensusKind(payload["kind"])
            done.add(
                (int(payload["roi_id"]), int(payload["slice_index"]), kind, int(payload["last_classification_id"]))
            )
        except (KeyError, TypeError, ValueError):
            continue
    return done


def _batches(pending: Mapping[SliceRef, int]) -> Iterator[list[SliceRef]]:
    """Pending slices in runs of neighbours of one ROI and kind, at most :data:`SLICES_PER_BATCH`."""
    groups: dict[tuple[int, ConsensusKind], list[int]] = defaultdict(list)
    for roi_id, z, kind in pending:
        groups[roi_id, kind].append(z)
    for (roi_id, kind), zs in sorted(groups.items()):
        ordered = sorted(zs)
        for start in range(0, len(ordered), SLICES_PER_BATCH):
            yield [(roi_id, z, kind) for z in ordered[start : start + SLICES_PER_BATCH]]


# --- reading --------------------------------------------------------------------------------------


def _aggregate_batch(
    session_factory: SessionFactory,
    settings: Settings,
    batch: Sequence[SliceRef],
    subjects: Sequence[SubjectRef],
    result: AggregateJobResult,
) -> None:
    wanted = set(batch)
    involved = [s for s in subjects if wanted.intersection(s.shows())]
    read = _read_batch(session_factory, involved, result)
    primary = _primary_subjects(involved)
    for key in batch:
        _aggregate_slice(session_factory, settings, key, primary[key], read, result)


def _read_batch(session_factory: SessionFactory, involved: Sequence[SubjectRef], result: AggregateJobResult) -> _Batch:
    """Parse every classification of the subjects showing the batch's slices, once, and place its marks."""
    batch = _Batch(SliceAssembler())
    with session_factory() as session:
        batch.layouts = _layouts(session, involved)
        session.commit()
        rows = _classifications_of(session, involved)
    refs = {s.id: s for s in involved}
    by_panoptes = {s.panoptes_id: s for s in involved if s.panoptes_id is not None}
    for row in rows:
        ref = refs.get(row.subject_id) if row.subject_id is not None else by_panoptes.get(row.subject_panoptes_id)
        if ref is None or row.id is None:
            continue
        layout = batch.layouts.get(ref.id)
        parsed = parse_classification(row.raw_annotations, row.raw_metadata) if layout is not None else None
        batch.reads.append(_Read(row.id, row.panoptes_id, ref, row.parse_status, parsed))
        if layout is None or parsed is None:
            continue
        result.classifications_read += 1
        if parsed.status is ParseStatus.INVALID:
            result.invalid += 1
            continue
        placement = place_tracings(parsed.tracings, layout, parsed.frame_sizes)
        batch.assembler.add(row.volunteer_key, row.panoptes_id, layout, placement)
    return batch


def _layouts(session: Session, involved: Sequence[SubjectRef]) -> dict[int, SubjectLayout]:
    """Subject id → layout, for the subjects whose metadata is usable; the others are reported."""
    layouts: dict[int, SubjectLayout] = {}
    for subject in session.exec(select(Subject).where(col(Subject.id).in_([s.id for s in involved]))).all():
        layout = usable_layout(subject)
        if isinstance(layout, SubjectLayout):
            layouts[layout.subject_id] = layout
        else:
            _report_subject(session, subject, layout)
    return layouts


def _classifications_of(session: Session, subjects: Sequence[SubjectRef]) -> Sequence[Classification]:
    """The subjects' classifications, oldest first (linked by row id, or by Panoptes id when the
    subject's row did not exist yet at ingest)."""
    ids = [s.id for s in subjects]
    panoptes_ids = [s.panoptes_id for s in subjects if s.panoptes_id is not None]
    linked = col(Classification.subject_id).in_(ids)
    unlinked = sa.and_(
        col(Classification.subject_id).is_(None), col(Classification.subject_panoptes_id).in_(panoptes_ids)
    )
    statement = select(Classification).where(sa.or_(linked, unlinked)).order_by(col(Classification.panoptes_id))
    return session.exec(statement).all()


def usable_layout(subject: Subject) -> SubjectLayout | str:
    """The subject's layout, or why its metadata cannot be used. The database's ROI, slice and frames
    are what was uploaded: metadata keys missing there are filled from them, and keys present must
    agree with them (the ROI is always the database's, named by its id)."""
    metadata = subject.panoptes_metadata
    if not isinstance(metadata, Mapping):
        return f"metadata is a {type(metadata).__name__}, not a mapping"
    roi = str(subject.roi_id)
    frames = subject.frames if isinstance(subject.frames, list) else []
    if 0 <= subject.target_frame < len(frames) and frames[subject.target_frame] == subject.slice_index:
        defaults = layout_metadata(roi, subject.target_frame, frames)
    else:
        defaults = {SLICE_KEY: str(subject.slice_index), TARGET_FRAME_KEY: str(subject.target_frame)}
    layout = subject_layout(subject.id or 0, {**defaults, **metadata, ROI_KEY: roi})
    problems = list(layout.problems)
    if layout.own_slice != SliceKey(roi, subject.slice_index):
        problems.append(f"its slice {layout.own_slice.z} is not the recorded slice {subject.slice_index}")
    if layout.frame_slices is not None and [k.z for k in layout.frame_slices] != frames:
        problems.append(f"its frames show {[k.z for k in layout.frame_slices]}, not the recorded {frames}")
    return "; ".join(problems) if problems else layout


def _report_subject(session: Session, subject: Subject, reason: str) -> None:
    log.warning("subject %s left out of aggregation: %s", subject.id, reason)
    session.add(
        Event(
            level=EventLevel.WARNING,
            kind=SUBJECT_SKIPPED_EVENT,
            message=f"subject {subject.id} ({subject.upload_key}) left out of aggregation: {reason}",
            subject_id=subject.id,
            payload={"reason": reason},
        )
    )


# --- one slice ------------------------------------------------------------------------------------


def _aggregate_slice(
    session_factory: SessionFactory,
    settings: Settings,
    key: SliceRef,
    subject_id: int,
    batch: _Batch,
    result: AggregateJobResult,
) -> None:
    roi_id, z, _ = key
    shown = [r for r in batch.reads if key in set(r.subject.shows())]
    own = [r for r in shown if r.subject.own == key]
    last_id = max((r.panoptes_id for r in shown), default=0)
    if not last_id:
        return  # its classifications are gone since the slice was selected
    slice_key = SliceKey(str(roi_id), z)
    drawings = batch.assembler.drawings(slice_key)
    reason = _why_not(slice_key, drawings, batch.assembler)
    ours = {r.panoptes_id: r.id for r in shown}
    with session_factory() as session:
        _record_parses(session, own)
        if reason is not None or drawings is None:
            _record_skip(session, key, subject_id, last_id, reason or "no drawings")
            session.commit()
            result.skipped_slices += 1
            return
        current = _current_inputs(session, key)
        if current is not None and current[1:] == _inputs(drawings, ours):
            _touch(session, current[0], last_id)
            session.commit()
            result.slices_unchanged += 1
            return
        layout = batch.layouts.get(subject_id)
        pixel_nm = (layout.pixel_size_nm if layout else None) or _default_pixel_size_nm(settings)
        params = CriaParams.from_settings(settings.consensus, pixel_nm)
        verdict: CorrectionVerdict | None = None
        machine = _machine_area(session, settings, subject_id, drawings.shape) if key[2] is CORRECTED else None
        if machine is not None:
            rule = rule_from_settings(
                settings.consensus.correction_kept_weight,
                settings.consensus.correction_agree_dice,
                settings.consensus.correction_min_edits,
                settings.consensus.correction_deleted_weight,
            )
            deleted = _deletions(own, drawings)
            consensus, verdict = correction_consensus(drawings.drawings, deleted, machine, params, rule)
            params = correction_params(params, verdict.n_deleted)
        else:
            consensus = slice_consensus(drawings.drawings, drawings.n_classifications, drawings.shape, params)
        uris = write_consensus_images(settings.data_dir, key, last_id, consensus)
        _store_consensus(session, key, subject_id, last_id, (params, verdict), drawings, consensus, uris, ours)
        session.commit()
    result.slices_updated += 1


def _machine_area(session: Session, settings: Settings, subject_id: int, shape: tuple[int, int]) -> Mask | None:
    """The model's area of a correction subject's slice at the slice's pixels: what its volunteers
    were shown. None (and a warning) when it cannot be read: the slice then gets a plain consensus."""
    found = session.exec(
        select(Subject, PredictionBatch)
        .join(SlicePrediction, col(SlicePrediction.subject_id) == col(Subject.id))
        .join(PredictionBatch, col(PredictionBatch.id) == col(SlicePrediction.batch_id))
        .where(col(Subject.id) == subject_id)
    ).first()
    if found is None:
        return None
    subject, batch = found
    try:
        geometry = SubjectGeometry.from_metadata(subject.panoptes_metadata)
        area = predicted_on_subject(settings.data_dir, batch, subject.slice_index, geometry, (shape[1], shape[0]))
    except BAD_DATA as exc:
        log.warning("aggregate: the machine outline of subject %s cannot be read: %s", subject_id, exc)
        return None
    return area if area.shape == shape else None


def _deletions(own: Sequence[_Read], drawings: SliceDrawings) -> int:
    """Usable classifications of the slice's own correction subjects that drew nothing on it."""
    drew = {d.classification_id for d in drawings.drawings}
    return sum(
        1
        for r in own
        if r.parsed is not None and r.parsed.status is not ParseStatus.INVALID and r.panoptes_id not in drew
    )


def _inputs(drawings: SliceDrawings, ours: Mapping[int, int]) -> tuple[int, frozenset[int | None]]:
    """What a slice's consensus is made of: how many classifications showed it and which drawings."""
    return drawings.n_classifications, frozenset(ours.get(d.classification_id) for d in drawings.drawings)


def _current_inputs(session: Session, key: SliceRef) -> tuple[int, int, frozenset[int | None]] | None:
    """The current consensus of the slice (id, classifications, drawings' classification ids), if any."""
    roi_id, z, kind = key
    current = session.exec(
        select(ConsensusResult.id, ConsensusResult.n_classifications).where(
            ConsensusResult.roi_id == roi_id,
            ConsensusResult.slice_index == z,
            ConsensusResult.kind == kind,
            col(ConsensusResult.is_current),
        )
    ).first()
    if current is None or current[0] is None:
        return None
    drawn = session.exec(
        select(VolunteerAgreement.classification_id).where(VolunteerAgreement.consensus_result_id == current[0])
    ).all()
    return current[0], current[1], frozenset(drawn)


def _touch(session: Session, consensus_id: int, last_id: int) -> None:
    """Newer classifications of neighbouring subjects that changed nothing on this slice (no mark on
    the frame showing it): the current consensus stands and now accounts for them. A new row would
    repeat the last one and make the retire job judge the subject again for nothing."""
    session.connection().execute(
        sa.update(ConsensusResult).where(col(ConsensusResult.id) == consensus_id).values(last_classification_id=last_id)
    )


def _why_not(key: SliceKey, drawings: SliceDrawings | None, assembler: SliceAssembler) -> str | None:
    """Why the slice cannot be aggregated now, or None when it can."""
    if drawings is None:
        return "no classification reported the size of the image showing it"
    if not drawings.drawings and key not in assembler.slices():
        return "nothing drawn on it and no readable classification of its own subjects yet"
    return None


def _default_pixel_size_nm(settings: Settings) -> float:
    """A subject pixel's size when the metadata does not say: the source pixel times the scaling."""
    imaging = settings.imaging
    return imaging.pixel_size_xy_nm * max(1.0, imaging.crop_size_px / imaging.subject_size_px)


def consensus_image_uris(key: SliceRef, last_classification_id: int) -> dict[str, str]:
    """Where a consensus's images live, relative to the data directory, by output folder. The names
    hold everything that makes the consensus what it is, so a rerun writes the same files."""
    roi_id, z, kind = key
    stem = f"{CONSENSUS_DIR}/roi{roi_id}/z{z:05d}-{kind.value}-c{last_classification_id}"
    return {folder: f"{stem}-{name}.png" for folder, name in IMAGE_NAMES.items()}


def write_consensus_images(
    data_dir: Path, key: SliceRef, last_classification_id: int, consensus: Consensus
) -> dict[str, str]:
    """Write the consensus's mask, band and confidence images; their URIs by output folder."""
    uris = consensus_image_uris(key, last_classification_id)
    for folder, png in consensus_pngs(consensus).items():
        path = data_dir / uris[folder]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    return uris


def _record_parses(session: Session, reads: Iterable[_Read]) -> None:
    """Parse status, reasons and mark count of the slice's own classifications (those whose status
    changes; an invalid one is also an event)."""
    for read in reads:
        parsed = read.parsed
        if parsed is None or parsed.status is read.old_status:
            continue  # not parsed (its subject was left out), or recorded by an earlier update
        status = parsed.status
        values = {"parse_status": status, "parse_errors": parsed.reasons() or None, "n_marks": len(parsed.tracings)}
        session.connection().execute(
            sa.update(Classification).where(col(Classification.id) == read.id).values(**values)
        )
        if status is ParseStatus.INVALID and read.old_status is not ParseStatus.INVALID:
            session.add(
                Event(
                    level=EventLevel.WARNING,
                    kind=INVALID_EVENT,
                    message=f"classification {read.panoptes_id} unreadable: {'; '.join(parsed.reasons())}",
                    subject_id=read.subject.id,
                    classification_id=read.id,
                    payload={"reasons": parsed.reasons()},
                )
            )


def _record_skip(session: Session, key: SliceRef, subject_id: int, last_id: int, reason: str) -> None:
    roi_id, z, kind = key
    level = EventLevel.INFO if reason.startswith("nothing drawn") else EventLevel.WARNING
    log.log(
        logging.INFO if level is EventLevel.INFO else logging.WARNING,
        "ROI %s slice %s (%s) not aggregated: %s",
        roi_id,
        z,
        kind.value,  # the value, not the enum's repr, in the log
        reason,
    )
    session.add(
        Event(
            level=level,
            kind=SKIPPED_EVENT,
            message=f"ROI {roi_id} slice {z} ({kind.value}) not aggregated: {reason}",
            subject_id=subject_id,
            payload={
                "roi_id": roi_id,
                "slice_index": z,
                "kind": kind.value,
                "last_classification_id": last_id,
                "reason": reason,
            },
        )
    )


def _store_consensus(
    session: Session,
    key: SliceRef,
    subject_id: int,
    last_id: int,
    decided: tuple[CriaParams, CorrectionVerdict | None],
    drawings: SliceDrawings,
    consensus: Consensus,
    uris: Mapping[str, str],
    ours: Mapping[int, int],
) -> None:
    """Demote the slice's current consensus of this kind and add the new one, its agreements and event.
    ``decided``: the parameters the consensus was made with and, for corrections, the verdict."""
    roi_id, z, kind = key
    params, verdict = decided
    stored_params: dict[str, Any] = asdict(params)
    if verdict is not None:
        stored_params["correction"] = verdict.as_json()
    session.connection().execute(
        sa.update(ConsensusResult)
        .where(
            col(ConsensusResult.roi_id) == roi_id,
            col(ConsensusResult.slice_index) == z,
            col(ConsensusResult.kind) == kind,
            col(ConsensusResult.is_current),
        )
        .values(is_current=False)
    )
    row = ConsensusResult(
        roi_id=roi_id,
        slice_index=z,
        subject_id=subject_id,
        kind=kind,
        method=params.method,
        params=stored_params,
        n_classifications=drawings.n_classifications,
        n_volunteers=consensus.n_volunteers,
        last_classification_id=last_id,
        mask_uri=uris["masks"],
        band_uri=uris["envelope"],
        confidence_uri=uris["confidence"],
        area_px=consensus.area_px,
        stability=consensus.stability,
        agreement={o.volunteer: o.dice for o in consensus.outcomes},
        is_current=True,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    for outcome in consensus.outcomes:
        session.add(
            VolunteerAgreement(
                consensus_result_id=row.id,
                classification_id=ours.get(outcome.classification_id),
                volunteer_key=outcome.volunteer,
                dice=outcome.dice,
            )
        )
    session.add(
        Event(
            kind=UPDATED_EVENT,
            message=f"ROI {roi_id} slice {z} ({kind.value}): {consensus.n_volunteers} drawings, {row.area_px} px"
            + (f", {verdict.state.value}" if verdict is not None else ""),
            subject_id=subject_id,
            payload={
                "consensus_result_id": row.id,
                "roi_id": roi_id,
                "slice_index": z,
                "kind": kind.value,
                "n_classifications": row.n_classifications,
                "last_classification_id": last_id,
                "stability": row.stability,
                **({"correction": verdict.as_json()} if verdict is not None else {}),
            },
        )
    )
