"""Pull new classifications from Panoptes into the database, each exactly once.

Why this way: ``/classifications/project?last_id=N`` pages by id (keyset), so the workflow's
:class:`~etchacell_loop.db.models.SyncCursor` only needs the highest id read. Each page is stored
in ONE transaction that also moves the cursor: a crash between pages loses nothing (the cursor
never runs ahead of the rows) and duplicates nothing (rows are keyed on the Panoptes id and inserted
with ``ON CONFLICT DO NOTHING``, so a page pulled twice is harmless). The raw annotations and
metadata are kept as the JSON text received, because parsing is another module's job and must be
able to run again on the original.

Why a look-back: Panoptes gives a classification its id when it is inserted, but others see it only
when its transaction commits, so a slow commit can appear *below* ids already read. Every pull
starts ``panoptes.lookback_ids`` below the cursor; re-reading costs requests, never duplicates.

Why bad items are skipped, not fatal: one classification the loop cannot store (no id or a
fractional one, a user or subject that is not an id, no annotations, a wrong type, too large) must
not stall the workflow. It is recorded once as an ``ingest.skipped`` event holding its raw JSON and
a one-line reason; the rest of its page is stored and the cursor moves past it as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from etchacell_loop.annotations import anonymous_token, volunteer_key
from etchacell_loop.config import PanoptesSettings, Settings
from etchacell_loop.db.models import (
    Classification,
    ClassificationSource,
    Event,
    EventLevel,
    Subject,
    SyncCursor,
    Workflow,
)
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop.project import configured_roles, register_project
from etchacell_loop.panoptes.errors import PanoptesError, one_line
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.panoptes.items import BadItem, id_or_none, read_id, shown

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]

SKIPPED_EVENT = "ingest.skipped"
FAILED_EVENT = "ingest.failed"
# Ten times the largest line the parser accepts (ParseLimits.max_points ≈ 0.4 MB of JSON): anything
# bigger is not one volunteer's tracing of one nucleus, and would bloat every read of the table.
MAX_CLASSIFICATION_CHARS = 4 * 1024 * 1024
KEPT_RAW_CHARS = 64 * 1024  # what a skip keeps of an item over MAX_CLASSIFICATION_CHARS
VERSION_CHARS = 32  # classification.workflow_version


@dataclass
class IngestResult:
    """What one ingest run did. ``skipped``: read again but already stored or already recorded
    (the look-back re-reads some on every run); ``unusable``: newly recorded as ``ingest.skipped``."""

    pages: int = 0
    fetched: int = 0
    inserted: int = 0
    skipped: int = 0
    unusable: int = 0
    last_id: int = 0


class UnusableClassification(BadItem):
    """A classification the loop cannot store; the message says why, on one line."""


@dataclass(frozen=True)
class Incoming:
    """A classification that passed every check, with each value already in its column's type."""

    panoptes_id: int
    subject_panoptes_id: int
    user_id: int | None
    anonymous_token: str | None
    workflow_version: str | None
    created_at: datetime
    raw_annotations: str
    raw_metadata: str | None


@dataclass(frozen=True)
class Rejected:
    """A page item that cannot be stored: its JSON as received, why, and its id when readable."""

    raw: str
    reason: str
    panoptes_id: int | None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw.encode()).hexdigest()


def ingest_classifications(
    session_factory: SessionFactory,
    gateway: PanoptesGateway,
    workflow_row: Workflow,
    project_panoptes_id: int,
    page_size: int = 100,
    lookback_ids: int | None = None,
) -> IngestResult:
    """Store every classification of the workflow newer than its cursor, and any that appeared up
    to ``lookback_ids`` below it since (default: ``panoptes.lookback_ids``); safe to run at any time."""
    if workflow_row.id is None:
        raise ValueError("the workflow row has no id (not flushed?)")
    lookback = PanoptesSettings().lookback_ids if lookback_ids is None else lookback_ids
    start = cursor_position(session_factory, workflow_row.id)
    result = IngestResult(last_id=start)
    pages = gateway.classification_pages(
        project_panoptes_id, workflow_row.panoptes_id, max(0, start - lookback), page_size
    )
    for page in pages:
        _store_page(session_factory, (workflow_row.id, workflow_row.panoptes_id), page, result)
    log.info("ingest workflow %d: %s", workflow_row.panoptes_id, result)
    return result


