"""``etchacell sandbox``: the local stand-in of the Panoptes API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer

from etchacell_loop.cli.context import CommandError, console, operator_errors
from etchacell_loop.sandbox.config import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    FaultPlan,
    SandboxConfig,
)

app = typer.Typer(help="Run a local stand-in of the Panoptes API (tests, staging, the demo).", no_args_is_help=True)


@app.command("serve")
@operator_errors
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8765,
    state: Annotated[Path, typer.Option(help="folder holding the sandbox's state")] = Path("sandbox-state"),
    token_lifetime_s: Annotated[int, typer.Option(help="OAuth access token lifetime")] = 7200,
    retirement_delay_s: Annotated[float, typer.Option(help="delay before a retirement shows")] = 0.5,
    export_delay_s: Annotated[float, typer.Option(help="time an export stays 'creating'")] = 1.0,
    faults: Annotated[
        str | None, typer.Option(help="fault plan as JSON, e.g. '{\"error_rate\": 0.2}' (see /_sandbox/faults)")
    ] = None,
) -> None:
    """Serve the sandbox until interrupted. State persists in --state, so a restart loses nothing."""
    from etchacell_loop.sandbox.server import serve as run

    try:
        plan = FaultPlan.from_dict(json.loads(faults)) if faults else FaultPlan()
    except (ValueError, TypeError) as exc:
        raise CommandError(f"--faults: {exc}") from None
    config = SandboxConfig(
        token_lifetime_s=token_lifetime_s,
        retirement_delay_s=retirement_delay_s,
        export_delay_s=export_delay_s,
        faults=plan,
    )
    console.print(
        f"Panoptes sandbox on http://{host}:{port} (state {state.resolve()}); "
        f"user {DEFAULT_USER}/{DEFAULT_PASSWORD}, client {DEFAULT_CLIENT_ID}/{DEFAULT_CLIENT_SECRET}"
    )
    run(state, host, port, config)


@app.command("seed")
@operator_errors
def seed(
    url: Annotated[str, typer.Option(help="the running sandbox")] = "http://127.0.0.1:8765",
    name: Annotated[str, typer.Option(help="project display name (default: numbered)")] = "",
) -> None:
    """Create a project with a segmentation and a correction workflow; print their ids as JSON."""
    try:
        response = httpx.post(f"{url.rstrip('/')}/_sandbox/seed", json={"display_name": name}, timeout=30)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot seed the sandbox at {url}: {exc}") from None
    typer.echo(json.dumps(response.json()))
