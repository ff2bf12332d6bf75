"""Idempotent subject upload: every subject reaches Panoptes once, with verified media, even across crashes.

Why this shape. ``POST /api/subjects`` is not idempotent: if its answer is lost (a proxy 502, a
timeout, a killed process) the subject may exist without our knowing its id, and posting again
would make a second one. So, per subject:

1. the database row with its ``upload_key`` is committed (``pending``, ``upload_attempts`` + 1)
   *before* the POST — the intent survives a crash;
2. the subject is created inside a hidden staging set (``<set name> (staging)``, linked to no
   workflow), carrying ``#upload_key`` in its metadata, and its id is committed as soon as known;
3. every frame is PUT to its signed URL and then checked as a volunteer's browser would fetch it
   (panoptes-client never checks: a subject can exist with a missing image); missing frames are
   replaced; the row becomes ``created``;
4. in batches, subjects are linked to the real set and unlinked from staging; rows become ``linked``.

A row that has been attempted but has no ``panoptes_id`` is first looked up by ``#upload_key`` in
the staging and the real set and adopted if found, instead of being posted again. Volunteers only
ever see subjects whose media was verified, and no subject is created twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlmodel import Session, col, select

from etchacell_loop.db.models import Event, EventLevel, Project, Subject, SubjectKind, SubjectSet, UploadState
from etchacell_loop.db.types import utcnow
from etchacell_loop.panoptes.errors import PanoptesAuthError, PanoptesError, PanoptesMediaError, PanoptesUnavailable
from etchacell_loop.panoptes.gateway import UPLOAD_KEY, Frame, PanoptesGateway

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
Progress = Callable[[int, int], None]  # (subjects done, subjects in this upload)
T = TypeVar("T")

STAGING_SUFFIX = " (staging)"
PRIORITY_KEY = "#priority"


@dataclass(frozen=True)
class FrameFile:
    """One flipbook frame on disk."""

    path: Path
    mime: str = "image/jpeg"


@dataclass(frozen=True)
class SubjectUpload:
    """One subject to put on Panoptes: which slice it shows, its frame files, and its metadata."""

    upload_key: str
    roi_id: int
    slice_index: int
    frames: tuple[int, ...]  # volume z index shown by each frame
    target_frame: int
    files: tuple[FrameFile, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    priority: float | None = None
    kind: SubjectKind = SubjectKind.RAW
    model_version_id: int | None = None

    def __post_init__(self) -> None:
        if not self.upload_key:
            raise ValueError("upload_key must not be empty")
        if len(self.files) != len(self.frames) or not self.files:
            raise ValueError(f"{self.upload_key}: {len(self.files)} files for {len(self.frames)} frames")
        if not 0 <= self.target_frame < len(self.frames):
            raise ValueError(f"{self.upload_key}: target_frame {self.target_frame} is not a frame index")

    def panoptes_metadata(self) -> dict[str, Any]:
        """What Panoptes stores: the caller's metadata plus the hidden upload key (and priority)."""
        metadata = dict(self.metadata)
        metadata[UPLOAD_KEY] = self.upload_key
        if self.priority is not None:
            metadata[PRIORITY_KEY] = self.priority
        return metadata

    def read_frames(self) -> list[Frame]:
        return [(frame.mime, frame.path.read_bytes()) for frame in self.files]


@dataclass
class UploadResult:
    """What one upload run did. ``skipped``: already linked before this run."""

    created: int = 0
    adopted: int = 0
    linked: int = 0
    failed: int = 0
    skipped: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # upload_key → last error


@dataclass
class _RowState:
    """The part of a subject row the upload steers by (a detached snapshot)."""

    id: int
    upload_key: str
    panoptes_id: int | None
    state: UploadState
    attempts: int


def upload_subjects(
    session_factory: SessionFactory,
    gateway: PanoptesGateway,
    subject_set: SubjectSet,
    uploads: Sequence[SubjectUpload],
    *,
    max_attempts: int = 5,
    link_batch: int = 100,
    progress: Progress | None = None,
) -> UploadResult:
    """Upload ``uploads`` into ``subject_set`` (a row whose set exists on Panoptes). Safe to re-run
    after a crash or a partial failure: it resumes, adopts, and never creates a subject twice."""
    return _Uploader(session_factory, gateway, subject_set, max_attempts, link_batch, progress).run(uploads)


