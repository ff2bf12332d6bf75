"""The Caesar gateway pushes machine marks as reductions to the sandbox's Caesar and reads them back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from etchacell_loop.loop.machine_marks import envelope_marks, reduction_body
from etchacell_loop.panoptes.caesar import CaesarGateway, connect_caesar
from etchacell_loop.panoptes.errors import PanoptesRequestError, PanoptesUnavailable
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.sandbox.harness import SandboxProcess, free_port
from tests.panoptes.support import FAST_POLICY, panoptes_settings
from tests.sandbox.test_api import jpeg_file
from tests.simulation.sandbox_support import upload


@pytest.fixture
def caesar(sandbox: SandboxProcess, gateway: PanoptesGateway) -> Iterator[CaesarGateway]:
    settings = panoptes_settings(sandbox).model_copy(update={"caesar_endpoint": sandbox.url})
    with connect_caesar(gateway, settings, FAST_POLICY) as gw:
        yield gw


@pytest.fixture
def subject_id(sandbox: SandboxProcess, sandbox_project: dict[str, int], tmp_path: Path) -> int:
    workflow_id, project_id = sandbox_project["correction_workflow_id"], sandbox_project["project_id"]
    (made,) = upload(sandbox, workflow_id, project_id, [({"#kind": "prediction"}, [jpeg_file(tmp_path)])])
    return made


def predicted_area() -> np.ndarray:
    rows, cols = np.mgrid[:120, :100]
    return np.asarray((np.hypot(rows - 60.0, cols - 45.0) < 35) | (np.hypot(rows - 10.0, cols - 90.0) < 7))


def graphql_marks(sandbox: SandboxProcess, workflow_id: int, subject_id: int) -> list[object]:
    reductions = f'subject_reductions(subjectId: {subject_id}, reducerKey:"machineLearnt")'
    query = f"{{ workflow(id: {workflow_id}) {{ {reductions} {{ data }} }} }}"
    answer = sandbox.request("POST", "/graphql", json={"query": query}).json()["data"]["workflow"]
    return [mark for r in answer["subject_reductions"] for mark in r["data"]["data"]]


def test_marks_pushed_are_what_the_classifier_loads(
    caesar: CaesarGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int], subject_id: int
) -> None:
    workflow_id = sandbox_project["correction_workflow_id"]
    marks = envelope_marks(predicted_area(), frame=0, subject_id=subject_id)
    assert len(marks) == 2
    stored = caesar.push_reduction(workflow_id, subject_id, marks)
    assert stored["data"] == reduction_body(subject_id, marks)["reduction"]["data"]
    assert (stored["subject_id"], stored["reducer_key"], stored["subgroup"]) == (
        subject_id,
        "machineLearnt",
        "_default",
    )
    again = caesar.push_reduction(workflow_id, subject_id, marks)
    assert (again["id"], again["lock_version"]) == (stored["id"], stored["lock_version"])

    (listed,) = caesar.reductions(workflow_id, subject_id)
    assert listed["id"] == stored["id"] and listed["data"]["data"] == marks
    assert graphql_marks(sandbox, workflow_id, subject_id) == marks
    assert caesar.reductions(workflow_id, subject_id, reducer_key="somethingElse") == []


def test_a_flaky_caesar_is_retried_without_duplicates(
    caesar: CaesarGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int], subject_id: int
) -> None:
    workflow_id = sandbox_project["correction_workflow_id"]
    marks = envelope_marks(predicted_area(), subject_id=subject_id)
    sandbox.set_faults(error_rate=0.3, lost_response_rate=0.3, path_prefixes=["/workflows"], seed=3)
    for _ in range(5):
        caesar.push_reduction(workflow_id, subject_id, marks)
    listed = caesar.reductions(workflow_id, subject_id)
    sandbox.clear_faults()
    assert len(listed) == 1 and listed[0]["data"]["data"] == marks


def test_refusals_and_outages_become_gateway_errors(
    caesar: CaesarGateway, gateway: PanoptesGateway, sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    workflow_id = sandbox_project["correction_workflow_id"]
    with pytest.raises(PanoptesRequestError, match=r"subject 99999999: Caesar said HTTP 404: Couldn't find Subject"):
        caesar.push_reduction(workflow_id, 99_999_999, [])
    with pytest.raises(PanoptesRequestError, match="HTTP 404: Couldn't find Workflow"):
        caesar.reductions(123_456, 1)
    sandbox.set_faults(error_rate=1.0, error_statuses=[503], path_prefixes=["/workflows"])
    with pytest.raises(PanoptesUnavailable, match="failed: HTTP 503 after 8 attempts"):
        caesar.reductions(workflow_id, 1)
    sandbox.clear_faults()

    nowhere = panoptes_settings(sandbox).model_copy(update={"caesar_endpoint": f"http://127.0.0.1:{free_port()}"})
    with connect_caesar(gateway, nowhere, FAST_POLICY) as dead, pytest.raises(PanoptesUnavailable, match="connection"):
        dead.reductions(workflow_id, 1)


def test_the_endpoint_comes_from_the_settings(sandbox: SandboxProcess, gateway: PanoptesGateway) -> None:
    with connect_caesar(gateway, panoptes_settings(sandbox)) as production:
        assert production.endpoint == "https://caesar.zooniverse.org"
