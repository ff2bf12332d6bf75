"""Panoptes resources in the sandbox: how each is stored, serialised, created and changed.

Routes (``api``) and the control API (``control``) both go through these functions, so a subject
made by a test helper looks exactly like one made through ``POST /api/subjects``. Asynchronous
behaviour of the real platform (retirement by a background worker, exports built by a job) is
reproduced lazily: a due time is stored and the effect is visible once it has passed.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from etchacell_loop.sandbox.jsonapi import ApiError
from etchacell_loop.sandbox.store import Row, Store, now_iso

RETIREMENT_REASONS = ("classification_count", "flagged", "nothing_here", "consensus", "other", "human")
SUBJECT_MIME_TYPES = frozenset(
    {
        "application/json", "application/pdf", "audio/aac", "audio/midi", "audio/x-midi", "audio/mp3",
        "audio/mp4", "audio/x-m4a", "audio/mpeg", "audio/wav", "image/jpeg", "image/gif", "image/png",
        "image/tiff", "image/x-icon", "image/svg+xml", "text/csv", "text/plain", "video/mp4", "video/mpeg",
    }
)  # fmt: skip
MIME_EXTENSIONS = {"image/jpeg": "jpeg", "image/png": "png", "image/gif": "gif", "text/plain": "txt"}


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def require(store: Store, rtype: str, rid: int | str) -> Row:
    """The resource, or Panoptes' 404 with its singular-name message."""
    try:
        row = store.get(rtype, int(rid))
    except ValueError:
        row = None
    if row is None:
        raise ApiError(404, f"Could not find {rtype.rstrip('s') if rtype != 'media' else 'media'} with id='{rid}'")
    return row


# --- users and signing -----------------------------------------------------------------------------


