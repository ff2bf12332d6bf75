"""``/_sandbox``: the test-control API (seed, faults, users, bulk classifications, inventory).

Never faulted, no authentication: the sandbox listens on loopback and exists for tests, staging
and the demo. Everything it creates goes through the same resource functions as the real API.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from etchacell_loop.sandbox import resources as res
from etchacell_loop.sandbox.config import DEFAULT_USER, FaultPlan
from etchacell_loop.sandbox.jsonapi import ApiError
from etchacell_loop.sandbox.runtime import Runtime, RuntimeDep

router = APIRouter(prefix="/_sandbox")

SEGMENTATION_INSTRUCTION = "Trace the nuclear envelope of the nucleus in the middle of the image."
CORRECTION_INSTRUCTION = "The machine has drawn the nuclear envelope. Correct its line where it is wrong."


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise ApiError(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "body must be a JSON object")
    return body


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.post("/seed")
async def seed(request: Request, rt: RuntimeDep) -> dict[str, int]:
    """A fresh project owned by the default user, with a tracing and a correction workflow."""
    body = await _body(request)
    return seed_project(rt, str(body.get("display_name") or ""), int(body.get("retirement_count", 30)))


def seed_project(rt: Runtime, display_name: str = "", retirement_count: int = 30) -> dict[str, int]:
    owner = res.find_user(rt.store, DEFAULT_USER)
    assert owner is not None
    with rt.store.transaction():
        name = display_name or f"Etch a Cell sandbox {rt.store.next_id('seed_counter')}"
        project = res.create_project(rt.store, owner.id, name)
        retirement = {"criteria": "classification_count", "options": {"count": retirement_count}}
        segmentation = res.create_workflow(
            rt.store,
            project.id,
            "Trace the nuclear envelope",
            res.freehand_task(SEGMENTATION_INSTRUCTION, "Nuclear envelope"),
            retirement=retirement,
        )
        correction = res.create_workflow(
            rt.store, project.id, "Correct the machine's outline",
            res.freehand_task(CORRECTION_INSTRUCTION, "Nuclear envelope"),
            configuration={"enable_caesar_data_fetching": True}, retirement=retirement, prioritized=True,
        )  # fmt: skip
    return {
        "project_id": project.id,
        "segmentation_workflow_id": segmentation.id,
        "correction_workflow_id": correction.id,
    }


@router.get("/faults")
def get_faults(rt: RuntimeDep) -> dict[str, Any]:
    return rt.faults.plan.as_dict()


@router.put("/faults")
async def put_faults(request: Request, rt: RuntimeDep) -> Response:
    try:
        plan = FaultPlan.from_dict(await _body(request), base=FaultPlan())
    except (ValueError, TypeError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    rt.faults.set(plan)
    return JSONResponse(plan.as_dict())


@router.delete("/faults")
def clear_faults(rt: RuntimeDep) -> dict[str, Any]:
    rt.faults.set(FaultPlan())
    return rt.faults.plan.as_dict()


@router.post("/users")
async def create_user(request: Request, rt: RuntimeDep) -> dict[str, int]:
    body = await _body(request)
    login, password = str(body.get("login", "")), str(body.get("password", ""))
    if not login or not password:
        raise ApiError(422, "login and password are required")
    return {"id": res.create_user(rt.store, login, password).id}


@router.post("/classifications/reserve")
async def reserve_classification_ids(request: Request, rt: RuntimeDep) -> dict[str, list[int]]:
    """Hand out classification ids without storing anything, as Panoptes' sequence does when an
    insert starts. ``/classifications/bulk`` with ``ids`` commits them later: a classification that
    appears below ids already listed, as a slow transaction's does."""
    count = int((await _body(request)).get("count", 1))
    if not 1 <= count <= 10_000:
        raise ApiError(422, "count must be between 1 and 10000")
    with rt.store.transaction():
        return {"ids": [rt.store.next_id("classifications") for _ in range(count)]}


