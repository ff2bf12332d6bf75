"""Subjects made through the real panoptes-client in the sandbox, and classifications read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from panoptes_client import Panoptes, Project, Subject, SubjectSet, Workflow

from etchacell_loop.sandbox.harness import SandboxProcess
from tests.simulation.truth_volumes import subject_jpeg, subject_metadata

ACCEPT = "application/vnd.api+json; version=1"


def upload(
    sandbox: SandboxProcess, workflow_id: int, project_id: int, subjects: list[tuple[dict[str, str], list[Path]]]
) -> list[int]:
    """Subjects with their metadata and frames, made through the real panoptes-client."""
    Panoptes.connect(endpoint=sandbox.url, client_id="sandbox", client_secret="sandbox-secret")
    subject_set = SubjectSet()
    subject_set.links.project = Project(project_id)
    subject_set.display_name = f"volunteers {workflow_id}"
    subject_set.save()
    Workflow.find(workflow_id).add_subject_sets([subject_set])
    made = []
    for metadata, frames in subjects:
        subject = Subject()
        subject.links.project = Project(project_id)
        for frame in frames:
            subject.add_location(str(frame))
        subject.metadata.update(metadata)
        subject.save()
        made.append(subject)
    subject_set.add(made)
    return [int(s.id) for s in made]


def flipbooks(tmp_path: Path, slices: list[int]) -> list[tuple[dict[str, str], list[Path]]]:
    frame = subject_jpeg(tmp_path / "frame.jpg")
    return [(subject_metadata("hela", z), [frame] * 5) for z in slices]


def project_classifications(sandbox: SandboxProcess, project_id: int) -> list[dict[str, Any]]:
    token = sandbox.request(
        "POST",
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "sandbox", "client_secret": "sandbox-secret"},
    ).json()["access_token"]
    rows: list[dict[str, Any]] = []
    path = f"/api/classifications/project?project_id={project_id}&last_id=0&page_size=100"
    while path:
        page = sandbox.request("GET", path, headers={"Accept": ACCEPT, "Authorization": f"Bearer {token}"}).json()
        rows += page["classifications"]
        next_href = page["meta"]["classifications"]["next_href"]
        path = f"/api{next_href}" if next_href and page["classifications"] else ""
    return rows