def password_digest(password: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{password}".encode()).hexdigest()


def create_user(store: Store, login: str, password: str, *, admin: bool = False, rid: int | None = None) -> Row:
    if find_user(store, login) is not None:
        raise ApiError(422, f"login {login} has already been taken")
    salt = secrets.token_hex(8)
    data = {
        "login": login,
        "display_name": login,
        "email": f"{login}@sandbox.invalid",
        "salt": salt,
        "password": password_digest(password, salt),
        "admin": admin,
        "created_at": now_iso(),
        "updated_at": now_iso(),
    }
    return store.insert("users", data, {}, rid=rid)


def find_user(store: Store, login: str) -> Row | None:
    for row in store.select("users"):
        if row.data["login"].lower() == login.lower():
            return row
    return None


def check_password(row: Row, password: str) -> bool:
    return hmac.compare_digest(row.data["password"], password_digest(password, row.data["salt"]))


def serialize_user(row: Row, store: Store | None = None) -> dict[str, Any]:
    """UserSerializer's fields as the recorded /api/me shows them (``max_subjects`` is ``subject_limit`` today)."""
    return {
        "id": str(row.id),
        "login": row.data["login"],
        "display_name": row.data["display_name"],
        "credited_name": row.data["login"],  # Panoptes falls back to the login
        "email": row.data["email"],
        "created_at": row.data["created_at"],
        "updated_at": row.data["updated_at"],
        "type": "users",
        "global_email_communication": False,
        "project_email_communication": False,
        "beta_email_communication": False,
        "subject_limit": 100,  # Panoptes.max_subjects (USER_SUBJECT_LIMIT) default
        "uploaded_subjects_count": store.count("subjects", where={"user_id": [row.id]}) if store else 0,
        "admin": row.data["admin"],
        "href": f"/users/{row.id}",
        "login_prompt": False,
        "private_profile": True,
        "links": {},
    }


def can_edit_project(store: Store, user_id: int | None, project_id: int) -> bool:
    """Owners and admins edit a project (collaborator roles are not modelled)."""
    if user_id is None:
        return False
    user = store.get("users", user_id)
    project = store.get("projects", project_id)
    return bool(user and project and (user.data["admin"] or project.key("user_id") == user_id))


# --- projects and workflows ----------------------------------------------------------------------


def create_project(store: Store, owner_id: int, display_name: str, rid: int | None = None) -> Row:
    owner = require(store, "users", owner_id)
    slug = f"{owner.data['login']}/{display_name.lower().replace(' ', '-')}"
    data = {
        "display_name": display_name,
        "title": display_name,
        "slug": slug,
        "description": "",
        "introduction": "",
        "private": True,
        "live": False,
        "configuration": {},
        "created_at": now_iso(),
        "updated_at": now_iso(),
    }
    return store.insert("projects", data, {"user_id": owner_id, "project_id": None}, rid=rid)


def serialize_project(store: Store, row: Row) -> dict[str, Any]:
    workflows = store.select("workflows", where={"project_id": [row.id]})
    sets = store.select("subject_sets", where={"project_id": [row.id]})
    owner_id = row.key("user_id")
    owner = store.get("users", owner_id) if owner_id else None
    return {
        "id": str(row.id),
        **{k: row.data[k] for k in ("display_name", "title", "slug", "description", "introduction")},
        "classifications_count": store.count("classifications", where={"project_id": [row.id]}),
        "subjects_count": store.count("subjects", where={"project_id": [row.id]}),
        "retired_subjects_count": 0,
        "classifiers_count": 0,
        "created_at": row.data["created_at"],
        "updated_at": row.data["updated_at"],
        "available_languages": ["en"],
        "primary_language": "en",
        "private": row.data["private"],
        "live": row.data["live"],
        # Project#state: the paused/finished enum, else "live" or "development"; never null
        # (recorded "live" for project 405; the null in reference §2.2's trimmed example is illustrative).
        "state": "live" if row.data["live"] else "development",
        "configuration": row.data["configuration"],
        "urls": [],
        "tags": [],
        "experimental_tools": [],
        "completeness": 0.0,
        "activity": 0,
        "launch_requested": False,
        "launch_approved": False,
        "beta_requested": False,
        "beta_approved": False,
        "launch_date": None,
        "mobile_friendly": False,
        "featured": False,
        "migrated": False,
        "redirect": "",
        "researcher_quote": "",
        "workflow_description": "",
        "run_subject_set_completion_events": False,
        "href": f"/projects/{row.id}",
        "links": {
            "workflows": [str(w.id) for w in workflows],
            "active_workflows": [str(w.id) for w in workflows if w.data["active"]],
            "subject_sets": [str(s.id) for s in sets],
            "owner": {
                "id": str(owner_id),
                "display_name": owner.data["login"] if owner else "",
                "type": "users",
                "href": f"/users/{owner_id}",
            },
            "project_roles": [],
            "pages": [],
            "organizations": [],
            "avatar": {"href": f"/projects/{row.id}/avatar", "type": "avatars"},
            "background": {"href": f"/projects/{row.id}/background", "type": "backgrounds"},
            "attached_images": {"href": f"/projects/{row.id}/attached_images", "type": "attached_images"},
            "classifications_export": {
                "href": f"/projects/{row.id}/classifications_export",
                "type": "classifications_exports",
            },
            "subjects_export": {"href": f"/projects/{row.id}/subjects_export", "type": "subjects_exports"},
        },
    }


def freehand_task(instruction: str, tool_label: str) -> dict[str, Any]:
    """A drawing task with one freehandLine tool, as the project builder writes it."""
    return {
        "T0": {
            "type": "drawing",
            "instruction": instruction,
            "help": "",
            "tools": [{"type": "freehandLine", "label": tool_label, "color": "#00ff00", "details": []}],
        }
    }


def create_workflow(
    store: Store,
    project_id: int,
    display_name: str,
    tasks: dict[str, Any],
    *,
    configuration: dict[str, Any] | None = None,
    retirement: dict[str, Any] | None = None,
    prioritized: bool = False,
    rid: int | None = None,
) -> Row:
    data = {
        "display_name": display_name,
        "tasks": tasks,
        "steps": [],
        "first_task": next(iter(tasks), ""),
        "primary_language": "en",
        "version_major": 1,
        "version_minor": 1,
        "content_language": "en",
        "prioritized": prioritized,
        "grouped": False,
        "pairwise": False,
        "retirement": retirement or {"criteria": "classification_count", "options": {"count": 15}},
        "active": True,
        "mobile_friendly": False,
        "configuration": configuration or {},
        "public_gold_standard": False,
        "subject_set_ids": [],
        "created_at": now_iso(),
        "updated_at": now_iso(),
        "finished_at": None,
    }
    return store.insert("workflows", data, {"project_id": project_id}, rid=rid)


def serialize_workflow(store: Store, row: Row) -> dict[str, Any]:
    retired = sum(
        1
        for status in store.select("subject_workflow_statuses", where={"workflow_id": [row.id]})
        if status_view(status)["retired_at"] is not None
    )
    return {
        "id": str(row.id),
        "display_name": row.data["display_name"],
        "tasks": row.data["tasks"],
        "steps": row.data["steps"],
        "classifications_count": store.count("classifications", where={"workflow_id": [row.id]}),
        "subjects_count": sum(
            store.count("set_member_subjects", where={"subject_set_id": [sid]}) for sid in row.data["subject_set_ids"]
        ),
        "created_at": row.data["created_at"],
        "updated_at": row.data["updated_at"],
        "finished_at": row.data["finished_at"],
        "first_task": row.data["first_task"],
        "primary_language": row.data["primary_language"],
        "version": f"{row.data['version_major']}.{row.data['version_minor']}",
        "content_language": row.data["content_language"],
        "prioritized": row.data["prioritized"],
        "grouped": row.data["grouped"],
        "pairwise": row.data["pairwise"],
        "retirement": row.data["retirement"],
        "retired_set_member_subjects_count": retired,
        "href": f"/workflows/{row.id}",
        "active": row.data["active"],
        "mobile_friendly": row.data["mobile_friendly"],
        "configuration": row.data["configuration"],
        "public_gold_standard": row.data["public_gold_standard"],
        "completeness": 0.0,
        "links": {
            "project": str(row.key("project_id")),
            "subject_sets": [str(s) for s in row.data["subject_set_ids"]],
            "tutorial_subject": None,
            "published_version": None,
            "attached_images": {"href": f"/workflows/{row.id}/attached_images", "type": "attached_images"},
            "classifications_export": {
                "href": f"/workflows/{row.id}/classifications_export",
                "type": "classifications_exports",
            },
        },
    }


def link_subject_sets_to_workflow(store: Store, workflow: Row, set_ids: Sequence[int]) -> Row:
    """Link sets to a workflow; their subjects get a status row for it, as Panoptes' worker does."""
    linked = list(workflow.data["subject_set_ids"])
    with store.transaction():
        for set_id in set_ids:
            subject_set = require(store, "subject_sets", set_id)
            if subject_set.key("project_id") != workflow.key("project_id"):
                raise ApiError(422, "Couldn't find linked subject_sets for current user")
            if set_id not in linked:
                linked.append(set_id)
                store.update(
                    subject_set, {**subject_set.data, "workflow_ids": [*subject_set.data["workflow_ids"], workflow.id]}
                )
                for member in store.select("set_member_subjects", where={"subject_set_id": [set_id]}):
                    ensure_status(store, member.key("subject_id") or 0, workflow.id)
        return store.update(workflow, {**workflow.data, "subject_set_ids": linked})


def unlink_subject_set_from_workflow(store: Store, workflow: Row, set_id: int) -> Row:
    subject_set = require(store, "subject_sets", set_id)
    with store.transaction():
        store.update(
            subject_set,
            {**subject_set.data, "workflow_ids": [w for w in subject_set.data["workflow_ids"] if w != workflow.id]},
        )
        return store.update(
            workflow, {**workflow.data, "subject_set_ids": [s for s in workflow.data["subject_set_ids"] if s != set_id]}
        )


# --- subject sets and subjects ---------------------------------------------------------------------


def create_subject_set(
    store: Store, project_id: int, display_name: str, metadata: dict[str, Any], rid: int | None = None
) -> Row:
    data = {
        "display_name": display_name,
        "metadata": metadata,
        "workflow_ids": [],
        "created_at": now_iso(),
        "updated_at": now_iso(),
    }
    return store.insert("subject_sets", data, {"project_id": project_id}, rid=rid)


def serialize_subject_set(store: Store, row: Row) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "display_name": row.data["display_name"],
        "set_member_subjects_count": store.count("set_member_subjects", where={"subject_set_id": [row.id]}),
        "metadata": row.data["metadata"],
        "created_at": row.data["created_at"],
        "updated_at": row.data["updated_at"],
        "href": f"/subject_sets/{row.id}",
        "completeness": {},
        "links": {"project": str(row.key("project_id")), "workflows": [str(w) for w in row.data["workflow_ids"]]},
    }


