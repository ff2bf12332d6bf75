"""``etchacell daemon``, ``etchacell tick JOB…`` and ``etchacell status``: the loop, scheduled or by hand."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from etchacell_loop.cli.context import (
    CliState,
    CommandError,
    connect_panoptes,
    console,
    operator_errors,
    require_panoptes_credentials,
    require_schema,
    state,
)
from etchacell_loop.cli.query_cmd import print_result, table_cell

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from etchacell_loop.loop.jobs import JobOutcome
    from etchacell_loop.loop.scheduler import LoopRunner

# The loop's jobs in the order one round runs them (``loop.jobs.JOBS``; a test keeps the two equal).
# Named here so that ``--help`` and a misspelt job answer without importing the jobs.
JOB_NAMES = ("ingest", "aggregate", "retire", "train", "publish")

STATUS_QUERIES = (
    "job_status",
    "cursor_lag",
    "retirement_progress",
    "training_runs",
    "model_versions",
    "volunteer_effort",
)


def chosen_jobs(names: Sequence[str] | None) -> list[str]:
    """The jobs asked for (``all`` or none: every job), or one line naming the unknown one."""
    if not names or list(names) == ["all"]:
        return list(JOB_NAMES)
    for name in names:
        if name not in JOB_NAMES:
            raise CommandError(f"unknown job {name!r}; jobs: {', '.join(JOB_NAMES)} (or all)")
    return list(names)


def _runner(cli: CliState, engine: Engine, jobs: Sequence[str]) -> LoopRunner:
    from etchacell_loop.loop.jobs import JOBS
    from etchacell_loop.loop.scheduler import LoopRunner, PanoptesConnection

    if cli.settings.panoptes.project_id is None:
        raise CommandError("panoptes.project_id is not set (ETCHACELL_PANOPTES__PROJECT_ID or etchacell.toml)")
    if any(JOBS[name].needs_panoptes for name in jobs):
        require_panoptes_credentials(cli.settings.panoptes)
    require_schema(engine)
    return LoopRunner(engine, cli.settings, PanoptesConnection(lambda: connect_panoptes(cli.settings.panoptes)))


@operator_errors
def tick_command(
    ctx: typer.Context,
    jobs: Annotated[list[str], typer.Argument(help=f"jobs to run once, in order ({', '.join(JOB_NAMES)}, or all)")],
) -> None:
    """Run loop jobs once, exactly as the daemon runs them (recorded in job_run; exit 1 if one failed)."""
    from etchacell_loop.loop.lock import DaemonAlreadyRunning
    from etchacell_loop.loop.scheduler import tick

    names = chosen_jobs(jobs)
    cli = state(ctx)
    with cli.engine() as engine:
        runner = _runner(cli, engine, names)
        try:
            outcomes = tick(runner, names)
        except DaemonAlreadyRunning as exc:
            raise CommandError(str(exc)) from None
        finally:
            runner.panoptes.close()
    _print_outcomes(outcomes)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


@operator_errors
def daemon_command(
    ctx: typer.Context,
    jobs: Annotated[
        list[str] | None, typer.Option("--job", help="run only these jobs (repeatable; default: all)")
    ] = None,
) -> None:
    """Run the loop's jobs on their periods until SIGTERM or Ctrl-C (the running job finishes first)."""
    from etchacell_loop.loop.lock import DaemonAlreadyRunning
    from etchacell_loop.loop.scheduler import run_daemon

    names = chosen_jobs(jobs)
    cli = state(ctx)
    stop = threading.Event()
    _stop_on_signals(stop)
    with cli.engine() as engine:
        runner = _runner(cli, engine, names)
        try:
            run_daemon(runner, stop, names)
        except DaemonAlreadyRunning as exc:
            raise CommandError(str(exc)) from None


@operator_errors
def status_command(ctx: typer.Context) -> None:
    """The loop at a glance: jobs, ingestion cursors, retirement, training queue, models and volunteer effort."""
    from etchacell_loop.db.queries import get_query, run_query

    cli = state(ctx)
    with cli.engine() as engine:
        require_schema(engine)
        for name in STATUS_QUERIES:
            named = get_query(name)
            print_result(named, run_query(engine, named))


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask the daemon to stop after the running job (a second one is not needed)."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        console.print(f"[yellow]{signal.Signals(signum).name}: stopping after the running job[/]")
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _print_outcomes(outcomes: list[JobOutcome]) -> None:
    table = Table(title="jobs run", title_justify="left")
    for column in ("job", "run", "status", "seconds", "result"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        shown = {k: v for k, v in outcome.result.items() if k != "seconds" and isinstance(v, int | float | str)}
        figures = ", ".join(f"{k}={table_cell(v)}" for k, v in shown.items())
        table.add_row(
            outcome.job,
            str(outcome.job_run_id),
            "[green]ok[/]" if outcome.ok else "[red]failed[/]",
            f"{outcome.seconds:.1f}",
            figures if outcome.ok else (outcome.error or ""),
        )
    console.print(table)
