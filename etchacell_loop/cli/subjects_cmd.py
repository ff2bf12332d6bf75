"""``etchacell subjects prepare|upload``: a volume's ROIs → flipbook JPEGs + manifest → Panoptes subjects."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from etchacell_loop.cli.context import (
    CliState,
    CommandError,
    connect_panoptes,
    console,
    err_console,
    operator_errors,
    require_panoptes_credentials,
    require_schema,
    state,
)
from etchacell_loop.cli.help_format import Command, Group

if TYPE_CHECKING:
    from sqlmodel import Session

    from etchacell_loop.db.models import DataSplit, SubjectSet
    from etchacell_loop.imaging.manifest import ManifestEntry
    from etchacell_loop.imaging.prepare import PrepareReport
    from etchacell_loop.imaging.prepare import Progress as ProgressCallback
    from etchacell_loop.imaging.volume import LazyVolume, RoiBox
    from etchacell_loop.panoptes.gateway import ProjectInfo
    from etchacell_loop.panoptes.upload import UploadResult

EXIT_SOME_FAILED = 1

app = typer.Typer(help="Turn EM volumes into Zooniverse subjects and upload them.", no_args_is_help=True, cls=Group)


@app.command("prepare", cls=Command)
@operator_errors
def prepare(
    ctx: typer.Context,
    volume: Annotated[Path, typer.Argument(help="TIFF stack, folder of TIFF slices, or OME-Zarr image")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for frames/ and manifest.jsonl")],
    roi: Annotated[
        list[str] | None,
        typer.Option("--roi", help="NAME:X,Y,Z:W,H,D in level-0 voxels (corner, size); repeatable"),
    ] = None,
    all_rois: Annotated[bool, typer.Option("--all-rois", help="every ROI recorded in the volume's attributes")] = False,
    voxel_size_nm: Annotated[
        str | None,
        typer.Option(help="Z,Y,X in nm, overriding the file [default: the file's, else imaging.pixel_size_*_nm]"),
    ] = None,
) -> None:
    """Make every ROI slice's flipbook subject (frames written once per plane; safe to re-run)."""
    from etchacell_loop.imaging.manifest import ManifestError
    from etchacell_loop.imaging.prepare import checked_rois, prepare_subjects
    from etchacell_loop.imaging.subjects import SubjectFormat
    from etchacell_loop.imaging.volume import VolumeError, open_volume, parse_voxel_size_nm

    cli = state(ctx)
    specs = _roi_specs(roi or [])
    if not specs and not all_rois:
        raise CommandError("no ROI: give --roi NAME:X,Y,Z:W,H,D (repeatable) or --all-rois")
    imaging = cli.settings.imaging
    fallback = (imaging.pixel_size_z_nm, imaging.pixel_size_xy_nm, imaging.pixel_size_xy_nm)
    try:
        override = parse_voxel_size_nm(voxel_size_nm) if voxel_size_nm is not None else None
        with open_volume(volume, voxel_size_nm=override, fallback_voxel_size_nm=fallback) as opened:
            rois = checked_rois(opened, _chosen_rois(opened, specs, all_rois))
            with _progress_bar("preparing frames") as advance:
                report = prepare_subjects(opened, rois, out, SubjectFormat.from_settings(imaging), advance)
            _print_prepared(opened, report)
    except (VolumeError, ManifestError) as exc:
        raise CommandError(str(exc)) from None


def _roi_specs(texts: Sequence[str]) -> list[RoiBox]:
    from etchacell_loop.imaging.subjects import RoiSpecError, parse_roi_spec

    try:
        return [parse_roi_spec(text) for text in texts]
    except RoiSpecError as exc:
        raise CommandError(str(exc)) from None


def _chosen_rois(volume: LazyVolume, specs: list[RoiBox], all_rois: bool) -> list[RoiBox]:
    if not all_rois:
        return specs
    if not volume.rois:
        raise CommandError(f"{volume.path}: --all-rois, but the volume records no ROIs; give --roi instead")
    given = {spec.name for spec in specs}
    return specs + [recorded for recorded in volume.rois if recorded.name not in given]


