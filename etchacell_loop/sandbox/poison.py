"""Poisoned classification pages: classifications served with the damage real data can carry.

Why in the sandbox: Panoptes stores what the front ends post, and front ends, migrations and old
projects have posted ids as numbers, users as names, no annotations, wrong types and megabytes of
points. Ingest must record such an item and go on, never stall on it; only a server that serves
them can show that it does. Damage is decided per classification id (``poison_ids``, or a seeded
draw under ``poison_rate``), so a page read twice is damaged the same way, as stored data would be.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from typing import Any

from etchacell_loop.sandbox.config import ODD_KINDS, POISON_KINDS, FaultPlan

Damage = Callable[[dict[str, Any], FaultPlan], Any]


def poison_kind(plan: FaultPlan, classification_id: int) -> str | None:
    """The damage a classification is served with under ``plan``, or ``None`` when it is served whole."""
    if classification_id in plan.poison_ids:
        index = plan.poison_ids.index(classification_id)
        return plan.poison_kinds[index % len(plan.poison_kinds)]
    if plan.poison_rate:
        draw = random.Random(f"{plan.seed}:{classification_id}")
        if draw.random() < plan.poison_rate:
            return draw.choice(plan.poison_kinds)
    return None


def poison_body(body: bytes, plan: FaultPlan) -> bytes:
    """A JSON:API ``classifications`` document with the chosen items damaged; anything else as is."""
    try:
        document = json.loads(body)
    except ValueError:
        return body
    items = document.get("classifications") if isinstance(document, dict) else None
    if not isinstance(items, list):
        return body
    document["classifications"] = [poison_item(item, plan) for item in items]
    return json.dumps(document).encode()


def poison_item(item: Any, plan: FaultPlan) -> Any:
    """One serialised classification, damaged if ``plan`` says so."""
    if not isinstance(item, dict):
        return item
    try:
        kind = poison_kind(plan, int(item["id"]))
    except (KeyError, TypeError, ValueError):
        return item
    if kind is None:
        return item
    damaged = json.loads(json.dumps(item))  # a deep copy: the damage must not leak into the next item
    return DAMAGES[kind](damaged, plan)


def _links(item: dict[str, Any]) -> dict[str, Any]:
    links = item.get("links")
    if not isinstance(links, dict):
        links = item["links"] = {}
    return links


def _metadata(item: dict[str, Any]) -> dict[str, Any]:
    metadata = item.get("metadata")
    if not isinstance(metadata, dict):
        metadata = item["metadata"] = {}
    return metadata


def _set(item: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    item[key] = value
    return item


def _without(item: dict[str, Any], key: str) -> dict[str, Any]:
    item.pop(key, None)
    return item


def _user_not_a_number(item: dict[str, Any], _plan: FaultPlan) -> dict[str, Any]:
    _links(item)["user"] = f"volunteer-{int(item['id']) % 1000}"
    return item


def _fractional_id(item: dict[str, Any], _plan: FaultPlan) -> dict[str, Any]:
    return _set(item, "id", int(item["id"]) + 0.9)


def _subject_not_a_number(item: dict[str, Any], _plan: FaultPlan) -> dict[str, Any]:
    _links(item)["subjects"] = [f"subject-{s}" for s in _links(item).get("subjects") or ["?"]]
    return item


def _missing_subjects(item: dict[str, Any], _plan: FaultPlan) -> dict[str, Any]:
    _links(item)["subjects"] = []
    return item


def _long_version(item: dict[str, Any], _plan: FaultPlan) -> dict[str, Any]:
    _metadata(item)["workflow_version"] = "1." + "9" * 40
    return item


def _nul_in_session(item: dict[str, Any], _plan: FaultPlan) -> dict[str, Any]:
    _links(item)["user"] = None  # the session keys only anonymous volunteers
    _metadata(item)["session"] = "f00d\x00cafe"
    return item


def _annotations(item: dict[str, Any]) -> list[Any]:
    annotations = item.get("annotations")
    return list(annotations) if isinstance(annotations, list) else []


def _huge(item: dict[str, Any], plan: FaultPlan) -> dict[str, Any]:
    padding = {"task": "T9", "value": "x" * plan.poison_huge_chars}
    return _set(item, "annotations", [*_annotations(item), padding])


def _odd_text(item: dict[str, Any], _plan: FaultPlan) -> dict[str, Any]:
    """Valid, but text a database keeps only with care: half an emoji and a NUL inside annotations."""
    note = {"task": "T8", "value": "half an emoji \ud83d, a NUL \x00 and ünïcödé"}
    _metadata(item)["comment"] = "\ud83d\x00"
    return _set(item, "annotations", [*_annotations(item), note])


DAMAGES: Mapping[str, Damage] = {
    "user_not_a_number": _user_not_a_number,
    "fractional_id": _fractional_id,
    "id_not_a_number": lambda item, _plan: _set(item, "id", f"classification-{item['id']}"),
    "id_out_of_range": lambda item, _plan: _set(item, "id", str(2**64 + int(item["id"]))),
    "missing_id": lambda item, _plan: _without(item, "id"),
    "not_an_object": lambda item, _plan: f"classification {item['id']}",
    "links_not_an_object": lambda item, _plan: _set(item, "links", [item.get("links")]),
    "missing_subjects": _missing_subjects,
    "subject_not_a_number": _subject_not_a_number,
    "missing_annotations": lambda item, _plan: _without(item, "annotations"),
    "annotations_not_a_list": lambda item, _plan: _set(item, "annotations", {"T0": item.get("annotations")}),
    "metadata_not_an_object": lambda item, _plan: _set(item, "metadata", "workflow_version=1.1"),
    "bad_created_at": lambda item, _plan: _set(item, "created_at", "yesterday, around tea time"),
    "long_version": _long_version,
    "nul_in_session": _nul_in_session,
    "huge": _huge,
    "odd_text": _odd_text,
}
assert set(DAMAGES) == set(POISON_KINDS) | set(ODD_KINDS), "every poison kind needs its damage"
