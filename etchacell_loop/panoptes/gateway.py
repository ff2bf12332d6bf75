"""The only code that talks to Panoptes: a thin, typed layer over panoptes-client.

Why a gateway: the loop needs a handful of Panoptes operations (subject sets, subjects with media,
links, retirement, classifications) with guarantees the client does not give: timeouts, retries
with backoff, a clear error for bad credentials, media uploads that are checked instead of silently
dropped, and subject creation that is never repeated behind our back. The client is still used the
way its users use it (``Panoptes.connect``, ``SubjectSet``, ``Workflow``, ``Subject.find``,
``client.get``/``post``), with :class:`~etchacell_loop.panoptes.http.RetryingAdapter` mounted on its
session underneath.

Every method enters ``with client:`` so the client it uses is this gateway's, never whichever one
the thread-local global happens to hold.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import requests
from panoptes_client import Panoptes, Project, Subject, SubjectSet, Workflow
from panoptes_client.panoptes import PanoptesAPIException

from etchacell_loop.config import PanoptesSettings
from etchacell_loop.panoptes.errors import (
    PanoptesAuthError,
    PanoptesCredentialsMissing,
    PanoptesError,
    PanoptesMediaError,
    PanoptesRequestError,
    one_line,
    without_queries,
)
from etchacell_loop.panoptes.http import RetryingAdapter, RetryPolicy, Sleep, mount
from etchacell_loop.panoptes.items import id_or_none

log = logging.getLogger(__name__)

BATCH_SIZE = 100  # Panoptes' page-size limit; the client batches links and retirements the same way
UPLOAD_KEY = "#upload_key"  # hidden metadata (leading #): not shown to volunteers
RETIREMENT_REASONS = frozenset({"classification_count", "flagged", "nothing_here", "consensus", "other", "human"})

MEDIA_THREADS = 5  # frames uploaded and checked at once (panoptes-client uses 5 threads too)

Frame = tuple[str, bytes]  # (MIME type, content)
J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class CreatedSubject:
    """A subject Panoptes just created, with one signed PUT URL per frame, in frame order."""

    id: int
    put_urls: list[tuple[str, str]]  # (MIME type, signed PUT URL)


@dataclass(frozen=True)
class MediaReport:
    """What Panoptes serves for a subject's frames: read URLs, and which frames are missing or wrong."""

    locations: list[str]
    bad_frames: list[int]

    @property
    def ok(self) -> bool:
        return not self.bad_frames


def connect(
    settings: PanoptesSettings,
    policy: RetryPolicy | None = None,
    *,
    sleep: Sleep = time.sleep,
    rng: random.Random | None = None,
) -> PanoptesGateway:
    """Sign in with client credentials and fetch the first token now, so bad credentials fail at once;
    a credential not configured fails before anything is sent, naming its setting."""
    missing = missing_credentials(settings)
    if missing is not None:
        raise PanoptesCredentialsMissing(settings.client_id, missing)
    assert settings.client_secret is not None  # missing_credentials says so otherwise
    adapter = RetryingAdapter(policy or RetryPolicy.from_settings(settings), sleep=sleep, rng=rng)
    client = Panoptes.connect(
        endpoint=settings.endpoint,
        client_id=settings.client_id,
        client_secret=settings.client_secret.get_secret_value(),
        # Empty, not None: with None the client would sign in as $PANOPTES_USERNAME during construction.
        username="",
        password="",
    )
    mount(client.session, adapter)
    gateway = PanoptesGateway(client, adapter)
    try:
        gateway.refresh_token()
    except BaseException:
        gateway.close()
        raise
    return gateway


def missing_credentials(settings: PanoptesSettings) -> str | None:
    """What is missing to sign in, as its setting and environment variable (None: nothing). The one
    wording for the library and the CLI, which checks before it connects."""
    if not settings.client_id:
        return "no client id: set ETCHACELL_PANOPTES__CLIENT_ID (or panoptes.client_id in etchacell.toml)"
    if settings.client_secret is None:
        return (
            f"no client secret for client id {settings.client_id}: set ETCHACELL_PANOPTES__CLIENT_SECRET "
            "(or panoptes.client_secret_file in etchacell.toml)"
        )
    return None


@dataclass(frozen=True)
class WorkflowInfo:
    """A workflow as Panoptes describes it."""

    panoptes_id: int
    display_name: str
    version: str
    active: bool
    caesar_data_fetching: bool


@dataclass(frozen=True)
class ProjectInfo:
    """A project and its workflows as Panoptes describes them."""

    panoptes_id: int
    display_name: str
    workflows: tuple[WorkflowInfo, ...]