def create_subject(
    store: Store,
    project_id: int,
    uploader_id: int | None,
    locations: Sequence[Any],
    metadata: dict[str, Any],
    subject_set_ids: Sequence[int] = (),
    external_id: str | None = None,
    rid: int | None = None,
) -> Row:
    """A subject whose media are yet to be PUT to the blob URLs the caller is given."""
    mimes = [_location_mime(location) for location in locations]
    data = {
        "metadata": downcase_priority(metadata),
        "locations": [_new_blob(mime) for mime in mimes],
        "external_id": external_id,
        "zooniverse_id": None,
        "created_at": now_iso(),
        "updated_at": now_iso(),
    }
    with store.transaction():
        row = store.insert("subjects", data, {"project_id": project_id, "user_id": uploader_id}, rid=rid)
        for set_id in subject_set_ids:
            add_to_set(store, set_id, [row.id], project_id)
    return row


def replace_locations(store: Store, row: Row, locations: Sequence[Any]) -> Row:
    """New media for an existing subject: fresh blob keys, to be PUT again."""
    mimes = [_location_mime(location) for location in locations]
    return store.update(row, {**row.data, "locations": [_new_blob(m) for m in mimes], "updated_at": now_iso()})


def _location_mime(location: Any) -> str:
    if isinstance(location, dict) and len(location) == 1:
        mime = next(iter(location))
    elif isinstance(location, str):
        mime = location
    else:
        raise ApiError(422, "locations must be MIME type strings or {mime: url} objects")
    if mime not in SUBJECT_MIME_TYPES:
        raise ApiError(422, f"Location type {mime} is not an allowed media type")
    return "audio/mpeg" if mime in ("audio/mp3", "audio/x-wav") else mime


