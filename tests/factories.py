"""Small factories for rows the tests need again and again; each flushes so ids are set."""

from __future__ import annotations

from sqlmodel import Session, SQLModel

from etchacell_loop.db.models import Project, Roi, SubjectKind, SubjectSet, Volume, Workflow, WorkflowRole


def row_id(row: SQLModel) -> int:
    """The primary key of a flushed row (SQLModel types it as optional)."""
    key = getattr(row, "id", None)
    assert isinstance(key, int)
    return key


def add_project(session: Session, panoptes_id: int = 1001) -> Project:
    project = Project(panoptes_id=panoptes_id, display_name="Etch a Cell")
    session.add(project)
    session.flush()
    return project


def add_workflow(session: Session, project: Project, panoptes_id: int, role: WorkflowRole, name: str) -> Workflow:
    assert project.id is not None
    workflow = Workflow(panoptes_id=panoptes_id, project_id=project.id, role=role, display_name=name)
    session.add(workflow)
    session.flush()
    return workflow


def add_subject_set(
    session: Session,
    project: Project,
    workflow: Workflow | None,
    name: str,
    panoptes_id: int | None,
    kind: SubjectKind = SubjectKind.RAW,
) -> SubjectSet:
    assert project.id is not None
    subject_set = SubjectSet(
        panoptes_id=panoptes_id,
        project_id=project.id,
        workflow_id=workflow.id if workflow else None,
        display_name=name,
        kind=kind,
    )
    session.add(subject_set)
    session.flush()
    return subject_set


def add_roi(session: Session) -> Roi:
    volume = Volume(
        name="hela-1",
        storage_uri="file:///data/hela-1.zarr",
        shape_z=100,
        shape_y=512,
        shape_x=512,
        voxel_size_z_nm=50.0,
        voxel_size_y_nm=10.0,
        voxel_size_x_nm=10.0,
    )
    session.add(volume)
    session.flush()
    assert volume.id is not None
    roi = Roi(volume_id=volume.id, name="nucleus-1", x=0, y=0, z=0, width=256, height=256, depth=100)
    session.add(roi)
    session.flush()
    return roi
