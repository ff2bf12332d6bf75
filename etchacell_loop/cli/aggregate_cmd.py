"""``etchacell aggregate EXPORT.csv --out DIR``: every subject's consensus from a classification export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from etchacell_loop.cli.context import CommandError, PhaseBars, console, err_console, operator_errors, state

if TYPE_CHECKING:
    from etchacell_loop.aggregate.run import AggregateReport
    from etchacell_loop.cria.consensus import JoinRule

PHASES = {"read": "reading classifications", "vote": "voting slices", "reweight": "re-voting with pooled agreement"}
# The consensus methods (``cria.methods.METHODS``; a test keeps the two equal), named here so that
# `--help` answers without importing the consensus code.
METHODS = ("cria", "cria-robust", "staple")


@operator_errors
def aggregate(
    ctx: typer.Context,
    export: Annotated[
        Path,
        typer.Argument(
            help="classification export: CSV, or CSV compressed with gzip (Zooniverse project → Data exports)"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for masks/, envelope/, confidence/ and CSVs")],
    workflow_id: Annotated[
        int | None, typer.Option(help="aggregate this workflow (default: the first one in the export)")
    ] = None,
    pixel_size_nm: Annotated[
        float | None,
        typer.Option(help="size of one subject pixel [default: from subject metadata, else 20]"),
    ] = None,
    envelope_width_nm: Annotated[
        float | None, typer.Option(help="width of the envelope band [default: consensus.envelope_width_nm]")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help=f"consensus method: {', '.join(METHODS)} [default: consensus.method]")
    ] = None,
    join_rule: Annotated[
        str | None, typer.Option(help="stroke joining: greedy or min-total [default: consensus.join_rule]")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="worker processes [default: one per core; 0: none, in this process]")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="none (this machine's process pool: the default), local (a Dask cluster of this machine), or a Dask"
            " scheduler address or file [default: compute.scheduler]"
        ),
    ] = None,
) -> None:
    """Consensus area, envelope band and confidence map for every subject of an export.

    The slices are voted on this machine's process pool by default, or on the Dask cluster
    --scheduler names (docs/cluster.md); OUT must then be on storage every worker sees."""
    settings = state(ctx).settings.consensus
    from etchacell_loop.compute.cluster import resolve_scheduler

    compute = state(ctx).settings.compute
    chosen_scheduler = resolve_scheduler(scheduler or compute.scheduler, "aggregate")
    if workers == 0 and scheduler is None:
        chosen_scheduler = "none"  # --workers 0 asks for this process alone
    chosen_method = method or settings.method
    if chosen_method not in METHODS:
        raise CommandError(f"unknown consensus method {chosen_method!r}; known: {', '.join(METHODS)}")
    rule = join_rule or settings.join_rule
    if rule not in ("greedy", "min-total"):
        raise CommandError(f"unknown join rule {rule!r}; known: greedy, min-total")
    _check_readable(export)
    from etchacell_loop.aggregate.run import DEFAULT_PIXEL_SIZE_NM, AggregateOptions, aggregate_export, start_worker
    from etchacell_loop.annotations import ExportFormatError
    from etchacell_loop.compute.cluster import ClusterError, cluster_executor, dashboard_line, open_client
    from etchacell_loop.cria.consensus import CriaParams

    params = replace(
        CriaParams.from_settings(settings, pixel_size_nm=DEFAULT_PIXEL_SIZE_NM),
        method=chosen_method,
        join_rule=_join_rule(rule),
        envelope_width_nm=envelope_width_nm or settings.envelope_width_nm,
    )
    options = AggregateOptions(params=params, workflow_id=workflow_id, pixel_size_nm=pixel_size_nm, workers=workers)
    try:
        with open_client(chosen_scheduler, workers=workers or compute.workers) as client:
            executor = None
            if client is not None:
                err_console.print(dashboard_line(client), highlight=False, soft_wrap=True)
                executor = cluster_executor(client, start_worker)
            with PhaseBars(PHASES) as bars:
                report = aggregate_export(export, out, options, bars.update, executor)
    except ClusterError as exc:
        raise CommandError(str(exc)) from None
    except ExportFormatError as exc:
        raise CommandError(f"{export}: {exc}") from None
    except OSError as exc:  # a file that became unreadable, or an output folder that cannot be written
        raise CommandError(f"{exc.filename or export}: {exc.strerror or exc}") from None
    _print_report(report)


def _check_readable(export: Path) -> None:
    """One line for an export that is not a file this process can read, before any work starts."""
    if export.is_dir():
        raise CommandError(f"{export}: is a directory; give the export file (CSV or CSV.gz) inside it")
    if not export.exists():
        raise CommandError(f"{export}: no such file")
    if not export.is_file():
        raise CommandError(f"{export}: not a regular file")
    try:
        with export.open("rb"):
            pass
    except OSError as exc:
        raise CommandError(f"{export}: cannot be read ({exc.strerror or exc})") from None


def _join_rule(name: str) -> JoinRule:
    return "min-total" if name == "min-total" else "greedy"


def _print_report(report: AggregateReport) -> None:
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(report.statuses.items()))
    console.print(f"workflow {report.workflow_id}: {report.rows} classifications ({statuses}; {report.empty} empty)")
    if report.row_problems:
        console.print(f"[yellow]{report.row_problems} unreadable row(s) skipped[/] (see issues.csv)")
    for workflow, count in sorted(report.other_workflow_rows.items()):
        console.print(f"[yellow]{count} row(s) of workflow {workflow} skipped[/] (choose with --workflow-id)")
    console.print(f"{report.subjects} subjects, {report.slices} slices voted, {report.reweighted_slices} re-voted")
    if report.unplaced_marks:
        console.print(
            f"[yellow]{report.unplaced_marks} mark(s) on frames whose slice the subject metadata does not name[/]"
        )
    if report.orphan_drawings:
        console.print(f"{report.orphan_drawings} drawing(s) on slices no subject of this export shows as its own")
    if report.subjects_without_size:
        console.print(f"[yellow]{report.subjects_without_size} subject(s) without an image size[/] (see summary.csv)")
    console.print(f"{report.volunteers} volunteers, {report.flagged_volunteers} flagged (see volunteers.csv)")
    timing = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in report.seconds.items())
    console.print(f"wrote {report.out_dir} ({timing})")
