"""Caesar's subject reductions, served beside Panoptes by the sandbox.

What the loop and the classifier need of Caesar (zooniverse/caesar ``SubjectReductionsController``,
``Types::WorkflowType``):

- ``PUT /workflows/:id/reducers/:key/reductions`` with ``{"reduction": {"subject_id", "data",
  "subgroup"?}}`` upserts one reduction per (workflow, reducer key, subject, subgroup; subgroup
  ``_default`` when absent) and answers the stored reduction as JSON. The caller is a Panoptes user
  who may edit the workflow's project (the Bearer token Panoptes issued); a workflow the caller may
  not see is a 404, as Caesar's policy scope makes it.
- ``GET /workflows/:id/reducers/:key/reductions?subject_id=S`` lists a subject's reductions.
- ``POST /graphql`` answers the one query the new front end sends to pre-load machine marks,
  ``{ workflow(id: W) { subject_reductions(subjectId: S, reducerKey: "K") { data } } }``, to anyone
  (as for a workflow with public reductions).

Unlike Caesar, any reducer key is accepted (as if a placeholder reducer were configured for it), and
no subject rules run when a reduction changes. Reductions are stored as sandbox resources, so they
survive a restart like everything else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from etchacell_loop.sandbox import resources as res
from etchacell_loop.sandbox.auth import require_user
from etchacell_loop.sandbox.jsonapi import ApiError
from etchacell_loop.sandbox.runtime import Runtime, RuntimeDep
from etchacell_loop.sandbox.store import Row, now_iso

RTYPE = "subject_reductions"
DEFAULT_SUBGROUP = "_default"
REDUCER_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
GRAPHQL_FIELDS = {
    "data": "data",
    "subjectId": "subject_id",
    "reducerKey": "reducer_key",
    "reducibleId": "reducible_id",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
}

router = APIRouter()


# --- REST ---------------------------------------------------------------------------------------------


@router.put("/workflows/{workflow_id}/reducers/{reducer_key}/reductions")
async def put_reduction(workflow_id: str, reducer_key: str, request: Request, rt: RuntimeDep) -> Response:
    workflow = _workflow_for_editor(rt, request, workflow_id)
    key = _reducer_key(reducer_key)
    item = _reduction_param(await _json_body(request))
    subject = _subject(rt, item.get("subject_id"))
    data = item.get("data")
    if not isinstance(data, dict):
        raise ApiError(422, "reduction.data must be an object")
    subgroup = str(item.get("subgroup") or DEFAULT_SUBGROUP)
    row = upsert_reduction(rt, workflow, key, subject.id, subgroup, data)
    return JSONResponse(serialize_reduction(row))


@router.get("/workflows/{workflow_id}/reducers/{reducer_key}/reductions")
def list_reductions(workflow_id: str, reducer_key: str, request: Request, rt: RuntimeDep) -> Response:
    workflow = _workflow_for_editor(rt, request, workflow_id)
    raw = request.query_params.get("subject_id")
    if raw is None:
        return JSONResponse([])  # Caesar filters on subject_id = NULL: nothing
    try:
        subject_id = int(raw)
    except ValueError:
        raise ApiError(422, "subject_id must be an integer") from None
    rows = subject_reductions(rt, workflow.id, subject_id, _reducer_key(reducer_key))
    return JSONResponse([serialize_reduction(row) for row in rows])


def upsert_reduction(rt: Runtime, workflow: Row, reducer_key: str, subject_id: int, subgroup: str, data: Any) -> Row:
    """Create or replace the reduction of (workflow, reducer, subject, subgroup); unchanged data
    leaves it as it was (its ``lock_version`` and ``updated_at`` only move on a real change)."""
    with rt.store.transaction():
        for row in subject_reductions(rt, workflow.id, subject_id, reducer_key):
            if row.data["subgroup"] != subgroup:
                continue
            if row.data["data"] == data:
                return row
            changed = {
                **row.data,
                "data": data,
                "lock_version": row.data["lock_version"] + 1,
                "updated_at": now_iso(),
            }
            return rt.store.update(row, changed)
        stamp = now_iso()
        stored = {
            "reducer_key": reducer_key,
            "subgroup": subgroup,
            "data": data,
            "lock_version": 0,
            "created_at": stamp,
            "updated_at": stamp,
        }
        keys = {"project_id": workflow.key("project_id"), "workflow_id": workflow.id, "subject_id": subject_id}
        return rt.store.insert(RTYPE, stored, keys)


def subject_reductions(rt: Runtime, workflow_id: int, subject_id: int, reducer_key: str | None) -> list[Row]:
    rows = rt.store.select(RTYPE, where={"workflow_id": [workflow_id], "subject_id": [subject_id]})
    return [r for r in rows if reducer_key is None or r.data["reducer_key"] == reducer_key]


def serialize_reduction(row: Row) -> dict[str, Any]:
    """A ``SubjectReduction`` as Caesar renders it (its columns)."""
    return {
        "id": row.id,
        "reducible_id": row.key("workflow_id"),
        "reducible_type": "Workflow",
        "workflow_id": row.key("workflow_id"),
        "subject_id": row.key("subject_id"),
        "reducer_key": row.data["reducer_key"],
        "subgroup": row.data["subgroup"],
        "data": row.data["data"],
        "store": None,
        "expired": False,
        "lock_version": row.data["lock_version"],
        "created_at": row.data["created_at"],
        "updated_at": row.data["updated_at"],
    }


def _workflow_for_editor(rt: Runtime, request: Request, workflow_id: str) -> Row:
    user_id = require_user(rt, request)
    try:
        row = rt.store.get("workflows", int(workflow_id))
    except ValueError:
        row = None
    project_id = row.key("project_id") if row is not None else None
    if row is None or project_id is None or not res.can_edit_project(rt.store, user_id, project_id):
        raise ApiError(404, f"Couldn't find Workflow with 'id'={workflow_id}")
    return row


def _reducer_key(key: str) -> str:
    if not REDUCER_KEY.match(key):
        raise ApiError(404, f"Couldn't find Reducer with key={key!r}")
    return key


async def _json_body(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/json":
        raise ApiError(415, "Content-Type must be application/json")
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise ApiError(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object")
    return body


def _reduction_param(body: Mapping[str, Any]) -> dict[str, Any]:
    item = body.get("reduction")
    if not isinstance(item, dict) or not item:
        raise ApiError(400, "param is missing or the value is empty: reduction")
    return item


def _subject(rt: Runtime, raw: Any) -> Row:
    try:
        subject_id = int(raw)
    except (TypeError, ValueError):
        raise ApiError(422, "reduction.subject_id must be a subject id") from None
    row = rt.store.get("subjects", subject_id)
    if row is None:
        raise ApiError(404, f"Couldn't find Subject with 'id'={subject_id}")
    return row


# --- GraphQL: the classifier's query ------------------------------------------------------------------

_WORKFLOW = re.compile(r"workflow\s*\(\s*id\s*:\s*(?P<id>[^)\s]+)\s*\)\s*\{", re.S)
_REDUCTIONS = re.compile(r"subject_reductions\s*\((?P<args>[^)]*)\)\s*\{(?P<fields>[^{}]*)\}", re.S)
_ARGUMENT = re.compile(r"(?P<name>\w+)\s*:\s*(?P<value>\"[^\"]*\"|\$?\w+)")


@router.post("/graphql")
async def graphql(request: Request, rt: RuntimeDep) -> Response:
    """The classifier's machine-mark query; anything else is answered with a GraphQL error."""
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        return _graphql_error("the request body is not valid JSON")
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return _graphql_error("no query given")
    variables = body.get("variables") if isinstance(body.get("variables"), dict) else {}
    try:
        return JSONResponse({"data": {"workflow": _answer(rt, body["query"], variables or {})}})
    except ValueError as exc:
        return _graphql_error(str(exc))


