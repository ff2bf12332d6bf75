"""Every gateway operation driven through the real panoptes-client against the sandbox."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from etchacell_loop.panoptes.errors import PanoptesError, PanoptesRequestError
from etchacell_loop.panoptes.gateway import PanoptesGateway, connect
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.panoptes.support import FAST_POLICY, jpeg_bytes, panoptes_settings, wait_until

FRAMES = [("image/jpeg", jpeg_bytes(1)), ("image/jpeg", jpeg_bytes(2)), ("image/jpeg", jpeg_bytes(3))]


def test_ensure_subject_set_creates_once_and_links_to_the_workflow_once(
    gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    project, workflow = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    first = gateway.ensure_subject_set(project, "raw slices", workflow_id=workflow)
    again = gateway.ensure_subject_set(project, "raw slices", workflow_id=workflow)
    hidden = gateway.ensure_subject_set(project, "raw slices (staging)")
    assert first == again != hidden
    assert gateway.workflow_subject_set_ids(workflow) == [first]
    sets = {s["display_name"]: s for s in sandbox.inventory(project)["subject_sets"]}
    assert sorted(sets) == ["raw slices", "raw slices (staging)"]
    assert sets["raw slices"]["workflow_ids"] == [workflow]
    assert sets["raw slices (staging)"]["workflow_ids"] == []


def test_created_subject_has_no_media_until_uploaded_and_verification_says_so(
    gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    project = sandbox_project["project_id"]
    subject_set = gateway.ensure_subject_set(project, "media")
    created = gateway.create_subject(project, subject_set, FRAMES, {"#upload_key": "k-1", "slice": 7})
    assert [mime for mime, _ in created.put_urls] == ["image/jpeg"] * 3
    assert gateway.verify_media(created.id, FRAMES).bad_frames == [0, 1, 2]
    gateway.upload_frames(created, FRAMES)
    report = gateway.verify_media(created.id, FRAMES)
    assert report.ok and len(report.locations) == 3 and all("sig=" not in url for url in report.locations)
    (subject,) = sandbox.inventory(project)["subjects"]
    assert subject["metadata"] == {"#upload_key": "k-1", "slice": 7}
    assert subject["subject_set_ids"] == [subject_set]
    assert [loc["bytes"] for loc in subject["locations"]] == [len(data) for _, data in FRAMES]


def test_verification_catches_a_wrong_size_and_replace_media_repairs_it(
    gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    project = sandbox_project["project_id"]
    subject_set = gateway.ensure_subject_set(project, "repair")
    created = gateway.create_subject(project, subject_set, FRAMES, {})
    gateway.upload_media(created.put_urls[0][1], FRAMES[0][1], "image/jpeg")
    gateway.upload_media(created.put_urls[1][1], FRAMES[1][1][:100], "image/jpeg")  # truncated
    assert gateway.verify_media(created.id, FRAMES).bad_frames == [1, 2]
    gateway.replace_media(created.id, FRAMES)
    assert gateway.verify_media(created.id, FRAMES).ok
    (subject,) = sandbox.inventory(project)["subjects"]
    assert all(loc["present"] for loc in subject["locations"])


def test_a_failing_media_upload_raises_instead_of_vanishing(
    gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    project = sandbox_project["project_id"]
    created = gateway.create_subject(project, gateway.ensure_subject_set(project, "blobs"), FRAMES[:1], {})
    sandbox.set_faults(blob_put_failure_rate=1.0)
    with pytest.raises(PanoptesError):
        gateway.upload_frames(created, FRAMES[:1])


def test_a_refused_request_is_a_request_error_with_panoptes_message(
    gateway: PanoptesGateway, sandbox_project: dict[str, int]
) -> None:
    with pytest.raises(PanoptesRequestError, match=r"Panoptes said: .*subject"):
        gateway.link_subjects(gateway.ensure_subject_set(sandbox_project["project_id"], "x"), [999_999_999])


def test_subjects_by_upload_key_pages_links_and_unlinks_in_batches(
    gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    project = sandbox_project["project_id"]
    staging = gateway.ensure_subject_set(project, "many (staging)")
    real = gateway.ensure_subject_set(project, "many")
    ids = [
        gateway.create_subject(project, staging, [("image/jpeg", b"x")], {"#upload_key": f"key-{i}"}).id
        for i in range(130)
    ]
    assert gateway.subjects_by_upload_key(staging) == {f"key-{i}": ids[i] for i in range(130)}
    gateway.link_subjects(real, ids)
    gateway.unlink_subjects(staging, ids)
    assert gateway.subjects_by_upload_key(staging) == {}
    assert len(gateway.subjects_by_upload_key(real)) == 130
    assert all(s["subject_set_ids"] == [real] for s in sandbox.inventory(project)["subjects"])


def test_retire_subjects_in_batches_with_a_reason(
    gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    project, workflow = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    subject_set = gateway.ensure_subject_set(project, "retire", workflow_id=workflow)
    ids = [gateway.create_subject(project, subject_set, [("image/jpeg", b"x")], {}).id for _ in range(105)]
    with pytest.raises(ValueError, match="retirement reason 'bored'"):
        gateway.retire_subjects(workflow, ids, "bored")
    gateway.retire_subjects(workflow, ids, "consensus")

    def all_retired() -> bool:
        return len(sandbox.inventory(project)["retired"]) == 105

    assert wait_until(all_retired, timeout_s=10, interval_s=0.2)  # Panoptes retires in the background
    retired = sandbox.inventory(project)["retired"]
    assert {r["subject_id"] for r in retired} == set(ids)
    assert {(r["workflow_id"], r["reason"]) for r in retired} == {(workflow, "consensus")}


def test_classification_pages_follow_last_id_to_the_end(
    gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    project, workflow = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    subject = gateway.create_subject(project, gateway.ensure_subject_set(project, "c"), [("image/jpeg", b"x")], {})
    bulk = sandbox.bulk_classifications(workflow, [subject.id], per_subject=250)
    pages = list(gateway.classification_pages(project, workflow, last_id=0, page_size=100))
    assert [len(page) for page in pages] == [100, 100, 50]
    ids = [int(item["id"]) for page in pages for item in page]
    assert ids == list(range(bulk["first_id"], bulk["last_id"] + 1))
    resumed = [int(i["id"]) for p in gateway.classification_pages(project, workflow, last_id=ids[149]) for i in p]
    assert resumed == ids[150:]
    other = sandbox_project["correction_workflow_id"]
    assert list(gateway.classification_pages(project, other, last_id=0)) == []


def test_classification_pages_go_on_past_items_without_a_usable_id(
    gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    """A page whose last items have no id (or one that is no id) is paged past: on its highest
    readable id, or on Panoptes' own next_href when no item has one; the items are handed on as sent."""
    project, workflow = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    subject = gateway.create_subject(project, gateway.ensure_subject_set(project, "c"), [("image/jpeg", b"x")], {})
    bulk = sandbox.bulk_classifications(workflow, [subject.id], per_subject=7)
    ids = list(range(bulk["first_id"], bulk["last_id"] + 1))
    kinds = ["missing_id", "fractional_id", "not_an_object", "id_not_a_number"]
    sandbox.set_faults(poison_ids=[ids[2], ids[3], ids[4], ids[6]], poison_kinds=kinds)
    pages = list(gateway.classification_pages(project, workflow, last_id=0, page_size=3))
    items = [item for page in pages for item in page]
    readable = [int(i["id"]) for i in items if isinstance(i, dict) and str(i.get("id", "")).isdigit()]
    assert sorted(set(readable)) == [ids[0], ids[1], ids[5]]
    assert f"classification {ids[4]}" in items  # handed on as sent: checking items is the caller's job
    assert pages[-1][-1]["id"] == f"classification-{ids[6]}"  # reached the end
    singles = list(gateway.classification_pages(project, workflow, last_id=0, page_size=1))
    assert len(singles) == 7  # each id-less page passed on next_href, none asked for twice
    assert any(isinstance(i, dict) and "id" not in i for i in singles[2])


def test_the_token_is_refreshed_when_it_expires(start_sandbox: Callable[..., SandboxProcess]) -> None:
    """Tokens living 3 s (< the client's 2-minute margin): every call fetches a new one, and a call
    made after the first token has expired on the server still succeeds."""
    sandbox = start_sandbox("--token-lifetime-s", "3")
    project = sandbox.seed()
    with connect(panoptes_settings(sandbox), FAST_POLICY) as gateway:
        first = gateway.client.bearer_token
        gateway.ensure_subject_set(project["project_id"], "before expiry")
        time.sleep(3.5)
        expired = httpx.post(
            f"{sandbox.url}/api/subject_sets",
            json={"subject_sets": {"display_name": "stale", "links": {"project": str(project["project_id"])}}},
            headers={"Accept": "application/vnd.api+json; version=1", "Authorization": f"Bearer {first}"},
        )
        assert expired.status_code == 401  # the server really stopped accepting the first token
        gateway.ensure_subject_set(project["project_id"], "after expiry")
        assert gateway.client.bearer_token != first
    assert len(sandbox.inventory(project["project_id"])["subject_sets"]) == 2
