"""``etchacell daemon``, ``etchacell tick JOB…`` and ``etchacell status``: the loop, scheduled or by hand."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.engine import Engine

from etchacell_loop.cli.context import CliState, CommandError, console, operator_errors, state
from etchacell_loop.cli.query_cmd import print_result
from etchacell_loop.db import migrate
from etchacell_loop.db.queries import get_query, run_query
from etchacell_loop.loop.jobs import JOBS, JobOutcome, UnknownJob
from etchacell_loop.loop.lock import DaemonAlreadyRunning
from etchacell_loop.loop.scheduler import LoopRunner, PanoptesConnection, run_daemon, tick
from etchacell_loop.panoptes.gateway import connect

STATUS_QUERIES = ("job_status", "cursor_lag", "retirement_progress", "training_runs", "model_versions")


def _runner(cli: CliState, engine: Engine) -> LoopRunner:
    if cli.settings.panoptes.project_id is None:
        raise CommandError("panoptes.project_id is not set (ETCHACELL_PANOPTES__PROJECT_ID or etchacell.toml)")
    if not migrate.is_up_to_date(engine):
        raise CommandError("the database schema is not up to date: run `etchacell db upgrade` first")
    return LoopRunner(engine, cli.settings, PanoptesConnection(lambda: connect(cli.settings.panoptes)))


@operator_errors
def tick_command(
    ctx: typer.Context,
    jobs: Annotated[list[str], typer.Argument(help=f"jobs to run once, in order ({', '.join(JOBS)}, or all)")],
) -> None:
    """Run loop jobs once, exactly as the daemon runs them (recorded in job_run; exit 1 if one failed)."""
    cli = state(ctx)
    names = list(JOBS) if jobs == ["all"] else jobs
    with cli.engine() as engine:
        runner = _runner(cli, engine)
        try:
            outcomes = tick(runner, names)
        except (UnknownJob, DaemonAlreadyRunning) as exc:
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
    cli = state(ctx)
    stop = threading.Event()
    _stop_on_signals(stop)
    with cli.engine() as engine:
        runner = _runner(cli, engine)
        try:
            run_daemon(runner, stop, jobs)
        except (UnknownJob, DaemonAlreadyRunning) as exc:
            raise CommandError(str(exc)) from None


@operator_errors
def status_command(ctx: typer.Context) -> None:
    """The loop at a glance: jobs, ingestion cursors, retirement, training queue and models."""
    cli = state(ctx)
    with cli.engine() as engine:
        if not migrate.is_up_to_date(engine):
            raise CommandError("the database schema is not up to date: run `etchacell db upgrade` first")
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
        figures = ", ".join(
            f"{k}={v}" for k, v in outcome.result.items() if k != "seconds" and isinstance(v, int | float | str)
        )
        table.add_row(
            outcome.job,
            str(outcome.job_run_id),
            "[green]ok[/]" if outcome.ok else "[red]failed[/]",
            f"{outcome.seconds:.1f}",
            figures if outcome.ok else (outcome.error or ""),
        )
    console.print(table)
