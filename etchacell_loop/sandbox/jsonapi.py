"""Panoptes' JSON-API envelope: documents, paging meta, hrefs, ETags and error bodies.

Details that clients depend on and that this module reproduces: the top-level key is the plural
type holding an array even for one resource; ids are strings; ``meta.<type>`` hrefs are relative
and omit ``/api``, with parameters in Panoptes' order (page unless 1, page_size unless 20,
include, sort, then filters sorted by key); count-free types report ``count: 0`` and always offer
a ``next_href`` after a non-empty page; index ETags hash the body, show ETags the record version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi.responses import Response

CONTENT_TYPE = "application/vnd.api+json; version=1; charset=utf-8"
ACCEPT = "application/vnd.api+json; version=1"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
COUNT_FREE_TYPES = frozenset({"classifications", "subject_workflow_statuses"})

# Templated top-level links per type, as the serializers declare them.
TYPE_LINKS: Mapping[str, Mapping[str, dict[str, str]]] = {
    "projects": {
        "projects.workflows": {"href": "/workflows?project_id={projects.id}", "type": "workflows"},
        "projects.subject_sets": {"href": "/subject_sets?project_id={projects.id}", "type": "subject_sets"},
        "projects.owner": {"href": "/{projects.owner.href}", "type": "owners"},
    },
    "workflows": {
        "workflows.project": {"href": "/projects/{workflows.project}", "type": "projects"},
        "workflows.subject_sets": {"href": "/subject_sets?workflow_id={workflows.id}", "type": "subject_sets"},
    },
    "subject_sets": {
        "subject_sets.project": {"href": "/projects/{subject_sets.project}", "type": "projects"},
        "subject_sets.workflows": {"href": "/workflows?subject_set_id={subject_sets.id}", "type": "workflows"},
    },
    "subjects": {
        "subjects.project": {"href": "/projects/{subjects.project}", "type": "projects"},
        "subjects.subject_sets": {"href": "/subject_sets?subject_id={subjects.id}", "type": "subject_sets"},
    },
    "set_member_subjects": {
        "set_member_subjects.subject_set": {
            "href": "/subject_sets/{set_member_subjects.subject_set}",
            "type": "subject_sets",
        },
        "set_member_subjects.subject": {"href": "/subjects/{set_member_subjects.subject}", "type": "subjects"},
    },
    "classifications": {
        "classifications.subjects": {"type": "subjects", "href": "/subjects/{classifications.subjects}"},
    },
    "subject_workflow_statuses": {
        "subject_workflow_statuses.subject": {
            "href": "/subjects/{subject_workflow_statuses.subject}",
            "type": "subjects",
        },
        "subject_workflow_statuses.workflow": {
            "href": "/workflows/{subject_workflow_statuses.workflow}",
            "type": "workflows",
        },
    },
    "users": {},
    "media": {},
}


class ApiError(Exception):
    """An error Panoptes would answer with ``{"errors":[{"message": ...}]}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Page:
    """Which slice of an index was asked for."""

    number: int
    size: int


def parse_page(params: Mapping[str, str], rtype: str) -> Page:
    """Page number and size from query parameters, clamped as Panoptes clamps them."""
    try:
        number = int(params.get("page", "1") or 1)
        size = int(params.get("page_size", str(DEFAULT_PAGE_SIZE)) or DEFAULT_PAGE_SIZE)
    except ValueError:
        raise ApiError(422, "page and page_size must be integers") from None
    if size <= 0:
        raise ApiError(422, "page_size must be greater than 0")
    limit = 25 if rtype == "workflows" else MAX_PAGE_SIZE
    return Page(max(number, 1), min(size, limit))


def href(path: str, params: Mapping[str, Any]) -> str:
    """A relative href with parameters in Panoptes' order."""
    ordered: list[tuple[str, Any]] = []
    special = ("page", "page_size", "include", "sort")
    for key in special:
        if key in params and params[key] not in (None, ""):
            value = params[key]
            if key == "page" and str(value) == "1":
                continue
            if key == "page_size" and str(value) == str(DEFAULT_PAGE_SIZE):
                continue
            ordered.append((key, value))
    ordered.extend(sorted((k, v) for k, v in params.items() if k not in special and v not in (None, "")))
    if not ordered:
        return path
    return path + "?" + "&".join(f"{k}={quote(str(v), safe=',')}" for k, v in ordered)


def paging_meta(
    rtype: str,
    path: str,
    filters: Mapping[str, Any],
    page: Page,
    count: int | None,
    page_len: int,
) -> dict[str, Any]:
    """``meta.<type>``. ``count=None`` means a count-free type (Panoptes does not count them)."""
    base = {**filters, "page_size": page.size}
    if count is None:
        next_page = page.number + 1 if page_len > 0 else None
        return {
            "page": page.number,
            "page_size": page.size,
            "count": 0,
            "include": [],
            "page_count": 0,
            "previous_page": page.number - 1,
            "next_page": next_page,
            "first_href": href(path, base),
            # previous_page is page-1 even on page 1, so previous_href is too: `…?page=0&…` (reference
            # §2.0 count-free meta; recorded in the user-classifications cassette).
            "previous_href": href(path, {**base, "page": page.number - 1}),
            "next_href": href(path, {**base, "page": next_page}) if next_page else None,
            "last_href": href(path, {**base, "page": 0}),
        }
    page_count = max(1, -(-count // page.size)) if count else 0
    next_page = page.number + 1 if page.number < page_count else None
    previous_page = page.number - 1 if page.number > 1 else None
    return {
        "page": page.number,
        "page_size": page.size,
        "count": count,
        "include": [],
        "page_count": page_count,
        "previous_page": previous_page,
        "next_page": next_page,
        "first_href": href(path, base),
        "previous_href": href(path, {**base, "page": previous_page}) if previous_page else None,
        "next_href": href(path, {**base, "page": next_page}) if next_page else None,
        "last_href": href(path, {**base, "page": page_count or 1}),
    }


def document(rtype: str, items: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The envelope: items under the plural type, templated links, then meta."""
    return {rtype: list(items), "links": dict(TYPE_LINKS.get(rtype, {})), "meta": {rtype: meta}}


def single_meta(rtype: str, path: str) -> dict[str, Any]:
    """The paging meta show/create/update responses carry (one item, one page)."""
    return paging_meta(rtype, path, {}, Page(1, DEFAULT_PAGE_SIZE), 1, 1) | {"first_href": path, "last_href": path}


def show_etag(rtype: str, rid: int, version: int) -> str:
    """A show ETag: changes whenever the record changes (Panoptes hashes the cache key)."""
    digest = hashlib.md5(f"{rtype}/{rid}-{version}".encode(), usedforsecurity=False).hexdigest()
    return f'W/"{digest}"'


def body_etag(body: bytes) -> str:
    """An index ETag: the hash of the body, so it never matches a show ETag."""
    return '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'


def etag_matches(given: str | None, current: str) -> bool:
    """If-Match comparison tolerating the weak prefix either side."""
    if given is None:
        return False
    return given.removeprefix("W/").strip() == current.removeprefix("W/").strip()


def json_response(
    payload: Any, status: int = 200, etag: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON-API response with Panoptes' content type and, for indexes, a body ETag."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    out = dict(headers or {})
    out["ETag"] = etag or body_etag(body)
    return Response(content=body, status_code=status, media_type=CONTENT_TYPE, headers=out)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """Panoptes' error body: ``{"errors":[{"message": ...}]}``."""
    body = json.dumps({"errors": [{"message": message}]}).encode()
    return Response(content=body, status_code=status, media_type=CONTENT_TYPE, headers=dict(headers or {}))
