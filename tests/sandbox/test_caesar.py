"""The sandbox's Caesar: reductions upserted and listed over HTTP, read by the classifier's GraphQL query."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from panoptes_client import Workflow

from etchacell_loop.sandbox.config import PANOPTES_CLIENT_DEFAULT_ID
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.sandbox.test_api import connect, jpeg_file, token
from tests.simulation.sandbox_support import upload

MARK = {
    "stepKey": "S0", "taskIndex": 0, "taskKey": "T0", "taskType": "drawing", "toolIndex": 0,
    "toolType": "freehandLine", "frame": 0, "markId": "clhhuqm9", "pathX": [200, 175, 150], "pathY": [100, 75, 75],
}  # fmt: skip
FEM_QUERY = '{{ workflow(id: {w}) {{ subject_reductions(subjectId: {s}, reducerKey:"machineLearnt") {{ data }} }} }}'


def caesar(sandbox: SandboxProcess, method: str, path: str, bearer: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    if "json" in kwargs:
        headers.setdefault("Content-Type", "application/json")
    return sandbox.request(method, path, headers=headers, **kwargs)


def put(
    sandbox: SandboxProcess, bearer: str | None, workflow_id: int, body: Any, key: str = "machineLearnt"
) -> httpx.Response:
    return caesar(sandbox, "PUT", f"/workflows/{workflow_id}/reducers/{key}/reductions", bearer, json=body)


def listed(sandbox: SandboxProcess, bearer: str, workflow_id: int, subject_id: int, key: str = "machineLearnt") -> Any:
    path = f"/workflows/{workflow_id}/reducers/{key}/reductions?subject_id={subject_id}"
    response = caesar(sandbox, "GET", path, bearer)
    assert response.status_code == 200, response.text
    return response.json()


def body(subject_id: int, marks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"reduction": {"subject_id": subject_id, "data": {"data": marks}, **extra}}


def one_subject(sandbox: SandboxProcess, project: dict[str, int], tmp_path: Path) -> int:
    (subject_id,) = upload(
        sandbox,
        project["correction_workflow_id"],
        project["project_id"],
        [({"#kind": "prediction"}, [jpeg_file(tmp_path)])],
    )
    return subject_id


def volunteer_token(sandbox: SandboxProcess, login: str) -> str:
    """A signed-in volunteer's token, as the browser gets it (sign-in page, JSON sign-in, password grant)."""
    sandbox.create_user(login, "secret")
    with httpx.Client(base_url=sandbox.url) as browser:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        csrf = browser.get("/users/sign_in", headers=headers).headers["x-csrf-token"]
        user = {"login": login, "password": "secret"}
        assert (
            browser.post("/users/sign_in", headers=headers, json={"authenticity_token": csrf, "user": user}).status_code
            == 200
        )
        grant = browser.post("/oauth/token", data={"grant_type": "password", "client_id": PANOPTES_CLIENT_DEFAULT_ID})
        return str(grant.json()["access_token"])


def test_reductions_are_upserted_per_subject_reducer_and_subgroup(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path
) -> None:
    workflow_id = sandbox_project["correction_workflow_id"]
    subject_id = one_subject(sandbox, sandbox_project, tmp_path)
    bearer = token(sandbox)

    first = put(sandbox, bearer, workflow_id, body(subject_id, [MARK]))
    assert first.status_code == 200, first.text
    stored = first.json()
    assert (stored["subject_id"], stored["reducer_key"], stored["subgroup"]) == (
        subject_id,
        "machineLearnt",
        "_default",
    )
    assert (stored["reducible_id"], stored["reducible_type"]) == (workflow_id, "Workflow")
    assert stored["data"] == {"data": [MARK]} and stored["lock_version"] == 0

    same = put(sandbox, bearer, workflow_id, body(subject_id, [MARK])).json()
    assert (same["id"], same["lock_version"], same["updated_at"]) == (stored["id"], 0, stored["updated_at"])
    moved = {**MARK, "pathX": [201, 176, 151]}
    changed = put(sandbox, bearer, workflow_id, body(subject_id, [moved])).json()
    assert (changed["id"], changed["lock_version"], changed["data"]) == (stored["id"], 1, {"data": [moved]})
    other_group = put(sandbox, bearer, workflow_id, body(subject_id, [MARK], subgroup="beta")).json()
    assert other_group["id"] != stored["id"] and other_group["subgroup"] == "beta"
    put(sandbox, bearer, workflow_id, body(subject_id, [MARK]), key="otherReducer")

    reductions = listed(sandbox, bearer, workflow_id, subject_id)
    assert sorted((r["subgroup"], r["data"]["data"][0]["pathX"][0]) for r in reductions) == [
        ("_default", 201),
        ("beta", 200),
    ]
    assert [r["reducer_key"] for r in listed(sandbox, bearer, workflow_id, subject_id, "otherReducer")] == [
        "otherReducer"
    ]
    assert listed(sandbox, bearer, sandbox_project["segmentation_workflow_id"], subject_id) == []
    no_subject = caesar(sandbox, "GET", f"/workflows/{workflow_id}/reducers/machineLearnt/reductions", bearer)
    assert no_subject.json() == []