class _Uploader:
    """One upload run: the staging set, the lookup by upload key, and the rows it moves along."""

    def __init__(
        self,
        session_factory: SessionFactory,
        gateway: PanoptesGateway,
        subject_set: SubjectSet,
        max_attempts: int,
        link_batch: int,
        progress: Progress | None,
    ) -> None:
        if subject_set.id is None or subject_set.panoptes_id is None:
            raise ValueError(f"subject set {subject_set.display_name!r} has no Panoptes id yet")
        if max_attempts < 1 or link_batch < 1:
            raise ValueError("max_attempts and link_batch must be at least 1")
        self.sessions = session_factory
        self.gateway = gateway
        self.set_row_id: int = subject_set.id
        self.set_panoptes_id: int = subject_set.panoptes_id
        self.set_name = subject_set.display_name
        self.max_attempts = max_attempts
        self.link_batch = link_batch
        self.progress = progress
        self.project_panoptes_id = self._project_panoptes_id(subject_set.project_id)
        self.staging_id = 0
        self.result = UploadResult()
        self._staging_keys: dict[str, int] | None = None
        self._real_keys: dict[str, int] | None = None

    # --- the run ---------------------------------------------------------------------------------

    def run(self, uploads: Sequence[SubjectUpload]) -> UploadResult:
        rows = self._register(uploads)
        if all(row.state is UploadState.LINKED for row in rows):
            self.result.skipped = len(rows)
            return self.result
        self.staging_id = self._persist(
            "staging set",
            lambda: self.gateway.ensure_subject_set(self.project_panoptes_id, self.set_name + STAGING_SUFFIX),
        )
        ready: list[_RowState] = []
        for done, (upload, row) in enumerate(zip(uploads, rows, strict=True), start=1):
            if row.state is UploadState.LINKED:
                self.result.skipped += 1
            elif row.state is UploadState.CREATED or self._bring_to_created(row, upload):
                ready.append(row)
            if len(ready) >= self.link_batch:
                self._link(ready)
                ready = []
            if self.progress is not None:
                self.progress(done, len(uploads))
        if ready:
            self._link(ready)
        log.info("upload into %r: %s", self.set_name, self.result)
        return self.result

    def _project_panoptes_id(self, project_id: int) -> int:
        with self.sessions() as session:
            project = session.get(Project, project_id)
            if project is None:
                raise ValueError(f"project row {project_id} does not exist")
            return project.panoptes_id

    def _register(self, uploads: Sequence[SubjectUpload]) -> list[_RowState]:
        """Make sure every upload has its row (committed), and read where each one stands."""
        keys = [upload.upload_key for upload in uploads]
        if len(set(keys)) != len(keys):
            raise ValueError("upload keys repeat within one upload")
        with self.sessions() as session:
            existing = {
                row.upload_key: row for row in session.exec(select(Subject).where(col(Subject.upload_key).in_(keys)))
            }
            for upload in uploads:
                row = existing.get(upload.upload_key)
                if row is None:
                    row = self._new_row(upload)
                    session.add(row)
                    existing[upload.upload_key] = row
                elif row.subject_set_id != self.set_row_id:
                    raise ValueError(f"{upload.upload_key} belongs to another subject set (row {row.subject_set_id})")
            session.flush()
            rows = [_snapshot(existing[key]) for key in keys]
            session.commit()
        return rows

    def _new_row(self, upload: SubjectUpload) -> Subject:
        return Subject(
            upload_key=upload.upload_key,
            roi_id=upload.roi_id,
            subject_set_id=self.set_row_id,
            slice_index=upload.slice_index,
            frames=list(upload.frames),
            target_frame=upload.target_frame,
            kind=upload.kind,
            model_version_id=upload.model_version_id,
            local_dir=str(upload.files[0].path.parent.resolve()),  # absolute: read later from any working directory
            panoptes_metadata=upload.panoptes_metadata(),
            priority=upload.priority,
        )

    # --- one subject -----------------------------------------------------------------------------

    def _bring_to_created(self, row: _RowState, upload: SubjectUpload) -> bool:
        """Create (or adopt) one subject and verify its media; ``False`` if it had to be given up."""
        try:
            frames = upload.read_frames()
        except OSError as exc:
            self._give_up(row, f"cannot read frame files: {exc}")
            return False
        error = ""
        for failures in range(1, self.max_attempts + 1):
            try:
                self._attempt(row, upload, frames)
                return True
            except PanoptesAuthError:
                raise
            except PanoptesError as exc:
                error = str(exc)
                log.warning("subject %s: attempt %d/%d failed: %s", row.upload_key, failures, self.max_attempts, error)
                self._staging_keys = None  # a lost POST may have created it: look again next time
                if failures < self.max_attempts:
                    retry_after = exc.retry_after if isinstance(exc, PanoptesUnavailable) else None
                    self.gateway.pause_before_retry(failures, retry_after)
        self._give_up(row, error)
        return False

    def _attempt(self, row: _RowState, upload: SubjectUpload, frames: list[Frame]) -> None:
        if row.panoptes_id is None and row.attempts > 0:
            found = self._lookup(row.upload_key)
            if found is not None:
                log.info("subject %s: adopting Panoptes subject %d", row.upload_key, found)
                self._record_panoptes_id(row, found)
                self.result.adopted += 1
        if row.panoptes_id is None:
            self._begin_attempt(row)
            created = self.gateway.create_subject(
                self.project_panoptes_id, self.staging_id, frames, upload.panoptes_metadata()
            )
            self._record_panoptes_id(row, created.id)
            self.result.created += 1
            self.gateway.upload_frames(created, frames)
        self._ensure_media(row, frames)  # also where a resumed row with a known id picks up

    def _ensure_media(self, row: _RowState, frames: list[Frame]) -> None:
        assert row.panoptes_id is not None
        report = self.gateway.verify_media(row.panoptes_id, frames)
        if not report.ok:
            log.info("subject %s: frames %s missing or wrong; uploading again", row.upload_key, report.bad_frames)
            self.gateway.replace_media(row.panoptes_id, frames)
            report = self.gateway.verify_media(row.panoptes_id, frames)
            if not report.ok:
                raise PanoptesMediaError(f"subject {row.panoptes_id}: frames {report.bad_frames} still missing")
        self._update(row, upload_state=UploadState.CREATED, locations=report.locations, upload_error=None)

    def _lookup(self, upload_key: str) -> int | None:
        """The Panoptes subject carrying ``upload_key``, in the staging set or the real set."""
        if self._staging_keys is None:
            self._staging_keys = self.gateway.subjects_by_upload_key(self.staging_id)
        if upload_key in self._staging_keys:
            return self._staging_keys[upload_key]
        if self._real_keys is None:
            self._real_keys = self.gateway.subjects_by_upload_key(self.set_panoptes_id)
        return self._real_keys.get(upload_key)

    # --- linking ---------------------------------------------------------------------------------

    def _link(self, rows: list[_RowState]) -> None:
        """Show verified subjects to volunteers: into the real set, out of staging."""
        ids = [row.panoptes_id for row in rows if row.panoptes_id is not None]
        try:
            self._persist("link", lambda: self.gateway.link_subjects(self.set_panoptes_id, ids))
            self._persist("unlink", lambda: self.gateway.unlink_subjects(self.staging_id, ids))
        except PanoptesAuthError:
            raise
        except PanoptesError as exc:
            self.result.failed += len(rows)
            for row in rows:
                self.result.errors[row.upload_key] = str(exc)
                self._update(row, upload_error=f"linking failed: {exc}")
            self._event(EventLevel.WARNING, "subject_link_failed", f"linking {len(ids)} subjects failed: {exc}")
            return
        now = utcnow()
        with self.sessions() as session:
            for row in rows:
                subject = session.get(Subject, row.id)
                assert subject is not None
                subject.upload_state = UploadState.LINKED
                subject.uploaded_at = now
                subject.upload_error = None
                row.state = UploadState.LINKED
            session.commit()
        self.result.linked += len(rows)

    def _persist(self, what: str, operation: Callable[[], T]) -> T:
        """Run an operation that is safe to repeat, up to ``max_attempts`` times."""
        for failures in range(1, self.max_attempts + 1):
            try:
                return operation()
            except PanoptesAuthError:
                raise
            except PanoptesError as exc:
                if failures == self.max_attempts:
                    raise
                log.warning("%s: attempt %d/%d failed: %s", what, failures, self.max_attempts, exc)
                retry_after = exc.retry_after if isinstance(exc, PanoptesUnavailable) else None
                self.gateway.pause_before_retry(failures, retry_after)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- database steps (each its own committed transaction) -------------------------------------

    def _begin_attempt(self, row: _RowState) -> None:
        """Record the intent to POST before posting, so a crash right after leaves a trace."""
        with self.sessions() as session:
            subject = session.get(Subject, row.id)
            assert subject is not None
            subject.upload_attempts += 1
            subject.upload_state = UploadState.PENDING
            session.commit()
            row.attempts = subject.upload_attempts
            row.state = UploadState.PENDING

    def _record_panoptes_id(self, row: _RowState, panoptes_id: int) -> None:
        self._update(row, panoptes_id=panoptes_id)

    def _give_up(self, row: _RowState, error: str) -> None:
        self.result.failed += 1
        self.result.errors[row.upload_key] = error
        self._update(row, upload_state=UploadState.FAILED, upload_error=error)
        self._event(
            EventLevel.ERROR,
            "subject_upload_failed",
            f"upload of {row.upload_key} failed after {self.max_attempts} attempts: {error}",
            subject_id=row.id,
            payload={"upload_key": row.upload_key, "panoptes_id": row.panoptes_id},
        )

    def _update(self, row: _RowState, **values: Any) -> None:
        with self.sessions() as session:
            subject = session.get(Subject, row.id)
            assert subject is not None
            for name, value in values.items():
                setattr(subject, name, value)
            session.commit()
            fresh = _snapshot(subject)
        row.panoptes_id, row.state, row.attempts = fresh.panoptes_id, fresh.state, fresh.attempts

    def _event(
        self,
        level: EventLevel,
        kind: str,
        message: str,
        subject_id: int | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        with self.sessions() as session:
            session.add(Event(level=level, kind=kind, message=message, subject_id=subject_id, payload=payload or {}))
            session.commit()


def _snapshot(subject: Subject) -> _RowState:
    assert subject.id is not None
    return _RowState(
        id=subject.id,
        upload_key=subject.upload_key,
        panoptes_id=subject.panoptes_id,
        state=UploadState(subject.upload_state),
        attempts=subject.upload_attempts,
    )