@dataclass
class IngestJobResult:
    """One run of the daemon's ingest job: per workflow, what was stored; workflows that failed."""

    workflows: dict[int, IngestResult] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def inserted(self) -> int:
        return sum(r.inserted for r in self.workflows.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "inserted": self.inserted,
            "workflows": {str(k): asdict(v) for k, v in self.workflows.items()},
            "failed": {str(k): v for k, v in self.failed.items()},
        }


def run_ingest(session_factory: SessionFactory, gateway: PanoptesGateway | None, settings: Settings) -> IngestJobResult:
    """The daemon's *ingest* job: refresh the project's registration from Panoptes (names, versions,
    the Caesar flag), then store every new classification of each of its workflows. A workflow whose
    pull fails, for whatever reason, is logged as an event and retried next run; the others go on."""
    project_id = settings.panoptes.project_id
    if gateway is None or project_id is None:
        raise ValueError("ingest needs panoptes.project_id and a connection to Panoptes")
    info = gateway.describe_project(project_id)
    with session_factory() as session:
        registered = register_project(session, info, configured_roles(settings.panoptes))
        session.commit()
        workflows = list(registered.workflows)
    result = IngestJobResult()
    for workflow in workflows:
        try:
            result.workflows[workflow.panoptes_id] = ingest_classifications(
                session_factory,
                gateway,
                workflow,
                project_id,
                settings.panoptes.page_size,
                settings.panoptes.lookback_ids,
            )
        except PanoptesError as exc:
            _record_failure(session_factory, result, workflow.panoptes_id, str(exc), EventLevel.WARNING)
        except Exception as exc:  # a bug must not keep the other workflows from their classifications
            log.exception("ingest of workflow %d failed", workflow.panoptes_id)
            reason = f"{type(exc).__name__}: {one_line(str(exc))}"
            _record_failure(session_factory, result, workflow.panoptes_id, reason, EventLevel.ERROR)
    return result


def _record_failure(
    session_factory: SessionFactory, result: IngestJobResult, workflow: int, reason: str, level: EventLevel
) -> None:
    result.failed[workflow] = reason
    log.warning("ingest of workflow %d failed: %s", workflow, reason)
    with session_factory() as session:
        message = f"workflow {workflow}: {reason}"
        session.add(Event(level=level, kind=FAILED_EVENT, message=message, payload={"workflow": workflow}))
        session.commit()


def cursor_position(session_factory: SessionFactory, workflow_id: int) -> int:
    """The highest classification id read for the workflow (0 before the first ingest)."""
    with session_factory() as session:
        cursor = session.exec(select(SyncCursor).where(SyncCursor.workflow_id == workflow_id)).first()
        return cursor.last_classification_id if cursor else 0


# --- one page -----------------------------------------------------------------------------------


def _store_page(
    session_factory: SessionFactory, workflow: tuple[int, int], page: Sequence[Any], result: IngestResult
) -> None:
    """One page, one transaction: new rows, newly found bad items recorded, and the cursor."""
    workflow_id, workflow_panoptes_id = workflow
    incoming, rejected = split_page(page)
    with session_factory() as session:
        cursor = _locked_cursor(session, workflow_id)
        subjects = _subject_ids(session, [c.subject_panoptes_id for c in incoming])
        inserted = _insert_new(session, incoming, workflow_id, subjects)
        recorded = _record_rejected(session, workflow_panoptes_id, rejected)
        ids = [c.panoptes_id for c in incoming] + [r.panoptes_id for r in rejected if r.panoptes_id is not None]
        cursor.last_classification_id = max([cursor.last_classification_id, *ids])
        cursor.n_ingested += inserted
        cursor.updated_at = utcnow()
        session.add(cursor)
        session.commit()
        result.last_id = cursor.last_classification_id
    result.pages += 1
    result.fetched += len(page)
    result.inserted += inserted
    result.unusable += recorded
    result.skipped += len(page) - inserted - recorded


def split_page(page: Iterable[Any]) -> tuple[list[Incoming], list[Rejected]]:
    """The items that can be stored, read; the others with their reasons."""
    incoming: list[Incoming] = []
    rejected: list[Rejected] = []
    for item in page:
        try:
            incoming.append(read_classification(item))
        except BadItem as exc:
            panoptes_id = id_or_none(item.get("id")) if isinstance(item, Mapping) else None
            rejected.append(Rejected(raw_json(item), str(exc), panoptes_id))
    return incoming, rejected


