"""Classification exports: ``creating`` → ``ready``, a gzip CSV in Panoptes' exact column order.

The real export is built by a background job and stored gzip-compressed behind a short-lived
signed URL; a congested export stays ``creating`` forever (panoptes#2623). Here the job "runs"
when a describe call finds its due time passed, and ``export_stuck`` reproduces the congestion.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from etchacell_loop.sandbox import resources as res
from etchacell_loop.sandbox.jsonapi import ApiError, document, json_response, show_etag, single_meta
from etchacell_loop.sandbox.runtime import Runtime
from etchacell_loop.sandbox.store import Row, now_iso

EXPORT_COLUMNS = (
    "classification_id", "user_name", "user_id", "user_ip", "workflow_id", "workflow_name", "workflow_version",
    "created_at", "gold_standard", "expert", "metadata", "annotations", "subject_data", "subject_ids",
)  # fmt: skip


def _linked_key(linked_type: str) -> str:
    return "project_id" if linked_type == "projects" else "workflow_id"


def _find_medium(rt: Runtime, linked_type: str, linked: Row) -> Row | None:
    media = rt.store.select("media", where={_linked_key(linked_type): [linked.id]})
    media = [m for m in media if m.data["linked_type"] == linked_type]
    return media[0] if media else None


def request_export(rt: Runtime, request: Request, linked_type: str, linked: Row, user_id: int) -> Response:
    """POST …/classifications_export: reuse the single medium, reset it to ``creating``."""
    data = {
        "media_type": f"{linked_type.rstrip('s')}_classifications_export",
        "content_type": "text/csv",
        "state": "creating",
        "ready_due": time.time() + rt.config.export_delay_s,
        "stuck": rt.faults.plan.export_stuck,
        "blob_key": None,
        "filename": _filename(linked_type, linked),
        "recipients": [user_id],
        "linked_type": linked_type,
        "linked_id": linked.id,
        "created_at": now_iso(),
        "updated_at": now_iso(),
    }
    existing = _find_medium(rt, linked_type, linked)
    if existing is None:
        medium = rt.store.insert("media", data, {_linked_key(linked_type): linked.id})
    else:
        medium = rt.store.update(existing, {**data, "created_at": existing.data["created_at"]})
    headers = {
        "Location": f"{rt.base_url(request)}/api/{linked_type}/{linked.id}/classifications_export",
        "Last-Modified": str(data["updated_at"]),
    }
    payload = document("media", [_serialize(rt, request, medium)], single_meta("media", "/media"))
    return json_response(payload, 201, etag=show_etag("media", medium.id, medium.version), headers=headers)


def describe_export(rt: Runtime, request: Request, linked_type: str, linked: Row) -> Response:
    """GET …/classifications_export: the medium, built now if its job is due."""
    medium = _find_medium(rt, linked_type, linked)
    if medium is None:
        raise ApiError(404, f"No classifications_export exists for {linked_type.rstrip('s')} #{linked.id}")
    if medium.data["state"] == "creating" and not medium.data["stuck"] and time.time() >= medium.data["ready_due"]:
        medium = _build(rt, medium, linked_type, linked)
    payload = document("media", [_serialize(rt, request, medium)], single_meta("media", "/media"))
    return json_response(payload, etag=show_etag("media", medium.id, medium.version))


def _serialize(rt: Runtime, request: Request, medium: Row) -> dict[str, Any]:
    key = medium.data["blob_key"] or f"exports/{uuid.uuid4()}.csv"
    src = f"{rt.base_url(request)}/_blobs/{key}?sv=2018-11-09&sr=b&sp=r&sig={secrets.token_hex(16)}"
    linked_type, linked_id = medium.data["linked_type"], medium.data["linked_id"]
    return {
        "id": str(medium.id),
        "href": f"/{linked_type}/{linked_id}/classifications_export",
        "src": src,
        "content_type": medium.data["content_type"],
        "media_type": medium.data["media_type"],
        "external_link": False,
        "created_at": medium.data["created_at"],
        "updated_at": medium.data["updated_at"],
        "metadata": {"state": medium.data["state"], "recipients": medium.data["recipients"]},
        "links": {"linked": {"href": f"/{linked_type}/{linked_id}", "id": str(linked_id), "type": linked_type}},
    }


def _filename(linked_type: str, linked: Row) -> str:
    name = linked.data.get("slug", "").split("/")[-1] or linked.data["display_name"].lower().replace(" ", "-")
    return f"{name}-classifications.csv"


def _build(rt: Runtime, medium: Row, linked_type: str, linked: Row) -> Row:
    csv_text = export_csv(rt, linked_type, linked)
    key = f"exports/{uuid.uuid4()}.csv"
    path = rt.store.blob_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(csv_text.encode("utf-8")))
    sidecar = {
        "Content-Type": "text/csv",
        "Content-Encoding": "gzip",
        "Content-Disposition": f'attachment; filename="{medium.data["filename"]}"',
    }
    path.with_name(path.name + ".headers.json").write_text(json.dumps(sidecar))
    return rt.store.update(medium, {**medium.data, "state": "ready", "blob_key": key, "updated_at": now_iso()})


def export_csv(rt: Runtime, linked_type: str, linked: Row) -> str:
    """Every completed classification of the project or workflow, in id order."""
    where = {_linked_key(linked_type): [linked.id]}
    tokens: dict[str, str] = {}  # distinct IP -> random token, new for every export run
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    workflows: dict[int, Row] = {}
    for row in rt.store.select("classifications", where=where):
        if not row.data["completed"]:
            continue
        workflow_id = row.key("workflow_id") or 0
        workflow = workflows.setdefault(workflow_id, res.require(rt.store, "workflows", workflow_id))
        writer.writerow(_export_row(rt, row, workflow, tokens))
    return buffer.getvalue()


def _export_row(rt: Runtime, row: Row, workflow: Row, tokens: dict[str, str]) -> list[Any]:
    ip_token = tokens.setdefault(row.data["user_ip"], secrets.token_hex(10))
    user_id = row.key("user_id")
    user = rt.store.get("users", user_id) if user_id is not None else None
    created = datetime.strptime(row.data["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return [
        row.id,
        user.data["login"] if user else f"not-logged-in-{ip_token}",
        user_id if user_id is not None else "",
        ip_token,
        workflow.id,
        workflow.data["display_name"],
        row.data["workflow_version"],
        created.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "true" if row.data["gold_standard"] else "",
        "true" if row.data["expert_classifier"] else "",
        json.dumps(row.data["metadata"], separators=(",", ":")),
        json.dumps(label_annotations(row.data["annotations"], workflow, row.data["metadata"]), separators=(",", ":")),
        json.dumps(_subject_data(rt, row, workflow), separators=(",", ":")),
        ";".join(str(s) for s in row.data["subject_ids"]),
    ]


def label_annotations(annotations: list[Any], workflow: Row, metadata: dict[str, Any]) -> list[Any]:
    """Add ``task_label`` and per-mark ``tool_label`` as the CSV formatter does; drop FEM ``taskType``."""
    tasks = workflow.data["tasks"]
    fem = str(metadata.get("classifier_version", "")).startswith("2.")
    out = []
    for annotation in annotations:
        if not isinstance(annotation, dict):
            out.append(annotation)
            continue
        task = tasks.get(annotation.get("task"), {})
        labelled: dict[str, Any] = {"task": annotation.get("task"), "task_label": task.get("instruction")}
        value = annotation.get("value")
        if task.get("type") == "drawing" and isinstance(value, list):
            tools = task.get("tools", [])
            labelled["value"] = [_label_mark(mark, tools, fem) for mark in value]
        else:
            labelled["value"] = value
        out.append(labelled)
    return out


def _label_mark(mark: Any, tools: list[dict[str, Any]], fem: bool) -> Any:
    if not isinstance(mark, dict):
        return mark
    index = mark.get("toolIndex") if fem else mark.get("tool")
    label = tools[index].get("label") if isinstance(index, int) and 0 <= index < len(tools) else None
    return {**{k: v for k, v in mark.items() if k not in ("markId", "id")}, "tool_label": label}


def _subject_data(rt: Runtime, row: Row, workflow: Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for subject_id in row.data["subject_ids"]:
        subject = rt.store.get("subjects", subject_id)
        statuses = rt.store.select(
            "subject_workflow_statuses", where={"subject_id": [subject_id], "workflow_id": [workflow.id]}
        )
        retired = None
        if statuses:
            view = res.status_view(statuses[0])
            if view["retired_at"] is not None:
                retired = {
                    "id": int(view["id"]),
                    "workflow_id": workflow.id,
                    "classifications_count": view["classifications_count"],
                    "created_at": view["created_at"],
                    "updated_at": view["updated_at"],
                    "retired_at": view["retired_at"],
                    "subject_id": subject_id,
                    "retirement_reason": view["retirement_reason"],
                }
        out[str(subject_id)] = {"retired": retired, **(subject.data["metadata"] if subject else {})}
    return out
