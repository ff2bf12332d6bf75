"""``etchacell config``: see the effective configuration, secrets masked."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from etchacell_loop.cli.context import console, operator_errors, state
from etchacell_loop.cli.help_format import Command, Group

app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True, cls=Group)


class ConfigFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


@app.command("show", cls=Command)
@operator_errors
def show(
    ctx: typer.Context,
    output: Annotated[ConfigFormat, typer.Option("--format", help="table or json")] = ConfigFormat.TABLE,
) -> None:
    """Print every effective setting, where it came from, and the variable that overrides it."""
    from etchacell_loop.config import env_var_for, flatten, setting_sources

    cli = state(ctx)
    settings = cli.settings
    sources = setting_sources(cli.config_path)
    values = dict(flatten(settings))
    if output is ConfigFormat.JSON:
        console.print_json(json.dumps(values, default=str))
        return
    # Keys and variable names are copied into etchacell.toml and the environment: never broken mid-word.
    table = Table(title="etchacell configuration", title_justify="left")
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", style="dim", overflow="fold")
    table.add_column("environment variable", style="dim", no_wrap=True)
    for key, value in values.items():
        table.add_row(key, "" if value is None else str(value), sources.get(key, "default"), env_var_for(key))
    console.print(table)


@app.command("check", cls=Command)
@operator_errors
def check(ctx: typer.Context) -> None:
    """Validate the configuration; exit 0 if it is usable, 2 with one line naming the bad key if not."""
    settings = state(ctx).settings
    console.print(f"configuration OK (data directory {settings.data_dir.resolve()})")
