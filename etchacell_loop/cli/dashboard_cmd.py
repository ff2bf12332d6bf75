"""``etchacell dashboard``: serve the ops dashboard over the configured database."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from etchacell_loop.cli.context import (
    CommandError,
    describe_database,
    err_console,
    operator_errors,
    require_schema,
    state,
)

log = logging.getLogger(__name__)


@operator_errors
def dashboard(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="address to listen on [default: dashboard.host, 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [default: dashboard.port, 8080]", min=1, max=65535)] = None,
) -> None:
    """Serve the dashboard: overview, subject sets, consensus, models (retrain, promote), events."""
    cli = state(ctx)
    settings = cli.settings.dashboard
    if settings.operator_token is None and not settings.public_read:
        raise CommandError(
            "nobody could open the dashboard: set ETCHACELL_DASHBOARD__OPERATOR_TOKEN "
            "(or dashboard.operator_token_file) to sign in, or dashboard.public_read = true "
            "to let anyone who reaches it read it"
        )
    import uvicorn

    from etchacell_loop.dashboard.app import create_app

    with cli.engine() as engine:
        require_schema(engine)
        listen_host, listen_port = host or settings.host, port or settings.port
        if settings.operator_token is None:
            err_console.print("[yellow]no operator token: the pages are read-only, actions are disabled[/]")
        err_console.print(
            f"dashboard on http://{listen_host}:{listen_port}/ over {describe_database(cli.settings)}", highlight=False
        )
        app = create_app(cli.settings, engine)
        uvicorn.run(app, host=listen_host, port=listen_port, log_level="warning", access_log=False)