def _locked_cursor(session: Session, workflow_id: int) -> SyncCursor:
    """The workflow's cursor, row-locked on PostgreSQL so two ingesters take turns per page."""
    statement = select(SyncCursor).where(SyncCursor.workflow_id == workflow_id).with_for_update()
    cursor = session.exec(statement).first()
    if cursor is None:
        cursor = SyncCursor(workflow_id=workflow_id, last_classification_id=0)
        session.add(cursor)
        session.flush()
    return cursor


def _subject_ids(session: Session, panoptes_ids: Sequence[int]) -> dict[int, int]:
    """Our subject row ids for the Panoptes subject ids we know."""
    if not panoptes_ids:
        return {}
    statement = select(Subject.panoptes_id, Subject.id).where(col(Subject.panoptes_id).in_(set(panoptes_ids)))
    return {panoptes_id: row_id for panoptes_id, row_id in session.exec(statement).all() if panoptes_id and row_id}


def _insert_new(session: Session, incoming: Sequence[Incoming], workflow_id: int, subjects: Mapping[int, int]) -> int:
    """Insert the classifications not stored yet, in one statement; how many were new.

    ``ON CONFLICT (panoptes_id) DO NOTHING`` makes the store idempotent on the Panoptes id, even
    against a second ingester that stored the same id a moment ago."""
    unique = {c.panoptes_id: c for c in incoming}  # an id twice in one page: stored once
    if not unique:
        return 0
    columns = [c for c in Classification.__table__.columns if c.name != "id"]  # type: ignore[attr-defined]
    rows = []
    for item in unique.values():
        row = classification_row(item, workflow_id, subjects)
        rows.append({c.name: getattr(row, c.name) for c in columns})
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(Classification)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["panoptes_id"])
        .returning(col(Classification.panoptes_id))
    )
    return len(session.connection().execute(statement).all())


def _record_rejected(session: Session, workflow_panoptes_id: int, rejected: Sequence[Rejected]) -> int:
    """Record the bad items not recorded before (the look-back reads them again); how many were new."""
    events: dict[str, Event] = {}
    for item in rejected:
        event = _rejected_event(workflow_panoptes_id, item)
        events.setdefault(event.message, event)
    if not events:
        return 0
    seen = select(Event.message).where(Event.kind == SKIPPED_EVENT, col(Event.message).in_(list(events)))
    known = set(session.exec(seen).all())
    new = [event for message, event in events.items() if message not in known]
    for event in new:
        log.warning("%s", event.message)
        session.add(event)
    return len(new)


def _rejected_event(workflow_panoptes_id: int, rejected: Rejected) -> Event:
    """One line naming the item (its id, else its digest) and the reason; the raw JSON beside it."""
    digest = rejected.digest
    named = str(rejected.panoptes_id) if rejected.panoptes_id is not None else f"without an id (sha256 {digest[:16]})"
    kept = rejected.raw[:KEPT_RAW_CHARS] if len(rejected.raw) > MAX_CLASSIFICATION_CHARS else rejected.raw
    return Event(
        level=EventLevel.WARNING,
        kind=SKIPPED_EVENT,
        message=f"workflow {workflow_panoptes_id}: classification {named} skipped: {rejected.reason}",
        payload={
            "workflow": workflow_panoptes_id,
            "panoptes_id": rejected.panoptes_id,
            "reason": rejected.reason,
            "sha256": digest,
            "raw_chars": len(rejected.raw),
            "raw_truncated": len(kept) < len(rejected.raw),
            "raw": kept,
        },
    )


# --- one classification -------------------------------------------------------------------------


