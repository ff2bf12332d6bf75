"""The ``etchacell`` root command: global options and the command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from etchacell_loop import __version__
from etchacell_loop.cli import (
    aggregate_cmd,
    config_cmd,
    daemon_cmd,
    dashboard_cmd,
    db_cmd,
    model_cmd,
    panoptes_cmd,
    predict_cmd,
    query_cmd,
    sandbox_cmd,
    subjects_cmd,
    synth_cmd,
    worker_cmd,
)
from etchacell_loop.cli.context import CliState
from etchacell_loop.cli.help_format import Command, Group
from etchacell_loop.cli.logs import LogFormat, configure_logging

app = typer.Typer(
    name="etchacell",
    help="Volunteer tracings of the nuclear envelope → CRIA consensus → U-Net → back to volunteers.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=Group,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(db_cmd.app, name="db")
app.command("query", cls=Command)(query_cmd.query)
app.add_typer(sandbox_cmd.app, name="sandbox")
app.add_typer(panoptes_cmd.app, name="panoptes")
app.command("aggregate", cls=Command)(aggregate_cmd.aggregate)
app.add_typer(synth_cmd.app, name="synth")
app.add_typer(subjects_cmd.app, name="subjects")
app.command("retrain", cls=Command)(model_cmd.retrain)
app.add_typer(model_cmd.app, name="model")
app.command("worker", cls=Command)(worker_cmd.worker)
app.command("predict", cls=Command)(predict_cmd.predict)
app.command("evaluate", cls=Command)(predict_cmd.evaluate)
app.command("tick", cls=Command)(daemon_cmd.tick_command)
app.command("daemon", cls=Command)(daemon_cmd.daemon_command)
app.command("status", cls=Command)(daemon_cmd.status_command)
app.command("dashboard", cls=Command)(dashboard_cmd.dashboard)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"etchacell {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="ETCHACELL_CONFIG", help="TOML configuration file"),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log debug messages")] = False,
    log_format: Annotated[
        LogFormat, typer.Option("--log-format", envvar="ETCHACELL_LOG_FORMAT", help="text, or json lines for services")
    ] = LogFormat.TEXT,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Global options shared by every command."""
    ctx.obj = CliState(config_path=config)
    configure_logging(verbose, log_format)


def main() -> None:
    """Console-script entry point."""
    app()
