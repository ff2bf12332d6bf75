"""Pull new classifications from Panoptes into the database, each exactly once.

Why this way: ``/classifications/project?last_id=N`` pages by id (keyset), so the workflow's
:class:`~etchacell_loop.db.models.SyncCursor` only needs the highest id stored. Each page is stored
in ONE transaction that also moves the cursor: a crash between pages loses nothing (the cursor
never runs ahead of the rows) and duplicates nothing (ids already stored are skipped, so a page
pulled twice is harmless). The raw annotations and metadata are kept as the JSON text received,
because parsing is another module's job and must be able to run again on the original.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from etchacell_loop.annotations import anonymous_token, volunteer_key
from etchacell_loop.config import Settings
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
from etchacell_loop.panoptes.errors import PanoptesError
from etchacell_loop.panoptes.gateway import PanoptesGateway

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]


@dataclass
class IngestResult:
    """What one ingest run did. ``skipped``: already stored; ``unusable``: logged as events."""

    pages: int = 0
    fetched: int = 0
    inserted: int = 0
    skipped: int = 0
    unusable: int = 0
    last_id: int = 0


class UnusableClassification(ValueError):
    """A classification without what every row needs (an id, a subject, a creation time)."""


def ingest_classifications(
    session_factory: SessionFactory,
    gateway: PanoptesGateway,
    workflow_row: Workflow,
    project_panoptes_id: int,
    page_size: int = 100,
) -> IngestResult:
    """Store every classification of the workflow newer than its cursor; safe to run at any time."""
    if workflow_row.id is None:
        raise ValueError("the workflow row has no id (not flushed?)")
    start = cursor_position(session_factory, workflow_row.id)
    result = IngestResult(last_id=start)
    for page in gateway.classification_pages(project_panoptes_id, workflow_row.panoptes_id, start, page_size):
        _store_page(session_factory, workflow_row.id, page, result)
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
    pull fails is logged as an event and retried next run; the others go on."""
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
                session_factory, gateway, workflow, project_id, settings.panoptes.page_size
            )
        except PanoptesError as exc:
            result.failed[workflow.panoptes_id] = str(exc)
            log.warning("ingest of workflow %d failed: %s", workflow.panoptes_id, exc)
            with session_factory() as session:
                session.add(
                    Event(
                        level=EventLevel.WARNING,
                        kind="ingest.failed",
                        message=f"workflow {workflow.panoptes_id}: {exc}",
                        payload={"workflow": workflow.panoptes_id},
                    )
                )
                session.commit()
    return result


def cursor_position(session_factory: SessionFactory, workflow_id: int) -> int:
    """The highest classification id stored for the workflow (0 before the first ingest)."""
    with session_factory() as session:
        cursor = session.exec(select(SyncCursor).where(SyncCursor.workflow_id == workflow_id)).first()
        return cursor.last_classification_id if cursor else 0


def _store_page(
    session_factory: SessionFactory, workflow_id: int, page: Sequence[Mapping[str, Any]], result: IngestResult
) -> None:
    """One page, one transaction: new rows, unusable ones as events, and the cursor."""
    with session_factory() as session:
        cursor = _locked_cursor(session, workflow_id)
        usable, unusable = _split_usable(page)
        ids = [int(item["id"]) for item in usable]
        stored = _already_stored(session, ids)
        subjects = _subject_ids(session, [_subject_panoptes_id(item) for item in usable])
        inserted = 0
        for item in usable:
            panoptes_id = int(item["id"])
            if panoptes_id in stored:
                result.skipped += 1
                continue
            stored.add(panoptes_id)
            session.add(classification_row(item, workflow_id, subjects))
            inserted += 1
        for item, reason in unusable:
            session.add(_unusable_event(item, reason))
        page_max = max([*ids, *(_loose_id(item) for item, _ in unusable)], default=0)
        cursor.last_classification_id = max(cursor.last_classification_id, page_max)
        cursor.n_ingested += inserted
        cursor.updated_at = utcnow()
        session.commit()
        result.last_id = cursor.last_classification_id
    result.pages += 1
    result.fetched += len(page)
    result.inserted += inserted
    result.unusable += len(unusable)