def _answer(rt: Runtime, query: str, variables: Mapping[str, Any]) -> dict[str, Any] | None:
    workflow_match = _WORKFLOW.search(query)
    reductions_match = _REDUCTIONS.search(query)
    if workflow_match is None or reductions_match is None:
        raise ValueError("only workflow { subject_reductions(subjectId, reducerKey) { … } } is served here")
    workflow_id = _integer(_value(workflow_match["id"], variables), "id")
    if rt.store.get("workflows", workflow_id) is None:
        return None
    arguments = {m["name"]: _value(m["value"], variables) for m in _ARGUMENT.finditer(reductions_match["args"])}
    if "subjectId" not in arguments:
        raise ValueError("subject_reductions needs subjectId")
    subject_id = _integer(arguments["subjectId"], "subjectId")
    reducer_key = arguments.get("reducerKey")
    fields = reductions_match["fields"].split()
    unknown = [f for f in fields if f not in GRAPHQL_FIELDS]
    if unknown or not fields:
        raise ValueError(f"unknown SubjectReduction fields: {', '.join(unknown) or '(none)'}")
    rows = subject_reductions(rt, workflow_id, subject_id, None if reducer_key is None else str(reducer_key))
    return {"subject_reductions": [_graphql_item(serialize_reduction(r), fields) for r in rows]}


def _value(token: str, variables: Mapping[str, Any]) -> Any:
    if token.startswith("$"):
        if token[1:] not in variables:
            raise ValueError(f"variable {token} is not given")
        return variables[token[1:]]
    return token[1:-1] if token.startswith('"') else token


def _integer(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an ID") from None


def _graphql_item(reduction: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    item = {name: reduction[GRAPHQL_FIELDS[name]] for name in fields}
    for name in ("subjectId", "reducibleId"):
        if name in item:
            item[name] = str(item[name])  # GraphQL IDs are strings
    return item


def _graphql_error(message: str) -> Response:
    return JSONResponse({"errors": [{"message": message}]})
