"""The sandbox's poison fault: classifications served damaged, the same way on every read, through
the real panoptes-client; reserved ids committed later, below ids already listed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from panoptes_client import Panoptes

from etchacell_loop.sandbox.config import ODD_KINDS, POISON_KINDS, FaultPlan
from etchacell_loop.sandbox.harness import SandboxProcess
from etchacell_loop.sandbox.poison import DAMAGES, poison_kind


def listed(sandbox: SandboxProcess, project: dict[str, int], last_id: int = 0) -> list[Any]:
    client = Panoptes.connect(endpoint=sandbox.url, client_id="sandbox", client_secret="sandbox-secret")
    with client:
        params = {"project_id": project["project_id"], "last_id": last_id, "page_size": 100}
        response, _ = client.get("/classifications/project", params=params)
    return list(response["classifications"])


def new_subject(sandbox: SandboxProcess, project: dict[str, int]) -> int:
    client = Panoptes.connect(endpoint=sandbox.url, client_id="sandbox", client_secret="sandbox-secret")
    with client:
        body = {"subjects": {"locations": ["image/jpeg"], "metadata": {},
                             "links": {"project": str(project["project_id"])}}}  # fmt: skip
        response, _ = client.post("/subjects", json=body)
    return int(response["subjects"][0]["id"])


def test_every_poison_kind_has_its_damage_and_the_plan_refuses_unknown_ones(sandbox: SandboxProcess) -> None:
    assert set(DAMAGES) == set(POISON_KINDS) | set(ODD_KINDS)
    refused = httpx.put(f"{sandbox.url}/_sandbox/faults", json={"poison_kinds": ["missing_id", "gremlins"]})
    assert refused.status_code == 422 and "gremlins" in refused.json()["error"]
    with pytest.raises(ValueError, match="poison_rate"):
        FaultPlan.from_dict({"poison_rate": 1.5})


def test_poisoned_classifications_are_damaged_alike_on_every_read(
    sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    workflow = sandbox_project["segmentation_workflow_id"]
    bulk = sandbox.bulk_classifications(workflow, [new_subject(sandbox, sandbox_project)], per_subject=40)
    ids = list(range(bulk["first_id"], bulk["last_id"] + 1))
    plan = sandbox.set_faults(poison_ids=[ids[0], ids[1]], poison_kinds=["missing_id", "user_not_a_number"],
                              poison_rate=0.25, seed=11)  # fmt: skip
    first, again = listed(sandbox, sandbox_project), listed(sandbox, sandbox_project)
    assert first == again and len(first) == 40
    assert "id" not in first[0] and first[1]["links"]["user"] == f"volunteer-{ids[1] % 1000}"
    damaged = {i for i in ids if poison_kind(FaultPlan.from_dict(plan), i) is not None}
    whole = [item for item in first if isinstance(item, dict) and item.get("id") in {str(i) for i in ids}]
    assert 5 < len(damaged) < 25 and len(whole) >= 40 - len(damaged)
    sandbox.clear_faults()
    assert [item["id"] for item in listed(sandbox, sandbox_project)] == [str(i) for i in ids]  # stored whole


def test_a_reserved_id_commits_below_classifications_stored_after_it(
    sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    workflow, subject = sandbox_project["segmentation_workflow_id"], new_subject(sandbox, sandbox_project)
    (late,) = sandbox.reserve_classification_ids()
    after = sandbox.bulk_classifications(workflow, [subject], per_subject=2)
    assert [item["id"] for item in listed(sandbox, sandbox_project)] == [str(after["first_id"]), str(after["last_id"])]
    assert sandbox.bulk_classifications(workflow, [subject], ids=[late])["first_id"] == late < after["first_id"]
    assert [int(item["id"]) for item in listed(sandbox, sandbox_project)] == [late, after["first_id"], after["last_id"]]
    reused = sandbox.request("POST", "/_sandbox/classifications/bulk",
                             json={"workflow_id": workflow, "subject_ids": [subject], "ids": [late]})  # fmt: skip
    assert reused.status_code == 422  # an id is committed once
