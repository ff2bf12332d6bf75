"""``etchacell retrain`` and ``etchacell model list|promote|rollback``: the training queue and the registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from etchacell_loop.cli.context import CommandError, console, operator_errors, require_schema, state
from etchacell_loop.cli.help_format import Command, Group

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from etchacell_loop.db.models import ModelVersion

# The database layer and the registry are imported by each command as it runs: `etchacell --help`
# imports this module and must stay quick.

app = typer.Typer(help="Model versions: list them, promote one, roll back.", no_args_is_help=True, cls=Group)


@operator_errors
def retrain(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option("--reason", help="why, for the event log and the dashboard")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="model preset [default: training.preset]")] = None,
    by: Annotated[str | None, typer.Option("--by", help="who asks [default: the OS user]")] = None,
    force: Annotated[bool, typer.Option("--force", help="queue even while another run is queued or running")] = False,
) -> None:
    """Queue a manual training run for the GPU worker; prints the run id."""
    from etchacell_loop.db.engine import session_scope
    from etchacell_loop.db.models import TrainingTrigger
    from etchacell_loop.loop.runs import RunAlreadyActive, current_user, queue_training_run
    from etchacell_loop.model.presets import PresetError, get_preset

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


@app.command("list", cls=Command)
@operator_errors
def list_models(ctx: typer.Context) -> None:
    """Every model version, newest first: preset, validation figures against consensus, promotion, parent."""
    from etchacell_loop.db.engine import session_scope
    from etchacell_loop.model import registry

    cli = state(ctx)
    with cli.engine() as engine:
        _require_schema(engine)
        with session_scope(engine) as session:
            versions = registry.list_versions(session)
    if not versions:
        console.print("no model versions yet: `etchacell retrain` queues a training run")
        return
    # Version names are what `model promote` takes: never cut short, whatever the terminal's width.
    name_width = max(len(v.version) for v in versions)
    table = Table(
        Column("version", no_wrap=True, min_width=name_width),
        "preset", "F (val)", "AHD nm (val)", "F (test)", "promoted",
        Column("parent", no_wrap=True, min_width=name_width),
        "created",
    )  # fmt: skip
    for version in versions:
        table.add_row(*_row(version))
    console.print(table)


@app.command("promote", cls=Command)
@operator_errors
def promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="version name, e.g. v0003-1a2b3c4d")],
    by: Annotated[str | None, typer.Option("--by", help="who promotes [default: the OS user]")] = None,
    reason: Annotated[str, typer.Option("--reason", help="why, for the promotion history")] = "by hand",
) -> None:
    """Make VERSION the model the loop predicts with (recorded with who did it)."""
    from etchacell_loop.db.engine import session_scope
    from etchacell_loop.loop.runs import current_user
    from etchacell_loop.model import registry

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


@app.command("rollback", cls=Command)
@operator_errors
def rollback(
    ctx: typer.Context,
    by: Annotated[str | None, typer.Option("--by", help="who rolls back [default: the OS user]")] = None,
) -> None:
    """Promote again the version that was promoted before the current one."""
    from etchacell_loop.db.engine import session_scope
    from etchacell_loop.loop.runs import current_user
    from etchacell_loop.model import registry

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


@app.command("trust-corrections", cls=Command)
@operator_errors
def trust_corrections(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="version name, e.g. v0003-1a2b3c4d")],
    revoke: Annotated[
        bool, typer.Option("--revoke", help="hold its corrections again: not training data until trusted")
    ] = False,
    by: Annotated[str | None, typer.Option("--by", help="who decides [default: the OS user]")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="why, for the event log")] = None,
) -> None:
    """Use VERSION's corrections as training data although monitoring held them (--revoke: hold them).

    The monitoring guard holds a version's corrections when, on its monitoring slices, they disagree
    with the consensus traced from scratch (correction.min_monitoring_dice); an operator who has
    looked decides here, recorded in the event log with who and why."""
    from etchacell_loop.db.engine import session_scope
    from etchacell_loop.loop.monitoring import GuardState, guard_states, record_operator_decision
    from etchacell_loop.loop.runs import current_user
    from etchacell_loop.model import registry

    cli = state(ctx)
    with cli.engine() as engine:
        _require_schema(engine)
        try:
            with session_scope(engine) as session:
                target = registry.find_version(session, version)
                before = guard_states(session).get(target.id or 0, GuardState.USED)
                after = record_operator_decision(
                    session, target, trusted=not revoke, by=by or current_user(), reason=reason
                )
        except registry.RegistryError as exc:
            raise CommandError(str(exc)) from None
    if after is GuardState.TRUSTED:
        notes = {GuardState.TRUSTED: " (already trusted)", GuardState.USED: " (the guard had not held them)"}
        note = notes.get(before, "")
        console.print(f"corrections of {version} trusted: training data from the next training run{note}")
    else:
        console.print(f"corrections of {version} held: not training data until `etchacell model trust-corrections`")


def _row(version: ModelVersion) -> list[str]:
    from etchacell_loop.db.models import DataSplit
    from etchacell_loop.model import registry

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
    require_schema(engine)
