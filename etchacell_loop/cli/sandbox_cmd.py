"""``etchacell sandbox``: the local stand-in of the Panoptes API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from etchacell_loop.cli.context import CommandError, console, err_console, operator_errors
from etchacell_loop.cli.help_format import Command, Group
from etchacell_loop.sandbox.config import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    FaultPlan,
    SandboxConfig,
)

if TYPE_CHECKING:
    from etchacell_loop.simulation.volunteers import RunReport

app = typer.Typer(
    help="Run a local stand-in of the Panoptes API (tests, staging, the demo).", no_args_is_help=True, cls=Group
)


@app.command("serve", cls=Command)
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


@app.command("seed", cls=Command)
@operator_errors
def seed(
    url: Annotated[str, typer.Option(help="the running sandbox")] = "http://127.0.0.1:8765",
    name: Annotated[str, typer.Option(help="project display name (default: numbered)")] = "",
) -> None:
    """Create a project with a segmentation and a correction workflow; print their ids as JSON."""
    import httpx

    try:
        response = httpx.post(f"{url.rstrip('/')}/_sandbox/seed", json={"display_name": name}, timeout=30)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot seed the sandbox at {url}: {exc}") from None
    typer.echo(json.dumps(response.json()))


@app.command("volunteers", cls=Command)
@operator_errors
def volunteers(
    workflow: Annotated[int, typer.Option(help="the workflow to classify")],
    url: Annotated[str, typer.Option(help="the running sandbox")] = "http://127.0.0.1:8765",
    truth: Annotated[
        list[Path] | None, typer.Option(help="a truth volume (OME-Zarr); subjects name theirs by stem (repeatable)")
    ] = None,
    rate: Annotated[float, typer.Option(help="classifications per second; 0: as fast as possible")] = 0.0,
    subject_gap_s: Annotated[
        float,
        typer.Option(
            help="seconds before a subject is classified again (a live project's pace per subject); 0: no wait"
        ),
    ] = 0.0,
    max_classifications: Annotated[int | None, typer.Option(help="stop after this many classifications")] = None,
    until_retired: Annotated[bool, typer.Option(help="stop once every subject is retired")] = False,
    follow: Annotated[
        bool, typer.Option(help="keep waiting for new subjects, as a live project's crowd does (stop: Ctrl-C/SIGTERM)")
    ] = False,
    mix: Annotated[
        str | None, typer.Option(help="behaviours, e.g. careful=0.4,sloppy=0.3,partial=0.3 [default: the paper's]")
    ] = None,
    prolific: Annotated[int, typer.Option(help="prolific volunteers, each repeating one mistake")] = 3,
    correctors: Annotated[
        str | None,
        typer.Option(
            help="how volunteers treat machine outlines, e.g. careful=0.5,partial=0.2,accept=0.15,redraw=0.1,empty=0.05"
            " [default: that mix]"
        ),
    ] = None,
    accepting: Annotated[
        float | None, typer.Option(help="share of accept-anything correctors (the others keep their proportions)")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed: the same run for the same server answers")] = 0,
) -> None:
    """Simulated volunteers classify the workflow's subjects as the Zooniverse front ends would."""
    from etchacell_loop.simulation.correction import CorrectorMix
    from etchacell_loop.simulation.crowd import CrowdMix
    from etchacell_loop.simulation.truth import TruthError
    from etchacell_loop.simulation.volunteers import RunOptions, VolunteerCrowd, VolunteerRunError, volumes_by_name

    if prolific < 0:
        raise CommandError("--prolific cannot be negative")
    try:
        crowd_mix = CrowdMix.parse(mix) if mix else CrowdMix(prolific_behaviours=())
        corrector_mix = CorrectorMix.parse(correctors) if correctors else CorrectorMix()
        if accepting is not None:
            corrector_mix = corrector_mix.with_accepting(accepting)
        options = RunOptions(
            workflow_id=workflow,
            mix=crowd_mix.with_prolific(prolific) if prolific else crowd_mix,
            seed=seed,
            rate_per_s=rate,
            subject_gap_s=subject_gap_s,
            max_classifications=max_classifications,
            until_retired=until_retired,
            follow=follow,
            correctors=corrector_mix,
        )
    except ValueError as exc:
        raise CommandError(
            f"{exc} (see --mix, --correctors, --accepting, --max-classifications, --until-retired, --follow, --rate,"
            " --subject-gap-s)"
        ) from None
    try:
        volumes = volumes_by_name(truth or [])
    except TruthError as exc:
        raise CommandError(f"--truth: {exc}") from None
    try:
        with VolunteerCrowd(url, options, volumes) as crowd, _VolunteerProgress(max_classifications) as shown:
            report = crowd.run(shown.update)
    except VolunteerRunError as exc:
        raise CommandError(str(exc)) from None
    _print_volunteer_report(report)


class _VolunteerProgress:
    """Classifications so far, on stderr (stdout stays for the summary)."""

    def __init__(self, total: int | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console
        )
        self._task = self._progress.add_task("classifying", total=total)

    def __enter__(self) -> _VolunteerProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, report: RunReport) -> None:
        self._progress.update(self._task, completed=report.classifications)


def _print_volunteer_report(report: RunReport) -> None:
    from rich.table import Table

    table = Table(title=f"{report.classifications} classifications by {report.volunteers} volunteers")
    table.add_column("behaviour")
    table.add_column("classifications", justify="right")
    for behaviour, count in sorted(report.by_behaviour().items(), key=lambda item: -item[1]):
        table.add_row(behaviour, str(count))
    console.print(table)
    fronts = ", ".join(f"{name} {count}" for name, count in sorted(report.by_front_end().items()))
    console.print(f"front ends: {fronts or 'none'}; Gini of effort {report.gini:.2f}; stopped: {report.stop_reason}")
