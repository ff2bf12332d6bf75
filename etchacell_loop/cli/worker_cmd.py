"""``etchacell worker``: the GPU worker process that claims and runs training runs and prediction batches."""

from __future__ import annotations

import functools
import threading
from typing import Annotated

import typer

from etchacell_loop.cli.context import CommandError, console, operator_errors, require_schema, state


@operator_errors
def worker(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="claim one run or batch, run it, exit")] = False,
    poll_s: Annotated[float, typer.Option("--poll-s", min=0.1, help="seconds between looks at an empty queue")] = 10.0,
) -> None:
    """Claim queued training runs, then prediction batches, and execute them until SIGTERM (the one in
    hand goes back to the queue)."""
    from etchacell_loop.model.backend import BackendError, select_backend

    cli = state(ctx)
    settings = cli.settings
    try:
        backend = select_backend(settings.training.backend)  # before anything imports Keras
    except BackendError as exc:
        raise CommandError(str(exc)) from None
    console.print(f"Keras backend: {backend} (training.backend = {settings.training.backend})", highlight=False)
    # Only now: the worker's modules may import Keras, which reads KERAS_BACKEND when it is imported.
    from sqlmodel import Session

    from etchacell_loop.loop.worker import install_stop_signals, run_worker

    stop = threading.Event()
    install_stop_signals(stop)
    with cli.engine() as engine:
        require_schema(engine)
        session_factory = functools.partial(Session, engine, expire_on_commit=False)
        report = run_worker(session_factory, settings, once=once, stop=stop, poll_s=poll_s)
    if report.claimed == 0 and once:
        console.print("no training run queued, no prediction batch queued")
        return
    console.print(
        f"training runs and prediction batches: {report.claimed} claimed, {report.succeeded} succeeded, "
        f"{report.failed} failed, {report.released} handed back, {report.lost} taken by another worker "
        f"({report.batches_claimed} of those claimed were prediction batches)"
    )
