"""The ``/api`` routes: the Panoptes resources the loop and panoptes-client use.

Each route parses the request the way Panoptes does (exact Accept header, JSON Content-Type on
writes, Bearer token, If-Match on updates and deletes) and answers with the JSON-API envelope.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from etchacell_loop.sandbox import resources as res
from etchacell_loop.sandbox.auth import current_user, require_user
from etchacell_loop.sandbox.exports import describe_export, request_export
from etchacell_loop.sandbox.jsonapi import (
    ACCEPT,
    DEFAULT_PAGE_SIZE,
    ApiError,
    Page,
    document,
    etag_matches,
    json_response,
    paging_meta,
    parse_page,
    show_etag,
    single_meta,
)
from etchacell_loop.sandbox.runtime import Runtime, RuntimeDep
from etchacell_loop.sandbox.store import Row, now_iso


def require_accept(request: Request) -> None:
    """Panoptes routes are constrained on the exact Accept value; anything else falls to a 404."""
    if request.headers.get("accept", "").strip() != ACCEPT:
        raise ApiError(404, "Not Found")


router = APIRouter(prefix="/api", dependencies=[Depends(require_accept)])


# --- request helpers --------------------------------------------------------------------------------


async def json_body(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type not in ("application/json", "application/vnd.api+json"):
        raise ApiError(415, "Only requests with Content-Type: application/json or application/vnd.api+json are allowed")
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise ApiError(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "The request body must be a JSON object")
    return body


def resource_body(body: Mapping[str, Any], rtype: str) -> dict[str, Any]:
    item = body.get(rtype)
    if not isinstance(item, dict):
        raise ApiError(422, f"Request body must contain a {rtype} object")
    return item


def id_list(params: Mapping[str, str], name: str) -> list[int] | None:
    """A filter given singular or plural (``subject_id=1`` or ``subject_ids=1,2``)."""
    raw = params.get(name) or params.get(name + "s")
    if not raw:
        return None
    try:
        return [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ApiError(422, f"{name} must be integers") from None


def path_ids(raw: str) -> list[int]:
    try:
        return [int(part) for part in raw.split(",") if part]
    except ValueError:
        raise ApiError(404, "Not Found") from None


def check_if_match(request: Request, row: Row) -> None:
    """Updates need If-Match (428) equal to the current show ETag (412): an index ETag never is."""
    given = request.headers.get("if-match")
    if given is None:
        raise ApiError(428, "Request requires If-Match header to be present")
    if not etag_matches(given, show_etag(row.type, row.id, row.version)):
        raise ApiError(412, "JsonApiController::PreconditionFailed")


def require_project_editor(rt: Runtime, request: Request, project_id: int | None) -> int:
    user_id = require_user(rt, request)
    if project_id is None or not res.can_edit_project(rt.store, user_id, project_id):
        raise ApiError(403, "You do not have access to this project")
    return user_id


def editable(rt: Runtime, request: Request, rtype: str, rid: str, *, if_match: bool = False) -> Row:
    """The resource a write acts on: it exists, the caller may edit its project, and (for updates
    and deletes) the caller holds its current show ETag."""
    row = res.require(rt.store, rtype, rid)
    require_project_editor(rt, request, row.key("project_id"))
    if if_match:
        check_if_match(request, row)
    return row


def show(
    rtype: str,
    row: Row,
    item: dict[str, Any],
    status: int = 200,
    extra_headers: dict[str, str] | None = None,
    base_url: str = "",
) -> Response:
    meta = single_meta(rtype, f"/{rtype}?id={row.id}" if status == 200 else f"/{rtype}")
    headers = dict(extra_headers or {})
    if status == 201:
        # Rails' `location:` is an absolute URL (reference §2.4, §2.10; recorded create cassettes).
        headers.setdefault("Location", f"{base_url}/api/{rtype}/{row.id}")
        headers.setdefault("Last-Modified", item.get("updated_at", ""))
    return json_response(
        document(rtype, [item], meta), status, etag=show_etag(rtype, row.id, row.version), headers=headers
    )


def index(
    request: Request,
    rtype: str,
    rows: Sequence[Row],
    serialize: Callable[[Row], dict[str, Any]],
    path: str | None = None,
) -> Response:
    """Offset-paged index over rows already filtered and ordered by the caller."""
    params = dict(request.query_params)
    page = parse_page(params, rtype)
    chunk = rows[(page.number - 1) * page.size : page.number * page.size]
    filters = {k: v for k, v in params.items() if k not in ("page", "page_size", "admin")}
    meta = paging_meta(rtype, path or f"/{rtype}", filters, page, len(rows), len(chunk))
    return json_response(document(rtype, [serialize(r) for r in chunk], meta))


def sql_index(
    request: Request, rt: Runtime, rtype: str, query: dict[str, Any], serialize: Callable[[Row], dict[str, Any]]
) -> Response:
    """Offset-paged index with the paging done in SQL: big sets are never loaded whole."""
    params = dict(request.query_params)
    page = parse_page(params, rtype)
    chunk = rt.store.select(rtype, **query, limit=page.size, offset=(page.number - 1) * page.size)
    total = rt.store.count(rtype, **query)
    filters = {k: v for k, v in params.items() if k not in ("page", "page_size", "admin")}
    meta = paging_meta(rtype, f"/{rtype}", filters, page, total, len(chunk))
    return json_response(document(rtype, [serialize(r) for r in chunk], meta))


def filter_rows(rows: Sequence[Row], **wanted: Any) -> list[Row]:
    """Python-side filters on attributes that are not indexed (display_name, slug)."""
    out = list(rows)
    for key, value in wanted.items():
        if value is not None:
            out = [r for r in out if str(r.data.get(key, "")).lower() == str(value).lower()]
    return out


# --- users ---------------------------------------------------------------------------------------


@router.get("/me")
def me(request: Request, rt: RuntimeDep) -> Response:
    user = res.require(rt.store, "users", require_user(rt, request))
    return show("users", user, res.serialize_user(user, rt.store))


@router.get("/users/{user_id}")
def get_user(user_id: str, rt: RuntimeDep) -> Response:
    user = res.require(rt.store, "users", user_id)
    return show("users", user, res.serialize_user(user, rt.store))


# --- projects --------------------------------------------------------------------------------------


@router.get("/projects")
def list_projects(request: Request, rt: RuntimeDep) -> Response:
    ids = id_list(request.query_params, "id")
    rows = filter_rows(rt.store.select("projects", ids=ids), slug=request.query_params.get("slug"))
    return index(request, "projects", rows, lambda r: res.serialize_project(rt.store, r))


@router.get("/projects/{project_id}")
def get_project(project_id: str, rt: RuntimeDep) -> Response:
    row = res.require(rt.store, "projects", project_id)
    return show("projects", row, res.serialize_project(rt.store, row))


@router.post("/projects/{project_id}/classifications_export")
async def create_project_export(project_id: str, request: Request, rt: RuntimeDep) -> Response:
    await json_body(request)
    project = res.require(rt.store, "projects", project_id)
    user_id = require_project_editor(rt, request, project.id)
    return request_export(rt, request, "projects", project, user_id)


@router.get("/projects/{project_id}/classifications_export")
def get_project_export(project_id: str, request: Request, rt: RuntimeDep) -> Response:
    project = res.require(rt.store, "projects", project_id)
    require_project_editor(rt, request, project.id)
    return describe_export(rt, request, "projects", project)


# --- workflows -------------------------------------------------------------------------------------


@router.get("/workflows")
def list_workflows(request: Request, rt: RuntimeDep) -> Response:
    params = request.query_params
    where = {"project_id": v} if (v := id_list(params, "project_id")) else None
    rows = rt.store.select("workflows", where=where, ids=id_list(params, "id"))
    if (set_ids := id_list(params, "subject_set_id")) is not None:
        rows = [r for r in rows if set(set_ids) & set(r.data["subject_set_ids"])]
    return index(request, "workflows", rows, lambda r: res.serialize_workflow(rt.store, r))


@router.get("/workflows/{workflow_id}")
def get_workflow(workflow_id: str, rt: RuntimeDep) -> Response:
    row = res.require(rt.store, "workflows", workflow_id)
    return show("workflows", row, res.serialize_workflow(rt.store, row))


WORKFLOW_EDITABLE = ("display_name", "active", "configuration", "retirement", "tasks", "first_task", "mobile_friendly")


@router.put("/workflows/{workflow_id}")
async def update_workflow(workflow_id: str, request: Request, rt: RuntimeDep) -> Response:
    item = resource_body(await json_body(request), "workflows")
    row = editable(rt, request, "workflows", workflow_id, if_match=True)
    data = {**row.data, **{k: v for k, v in item.items() if k in WORKFLOW_EDITABLE}, "updated_at": now_iso()}
    if "tasks" in item:
        data["version_major"] = row.data["version_major"] + 1
    elif set(item) & set(WORKFLOW_EDITABLE):
        data["version_minor"] = row.data["version_minor"] + 1
    row = rt.store.update(row, data)
    return show("workflows", row, res.serialize_workflow(rt.store, row))


@router.post("/workflows/{workflow_id}/links/subject_sets")
async def link_workflow_sets(workflow_id: str, request: Request, rt: RuntimeDep) -> Response:
    body = await json_body(request)
    row = editable(rt, request, "workflows", workflow_id)
    row = res.link_subject_sets_to_workflow(rt.store, row, _link_ids(body, "subject_sets"))
    return show("workflows", row, res.serialize_workflow(rt.store, row))


@router.delete("/workflows/{workflow_id}/links/subject_sets/{set_ids}")
def unlink_workflow_sets(workflow_id: str, set_ids: str, request: Request, rt: RuntimeDep) -> Response:
    row = editable(rt, request, "workflows", workflow_id)
    for set_id in path_ids(set_ids):
        row = res.unlink_subject_set_from_workflow(rt.store, row, set_id)
    return Response(status_code=204)


@router.post("/workflows/{workflow_id}/retired_subjects")
async def retire_subjects(workflow_id: str, request: Request, rt: RuntimeDep) -> Response:
    body = await json_body(request)
    row = editable(rt, request, "workflows", workflow_id)
    subject_ids = _subject_ids(body)
    reason = body.get("retirement_reason") or "other"
    res.retire(rt.store, row, subject_ids, str(reason), rt.config.retirement_delay_s)
    return Response(status_code=204)


@router.post("/workflows/{workflow_id}/unretire_subjects")
async def unretire_subjects(workflow_id: str, request: Request, rt: RuntimeDep) -> Response:
    body = await json_body(request)
    row = editable(rt, request, "workflows", workflow_id)
    subject_ids = _subject_ids(body)
    for set_id in body.get("subject_set_ids") or []:
        members = rt.store.select("set_member_subjects", where={"subject_set_id": [int(set_id)]})
        subject_ids.extend(m.key("subject_id") or 0 for m in members)
    res.unretire(rt.store, row, subject_ids)
    return Response(status_code=204)


@router.post("/workflows/{workflow_id}/classifications_export")
async def create_workflow_export(workflow_id: str, request: Request, rt: RuntimeDep) -> Response:
    await json_body(request)
    row = res.require(rt.store, "workflows", workflow_id)
    user_id = require_project_editor(rt, request, row.key("project_id"))
    return request_export(rt, request, "workflows", row, user_id)


@router.get("/workflows/{workflow_id}/classifications_export")
def get_workflow_export(workflow_id: str, request: Request, rt: RuntimeDep) -> Response:
    row = editable(rt, request, "workflows", workflow_id)
    return describe_export(rt, request, "workflows", row)


def _subject_ids(body: Mapping[str, Any]) -> list[int]:
    raw: list[Any] = list(body.get("subject_ids") or [])
    if body.get("subject_id") is not None:
        raw.append(body["subject_id"])
    try:
        return [int(x) for x in raw]
    except (TypeError, ValueError):
        raise ApiError(422, "subject_ids must be integers") from None


def _link_ids(body: Mapping[str, Any], relation: str) -> list[int]:
    if relation not in body or (len(body) != 1 and not set(body) <= {relation, "admin"}):
        raise ApiError(422, f"Link relation {relation} must match body key")
    raw = body[relation]
    values = raw if isinstance(raw, list) else [raw]
    try:
        return [int(x) for x in values]
    except (TypeError, ValueError):
        raise ApiError(422, f"{relation} must be ids") from None


# --- subject sets ----------------------------------------------------------------------------------


@router.get("/subject_sets")
def list_subject_sets(request: Request, rt: RuntimeDep) -> Response:
    params = request.query_params
    where = {"project_id": v} if (v := id_list(params, "project_id")) else None
    rows = filter_rows(
        rt.store.select("subject_sets", where=where, ids=id_list(params, "id")), display_name=params.get("display_name")
    )
    if (workflow_ids := id_list(params, "workflow_id")) is not None:
        rows = [r for r in rows if set(workflow_ids) & set(r.data["workflow_ids"])]
    return index(request, "subject_sets", rows, lambda r: res.serialize_subject_set(rt.store, r))


@router.get("/subject_sets/{set_id}")
def get_subject_set(set_id: str, rt: RuntimeDep) -> Response:
    row = res.require(rt.store, "subject_sets", set_id)
    return show("subject_sets", row, res.serialize_subject_set(rt.store, row))


@router.post("/subject_sets")
async def create_subject_set(request: Request, rt: RuntimeDep) -> Response:
    item = resource_body(await json_body(request), "subject_sets")
    project_id = _link_id(item, "project")
    require_project_editor(rt, request, project_id)
    res.require(rt.store, "projects", project_id)
    if not item.get("display_name"):
        raise ApiError(422, "display_name can't be blank")
    subject_ids = _linked_subjects(item)
    with rt.store.transaction():
        row = res.create_subject_set(rt.store, project_id, str(item["display_name"]), dict(item.get("metadata") or {}))
        if subject_ids:
            res.add_to_set(rt.store, row.id, subject_ids)
            row = res.require(rt.store, "subject_sets", row.id)
    return show(
        "subject_sets", row, res.serialize_subject_set(rt.store, row), status=201, base_url=rt.base_url(request)
    )


@router.put("/subject_sets/{set_id}")
async def update_subject_set(set_id: str, request: Request, rt: RuntimeDep) -> Response:
    item = resource_body(await json_body(request), "subject_sets")
    row = editable(rt, request, "subject_sets", set_id, if_match=True)
    data: dict[str, Any] = {**row.data, **{k: item[k] for k in ("display_name", "metadata") if k in item}}
    data["updated_at"] = now_iso()
    subject_ids = _linked_subjects(item)
    with rt.store.transaction():
        row = rt.store.update(row, data)
        if subject_ids is not None:  # links.subjects replaces the members
            members = rt.store.select("set_member_subjects", where={"subject_set_id": [row.id]})
            gone = [m.key("subject_id") or 0 for m in members if m.key("subject_id") not in subject_ids]
            res.remove_from_set(rt.store, row.id, gone)
            res.add_to_set(rt.store, row.id, subject_ids)
            row = res.require(rt.store, "subject_sets", row.id)
    return show("subject_sets", row, res.serialize_subject_set(rt.store, row))


def _linked_subjects(item: Mapping[str, Any]) -> list[int] | None:
    """``links.subjects`` of a subject set create or update body: Panoptes links them on create and
    replaces the members with them on update (recorded in the add_subjects and update_subject_set
    cassettes; panoptes SubjectSetCreateSchema/UpdateSchema and UpdatableResource#build_update_hash)."""
    raw = (item.get("links") or {}).get("subjects")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ApiError(422, "links.subjects must be an array of ids")
    try:
        return [int(x) for x in raw]
    except (TypeError, ValueError):
        raise ApiError(422, "links.subjects must be an array of ids") from None


@router.delete("/subject_sets/{set_id}")
def delete_subject_set(set_id: str, request: Request, rt: RuntimeDep) -> Response:
    row = editable(rt, request, "subject_sets", set_id, if_match=True)
    res.delete_with_memberships(rt.store, row, "subject_set_id")
    return Response(status_code=204)


@router.post("/subject_sets/{set_id}/links/subjects")
async def link_set_subjects(set_id: str, request: Request, rt: RuntimeDep) -> Response:
    body = await json_body(request)
    row = editable(rt, request, "subject_sets", set_id)
    res.add_to_set(rt.store, row.id, _link_ids(body, "subjects"))
    row = res.require(rt.store, "subject_sets", set_id)
    return show("subject_sets", row, res.serialize_subject_set(rt.store, row))


@router.delete("/subject_sets/{set_id}/links/subjects/{subject_ids}")
def unlink_set_subjects(set_id: str, subject_ids: str, request: Request, rt: RuntimeDep) -> Response:
    row = editable(rt, request, "subject_sets", set_id)
    res.remove_from_set(rt.store, row.id, path_ids(subject_ids))
    return Response(status_code=204)


def _link_id(item: Mapping[str, Any], relation: str) -> int:
    links = item.get("links") or {}
    try:
        return int(links[relation])
    except (KeyError, TypeError, ValueError):
        raise ApiError(422, f"links.{relation} is required") from None


# --- subjects and set members ----------------------------------------------------------------------


@router.get("/subjects")
def list_subjects(request: Request, rt: RuntimeDep) -> Response:
    params = request.query_params
    where = {"project_id": v} if (v := id_list(params, "project_id")) else None
    set_ids = id_list(params, "subject_set_id")
    query = {"where": where, "ids": id_list(params, "id"), "member_of_set": set_ids[0] if set_ids else None}
    return sql_index(request, rt, "subjects", query, lambda r: res.serialize_subject(rt.store, r, rt.base_url(request)))


@router.get("/subjects/queued")
def queued_subjects(request: Request, rt: RuntimeDep) -> Response:
    """What the classifier shows next (Panoptes' ``SubjectsController#queued``); anonymous allowed.

    Declared before ``/subjects/{id}`` so that ``queued`` is never read as an id.
    """
    params = dict(request.query_params)
    if not params.get("workflow_id"):
        raise ApiError(422, "workflow_id parameter missing")
    workflow = res.require(rt.store, "workflows", params["workflow_id"])
    user_id = current_user(rt, request)
    set_ids = id_list(params, "subject_set_id")
    size = int(params.get("page_size") or workflow.data["configuration"].get("subject_queue_page_size", 0) or 0)
    page = parse_page({"page_size": str(size or res.QUEUE_PAGE_SIZE)}, "subjects")
    subject_ids, state = res.queued_subject_ids(
        rt.store, workflow, user_id, set_ids[0] if set_ids else None, page.size, random.Random()
    )
    seen = res.seen_subject_ids(rt.store, workflow.id, user_id)
    context = {
        "selected_at": now_iso(),
        "retired": res.retired_subject_ids(rt.store, workflow.id, subject_ids),
        "seen": seen,
        "finished_workflow": bool(workflow.data["finished_at"]),
        # Panoptes: anonymous volunteers never finish; signed-in ones have once only the fallback is left.
        "user_has_finished_workflow": user_id is not None and state == "failover_fallback",
        "selection_state": state,
    }
    base_url = rt.base_url(request)
    rows = [row for row in (rt.store.get("subjects", s) for s in subject_ids) if row is not None]
    items = [res.serialize_queued_subject(rt.store, row, base_url, context) for row in rows]
    filters = {k: v for k, v in params.items() if k not in ("page", "page_size", "admin")}
    meta = paging_meta("subjects", "/subjects/queued", filters, page, None, len(items))
    return json_response(document("subjects", items, meta))


@router.get("/subjects/{subject_id}")
def get_subject(subject_id: str, request: Request, rt: RuntimeDep) -> Response:
    row = res.require(rt.store, "subjects", subject_id)
    return show("subjects", row, res.serialize_subject(rt.store, row, rt.base_url(request)))


@router.post("/subjects")
async def create_subject(request: Request, rt: RuntimeDep) -> Response:
    item = resource_body(await json_body(request), "subjects")
    project_id = _link_id(item, "project")
    user_id = require_project_editor(rt, request, project_id)
    locations = item.get("locations")
    if not isinstance(locations, list) or not locations:
        raise ApiError(422, "locations is required")
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ApiError(422, "metadata must be an object")
    set_ids = [int(s) for s in (item.get("links") or {}).get("subject_sets") or []]
    row = res.create_subject(rt.store, project_id, user_id, locations, metadata, set_ids, item.get("external_id"))
    return show(
        "subjects",
        row,
        res.serialize_subject(rt.store, row, rt.base_url(request), for_upload=True),
        status=201,
        base_url=rt.base_url(request),
    )


@router.put("/subjects/{subject_id}")
async def update_subject(subject_id: str, request: Request, rt: RuntimeDep) -> Response:
    item = resource_body(await json_body(request), "subjects")
    row = editable(rt, request, "subjects", subject_id, if_match=True)
    if "metadata" in item:
        row = rt.store.update(
            row, {**row.data, "metadata": res.downcase_priority(dict(item["metadata"])), "updated_at": now_iso()}
        )
    uploading = "locations" in item
    if uploading:
        row = res.replace_locations(rt.store, row, item["locations"])
    return show("subjects", row, res.serialize_subject(rt.store, row, rt.base_url(request), for_upload=uploading))


@router.delete("/subjects/{subject_id}")
def delete_subject(subject_id: str, request: Request, rt: RuntimeDep) -> Response:
    row = editable(rt, request, "subjects", subject_id, if_match=True)
    res.delete_with_memberships(rt.store, row, "subject_id")
    return Response(status_code=204)


@router.get("/set_member_subjects")
def list_set_members(request: Request, rt: RuntimeDep) -> Response:
    params = request.query_params
    where: dict[str, list[int]] = {}
    if (set_ids := id_list(params, "subject_set_id")) is not None:
        where["subject_set_id"] = set_ids
    if (subject_ids := id_list(params, "subject_id")) is not None:
        where["subject_id"] = subject_ids
    return sql_index(
        request, rt, "set_member_subjects", {"where": where, "ids": id_list(params, "id")}, res.serialize_member
    )


# --- subject workflow statuses ---------------------------------------------------------------------


@router.get("/subject_workflow_statuses")
def list_statuses(request: Request, rt: RuntimeDep) -> Response:
    params = dict(request.query_params)
    require_user(rt, request)
    where: dict[str, list[int]] = {}
    if (subject_ids := id_list(params, "subject_id")) is not None:
        where["subject_id"] = subject_ids
    if (workflow_ids := id_list(params, "workflow_id")) is not None:
        where["workflow_id"] = workflow_ids
    page = parse_page(params, "subject_workflow_statuses")
    rows = rt.store.select(
        "subject_workflow_statuses",
        where=where,
        ids=id_list(params, "id"),
        limit=page.size,
        offset=(page.number - 1) * page.size,
    )
    filters = {k: v for k, v in params.items() if k not in ("page", "page_size", "admin")}
    meta = paging_meta("subject_workflow_statuses", "/subject_workflow_statuses", filters, page, None, len(rows))
    return json_response(document("subject_workflow_statuses", [res.status_view(r) for r in rows], meta))


@router.get("/subject_workflow_statuses/{status_id}")
def get_status(status_id: str, request: Request, rt: RuntimeDep) -> Response:
    require_user(rt, request)
    row = res.require(rt.store, "subject_workflow_statuses", status_id)
    return show("subject_workflow_statuses", row, res.status_view(row))


# --- classifications -------------------------------------------------------------------------------


@router.post("/classifications")
async def create_classification(request: Request, rt: RuntimeDep) -> Response:
    """As the front ends post them; anonymous volunteers are allowed (no Authorization)."""
    item = resource_body(await json_body(request), "classifications")
    user_id = current_user(rt, request)
    links = item.get("links") or {}
    workflow = res.require(rt.store, "workflows", _link_id(item, "workflow"))
    if str(links.get("project")) != str(workflow.key("project_id")):
        raise ApiError(422, "links.project must be the workflow's project")
    annotations = item.get("annotations")
    if not isinstance(annotations, list):
        raise ApiError(422, "annotations must be an array")
    try:
        subject_ids = [int(s) for s in links.get("subjects") or []]
    except (TypeError, ValueError):
        raise ApiError(422, "links.subjects must be ids") from None
    row = res.create_classification(
        rt.store,
        workflow=workflow,
        subject_ids=subject_ids,
        annotations=annotations,
        metadata=dict(item.get("metadata") or {}),
        user_id=user_id,
        user_ip=_client_ip(request),
        completed=bool(item.get("completed", True)),
        retirement_delay_s=rt.config.retirement_delay_s,
    )
    return show("classifications", row, res.serialize_classification(row), status=201, base_url=rt.base_url(request))


def _client_ip(request: Request) -> str:
    """The volunteer's address; X-Forwarded-For is honoured so simulated volunteers can differ."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[0].strip()
    return request.client.host if request.client else "0.0.0.0"


@router.get("/classifications")
def list_own_classifications(request: Request, rt: RuntimeDep) -> Response:
    user_id = require_user(rt, request)
    return _classification_page(request, rt, {"user_id": [user_id]}, "/classifications")


@router.get("/classifications/project")
def list_project_classifications(request: Request, rt: RuntimeDep) -> Response:
    """Classifications of projects the caller can edit; ``last_id`` switches to keyset paging."""
    user_id = require_user(rt, request)
    params = request.query_params
    project_ids = id_list(params, "project_id")
    if params.get("last_id") and not project_ids:
        raise ApiError(422, "Project ID required if last_id is included")
    if project_ids:
        for project_id in project_ids:
            if not res.can_edit_project(rt.store, user_id, project_id):
                raise ApiError(403, "You do not have access to this project")
        where: dict[str, list[int]] = {"project_id": project_ids}
    else:
        editable = [p.id for p in rt.store.select("projects") if res.can_edit_project(rt.store, user_id, p.id)]
        where = {"project_id": editable}
    return _classification_page(request, rt, where, "/classifications/project")


def _classification_page(request: Request, rt: Runtime, where: dict[str, list[int]], path: str) -> Response:
    params = dict(request.query_params)
    for name in ("workflow_id", "user_id", "subject_id"):
        if (values := id_list(params, name)) is not None:
            where[name] = values
    page = parse_page(params, "classifications")
    filters = {k: v for k, v in params.items() if k not in ("page", "page_size", "admin", "last_id")}
    if params.get("last_id"):
        return _keyset_page(rt, params, where, page, filters, path)
    rows = rt.store.select("classifications", where=where, limit=page.size, offset=(page.number - 1) * page.size)
    meta = paging_meta("classifications", path, filters, page, None, len(rows))
    return json_response(document("classifications", [res.serialize_classification(r) for r in rows], meta))


def keyset_href(path: str, params: Mapping[str, Any]) -> str:
    """The keyset rewrite orders every parameter alphabetically, page_size included (no page)."""
    return path + "?" + "&".join(f"{k}={v}" for k, v in sorted(params.items()))


def _keyset_page(
    rt: Runtime, params: Mapping[str, str], where: dict[str, list[int]], page: Page, filters: dict[str, Any], path: str
) -> Response:
    """``id > last_id`` ascending; next_href rewritten to the page's max id (panoptes#104 fix)."""
    try:
        last_id = int(params["last_id"])
    except ValueError:
        raise ApiError(422, "last_id must be an integer") from None
    rows = rt.store.select("classifications", where=where, after_id=last_id, limit=page.size)
    meta = paging_meta("classifications", path, filters, page, None, len(rows))
    keyset = {**filters, **({"page_size": page.size} if page.size != DEFAULT_PAGE_SIZE else {})}
    meta["previous_href"] = keyset_href(path, {**keyset, "last_id": last_id})
    meta["next_href"] = keyset_href(path, {**keyset, "last_id": rows[-1].id}) if rows else None
    return json_response(document("classifications", [res.serialize_classification(r) for r in rows], meta))