def _new_blob(mime: str) -> dict[str, str]:
    return {mime: f"subject_location/{uuid.uuid4()}.{MIME_EXTENSIONS.get(mime, mime.split('/')[-1])}"}


def downcase_priority(metadata: dict[str, Any]) -> dict[str, Any]:
    return {("#priority" if key.lower() == "#priority" else key): value for key, value in metadata.items()}


def serialize_subject(store: Store, row: Row, base_url: str, *, for_upload: bool = False) -> dict[str, Any]:
    """Create/update answers carry signed PUT URLs; every GET carries public read URLs."""
    sets = store.select("set_member_subjects", where={"subject_id": [row.id]})
    locations = []
    for location in row.data["locations"]:
        ((mime, key),) = location.items()
        locations.append({mime: signed_put_url(base_url, key, mime) if for_upload else f"{base_url}/_blobs/{key}"})
    return {
        "id": str(row.id),
        "metadata": row.data["metadata"],
        "locations": locations,
        "zooniverse_id": row.data["zooniverse_id"],
        "external_id": row.data["external_id"],
        "created_at": row.data["created_at"],
        "updated_at": row.data["updated_at"],
        "href": f"/subjects/{row.id}",
        "links": {
            "project": str(row.key("project_id")),
            "collections": [],
            "subject_sets": [str(s.key("subject_set_id")) for s in sets],
            "attached_images": {"href": f"/subjects/{row.id}/attached_images", "type": "attached_images"},
        },
    }


