"""``etchacell synth``: synthetic data with known truth, for tests, training and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from etchacell_loop.cli.context import CommandError, console, err_console, operator_errors, require_schema, state
from etchacell_loop.cli.help_format import Command, Group

if TYPE_CHECKING:
    from etchacell_loop.imaging.synth_volume import SynthReport, SynthSpec

app = typer.Typer(help="Synthetic data with known truth.", no_args_is_help=True, cls=Group)


@app.command("volume", cls=Command)
@operator_errors
def volume(
    out: Annotated[Path, typer.Argument(help="the OME-Zarr folder to write, e.g. hela.zarr")],
    shape: Annotated[str, typer.Option(help="voxels as Z,Y,X")] = "64,1024,1024",
    cells: Annotated[
        int | None, typer.Option(help="number of cells [default: one per 5.6 um square of each layer]")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed: the same seed gives the same bytes")] = 0,
    mitotic: Annotated[bool, typer.Option("--mitotic/--no-mitotic", help="make the last cell mitotic")] = False,
    voxel_size_nm: Annotated[str, typer.Option(help="voxel size in nm as Z,Y,X")] = "50,10,10",
    overwrite: Annotated[bool, typer.Option(help="replace OUT if it is an existing zarr store")] = False,
) -> None:
    """A synthetic SBF-SEM volume of HeLa cells with its truth (nucleus, envelope, nucleolus, organelles)."""
    from etchacell_loop.imaging.synth_volume import SynthSpec

    spec = SynthSpec(
        shape=parse_shape(shape),
        voxel_size_nm=parse_triple(voxel_size_nm, "--voxel-size-nm"),
        cells=cells,
        seed=seed,
        mitotic=mitotic,
    )
    if cells is not None and cells < 1:
        raise CommandError(f"--cells must be at least 1, not {cells}")
    if spec.shape[1] < 32 or spec.shape[2] < 32:
        raise CommandError(f"--shape {shape}: Y and X must be at least 32")
    if out.exists() and not overwrite:
        raise CommandError(f"{out} already exists (use --overwrite to replace it)")
    try:
        report = _generate(out, spec, overwrite)
    except (FileExistsError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    _print_report(report)


def parse_triple(text: str, option: str) -> tuple[float, float, float]:
    """ "Z,Y,X" as three positive numbers, or a one-line error naming the option."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(0 < v < float("inf") for v in values):
        raise CommandError(f"{option} {text!r}: expected three positive numbers Z,Y,X")
    return values[0], values[1], values[2]


def parse_shape(text: str) -> tuple[int, int, int]:
    """ "Z,Y,X" voxels: three positive whole numbers."""
    values = parse_triple(text, "--shape")
    if any(v != int(v) for v in values):
        raise CommandError(f"--shape {text!r}: expected three positive whole numbers Z,Y,X")
    return int(values[0]), int(values[1]), int(values[2])


def _generate(out: Path, spec: SynthSpec, overwrite: bool) -> SynthReport:
    from etchacell_loop.imaging.synth_volume import generate_volume

    progress = Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} slices"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
    with progress:
        task = progress.add_task("generating slices", total=spec.shape[0])
        return generate_volume(
            out, spec, overwrite=overwrite, progress=lambda done, total: progress.update(task, completed=done)
        )


def _print_report(report: SynthReport) -> None:
    table = Table(title=f"{report.path}: {' x '.join(map(str, report.shape))} voxels", title_justify="left")
    for column in ("roi", "nucleus", "x", "y", "z", "width", "height", "depth"):
        table.add_column(column, justify="left" if column == "roi" else "right")
    for roi in report.rois:
        values = (roi.nucleus_label, roi.x, roi.y, roi.z, roi.width, roi.height, roi.depth)
        table.add_row(roi.name, *(str(v) for v in values))
    console.print(table)
    organelles = ", ".join(f"{count} {kind}" for kind, count in sorted(report.organelles.items()))
    voxel = ", ".join(f"{v:g}" for v in report.voxel_size_nm)
    console.print(f"{report.cells} cells; organelles: {organelles}; voxel size (z, y, x) {voxel} nm")
    if report.blank_slices:
        console.print(f"blank slices: {', '.join(map(str, report.blank_slices))}")
    console.print(f"wrote {report.path} in {report.seconds:.1f} s")


@app.command("history", cls=Command)
@operator_errors
def history(
    ctx: typer.Context,
    classifications: Annotated[
        int, typer.Option(help="classifications to write (the rest scales with them)", min=1)
    ] = 20_000,
    days: Annotated[int, typer.Option(help="how many days the history spans, ending now", min=1)] = 45,
    seed: Annotated[int, typer.Option(help="random seed: the same seed gives the same rows")] = 0,
) -> None:
    """A synthetic project history in the configured (empty) database: weeks of classifications,
    retirements, consensus with images, training runs, model versions, job runs and events — to try
    the dashboard and the named queries at a live project's size."""
    from etchacell_loop.simulation.ops_history import HistorySpec, write_history

    cli = state(ctx)
    with cli.engine() as engine:
        require_schema(engine)
        try:
            report = write_history(
                engine, cli.settings.data_dir, HistorySpec(classifications=classifications, days=days, seed=seed)
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    table = Table("table", "rows", title="synthetic history written", title_justify="left")
    for name, rows in report.rows.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
    console.print(f"consensus images and subject frames under {report.data_dir}")