def _locked_cursor(session: Session, workflow_id: int) -> SyncCursor:
    """The workflow's cursor, row-locked on PostgreSQL so two ingesters take turns per page."""
    statement = select(SyncCursor).where(SyncCursor.workflow_id == workflow_id).with_for_update()
    cursor = session.exec(statement).first()
    if cursor is None:
        cursor = SyncCursor(workflow_id=workflow_id, last_classification_id=0)
        session.add(cursor)
        session.flush()
    return cursor


def _already_stored(session: Session, ids: Sequence[int]) -> set[int]:
    if not ids:
        return set()
    statement = select(Classification.panoptes_id).where(col(Classification.panoptes_id).in_(ids))
    return set(session.exec(statement).all())


def _subject_ids(session: Session, panoptes_ids: Sequence[int]) -> dict[int, int]:
    """Our subject row ids for the Panoptes subject ids we know."""
    if not panoptes_ids:
        return {}
    statement = select(Subject.panoptes_id, Subject.id).where(col(Subject.panoptes_id).in_(set(panoptes_ids)))
    return {panoptes_id: row_id for panoptes_id, row_id in session.exec(statement).all() if panoptes_id and row_id}


def _split_usable(
    page: Sequence[Mapping[str, Any]],
) -> tuple[list[Mapping[str, Any]], list[tuple[Mapping[str, Any], str]]]:
    usable: list[Mapping[str, Any]] = []
    unusable: list[tuple[Mapping[str, Any], str]] = []
    for item in page:
        try:
            int(item["id"])
            _subject_panoptes_id(item)
            _created_at(item)
        except (UnusableClassification, KeyError, TypeError, ValueError) as exc:
            unusable.append((item, str(exc) or type(exc).__name__))
        else:
            usable.append(item)
    return usable, unusable


def classification_row(item: Mapping[str, Any], workflow_id: int, subjects: Mapping[int, int]) -> Classification:
    """A ``Classification`` row from one API classification, its payload kept as received."""
    links = item.get("links") or {}
    metadata = item.get("metadata")
    user_id = _optional_int(links.get("user"))
    subject_panoptes_id = _subject_panoptes_id(item)
    token = None if user_id is not None else anonymous_token(metadata)
    version = metadata.get("workflow_version") if isinstance(metadata, Mapping) else None
    return Classification(
        panoptes_id=int(item["id"]),
        workflow_id=workflow_id,
        workflow_version=str(version) if version is not None else None,
        subject_panoptes_id=subject_panoptes_id,
        subject_id=subjects.get(subject_panoptes_id),
        user_id=user_id,
        anonymous_token=token,
        volunteer_key=volunteer_key(user_id, token, int(item["id"])),
        created_at=_created_at(item),
        source=ClassificationSource.API,
        raw_annotations=raw_json(item.get("annotations", [])),
        raw_metadata=raw_json(metadata) if metadata is not None else None,
    )


def raw_json(value: Any) -> str:
    """JSON text as Panoptes sends it: compact, keys in the order received, non-ASCII as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _subject_panoptes_id(item: Mapping[str, Any]) -> int:
    subjects = (item.get("links") or {}).get("subjects")
    if not isinstance(subjects, list) or not subjects:
        raise UnusableClassification("no links.subjects")
    return int(subjects[0])


def _created_at(item: Mapping[str, Any]) -> datetime:
    text = item.get("created_at")
    if not isinstance(text, str):
        raise UnusableClassification("no created_at")
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def _loose_id(item: Mapping[str, Any]) -> int:
    try:
        return int(item["id"])
    except (KeyError, TypeError, ValueError):
        return 0


def _unusable_event(item: Mapping[str, Any], reason: str) -> Event:
    return Event(
        level=EventLevel.WARNING,
        kind="classification_unusable",
        message=f"classification {item.get('id')!r} not stored: {reason}",
        payload={"raw": raw_json(item)},
    )