def signed_put_url(base_url: str, key: str, mime: str, lifetime_s: int = 300) -> str:
    """An Azure-SAS-like URL on the sandbox's own blob endpoint (``sp=cw``: create and write)."""
    expires = _iso(time.time() + lifetime_s).replace(":", "%3A")
    sig = hashlib.sha256(f"{key}|{expires}".encode()).hexdigest()[:32]
    return f"{base_url}/_blobs/{key}?sv=2018-11-09&se={expires}&sr=b&sp=cw&rsct={mime.replace('/', '%2F')}&sig={sig}"


def add_to_set(store: Store, set_id: int, subject_ids: Sequence[int], project_id: int | None = None) -> None:
    """Insert set members (duplicates ignored, as Panoptes' bulk insert does).

    Any existing subject may join, whatever its project (reference §2.6: only a missing subject is a
    422; the recorded add_subjects cassette links project 231's subject 3156 into project 813's set).
    """
    subject_set = require(store, "subject_sets", set_id)
    existing = {m.key("subject_id") for m in store.select("set_member_subjects", where={"subject_set_id": [set_id]})}
    for subject_id in subject_ids:
        if store.get("subjects", subject_id) is None:
            raise ApiError(422, "Error: check the subject set and all the subjects exist.")
    with store.transaction():
        for subject_id in subject_ids:
            if subject_id in existing:
                continue
            existing.add(subject_id)
            store.insert(
                "set_member_subjects",
                {"priority": None, "created_at": now_iso(), "updated_at": now_iso()},
                {"subject_set_id": set_id, "subject_id": subject_id},
            )
            for workflow_id in subject_set.data["workflow_ids"]:
                ensure_status(store, subject_id, workflow_id)
        store.update(subject_set, {**subject_set.data, "updated_at": now_iso()})


def remove_from_set(store: Store, set_id: int, subject_ids: Sequence[int]) -> None:
    with store.transaction():
        for member in store.select(
            "set_member_subjects", where={"subject_set_id": [set_id], "subject_id": list(subject_ids)}
        ):
            store.delete("set_member_subjects", member.id)


def delete_with_memberships(store: Store, row: Row, member_key: str) -> None:
    """Delete a subject or a subject set together with the set memberships that name it."""
    with store.transaction():
        for member in store.select("set_member_subjects", where={member_key: [row.id]}):
            store.delete("set_member_subjects", member.id)
        store.delete(row.type, row.id)


def serialize_member(row: Row) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "created_at": row.data["created_at"],
        "updated_at": row.data["updated_at"],
        "priority": row.data["priority"],
        "href": f"/set_member_subjects/{row.id}",
        "links": {"subject_set": str(row.key("subject_set_id")), "subject": str(row.key("subject_id"))},
    }


# --- subject workflow statuses and retirement ------------------------------------------------------


def ensure_status(store: Store, subject_id: int, workflow_id: int) -> Row:
    found = store.select("subject_workflow_statuses", where={"subject_id": [subject_id], "workflow_id": [workflow_id]})
    if found:
        return found[0]
    data = {
        "classifications_count": 0,
        "retire_due": None,
        "retirement_reason": None,
        "created_at": now_iso(),
        "updated_at": now_iso(),
    }
    return store.insert("subject_workflow_statuses", data, {"subject_id": subject_id, "workflow_id": workflow_id})


def status_view(row: Row) -> dict[str, Any]:
    """The status as clients see it now: retirement shows only once its worker has 'run'."""
    due = row.data["retire_due"]
    retired = due is not None and time.time() >= due
    return {
        "id": str(row.id),
        "classifications_count": row.data["classifications_count"],
        "retired_at": _iso(due) if retired else None,
        "retirement_reason": row.data["retirement_reason"] if retired else None,
        "created_at": row.data["created_at"],
        "updated_at": _iso(due) if retired else row.data["updated_at"],
        "href": f"/subject_workflow_statuses/{row.id}",
        "links": {"subject": str(row.key("subject_id")), "workflow": str(row.key("workflow_id"))},
    }