class PanoptesGateway:
    """Typed Panoptes operations for the loop. Build it with :func:`connect`."""

    def __init__(self, client: Panoptes, adapter: RetryingAdapter) -> None:
        self._client = client
        self._adapter = adapter
        self._blobs = requests.Session()  # media storage: no Panoptes token must reach it
        mount(self._blobs, adapter)
        self._media_pool = ThreadPoolExecutor(max_workers=MEDIA_THREADS, thread_name_prefix="panoptes-media")

    # --- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close both sessions; ``Panoptes.connect`` made our client the thread's global: undo that."""
        self._media_pool.shutdown(wait=True)
        self._client.session.close()
        self._blobs.close()
        if getattr(Panoptes._local, "panoptes_client", None) is self._client:
            Panoptes._local.panoptes_client = None

    def __enter__(self) -> PanoptesGateway:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def client(self) -> Panoptes:
        """The underlying panoptes-client instance (its session carries the retrying adapter)."""
        return self._client

    def refresh_token(self) -> str:
        """Make sure a valid bearer token is held (the client refreshes it before every call anyway)."""
        with self._calling("token request"):
            token = self._client.get_bearer_token()
        if not token:
            raise PanoptesAuthError(self._client.client_id, "no access token in Panoptes' answer")
        return str(token)

    # --- project and workflows --------------------------------------------------------------------

    def describe_project(self, project_id: int) -> ProjectInfo:
        """The project and its workflows as Panoptes has them now (names, versions, Caesar flag)."""
        with self._calling(f"project {project_id}"):
            project = Project.find(project_id)
            workflows = [
                WorkflowInfo(
                    panoptes_id=int(w.id),
                    display_name=str(w.display_name),
                    version=str(w.version),
                    active=bool(w.active),
                    caesar_data_fetching=bool((w.configuration or {}).get("enable_caesar_data_fetching")),
                )
                for w in Workflow.where(project_id=project_id)
            ]
        return ProjectInfo(int(project.id), str(project.display_name), tuple(workflows))

    # --- subject sets ----------------------------------------------------------------------------

    def ensure_subject_set(self, project_id: int, display_name: str, workflow_id: int | None = None) -> int:
        """The id of the project's subject set with this name, created if missing, linked to the
        workflow when one is given. Safe to call again: finds instead of creating twice."""
        with self._calling(f"subject set {display_name!r}"):
            subject_set_id = self._find_subject_set(project_id, display_name)
            if subject_set_id is None:
                subject_set = SubjectSet()
                subject_set.links.project = str(project_id)
                subject_set.display_name = display_name
                subject_set.save()
                subject_set_id = int(subject_set.id)
                log.info("created subject set %d %r in project %d", subject_set_id, display_name, project_id)
            if workflow_id is not None:
                Workflow.find(workflow_id).add_subject_sets([str(subject_set_id)])
        return subject_set_id

    def _find_subject_set(self, project_id: int, display_name: str) -> int | None:
        matches = [
            int(found.id)
            for found in SubjectSet.where(project_id=project_id, display_name=display_name)
            if found.raw.get("display_name") == display_name
        ]
        return min(matches) if matches else None

    def workflow_subject_set_ids(self, workflow_id: int) -> list[int]:
        """The subject sets a workflow serves to volunteers."""
        with self._calling(f"workflow {workflow_id}"):
            workflow = Workflow.find(workflow_id)
            return sorted(int(i) for i in workflow.raw.get("links", {}).get("subject_sets", []))

    # --- subjects and media ----------------------------------------------------------------------

    def create_subject(
        self,
        project_id: int,
        subject_set_id: int,
        frames: Sequence[Frame],
        metadata: Mapping[str, Any],
    ) -> CreatedSubject:
        """One ``POST /api/subjects`` (never repeated: a repeat could create a second subject),
        already in ``subject_set_id``. Upload each frame to the returned URLs next."""
        if not frames:
            raise ValueError("a subject needs at least one frame")
        body = {
            "subjects": {
                "locations": [mime for mime, _ in frames],
                "metadata": dict(metadata),
                "links": {"project": str(project_id), "subject_sets": [str(subject_set_id)]},
            }
        }
        with self._calling("create subject"):
            response, _ = self._client.post("/subjects", json=body)
        raw = _first(response, "subjects")
        return CreatedSubject(id=int(raw["id"]), put_urls=_location_pairs(raw))

    def upload_media(self, put_url: str, data: bytes, mime: str) -> None:
        """PUT one frame to its signed URL (Azure block-blob style); raise unless it was stored."""
        with _converted("media upload"):
            response = self._blobs.put(
                put_url, data=data, headers={"Content-Type": mime, "x-ms-blob-type": "BlockBlob"}
            )
            response.close()
        if response.status_code not in (200, 201):
            raise PanoptesMediaError(f"media upload refused: HTTP {response.status_code}")

    def upload_frames(self, created: CreatedSubject, frames: Sequence[Frame]) -> None:
        """Upload every frame of a subject to the URLs Panoptes gave for it, in order."""
        if len(created.put_urls) != len(frames):
            raise PanoptesMediaError(
                f"subject {created.id}: Panoptes gave {len(created.put_urls)} upload URLs for {len(frames)} frames"
            )
        jobs = [(url, data, mime) for (mime, url), (_, data) in zip(created.put_urls, frames, strict=True)]
        self._in_parallel(lambda job: self.upload_media(*job), jobs)

    def verify_media(self, subject_id: int, expected: Sequence[Frame]) -> MediaReport:
        """Check each frame as volunteers would fetch it: present, with the right type and size."""
        with self._calling(f"subject {subject_id}"):
            served = _location_pairs(Subject.find(subject_id).raw)
        checks = [
            (index, served[index][1], len(data))
            for index, (mime, data) in enumerate(expected)
            if index < len(served) and served[index][0] == mime
        ]
        with _converted(f"media of subject {subject_id}"):
            present = self._in_parallel(lambda check: self._blob_has(check[1], check[2]), checks)
        good = {index for (index, _, _), ok in zip(checks, present, strict=True) if ok}
        bad = [index for index in range(len(expected)) if index not in good]
        bad.extend(range(len(expected), len(served)))  # frames Panoptes has that we never sent
        return MediaReport(locations=[url for _, url in served], bad_frames=bad)

    def _blob_has(self, url: str, size: int) -> bool:
        response = self._blobs.head(url, allow_redirects=True)
        response.close()
        return response.status_code == 200 and response.headers.get("Content-Length") == str(size)

    def replace_media(self, subject_id: int, frames: Sequence[Frame]) -> None:
        """Give a subject fresh media: new locations (new signed URLs), then upload every frame.

        Used when a subject exists but its media is missing or wrong (a crash or a dropped upload).
        The ETag comes from a fresh ``Subject.find``: an index ETag would be refused (412)."""
        with self._calling(f"replace media of subject {subject_id}"):
            etag = Subject.find(subject_id).etag
            response, _ = self._client.put(
                f"/subjects/{subject_id}",
                json={"subjects": {"locations": [mime for mime, _ in frames]}},
                etag=etag,
            )
        raw = _first(response, "subjects")
        self.upload_frames(CreatedSubject(id=subject_id, put_urls=_location_pairs(raw)), frames)

    def subjects_by_upload_key(self, subject_set_id: int) -> dict[str, int]:
        """``#upload_key`` → subject id for every subject in a set (lowest id if a key repeats)."""
        found: dict[str, int] = {}
        with self._calling(f"subjects of set {subject_set_id}"):
            for subject in Subject.where(subject_set_id=subject_set_id, page_size=BATCH_SIZE):
                key = (subject.raw.get("metadata") or {}).get(UPLOAD_KEY)
                if isinstance(key, str):
                    subject_id = int(subject.id)
                    found[key] = min(subject_id, found.get(key, subject_id))
        return found

    # --- links and retirement --------------------------------------------------------------------

    def link_subjects(self, subject_set_id: int, subject_ids: Sequence[int]) -> None:
        """Add subjects to a set, 100 per request; already-linked subjects are ignored by Panoptes."""
        for batch in _batches(subject_ids):
            with self._calling(f"link subjects to set {subject_set_id}"):
                self._client.post(
                    f"/subject_sets/{subject_set_id}/links/subjects",
                    json={"subjects": [str(i) for i in batch]},
                )

    def unlink_subjects(self, subject_set_id: int, subject_ids: Sequence[int]) -> None:
        """Remove subjects from a set (the subjects themselves stay), 100 per request."""
        for batch in _batches(subject_ids):
            ids = ",".join(str(i) for i in batch)
            with self._calling(f"unlink subjects from set {subject_set_id}"):
                self._client.delete(f"/subject_sets/{subject_set_id}/links/subjects/{ids}")

    def retire_subjects(self, workflow_id: int, subject_ids: Sequence[int], reason: str) -> None:
        """Retire subjects in a workflow, 100 per request. Panoptes answers 204 and retires them
        in the background, so their status changes a little later."""
        if reason not in RETIREMENT_REASONS:
            raise ValueError(f"retirement reason {reason!r} is not one of {', '.join(sorted(RETIREMENT_REASONS))}")
        for batch in _batches(subject_ids):
            with self._calling(f"retire subjects in workflow {workflow_id}"):
                self._client.post(
                    f"/workflows/{workflow_id}/retired_subjects",
                    json={"subject_ids": [str(i) for i in batch], "retirement_reason": reason},
                )

    # --- classifications -------------------------------------------------------------------------

    def classification_pages(
        self, project_id: int, workflow_id: int, last_id: int, page_size: int = BATCH_SIZE
    ) -> Iterator[list[Any]]:
        """Pages of raw classifications with ids above ``last_id``, oldest first (keyset paging on
        ``/classifications/project``). Stops at the first empty page.

        Items are handed on as Panoptes sent them, whatever they hold: checking them is the
        caller's job. Paging only needs the page's highest readable id (or, on a page without one,
        the ``last_id`` of Panoptes' own ``next_href``), so a malformed item never stops it, and
        it stops rather than ask for the same page twice."""
        while True:
            params: dict[str, Any] = {
                "project_id": project_id,
                "workflow_id": workflow_id,
                "last_id": last_id,
                "page_size": page_size,
            }
            with self._calling(f"classifications after {last_id}"):
                response, _ = self._client.get("/classifications/project", params=params)
            page = _classification_items(response)
            if not page:
                return
            yield page
            following = _next_last_id(page, response)
            if following is None or following <= last_id:
                log.warning("classifications after %d: no id to page on past this page; stopping", last_id)
                return
            last_id = following

    # --- plumbing --------------------------------------------------------------------------------

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Use this gateway's client, and turn the client's exceptions into ours."""
        with _converted(what), self._client:
            yield

    def _in_parallel(self, work: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        """Run ``work`` over ``jobs`` on the media threads, as panoptes-client uploads media; results
        in order, and the first failure raised (where the client would drop it)."""
        if len(jobs) <= 1:
            return [work(job) for job in jobs]
        return list(self._media_pool.map(work, jobs))

    def pause_before_retry(self, failures: int, retry_after: float | None = None) -> None:
        """Wait as the retry policy says before trying an operation again (used by callers that
        retry whole operations the adapter may not repeat, such as creating a subject)."""
        self._adapter.pause(failures, retry_after)


@contextmanager
def _converted(what: str) -> Iterator[None]:
    """The client's and requests' exceptions as :class:`PanoptesRequestError`, on one line."""
    try:
        yield
    except PanoptesError:
        raise
    except PanoptesAPIException as exc:
        raise PanoptesRequestError(f"{what}: Panoptes said: {one_line(str(exc))}") from exc
    except requests.RequestException as exc:
        raise PanoptesRequestError(f"{what}: {type(exc).__name__}: {without_queries(one_line(str(exc)))}") from exc
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PanoptesRequestError(f"{what}: unexpected answer from Panoptes ({type(exc).__name__})") from exc


def _classification_items(response: Any) -> list[Any]:
    """The ``classifications`` of an index answer, as sent; an answer of another shape has none."""
    items = response.get("classifications") if isinstance(response, dict) else None
    return list(items) if isinstance(items, list) else []


def _next_last_id(page: Sequence[Any], response: Any) -> int | None:
    """Where the next keyset page starts: the highest readable id on this one, else the ``last_id``
    of the answer's ``meta.classifications.next_href`` (Panoptes computes it from the rows)."""
    ids = [found for item in page if isinstance(item, dict) and (found := id_or_none(item.get("id"))) is not None]
    if ids:
        return max(ids)
    meta = response.get("meta") if isinstance(response, dict) else None
    paging = meta.get("classifications") if isinstance(meta, dict) else None
    href = paging.get("next_href") if isinstance(paging, dict) else None
    if not isinstance(href, str):
        return None
    values = parse_qs(urlsplit(href).query).get("last_id")
    return id_or_none(values[0]) if values else None


def _first(response: Any, key: str) -> dict[str, Any]:
    items = response.get(key) if isinstance(response, dict) else None
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise PanoptesRequestError(f"Panoptes' answer has no {key}")
    return items[0]


def _location_pairs(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``[{"image/jpeg": url}, ...]`` → ``[("image/jpeg", url), ...]``, in frame order."""
    pairs: list[tuple[str, str]] = []
    for location in raw.get("locations") or []:
        if isinstance(location, dict):
            pairs.extend((str(mime), str(url)) for mime, url in location.items())
    return pairs


def _batches(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), BATCH_SIZE):
        yield list(ids[start : start + BATCH_SIZE])