@router.post("/classifications/bulk")
async def bulk_classifications(request: Request, rt: RuntimeDep) -> dict[str, int]:
    """Many classifications at once (benchmarks, big tests), stored exactly as posted ones are;
    with ``ids`` (reserved ones, one per classification) under those ids."""
    body = await _body(request)
    workflow = res.require(rt.store, "workflows", body.get("workflow_id", 0))
    subject_ids = [int(s) for s in body.get("subject_ids") or []]
    per_subject = int(body.get("per_subject", 1))
    annotations = list(body.get("annotations") or [])
    metadata = dict(body.get("metadata") or {})
    reserved = _reserved_ids(rt, body.get("ids"), per_subject * len(subject_ids))
    ids: list[int] = []
    with rt.store.transaction():
        for _ in range(per_subject):
            for subject_id in subject_ids:
                row = res.create_classification(
                    rt.store, workflow=workflow, subject_ids=[subject_id], annotations=annotations,
                    metadata=metadata, user_id=None, user_ip=f"10.0.{len(ids) % 250}.{len(ids) % 7}",
                    retirement_delay_s=rt.config.retirement_delay_s,
                    rid=reserved[len(ids)] if reserved else None,
                )  # fmt: skip
                ids.append(row.id)
    return {"created": len(ids), "first_id": ids[0] if ids else 0, "last_id": ids[-1] if ids else 0}


def _reserved_ids(rt: Runtime, given: Any, needed: int) -> list[int] | None:
    """The ids a bulk request asks for: one per classification, each handed out and still unused."""
    if given is None:
        return None
    try:
        ids = [int(i) for i in given]
    except (TypeError, ValueError):
        raise ApiError(422, "ids must be a list of classification ids") from None
    if len(ids) != needed or len(set(ids)) != needed:
        raise ApiError(422, f"ids must be {needed} different ids, one per classification")
    if any(i >= rt.store.peek_id("classifications") or rt.store.get("classifications", i) for i in ids):
        raise ApiError(422, "ids must be reserved (POST /_sandbox/classifications/reserve) and not used yet")
    return ids


@router.get("/inventory")
def inventory(project_id: int, rt: RuntimeDep) -> dict[str, Any]:
    """What the project holds, blobs included: what tests assert 'exactly once' against."""
    store = rt.store
    subjects = []
    for subject in store.select("subjects", where={"project_id": [project_id]}):
        members = store.select("set_member_subjects", where={"subject_id": [subject.id]})
        locations = []
        for location in subject.data["locations"]:
            ((mime, key),) = location.items()
            path = store.blob_path(key)
            locations.append(
                {"mime": mime, "present": path.is_file(), "bytes": path.stat().st_size if path.is_file() else 0}
            )
        subjects.append(
            {
                "id": subject.id,
                "metadata": subject.data["metadata"],
                "subject_set_ids": [m.key("subject_set_id") for m in members],
                "locations": locations,
            }
        )
    sets = [
        {"id": s.id, "display_name": s.data["display_name"], "workflow_ids": s.data["workflow_ids"]}
        for s in store.select("subject_sets", where={"project_id": [project_id]})
    ]
    workflow_ids = [w.id for w in store.select("workflows", where={"project_id": [project_id]})]
    retired = []
    for status in store.select(
        "subject_workflow_statuses", where={"workflow_id": workflow_ids} if workflow_ids else {"workflow_id": [-1]}
    ):
        view = res.status_view(status)
        if view["retired_at"] is not None:
            retired.append(
                {
                    "subject_id": status.key("subject_id"),
                    "workflow_id": status.key("workflow_id"),
                    "reason": view["retirement_reason"],
                }
            )
    return {
        "subjects": subjects,
        "subject_sets": sets,
        "classifications": store.count("classifications", where={"project_id": [project_id]}),
        "retired": retired,
    }