def retire(store: Store, workflow: Row, subject_ids: Sequence[int], reason: str, delay_s: float) -> None:
    """Queue retirement: the status changes after ``delay_s``, like Panoptes' RetireSubjectWorker."""
    reason = "nothing_here" if reason == "blank" else reason
    if reason not in RETIREMENT_REASONS:
        raise ApiError(422, "Retirement reason is not included in the list")
    with store.transaction():
        for subject_id in subject_ids:
            if store.get("subjects", subject_id) is None:
                continue
            status = ensure_status(store, subject_id, workflow.id)
            if status.data["retire_due"] is None:
                store.update(status, {**status.data, "retire_due": time.time() + delay_s, "retirement_reason": reason})


def unretire(store: Store, workflow: Row, subject_ids: Sequence[int]) -> None:
    with store.transaction():
        for subject_id in subject_ids:
            status = ensure_status(store, subject_id, workflow.id)
            store.update(
                status, {**status.data, "retire_due": None, "retirement_reason": None, "updated_at": now_iso()}
            )


# --- classifications --------------------------------------------------------------------------------


def create_classification(
    store: Store,
    *,
    workflow: Row,
    subject_ids: Sequence[int],
    annotations: list[Any],
    metadata: dict[str, Any],
    user_id: int | None,
    user_ip: str,
    completed: bool = True,
    created_at: str | None = None,
    retirement_delay_s: float = 0.5,
    rid: int | None = None,
) -> Row:
    """Store a classification as the front end posts it, and count it towards retirement."""
    if not subject_ids:
        raise ApiError(422, "links.subjects must not be empty")
    for subject_id in subject_ids:
        require(store, "subjects", subject_id)
    stamp = created_at or now_iso()
    data = {
        "annotations": annotations,
        "metadata": {k: v for k, v in metadata.items() if k != "workflow_version"},  # kept in its own column
        "completed": completed,
        "gold_standard": None,
        "expert_classifier": None,
        # The front end sends the version it showed; Panoptes stores that, not the current one.
        "workflow_version": str(
            metadata.get("workflow_version") or f"{workflow.data['version_major']}.{workflow.data['version_minor']}"
        ),
        "subject_ids": [int(s) for s in subject_ids],
        "user_ip": user_ip,
        "created_at": stamp,
        "updated_at": stamp,
    }
    keys = {
        "project_id": workflow.key("project_id"),
        "workflow_id": workflow.id,
        "subject_id": int(subject_ids[0]),
        "user_id": user_id,
    }
    with store.transaction():
        row = store.insert("classifications", data, keys, rid=rid)
        if completed:
            for subject_id in subject_ids:
                _count_towards_retirement(store, workflow, int(subject_id), retirement_delay_s)
    return row


def _count_towards_retirement(store: Store, workflow: Row, subject_id: int, delay_s: float) -> None:
    status = ensure_status(store, subject_id, workflow.id)
    count = status.data["classifications_count"] + 1
    updated = {**status.data, "classifications_count": count, "updated_at": now_iso()}
    rule = workflow.data["retirement"]
    limit = (rule.get("options") or {}).get("count", 15)
    if rule.get("criteria") == "classification_count" and count >= limit and updated["retire_due"] is None:
        updated["retire_due"] = time.time() + delay_s
        updated["retirement_reason"] = "classification_count"
    store.update(status, updated)


def serialize_classification(row: Row) -> dict[str, Any]:
    metadata = {**row.data["metadata"], "workflow_version": row.data["workflow_version"]}  # re-added by the serializer
    return {
        "id": str(row.id),
        "annotations": row.data["annotations"],
        "created_at": row.data["created_at"],
        "updated_at": row.data["updated_at"],
        "metadata": metadata,
        "href": f"/classifications/{row.id}",
        "links": {
            "project": str(row.key("project_id")),
            "user": str(row.key("user_id")) if row.key("user_id") is not None else None,
            "user_group": None,
            "workflow": str(row.key("workflow_id")),
            "subjects": [str(s) for s in row.data["subject_ids"]],
        },
    }


# --- subject selection (what the classifier shows next) ----------------------------------------------

QUEUE_PAGE_SIZE = 10  # Workflow#selector_page_size default
FALLBACK_LIMIT = 100  # FALLBACK_SELECTION_LIMIT


