"""``etchacell db``: create and migrate the schema (Alembic)."""

from __future__ import annotations

from typing import Annotated

import typer

from etchacell_loop.cli.context import console, database_exists, describe_database, operator_errors, state
from etchacell_loop.cli.help_format import Command, Group

app = typer.Typer(help="Create and migrate the database schema.", no_args_is_help=True, cls=Group)

EMPTY = "base (empty)"


@app.command("upgrade", cls=Command)
@operator_errors
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: the newest). Safe to run again."""
    from etchacell_loop.db import migrate

    cli = state(ctx)
    with cli.engine(create=True) as engine:
        before = migrate.current_revision(engine) or EMPTY
        migrate.upgrade(engine, revision)
        after = migrate.current_revision(engine)
    where = describe_database(cli.settings)
    if before == after:
        console.print(f"{where} already at revision {after}")
    else:
        console.print(f"{where} migrated from {before} to revision {after}")


@app.command("downgrade", cls=Command)
@operator_errors
def downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="target revision; 'base' removes every table")] = "-1",
) -> None:
    """Migrate the database down to REVISION (default: one step)."""
    from etchacell_loop.db import migrate

    cli = state(ctx)
    with cli.engine() as engine:
        migrate.downgrade(engine, revision)
        now = migrate.current_revision(engine) or EMPTY
    console.print(f"{describe_database(cli.settings)} is at revision {now}")


@app.command("current", cls=Command)
@operator_errors
def current(ctx: typer.Context) -> None:
    """Show the database's revision and the newest one this code knows (a missing SQLite file is
    reported as empty, not created)."""
    from etchacell_loop.db import migrate

    cli = state(ctx)
    at = None
    if database_exists(cli.settings):
        with cli.engine() as engine:
            at = migrate.current_revision(engine)
    head = migrate.head_revision()
    note = "up to date" if at == head else "run `etchacell db upgrade`"
    console.print(f"{describe_database(cli.settings)}: at {at or EMPTY}, newest {head} ({note})")
