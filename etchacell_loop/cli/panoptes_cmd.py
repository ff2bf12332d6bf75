"""``etchacell panoptes``: check the credentials, register the project, pull classifications."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from etchacell_loop.cli.context import (
    CliState,
    CommandError,
    connect_panoptes,
    console,
    operator_errors,
    require_schema,
    state,
)
from etchacell_loop.cli.help_format import Command, Group

if TYPE_CHECKING:
    from etchacell_loop.panoptes.gateway import PanoptesGateway, ProjectInfo

app = typer.Typer(help="Talk to the configured Zooniverse project (or the sandbox).", no_args_is_help=True, cls=Group)


def _project_id(cli: CliState) -> int:
    project_id = cli.settings.panoptes.project_id
    if project_id is None:
        raise CommandError("panoptes.project_id is not set (ETCHACELL_PANOPTES__PROJECT_ID or etchacell.toml)")
    return project_id


def _gateway(cli: CliState) -> PanoptesGateway:
    return connect_panoptes(cli.settings.panoptes)


def _describe(cli: CliState) -> ProjectInfo:
    """Sign in and read the configured project as Panoptes has it now."""
    project_id = _project_id(cli)
    with _gateway(cli) as gateway:
        return gateway.describe_project(project_id)


def _show_project(cli: CliState, info: ProjectInfo) -> None:
    from etchacell_loop.loop.project import configured_roles

    roles = configured_roles(cli.settings.panoptes)
    table = Table(title=f"{info.display_name} (project {info.panoptes_id})", title_justify="left")
    for column in ("workflow", "name", "version", "active", "Caesar data fetching", "role here"):
        table.add_column(column, overflow="fold")
    for workflow in info.workflows:
        role = roles.get(workflow.panoptes_id)
        table.add_row(
            str(workflow.panoptes_id),
            workflow.display_name,
            workflow.version,
            "yes" if workflow.active else "no",
            "yes" if workflow.caesar_data_fetching else "no",
            role.value if role else "-",
        )
    console.print(table)


@app.command("check", cls=Command)
@operator_errors
def check(ctx: typer.Context) -> None:
    """Sign in with the configured client credentials and show the project and its workflows."""
    cli = state(ctx)
    info = _describe(cli)
    console.print(f"signed in to {cli.settings.panoptes.endpoint} as client {cli.settings.panoptes.client_id}")
    _show_project(cli, info)


@app.command("register", cls=Command)
@operator_errors
def register(ctx: typer.Context) -> None:
    """Record the project and its configured workflows (with their roles) in the database."""
    from etchacell_loop.db.engine import session_scope
    from etchacell_loop.loop.project import configured_roles, register_project

    cli = state(ctx)
    with cli.engine() as engine:
        require_schema(engine)
        info = _describe(cli)
        with session_scope(engine) as session:
            registered = register_project(session, info, configured_roles(cli.settings.panoptes))
            summary = ", ".join(f"{w.panoptes_id} ({w.role.value})" for w in registered.workflows) or "none"
    console.print(f"registered project {info.panoptes_id} '{info.display_name}'; workflows: {summary}")


@app.command("pull", cls=Command)
@operator_errors
def pull(
    ctx: typer.Context,
    workflow: Annotated[int | None, typer.Option(help="only this Panoptes workflow id")] = None,
    page_size: Annotated[int, typer.Option(min=1, max=100, help="classifications per request")] = 100,
) -> None:
    """Store every new classification of the registered workflows (safe to run at any time)."""
    from sqlmodel import Session, select

    from etchacell_loop.db.models import Project, Workflow
    from etchacell_loop.loop.ingest import ingest_classifications

    cli = state(ctx)
    project_id = _project_id(cli)
    with cli.engine() as engine:
        require_schema(engine)
        with Session(engine) as session:
            query = select(Workflow).join(Project).where(Project.panoptes_id == project_id)
            rows = [w for w in session.exec(query).all() if workflow is None or w.panoptes_id == workflow]
        if not rows:
            raise CommandError("no registered workflow to pull: run `etchacell panoptes register` first")
        table = Table(title="classifications pulled", title_justify="left")
        for column in ("workflow", "role", "new", "already stored", "unusable", "cursor"):
            table.add_column(column)
        with _gateway(cli) as gateway:
            for row in rows:
                result = ingest_classifications(
                    lambda: Session(engine, expire_on_commit=False), gateway, row, project_id, page_size,
                    cli.settings.panoptes.lookback_ids,
                )  # fmt: skip
                table.add_row(
                    str(row.panoptes_id), row.role.value, str(result.inserted), str(result.skipped),
                    str(result.unusable), str(result.last_id),
                )  # fmt: skip
    console.print(table)
