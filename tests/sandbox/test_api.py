"""The sandbox behaves as Panoptes does, checked over HTTP and through the real panoptes-client."""

from __future__ import annotations

import csv
import gzip
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from panoptes_client import Classification, Panoptes, Project, Subject, SubjectSet, SubjectWorkflowStatus, Workflow
from panoptes_client.panoptes import PanoptesAPIException
from PIL import Image
from typer.testing import CliRunner

from etchacell_loop.cli.app import app as cli_app
from etchacell_loop.sandbox.exports import EXPORT_COLUMNS
from etchacell_loop.sandbox.harness import SandboxProcess

ACCEPT = "application/vnd.api+json; version=1"


def token(sandbox: SandboxProcess) -> str:
    response = sandbox.request(
        "POST",
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "sandbox", "client_secret": "sandbox-secret"},
    )
    assert response.status_code == 200
    return str(response.json()["access_token"])


def api(sandbox: SandboxProcess, method: str, path: str, bearer: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Accept": ACCEPT, **kwargs.pop("headers", {})}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    if "json" in kwargs:
        headers.setdefault("Content-Type", "application/json")
    return sandbox.request(method, f"/api{path}", headers=headers, **kwargs)


def connect(sandbox: SandboxProcess) -> Panoptes:
    return Panoptes.connect(endpoint=sandbox.url, client_id="sandbox", client_secret="sandbox-secret")


def jpeg_file(tmp_path: Path, shade: int = 128) -> Path:
    path = tmp_path / f"frame-{shade}.jpg"
    Image.new("L", (48, 48), shade).save(path, "JPEG", quality=90)
    return path


def new_subject_set(project_id: int, name: str) -> SubjectSet:
    subject_set = SubjectSet()
    subject_set.links.project = Project(project_id)
    subject_set.display_name = name
    subject_set.save()
    return subject_set


def upload_subjects(project_id: int, image: Path, n: int) -> list[Subject]:
    subjects = []
    for i in range(n):
        subject = Subject()
        subject.links.project = Project(project_id)
        subject.add_location(str(image))
        subject.metadata["Filename"] = f"subject-{i}.jpg"
        subject.save()
        subjects.append(subject)
    return subjects


def post_classification(
    sandbox: SandboxProcess,
    project_id: int,
    workflow_id: int,
    subject_id: int,
    forwarded_for: str = "127.0.0.1",
    **extra: Any,
) -> httpx.Response:
    """As a browser posts it: no Authorization for an anonymous volunteer."""
    body = {
        "classifications": {
            "annotations": [
                {
                    "task": "T0",
                    "taskType": "drawing",
                    "value": [
                        {
                            "frame": 2,
                            "toolIndex": 0,
                            "toolType": "freehandLine",
                            "pathX": [1.5, 9, 3],
                            "pathY": [4, 5, 6.25],
                            "details": [],
                        }
                    ],
                }
            ],
            "metadata": {
                "classifier_version": "2.0",
                "subject_dimensions": [{"naturalWidth": 1000, "naturalHeight": 1000}],
            },
            "completed": True,
            "links": {"project": str(project_id), "workflow": str(workflow_id), "subjects": [str(subject_id)]},
            **extra,
        }
    }
    return api(sandbox, "POST", "/classifications", json=body, headers={"X-Forwarded-For": forwarded_for})


# --- protocol rules --------------------------------------------------------------------------------


def test_exact_accept_header_is_required(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    path = f"/api/projects/{sandbox_project['project_id']}"
    assert sandbox.request("GET", path, headers={"Accept": "application/json"}).status_code == 404
    response = sandbox.request("GET", path, headers={"Accept": ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.api+json; version=1; charset=utf-8"
    body = response.json()
    assert list(body) == ["projects", "links", "meta"]
    assert body["projects"][0]["id"] == str(sandbox_project["project_id"])
    assert body["meta"]["projects"]["count"] == 1


def test_writes_need_json_and_a_token(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    item = {"subject_sets": {"display_name": "x", "links": {"project": str(sandbox_project["project_id"])}}}
    anonymous = api(sandbox, "POST", "/subject_sets", json=item)
    assert anonymous.status_code == 401
    assert anonymous.json() == {"errors": [{"message": "You must be logged in to access this resource."}]}
    as_form = api(
        sandbox, "POST", "/subject_sets", bearer=token(sandbox), content=b"x", headers={"Content-Type": "text/plain"}
    )
    assert as_form.status_code == 415
    created = api(sandbox, "POST", "/subject_sets", bearer=token(sandbox), json=item)
    assert created.status_code == 201
    assert created.headers["location"].endswith(f"/subject_sets/{created.json()['subject_sets'][0]['id']}")


def test_if_match_rules_and_the_index_etag_trap(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path
) -> None:
    connect(sandbox)
    subject_set = new_subject_set(sandbox_project["project_id"], "etag rules")
    bearer = token(sandbox)
    path = f"/subject_sets/{subject_set.id}"
    body = {"subject_sets": {"display_name": "renamed"}}
    assert api(sandbox, "PUT", path, bearer, json=body).status_code == 428
    assert api(sandbox, "PUT", path, bearer, json=body, headers={"If-Match": '"stale"'}).status_code == 412
    current = api(sandbox, "GET", path).headers["etag"]
    updated = api(sandbox, "PUT", path, bearer, json=body, headers={"If-Match": current})
    assert updated.status_code == 200
    assert updated.headers["etag"] != current

    (subject,) = upload_subjects(sandbox_project["project_id"], jpeg_file(tmp_path), 1)
    subject_set.add([subject])
    listed = next(Subject.where(subject_set_id=subject_set.id))
    with pytest.raises(PanoptesAPIException, match="PreconditionFailed"):
        Panoptes.client().put(f"/subjects/{listed.id}", json={"subjects": {"metadata": {"k": 1}}}, etag=listed.etag)
    found = Subject.find(subject.id)
    found.metadata["k"] = 1
    found.save()  # a show ETag works (panoptes-client issue #220)
    assert Subject.find(subject.id).metadata["k"] == 1


def test_paging_meta_and_next_href(sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path) -> None:
    connect(sandbox)
    subject_set = new_subject_set(sandbox_project["project_id"], "paging")
    subjects = upload_subjects(sandbox_project["project_id"], jpeg_file(tmp_path), 25)
    subject_set.add(subjects)
    first = api(sandbox, "GET", f"/subjects?subject_set_id={subject_set.id}").json()
    meta = first["meta"]["subjects"]
    assert (meta["page"], meta["page_size"], meta["count"], meta["page_count"]) == (1, 20, 25, 2)
    assert meta["next_href"] == f"/subjects?page=2&subject_set_id={subject_set.id}"
    assert len(first["subjects"]) == 20
    assert sorted(int(s.id) for s in Subject.where(subject_set_id=subject_set.id)) == sorted(
        int(s.id) for s in subjects
    )
    clamped = api(sandbox, "GET", f"/subjects?subject_set_id={subject_set.id}&page_size=500").json()
    assert clamped["meta"]["subjects"]["page_size"] == 100
    assert api(sandbox, "GET", "/subjects?page_size=0").status_code == 422


def test_classifications_keyset_paging_is_count_free(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path
) -> None:
    connect(sandbox)
    project_id, workflow_id = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    (subject,) = upload_subjects(project_id, jpeg_file(tmp_path), 1)
    posted = [
        int(post_classification(sandbox, project_id, workflow_id, int(subject.id)).json()["classifications"][0]["id"])
        for _ in range(5)
    ]
    assert posted[0] > 2**31  # ids past 32 bits, as real ones will be
    bearer = token(sandbox)
    page = api(sandbox, "GET", f"/classifications/project?project_id={project_id}&last_id=0&page_size=2", bearer).json()
    meta = page["meta"]["classifications"]
    assert [int(c["id"]) for c in page["classifications"]] == posted[:2]
    assert meta["count"] == 0 and meta["page_count"] == 0
    assert meta["next_href"] == f"/classifications/project?last_id={posted[1]}&page_size=2&project_id={project_id}"
    assert meta["previous_href"] == f"/classifications/project?last_id=0&page_size=2&project_id={project_id}"
    empty = api(sandbox, "GET", f"/classifications/project?project_id={project_id}&last_id={posted[-1]}", bearer).json()
    assert empty["classifications"] == [] and empty["meta"]["classifications"]["next_href"] is None
    missing_project = api(sandbox, "GET", "/classifications/project?last_id=0", bearer)
    assert missing_project.status_code == 422
    assert missing_project.json()["errors"][0]["message"] == "Project ID required if last_id is included"
    pulled = list(Classification.where(scope="project", project_id=project_id, last_id=0, page_size=2))
    assert [int(c.id) for c in pulled] == posted
    item = pulled[0].raw
    assert item["links"]["user"] is None and item["links"]["subjects"] == [str(subject.id)]
    assert item["metadata"]["workflow_version"] == "1.1"
    assert item["annotations"][0]["value"][0]["pathX"] == [1.5, 9, 3]


# --- retirement ------------------------------------------------------------------------------------


def test_retirement_is_validated_and_asynchronous(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path
) -> None:
    connect(sandbox)
    workflow = Workflow.find(sandbox_project["segmentation_workflow_id"])
    subject_set = new_subject_set(sandbox_project["project_id"], "retire")
    workflow.add_subject_sets([subject_set])
    subjects = upload_subjects(sandbox_project["project_id"], jpeg_file(tmp_path), 2)
    subject_set.add(subjects)
    bad = api(
        sandbox,
        "POST",
        f"/workflows/{workflow.id}/retired_subjects",
        token(sandbox),
        json={"subject_ids": [subjects[0].id], "retirement_reason": "bored"},
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["message"] == "Retirement reason is not included in the list"
    workflow.retire_subjects(subjects[:1], reason="consensus")
    status = next(SubjectWorkflowStatus.where(subject_id=subjects[0].id, workflow_id=workflow.id))
    assert status.retired_at is None  # the worker has not run yet
    time.sleep(0.8)
    status = next(SubjectWorkflowStatus.where(subject_id=subjects[0].id, workflow_id=workflow.id))
    assert status.retirement_reason == "consensus" and status.retired_at is not None
    other = next(SubjectWorkflowStatus.where(subject_id=subjects[1].id, workflow_id=workflow.id))
    assert other.retired_at is None


def test_classification_count_retirement(sandbox: SandboxProcess, tmp_path: Path) -> None:
    sandbox.clear_faults()
    ids = sandbox.seed(retirement_count=3)
    connect(sandbox)
    workflow = Workflow.find(ids["segmentation_workflow_id"])
    subject_set = new_subject_set(ids["project_id"], "count")
    workflow.add_subject_sets([subject_set])
    (subject,) = upload_subjects(ids["project_id"], jpeg_file(tmp_path), 1)
    subject_set.add([subject])
    for _ in range(3):
        assert post_classification(sandbox, ids["project_id"], workflow.id, int(subject.id)).status_code == 201
    time.sleep(0.8)
    retired = sandbox.inventory(ids["project_id"])["retired"]
    assert retired == [
        {"subject_id": int(subject.id), "workflow_id": int(workflow.id), "reason": "classification_count"}
    ]


# --- exports ---------------------------------------------------------------------------------------


def test_classification_export_creating_then_ready_gzip_csv(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path
) -> None:
    connect(sandbox)
    project_id, workflow_id = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    (subject,) = upload_subjects(project_id, jpeg_file(tmp_path), 1)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.1"):
        post_classification(
            sandbox, project_id, workflow_id, int(subject.id), forwarded_for=ip, metadata={"classifier_version": "2.0"}
        )
    project = Project.find(project_id)
    created = project.generate_export("classifications")
    assert created["media"][0]["metadata"]["state"] == "creating"
    export = project.get_export("classifications", wait=True, wait_timeout=15)
    raw = requests.get(project.describe_export("classifications")["media"][0]["src"], stream=True).raw.read()
    assert raw[:2] == b"\x1f\x8b"  # stored gzip-compressed
    rows = list(csv.reader(io.StringIO(gzip.decompress(raw).decode())))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert len(rows) == 4
    assert next(iter(export.csv_dictreader()))["workflow_name"] == "Trace the nuclear envelope"
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["user_name"] == f"not-logged-in-{first['user_ip']}" and len(first["user_ip"]) == 20
    tokens = [dict(zip(rows[0], row, strict=True))["user_ip"] for row in rows[1:]]
    assert tokens[0] == tokens[2] != tokens[1]  # one random token per distinct address
    assert first["created_at"].endswith(" UTC")
    annotation = json.loads(first["annotations"])[0]
    assert annotation["task_label"].startswith("Trace the nuclear envelope")
    assert annotation["value"][0]["tool_label"] == "Nuclear envelope" and "taskType" not in annotation
    assert json.loads(first["subject_data"]) == {str(subject.id): {"retired": None, "Filename": "subject-0.jpg"}}


def test_export_can_be_stuck_in_creating(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    connect(sandbox)
    sandbox.set_faults(export_stuck=True)
    project = Project.find(sandbox_project["project_id"])
    project.generate_export("classifications")
    time.sleep(1.2)
    assert project.describe_export("classifications")["media"][0]["metadata"]["state"] == "creating"
    with pytest.raises(PanoptesAPIException, match="not ready within"):
        project.wait_export("classifications", timeout=3)


# --- authentication --------------------------------------------------------------------------------


def test_password_sign_in_and_bad_password(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    client = Panoptes.connect(endpoint=sandbox.url, username="sandbox", password="sandbox")
    assert client.logged_in
    me = client.get("/me")[0]["users"][0]
    assert me["login"] == "sandbox"
    with pytest.raises(PanoptesAPIException, match="Invalid email or password"):
        Panoptes.connect(endpoint=sandbox.url, username="sandbox", password="wrong")


def test_the_client_dies_on_a_wrong_secret(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    """What the real client does with a Doorkeeper error: KeyError (the gateway fixes this)."""
    Panoptes.connect(endpoint=sandbox.url, client_id="sandbox", client_secret="wrong")
    with pytest.raises(KeyError, match="access_token"):
        Project.find(sandbox_project["project_id"])
    answer = sandbox.request(
        "POST",
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "sandbox", "client_secret": "wrong"},
    )
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


def test_short_tokens_are_refreshed_and_expired_ones_refused(start_sandbox: Callable[..., SandboxProcess]) -> None:
    sandbox = start_sandbox("--token-lifetime-s", "121")  # the client refreshes when < 2 min remain
    ids = sandbox.seed()
    client = Panoptes.connect(endpoint=sandbox.url, username="sandbox", password="sandbox")
    Project.find(ids["project_id"])
    first_token = client.bearer_token
    time.sleep(1.2)
    assert Project.find(ids["project_id"]).id == str(ids["project_id"])
    assert client.bearer_token != first_token  # refreshed with the refresh_token grant
    expired = start_sandbox("--token-lifetime-s", "1")
    expired_token = token(expired)
    time.sleep(1.2)
    answer = api(expired, "GET", "/me", bearer=expired_token)
    assert answer.status_code == 401


# --- persistence and faults ------------------------------------------------------------------------


def test_restart_loses_nothing(start_sandbox: Callable[..., SandboxProcess], tmp_path: Path) -> None:
    sandbox = start_sandbox()
    ids = sandbox.seed()
    client = connect(sandbox)
    subject_set = new_subject_set(ids["project_id"], "durable")
    subjects = upload_subjects(ids["project_id"], jpeg_file(tmp_path, 77), 2)
    subject_set.add(subjects)
    post_classification(sandbox, ids["project_id"], ids["segmentation_workflow_id"], int(subjects[0].id))
    before = sandbox.inventory(ids["project_id"])
    sandbox.restart(kill=True)
    after = sandbox.inventory(ids["project_id"])
    assert after == before
    assert all(location["present"] for s in after["subjects"] for location in s["locations"])
    with client:
        assert SubjectSet.find(subject_set.id).display_name == "durable"  # the old token still works


def test_injected_errors_and_retry_after(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    path = f"/projects/{sandbox_project['project_id']}"
    sandbox.set_faults(error_rate=1.0, error_statuses=[429], retry_after_s=3)
    limited = api(sandbox, "GET", path)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    sandbox.set_faults(error_rate=0.2, seed=11)
    statuses = [api(sandbox, "GET", path).status_code for _ in range(200)]
    faults = sum(status != 200 for status in statuses)
    assert 20 <= faults <= 60
    assert set(statuses) <= {200, 429, 500, 502, 503}
    sandbox.clear_faults()
    assert sandbox.request("GET", "/_sandbox/health").status_code == 200


def test_lost_response_still_processes_the_request(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    bearer = token(sandbox)
    sandbox.set_faults(lost_response_rate=1.0)
    item = {"subject_sets": {"display_name": "lost but made", "links": {"project": str(sandbox_project["project_id"])}}}
    assert api(sandbox, "POST", "/subject_sets", bearer, json=item).status_code == 502
    sandbox.clear_faults()
    names = [s["display_name"] for s in sandbox.inventory(sandbox_project["project_id"])["subject_sets"]]
    assert names == ["lost but made"]


def test_stalls_outlast_a_client_timeout(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    sandbox.set_faults(stall_rate=1.0, stall_s=2.0)
    with pytest.raises(httpx.ReadTimeout):
        api(sandbox, "GET", f"/projects/{sandbox_project['project_id']}", timeout=0.5)


def test_failed_blob_uploads_leave_no_blob(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path
) -> None:
    connect(sandbox)
    sandbox.set_faults(blob_put_failure_rate=1.0, path_prefixes=["/_blobs"])
    created = Panoptes.client().post(
        "/subjects",
        json={
            "subjects": {
                "locations": ["image/jpeg"],
                "metadata": {},
                "links": {"project": str(sandbox_project["project_id"])},
            }
        },
    )[0]["subjects"][0]
    put_url = created["locations"][0]["image/jpeg"]
    answer = requests.put(
        put_url,
        data=jpeg_file(tmp_path).read_bytes(),
        headers={"Content-Type": "image/jpeg", "x-ms-blob-type": "BlockBlob"},
    )
    assert answer.status_code == 500
    sandbox.clear_faults()
    (subject,) = sandbox.inventory(sandbox_project["project_id"])["subjects"]
    assert subject["locations"] == [{"mime": "image/jpeg", "present": False, "bytes": 0}]
    unsigned = requests.put(put_url.split("?")[0], data=b"x", headers={"x-ms-blob-type": "BlockBlob"})
    assert unsigned.status_code == 403


def test_fault_plan_is_validated(sandbox: SandboxProcess) -> None:
    assert sandbox.request("PUT", "/_sandbox/faults", json={"error_rate": 2}).status_code == 422
    assert sandbox.request("PUT", "/_sandbox/faults", json={"eror_rate": 0.1}).status_code == 422


def test_seed_command_prints_ids(sandbox: SandboxProcess) -> None:
    result = CliRunner().invoke(cli_app, ["sandbox", "seed", "--url", sandbox.url])
    assert result.exit_code == 0, result.output
    ids = json.loads(result.output)
    assert set(ids) == {"project_id", "segmentation_workflow_id", "correction_workflow_id"}
    workflow = api(sandbox, "GET", f"/workflows/{ids['correction_workflow_id']}").json()["workflows"][0]
    assert workflow["configuration"] == {"enable_caesar_data_fetching": True}
    assert workflow["tasks"]["T0"]["tools"][0]["type"] == "freehandLine"


def test_classification_keeps_the_workflow_version_it_was_made_on(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path
) -> None:
    """Panoptes stores the version the front end showed (metadata.workflow_version), not today's."""
    connect(sandbox)
    project_id, workflow_id = sandbox_project["project_id"], sandbox_project["segmentation_workflow_id"]
    (subject,) = upload_subjects(project_id, jpeg_file(tmp_path), 1)
    metadata = {"classifier_version": "2.0", "workflow_version": "4.10"}
    posted = post_classification(sandbox, project_id, workflow_id, int(subject.id), metadata=metadata)
    assert posted.json()["classifications"][0]["metadata"]["workflow_version"] == "4.10"
    project = Project.find(project_id)
    project.generate_export("classifications")
    rows = list(project.get_export("classifications", wait=True, wait_timeout=15).csv_dictreader())
    assert rows[0]["workflow_version"] == "4.10"
    assert "workflow_version" not in json.loads(rows[0]["metadata"])


# --- subject selection -------------------------------------------------------------------------------


def password_token(sandbox: SandboxProcess, login: str) -> str:
    """Sign in as a browser does (sign-in page, JSON sign-in, password grant) and return the token."""
    sandbox.create_user(login, "pw-" + login)
    client = Panoptes(endpoint=sandbox.url, username=login, password="pw-" + login)
    return str(client.get_bearer_token())


def queued(sandbox: SandboxProcess, workflow_id: int, bearer: str | None = None, **params: Any) -> httpx.Response:
    query = "&".join(f"{k}={v}" for k, v in {"workflow_id": workflow_id, **params}.items())
    return api(sandbox, "GET", f"/subjects/queued?{query}", bearer=bearer)


def test_queued_offers_unretired_subjects_the_volunteer_has_not_classified(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    sandbox.clear_faults()
    ids = sandbox.seed(retirement_count=2)
    project_id, workflow_id = ids["project_id"], ids["segmentation_workflow_id"]
    connect(sandbox)
    assert (
        queued(sandbox, workflow_id).json()["errors"][0]["message"] == "no subject set is associated with this workflow"
    )
    workflow = Workflow.find(workflow_id)
    subject_set = new_subject_set(project_id, "queue")
    workflow.add_subject_sets([subject_set])
    subjects = upload_subjects(project_id, jpeg_file(tmp_path), 4)
    subject_set.add(subjects)
    all_ids = {s.id for s in subjects}
    missing = api(sandbox, "GET", "/subjects/queued")
    assert missing.status_code == 422 and missing.json()["errors"][0]["message"] == "workflow_id parameter missing"

    anonymous = queued(sandbox, workflow_id).json()
    assert {s["id"] for s in anonymous["subjects"]} == all_ids
    first = anonymous["subjects"][0]
    assert first["selection_state"] == "normal" and first["retired"] is False and first["already_seen"] is False
    assert first["locations"][0]["image/jpeg"].startswith(f"{sandbox.url}/_blobs/")
    assert "count" in anonymous["meta"]["subjects"] and anonymous["meta"]["subjects"]["count"] == 0  # count-free
    assert len(queued(sandbox, workflow_id, page_size=2).json()["subjects"]) == 2

    alice = password_token(sandbox, f"alice-{workflow_id}")
    chosen = sorted(all_ids)[0]
    body = {
        "classifications": {
            "annotations": [],
            "metadata": {"classifier_version": "2.0"},
            "completed": True,
            "links": {"project": str(project_id), "workflow": str(workflow_id), "subjects": [chosen]},
        }
    }
    assert api(sandbox, "POST", "/classifications", bearer=alice, json=body).status_code == 201
    hers = {s["id"] for s in queued(sandbox, workflow_id, bearer=alice).json()["subjects"]}
    assert hers == all_ids - {chosen}
    assert {s["id"] for s in queued(sandbox, workflow_id).json()["subjects"]} == all_ids  # anonymous: all

    post_classification(sandbox, project_id, workflow_id, int(chosen))  # the second classification retires it
    time.sleep(0.8)
    assert chosen not in {s["id"] for s in queued(sandbox, workflow_id).json()["subjects"]}

    token_ = token(sandbox)
    retire = {"subject_ids": sorted(all_ids), "retirement_reason": "consensus"}
    assert api(sandbox, "POST", f"/workflows/{workflow_id}/retired_subjects", bearer=token_, json=retire).status_code
    time.sleep(0.8)
    fallback = queued(sandbox, workflow_id, bearer=alice).json()["subjects"]
    assert {s["id"] for s in fallback} == all_ids
    assert all(s["selection_state"] == "failover_fallback" and s["retired"] for s in fallback)
    assert all(s["user_has_finished_workflow"] for s in fallback)
    assert [s["already_seen"] for s in fallback if s["id"] == chosen] == [True]