@contextmanager
def _progress_bar(description: str) -> Iterator[ProgressCallback]:
    """A bar on stderr (stdout keeps the summary); yields the ``(done, total)`` callback."""
    progress = Progress(
        TextColumn(f"{description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
    task = progress.add_task(description, total=None)

    def advance(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield advance


def _print_prepared(volume: LazyVolume, report: PrepareReport) -> None:
    from etchacell_loop.imaging.manifest import manifest_path

    z, y, x = volume.shape_zyx
    vz, vy, vx = volume.voxel_size_nm
    console.print(
        f"{volume.path} ({volume.format}, {z} x {y} x {x} z,y,x, {volume.dtype}, "
        f"voxel {vz:g} x {vy:g} x {vx:g} nm from {volume.voxel_size_source})",
        highlight=False,
    )
    table = Table(title="subjects prepared", title_justify="left")
    for column in ("ROI", "x, y, z", "w x h x d", "subjects", "planes", "written", "reused", "subject px", "scale"):
        table.add_column(column)
    for roi in report.rois:
        box = roi.box
        table.add_row(
            roi.name, f"{box.x}, {box.y}, {box.z}", f"{box.width} x {box.height} x {box.depth}",
            str(roi.subjects), str(roi.planes), str(roi.frames_written), str(roi.frames_reused),
            f"{roi.size_wh[0]} x {roi.size_wh[1]}", f"{roi.scale:g}",
        )  # fmt: skip
    console.print(table)
    state_word = "written" if report.manifest_written else "unchanged"
    console.print(
        f"{manifest_path(report.out_dir)}: {report.subjects_in_manifest} subjects ({state_word})", highlight=False
    )


# --- upload --------------------------------------------------------------------------------------


@app.command("upload", cls=Command)
@operator_errors
def upload(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="a folder made by `etchacell subjects prepare`")],
    subject_set: Annotated[str, typer.Option("--subject-set", help="subject set name (made when missing)")],
    workflow: Annotated[
        int | None, typer.Option(help="link the set to this workflow [default: panoptes.segmentation_workflow_id]")
    ] = None,
    no_workflow: Annotated[
        bool,
        typer.Option("--no-workflow", help="link the set to no workflow: subjects held back for the model to predict"),
    ] = False,
    roi: Annotated[
        list[str] | None, typer.Option("--roi", help="only this ROI's subjects (repeatable) [default: all]")
    ] = None,
    split: Annotated[
        list[str] | None,
        typer.Option(
            "--split",
            help="ROI=train|validation|test, fixing an ROI's split (repeatable) [default: drawn, then kept]",
        ),
    ] = None,
) -> None:
    """Upload every subject of a manifest exactly once (safe to re-run; resumes after a kill)."""
    from sqlmodel import Session

    from etchacell_loop.db.engine import session_scope
    from etchacell_loop.imaging.records import SplitError, ensure_manifest_rows, manifest_uploads
    from etchacell_loop.panoptes.upload import upload_subjects

    cli = state(ctx)
    entries = _only_rois(_manifest_entries(directory), roi or [])
    splits = _parse_splits(split or [])
    project_id = cli.settings.panoptes.project_id
    if project_id is None:
        raise CommandError("panoptes.project_id is not set (ETCHACELL_PANOPTES__PROJECT_ID or etchacell.toml)")
    if no_workflow and workflow is not None:
        raise CommandError("--workflow and --no-workflow: give one")
    workflow_id = None if no_workflow else workflow or cli.settings.panoptes.segmentation_workflow_id
    require_panoptes_credentials(cli.settings.panoptes)
    with cli.engine() as engine:
        require_schema(engine)
        with connect_panoptes(cli.settings.panoptes) as gateway:
            info = gateway.describe_project(project_id)
            if workflow_id is not None and workflow_id not in {w.panoptes_id for w in info.workflows}:
                raise CommandError(f"workflow {workflow_id} is not in project {project_id}")
            set_panoptes_id = gateway.ensure_subject_set(project_id, subject_set, workflow_id=workflow_id)
            with session_scope(engine) as session:
                set_row = _subject_set_row(cli, session, info, subject_set, set_panoptes_id, workflow_id)
                try:
                    roi_ids = ensure_manifest_rows(session, entries, splits)
                except SplitError as exc:
                    raise CommandError(str(exc)) from None
            uploads = manifest_uploads(entries, directory, roi_ids)
            with _progress_bar("uploading subjects") as advance:
                sessions = functools.partial(Session, engine, expire_on_commit=False)
                result = upload_subjects(sessions, gateway, set_row, uploads, progress=advance)
    _print_uploaded(subject_set, set_panoptes_id, result)
    if result.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _only_rois(entries: list[ManifestEntry], names: Sequence[str]) -> list[ManifestEntry]:
    if not names:
        return entries
    known = {entry.roi.name for entry in entries}
    unknown = sorted(set(names) - known)
    if unknown:
        raise CommandError(f"--roi {', '.join(unknown)}: not in the manifest (it has {', '.join(sorted(known))})")
    return [entry for entry in entries if entry.roi.name in names]


def _parse_splits(texts: Sequence[str]) -> dict[str, DataSplit]:
    from etchacell_loop.db.models import DataSplit

    allowed = (DataSplit.TRAIN, DataSplit.VALIDATION, DataSplit.TEST)
    splits: dict[str, DataSplit] = {}
    for text in texts:
        name, _, value = text.partition("=")
        if not name or value not in {s.value for s in allowed}:
            raise CommandError(f"--split {text!r}: expected ROI=train|validation|test")
        splits[name] = DataSplit(value)
    return splits


def _manifest_entries(directory: Path) -> list[ManifestEntry]:
    from etchacell_loop.imaging.manifest import ManifestError, manifest_path, read_manifest

    if not directory.is_dir():
        raise CommandError(f"{directory}: no such folder")
    try:
        entries = read_manifest(directory)
    except ManifestError as exc:
        raise CommandError(str(exc)) from None
    if not entries:
        raise CommandError(f"{manifest_path(directory)}: no subjects (run `etchacell subjects prepare` first)")
    missing = [path for entry in entries for path in entry.frames if not (directory / path).is_file()]
    if missing:
        raise CommandError(f"{directory}: {len(missing)} frame file(s) missing, e.g. {missing[0]}")
    return entries


def _subject_set_row(
    cli: CliState, session: Session, info: ProjectInfo, name: str, panoptes_id: int, workflow_id: int | None
) -> SubjectSet:
    """The project row (registered if new) and the subject set's row, pointing at its Panoptes set."""
    from sqlmodel import select

    from etchacell_loop.db.models import SubjectSet, Workflow
    from etchacell_loop.loop.project import configured_roles, register_project

    project = register_project(session, info, configured_roles(cli.settings.panoptes)).project
    assert project.id is not None
    query = select(SubjectSet).where(SubjectSet.project_id == project.id, SubjectSet.display_name == name)
    row = session.exec(query).first() or SubjectSet(project_id=project.id, display_name=name)
    row.panoptes_id = panoptes_id
    if workflow_id is not None:
        workflow_row = session.exec(select(Workflow).where(Workflow.panoptes_id == workflow_id)).first()
        row.workflow_id = workflow_row.id if workflow_row is not None else row.workflow_id
    session.add(row)
    session.flush()
    return row


def _print_uploaded(name: str, panoptes_id: int, result: UploadResult) -> None:
    table = Table(title=f"subject set {name!r} (Panoptes {panoptes_id})", title_justify="left")
    for column in ("created", "adopted", "linked", "already there", "failed"):
        table.add_column(column)
    table.add_row(str(result.created), str(result.adopted), str(result.linked), str(result.skipped), str(result.failed))
    console.print(table)
    for key, error in sorted(result.errors.items())[:10]:
        console.print(f"[red]failed[/] {key}: {error}", highlight=False)
    if len(result.errors) > 10:
        console.print(f"… and {len(result.errors) - 10} more (see the event log)")