def test_writes_need_rights_on_the_workflow_and_a_real_subject(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path
) -> None:
    workflow_id = sandbox_project["correction_workflow_id"]
    subject_id = one_subject(sandbox, sandbox_project, tmp_path)
    bearer = token(sandbox)
    assert put(sandbox, None, workflow_id, body(subject_id, [MARK])).status_code == 401
    assert put(sandbox, "not-a-token", workflow_id, body(subject_id, [MARK])).status_code == 401
    stranger = volunteer_token(sandbox, f"caesar-stranger-{workflow_id}")
    refused = put(sandbox, stranger, workflow_id, body(subject_id, [MARK]))
    assert refused.status_code == 404 and "Workflow" in refused.text
    assert (
        caesar(
            sandbox,
            "GET",
            f"/workflows/{workflow_id}/reducers/machineLearnt/reductions?subject_id={subject_id}",
            stranger,
        ).status_code
        == 404
    )
    assert put(sandbox, bearer, 999_999, body(subject_id, [MARK])).status_code == 404
    missing = put(sandbox, bearer, workflow_id, body(99_999_999, [MARK]))
    assert missing.status_code == 404 and "Subject" in missing.text
    assert put(sandbox, bearer, workflow_id, {"nothing": 1}).status_code == 400
    assert put(sandbox, bearer, workflow_id, {"reduction": {"subject_id": subject_id, "data": [1]}}).status_code == 422
    assert put(sandbox, bearer, workflow_id, {"reduction": {"subject_id": "x", "data": {}}}).status_code == 422
    as_text = caesar(
        sandbox, "PUT", f"/workflows/{workflow_id}/reducers/machineLearnt/reductions", bearer,
        content=b"{}", headers={"Content-Type": "text/plain"},
    )  # fmt: skip
    assert as_text.status_code == 415
    assert listed(sandbox, bearer, workflow_id, subject_id) == []


def test_the_classifier_query_reads_the_marks_anonymously(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path
) -> None:
    workflow_id = sandbox_project["correction_workflow_id"]
    subject_id = one_subject(sandbox, sandbox_project, tmp_path)
    assert put(sandbox, token(sandbox), workflow_id, body(subject_id, [MARK])).status_code == 200

    query = FEM_QUERY.format(w=workflow_id, s=subject_id)
    answer = sandbox.request("POST", "/graphql", json={"query": query}).json()
    assert answer == {"data": {"workflow": {"subject_reductions": [{"data": {"data": [MARK]}}]}}}

    with_variables = {
        "query": "query M($w: ID!, $s: ID!) { workflow(id: $w) { subject_reductions(subjectId: $s, "
        'reducerKey: "machineLearnt") { data subjectId reducerKey } } }',
        "variables": {"w": str(workflow_id), "s": str(subject_id)},
    }
    (item,) = sandbox.request("POST", "/graphql", json=with_variables).json()["data"]["workflow"]["subject_reductions"]
    assert (item["subjectId"], item["reducerKey"]) == (str(subject_id), "machineLearnt")

    other_key = FEM_QUERY.format(w=workflow_id, s=subject_id).replace("machineLearnt", "alice")
    assert sandbox.request("POST", "/graphql", json={"query": other_key}).json()["data"]["workflow"] == {
        "subject_reductions": []
    }
    unknown = sandbox.request("POST", "/graphql", json={"query": FEM_QUERY.format(w=987_654, s=subject_id)}).json()
    assert unknown == {"data": {"workflow": None}}
    nonsense = sandbox.request("POST", "/graphql", json={"query": "{ projects { id } }"}).json()
    assert "errors" in nonsense and "data" not in nonsense


def test_reductions_survive_a_restart(start_sandbox: Callable[..., SandboxProcess], tmp_path: Path) -> None:
    private = start_sandbox()
    project = private.seed()
    subject_id = one_subject(private, project, tmp_path)
    workflow_id = project["correction_workflow_id"]
    assert put(private, token(private), workflow_id, body(subject_id, [MARK])).status_code == 200
    private.restart(kill=True)
    (reduction,) = listed(private, token(private), workflow_id, subject_id)
    assert reduction["data"] == {"data": [MARK]}


def test_caesar_data_fetching_is_switched_on_through_the_client(
    sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    """PUT /api/workflows/:id with a configuration, as a project owner does with panoptes-client."""
    connect(sandbox)
    workflow = Workflow.find(sandbox_project["segmentation_workflow_id"])
    assert not (workflow.configuration or {}).get("enable_caesar_data_fetching")
    workflow.configuration = {**(workflow.configuration or {}), "enable_caesar_data_fetching": True}
    workflow.save()
    again = Workflow.find(sandbox_project["segmentation_workflow_id"])
    assert again.configuration == {"enable_caesar_data_fetching": True}