def read_classification(item: Any) -> Incoming:
    """Check one API classification and read what its row needs, or raise
    :class:`UnusableClassification` with the first thing wrong with it."""
    if not isinstance(item, Mapping):
        raise UnusableClassification(f"not a JSON object but {type(item).__name__} {shown(item)}")
    panoptes_id = read_id(item.get("id"))
    size = len(raw_json(item))
    if size > MAX_CLASSIFICATION_CHARS:
        raise UnusableClassification(f"{size} characters of JSON, more than {MAX_CLASSIFICATION_CHARS}")
    links = _links(item)
    subject_panoptes_id = _subject_panoptes_id(links)
    user_id = _user_id(links)
    annotations = _annotations(item)
    metadata = _metadata(item)
    token = None if user_id is not None else _storable("metadata.session", anonymous_token(metadata))
    return Incoming(
        panoptes_id=panoptes_id,
        subject_panoptes_id=subject_panoptes_id,
        user_id=user_id,
        anonymous_token=token,
        workflow_version=_workflow_version(metadata),
        created_at=_created_at(item),
        raw_annotations=raw_json(annotations),
        raw_metadata=raw_json(metadata) if metadata is not None else None,
    )


def classification_row(item: Incoming, workflow_id: int, subjects: Mapping[int, int]) -> Classification:
    """A ``Classification`` row from one checked API classification, its payload kept as received."""
    return Classification(
        panoptes_id=item.panoptes_id,
        workflow_id=workflow_id,
        workflow_version=item.workflow_version,
        subject_panoptes_id=item.subject_panoptes_id,
        subject_id=subjects.get(item.subject_panoptes_id),
        user_id=item.user_id,
        anonymous_token=item.anonymous_token,
        volunteer_key=volunteer_key(item.user_id, item.anonymous_token, item.panoptes_id),
        created_at=item.created_at,
        source=ClassificationSource.API,
        raw_annotations=item.raw_annotations,
        raw_metadata=item.raw_metadata,
    )


def raw_json(value: Any) -> str:
    """JSON text as Panoptes sends it: compact, keys in the order received, non-ASCII as is. A lone
    surrogate (half an emoji cut by a front end) cannot be stored as UTF-8: then the text is kept
    with every non-ASCII character escaped, the same JSON value."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)
    return text


def _links(item: Mapping[str, Any]) -> Mapping[str, Any]:
    links = item.get("links")
    if links is None:
        return {}
    if not isinstance(links, Mapping):
        raise UnusableClassification(f"links is {type(links).__name__}, not an object")
    return links


def _subject_panoptes_id(links: Mapping[str, Any]) -> int:
    subjects = links.get("subjects")
    if not isinstance(subjects, list) or not subjects:
        raise UnusableClassification("no links.subjects")
    return read_id(subjects[0], "links.subjects[0]")


def _user_id(links: Mapping[str, Any]) -> int | None:
    user = links.get("user")
    return None if user in (None, "") else read_id(user, "links.user")


def _annotations(item: Mapping[str, Any]) -> list[Any]:
    if "annotations" not in item:
        raise UnusableClassification("no annotations")
    annotations = item["annotations"]
    if not isinstance(annotations, list):
        raise UnusableClassification(f"annotations are {type(annotations).__name__}, not a list")
    return annotations


def _metadata(item: Mapping[str, Any]) -> Mapping[str, Any] | None:
    metadata = item.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise UnusableClassification(f"metadata is {type(metadata).__name__}, not an object")
    return metadata


def _workflow_version(metadata: Mapping[str, Any] | None) -> str | None:
    version = metadata.get("workflow_version") if metadata is not None else None
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, str | int | float):
        raise UnusableClassification(f"metadata.workflow_version is not a version: {shown(version)}")
    text = _storable("metadata.workflow_version", str(version))
    if text is not None and len(text) > VERSION_CHARS:
        raise UnusableClassification(f"metadata.workflow_version is longer than {VERSION_CHARS} characters")
    return text


def _storable(name: str, text: str | None) -> str | None:
    """``text`` if a database column can hold it: PostgreSQL refuses NUL, UTF-8 a lone surrogate."""
    if text is None:
        return None
    try:
        text.encode()
    except UnicodeEncodeError:
        raise UnusableClassification(f"{name} is not valid Unicode: {shown(text)}") from None
    if "\x00" in text:
        raise UnusableClassification(f"{name} holds a NUL character: {shown(text)}")
    return text


def _created_at(item: Mapping[str, Any]) -> datetime:
    text = item.get("created_at")
    if not isinstance(text, str):
        raise UnusableClassification("no created_at" if text is None else f"created_at is not a time: {shown(text)}")
    try:
        moment = datetime.fromisoformat(text)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise UnusableClassification(f"created_at is not an ISO 8601 time: {shown(text)}") from None
