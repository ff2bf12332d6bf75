"""Register the configured Zooniverse project and its workflows in the database.

Why: every row the loop writes (subjects, classifications, cursors) hangs off a project and a
workflow row, and the workflow's *role* (volunteers trace, or correct the model) comes from the
configuration, not from Panoptes. Registration is idempotent: names, versions and the Caesar flag
are refreshed from Panoptes each time; ids never change.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, select

from etchacell_loop.config import PanoptesSettings
from etchacell_loop.db.models import Project, Workflow, WorkflowRole
from etchacell_loop.panoptes.gateway import ProjectInfo


class RegistrationError(ValueError):
    """The configuration and Panoptes disagree (a configured workflow is not in the project)."""


@dataclass(frozen=True)
class Registered:
    project: Project
    workflows: tuple[Workflow, ...]


def configured_roles(settings: PanoptesSettings) -> dict[int, WorkflowRole]:
    """Panoptes workflow id → role, from the configuration."""
    roles: dict[int, WorkflowRole] = {}
    if settings.segmentation_workflow_id:
        roles[settings.segmentation_workflow_id] = WorkflowRole.SEGMENTATION
    if settings.correction_workflow_id:
        roles[settings.correction_workflow_id] = WorkflowRole.CORRECTION
    return roles


def register_project(session: Session, info: ProjectInfo, roles: dict[int, WorkflowRole]) -> Registered:
    """Upsert the project and the workflows that have a role; the caller commits."""
    known = {w.panoptes_id: w for w in info.workflows}
    missing = sorted(set(roles) - set(known))
    if missing:
        raise RegistrationError(
            f"workflow(s) {', '.join(map(str, missing))} are not in project {info.panoptes_id} "
            f"(it has {', '.join(str(w) for w in known) or 'none'})"
        )
    project = session.exec(select(Project).where(Project.panoptes_id == info.panoptes_id)).first()
    if project is None:
        project = Project(panoptes_id=info.panoptes_id, display_name=info.display_name)
    project.display_name = info.display_name
    session.add(project)
    session.flush()
    assert project.id is not None
    rows = []
    for panoptes_id, role in sorted(roles.items()):
        described = known[panoptes_id]
        row = session.exec(select(Workflow).where(Workflow.panoptes_id == panoptes_id)).first()
        if row is None:
            row = Workflow(
                panoptes_id=panoptes_id, project_id=project.id, role=role, display_name=described.display_name
            )
        row.project_id, row.role = project.id, role
        row.display_name, row.version = described.display_name, described.version
        row.caesar_data_fetching = described.caesar_data_fetching
        session.add(row)
        rows.append(row)
    session.flush()
    return Registered(project, tuple(rows))
