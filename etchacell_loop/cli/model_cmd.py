"""``etchacell retrain`` and ``etchacell model list|promote|rollback``: the training queue and the registry."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.engine import Engine

from etchacell_loop.cli.context import CommandError, console, operator_errors, state
from etchacell_loop.db import migrate
from etchacell_loop.db.engine import session_scope
from etchacell_loop.db.models import DataSplit, ModelVersion, TrainingTrigger
from etchacell_loop.loop.runs import RunAlreadyActive, current_user, queue_training_run
from etchacell_loop.model import registry
from etchacell_loop.model.presets import PresetError, get_preset

app = typer.Typer(help="Model versions: list them, promote one, roll back.", no_args_is_help=True)


@operator_errors
def retrain(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option("--reason", help="why, for the event log and the dashboard")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="model preset [default: training.preset]")] = None,
    by: Annotated[str | None, typer.Option("--by", help="who asks [default: the OS user]")] = None,
    force: Annotated[bool, typer.Option("--force", help="queue even while another run is queued or running")] = False,
) -> None:
    """Queue a manual training run for the GPU worker; prints the run id."""
    cli = state(ctx)
    name = preset or cli.settings.training.preset
    try:
        get_preset(name)
    except PresetError as exc:
        raise CommandError(str(exc)) from None
    with cli.engine() as engine:
        _require_schema(engine)
        try:
            with session_scope(engine) as session:
                run = queue_training_run(
                    session,
                    TrainingTrigger.MANUAL,
                    by or current_user(),
                    reason,
                    name,
                    force=force,
                    config=cli.settings.training.run_config(),
                )
        except RunAlreadyActive as exc:
            raise CommandError(str(exc)) from None
    console.print(run.id)


@app.command("list")
@operator_errors
def list_models(ctx: typer.Context) -> None:
    """Every model version, newest first: preset, validation figures against consensus, promotion, parent."""
    cli = state(ctx)
    with cli.engine() as engine:
        _require_schema(engine)
        with session_scope(engine) as session:
            versions = registry.list_versions(session)
    if not versions:
        console.print("no model versions yet: `etchacell retrain` queues a training run")
        return
    table = Table("version", "preset", "F (val)", "AHD nm (val)", "F (test)", "promoted", "parent", "created")
    for version in versions:
        table.add_row(*_row(version))
    console.print(table)


@app.command("promote")
@operator_errors
def promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="version name, e.g. v0003-1a2b3c4d")],
    by: Annotated[str | None, typer.Option("--by", help="who promotes [default: the OS user]")] = None,
    reason: Annotated[str, typer.Option("--reason", help="why, for the promotion history")] = "by hand",
) -> None:
    """Make VERSION the model the loop predicts with (recorded with who did it)."""
    cli = state(ctx)
    with cli.engine() as engine:
        _require_schema(engine)
        try:
            with session_scope(engine) as session:
                target = registry.find_version(session, version)
                if target.promoted:
                    raise CommandError(f"{version} is already the promoted version")
                registry.promote_version(session, target, by=by or current_user(), reason=reason)
        except registry.RegistryError as exc:
            raise CommandError(str(exc)) from None
    console.print(f"{version} promoted")


@app.command("rollback")
@operator_errors
def rollback(
    ctx: typer.Context,
    by: Annotated[str | None, typer.Option("--by", help="who rolls back [default: the OS user]")] = None,
) -> None:
    """Promote again the version that was promoted before the current one."""
    cli = state(ctx)
    with cli.engine() as engine:
        _require_schema(engine)
        try:
            with session_scope(engine) as session:
                current = registry.promoted_version(session)
                target = registry.rollback(session, by=by or current_user())
                previous = current.version if current else "none"
        except registry.RegistryError as exc:
            raise CommandError(str(exc)) from None
    console.print(f"{target.version} promoted again (rolled back from {previous})")


def _row(version: ModelVersion) -> list[str]:
    f_measure, ahd_nm = registry.validation_figures(version)
    test_f, _ = registry.split_figures(version, DataSplit.TEST)
    parent = version.training_data.get("parent") or {}
    return [
        version.version,
        version.preset,
        "—" if f_measure is None else f"{f_measure:.3f}",
        "—" if ahd_nm is None else f"{ahd_nm:.1f}",
        "—" if test_f is None else f"{test_f:.3f}",
        "yes" if version.promoted else "",
        str(parent.get("version", "—")) if isinstance(parent, dict) else "—",
        f"{version.created_at:%Y-%m-%d %H:%M}",
    ]


def _require_schema(engine: Engine) -> None:
    if not migrate.is_up_to_date(engine):
        raise CommandError("the database schema is not up to date: run `etchacell db upgrade` first")