def queued_subject_ids(
    store: Store, workflow: Row, user_id: int | None, subject_set_id: int | None, limit: int, rng: random.Random
) -> tuple[list[int], str]:
    """The subjects ``GET /subjects/queued`` offers, and the selection state, as Panoptes'
    ``Subjects::Selector`` with the built-in PostgreSQL selector chooses them.

    Normal selection: members of the workflow's sets that are not retired for it and, for a signed-in
    volunteer, not yet seen (classified) by them in this workflow; anonymous volunteers get any
    unretired ones. ``subject_set_id`` narrows the choice only for grouped workflows, as in Panoptes.
    A prioritized workflow serves subjects in ``#priority`` order (lowest first; unset last), others a
    random sample. When nothing is left, the *failover fallback*: any of the workflow's subjects
    (shuffled, at most 100), flagged ``retired``/``already_seen`` by the serializer.
    """
    set_ids = list(workflow.data["subject_set_ids"])
    if not set_ids:
        raise ApiError(404, "no subject set is associated with this workflow")
    if workflow.data["grouped"] and subject_set_id is not None:
        set_ids = [subject_set_id]
    members = [m.key("subject_id") or 0 for m in store.select("set_member_subjects", where={"subject_set_id": set_ids})]
    members = list(dict.fromkeys(members))
    if not members:
        raise ApiError(404, "No data available for selection")
    retired = retired_subject_ids(store, workflow.id, members)
    seen = seen_subject_ids(store, workflow.id, user_id)
    available = [s for s in members if s not in retired and s not in seen]
    if available:
        return _pick(store, workflow, available, limit, rng), "normal"
    fallback = members[:FALLBACK_LIMIT]
    rng.shuffle(fallback)
    return fallback, "failover_fallback"


def _pick(store: Store, workflow: Row, available: list[int], limit: int, rng: random.Random) -> list[int]:
    if not workflow.data["prioritized"]:
        return rng.sample(available, min(limit, len(available)))
    priorities = {s: _priority(store, s) for s in available}
    ordered = sorted(available, key=lambda s: (priorities[s] is None, priorities[s] or 0.0, s))
    return ordered[:limit]


def _priority(store: Store, subject_id: int) -> float | None:
    subject = store.get("subjects", subject_id)
    value = subject.data["metadata"].get("#priority") if subject else None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def retired_subject_ids(store: Store, workflow_id: int, subject_ids: Sequence[int]) -> set[int]:
    """Subjects whose retirement for the workflow has taken effect."""
    statuses = store.select("subject_workflow_statuses", where={"workflow_id": [workflow_id]})
    wanted = set(subject_ids)
    return {
        s.key("subject_id") or 0
        for s in statuses
        if s.key("subject_id") in wanted and status_view(s)["retired_at"] is not None
    }


def seen_subject_ids(store: Store, workflow_id: int, user_id: int | None) -> set[int]:
    """What Panoptes' UserSeenSubject holds: the subjects the user classified in this workflow."""
    if user_id is None:
        return set()
    rows = store.select("classifications", where={"workflow_id": [workflow_id], "user_id": [user_id]})
    return {int(s) for row in rows for s in row.data["subject_ids"]}


def serialize_queued_subject(store: Store, row: Row, base_url: str, context: dict[str, Any]) -> dict[str, Any]:
    """SubjectSelectorSerializer: the subject's own fields plus the selection context."""
    item = serialize_subject(store, row, base_url)
    return {
        "id": item["id"],
        "metadata": item["metadata"],
        "locations": item["locations"],
        "zooniverse_id": item["zooniverse_id"],
        "created_at": item["created_at"],
        "updated_at": item["updated_at"],
        "href": item["href"],
        "selected_at": context["selected_at"],
        "retired": row.id in context["retired"],
        "already_seen": row.id in context["seen"],
        "finished_workflow": context["finished_workflow"],
        "user_has_finished_workflow": context["user_has_finished_workflow"],
        "favorite": False,
        "selection_state": context["selection_state"],
        "links": {"project": item["links"]["project"], "collections": []},
    }
