"""What every command needs: the settings, an engine, and one way to report a failure.

Commands stay thin: they parse options, call one library function and print. Errors an operator
can fix (bad configuration, unknown query, database not migrated) become one red line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy.exc
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sqlalchemy.engine import Engine

from etchacell_loop.config import ConfigError, Settings, load_settings, masked_database_url
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.queries import QueryError
from etchacell_loop.loop.project import RegistrationError
from etchacell_loop.panoptes.errors import PanoptesError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_USER_ERROR = 2

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("etchacell")


class CommandError(Exception):
    """A failure the operator can act on; its message is printed as one line."""


@dataclass
class CliState:
    """Global options, kept on the Typer context."""

    config_path: Path | None = None
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        """An engine on the configured database, disposed when the command is done with it."""
        engine = make_engine(self.settings.effective_database_url)
        try:
            yield engine
        finally:
            engine.dispose()


def state(ctx: typer.Context) -> CliState:
    """The CLI state of this invocation (made by the root callback)."""
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        obj = CliState()
        ctx.find_root().obj = obj
    return obj


_OPERATOR_ERRORS = (ConfigError, QueryError, CommandError, FileNotFoundError, PanoptesError, RegistrationError)


def operator_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn errors an operator can fix into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except _OPERATOR_ERRORS as exc:
            _fail(str(exc))
        except sqlalchemy.exc.DBAPIError as exc:
            _fail(f"database error: {_first_line(exc)}")
        raise AssertionError("unreachable")

    return wrapper


def _first_line(exc: sqlalchemy.exc.DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]


def _fail(message: str) -> Any:
    err_console.print(f"[bold red]etchacell:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USER_ERROR)


def describe_database(settings: Settings) -> str:
    """The database URL as it may be shown: password hidden."""
    return masked_database_url(settings.effective_database_url)


class PhaseBars:
    """One progress bar per phase of a long command, on stderr (stdout stays for the report).

    ``labels`` names the phases a library reports by key; ``count`` is the text beside each bar,
    a rich template such as ``"{task.percentage:>5.1f}%"`` or ``"{task.completed}/{task.total} chunks"``.
    """

    def __init__(self, labels: Mapping[str, str], count: str = "{task.percentage:>5.1f}%", width: int = 32) -> None:
        self._labels = labels
        self._progress = Progress(
            TextColumn(f"{{task.description:<{width}}}"),
            BarColumn(),
            TextColumn(count),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> PhaseBars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, phase: str, done: float, total: float | None) -> None:
        """Move ``phase``'s bar to ``done`` of ``total`` (None: unknown), adding the bar on first use."""
        if phase not in self._tasks:
            self._tasks[phase] = self._progress.add_task(self._labels.get(phase, phase), total=total)
        self._progress.update(self._tasks[phase], completed=done, total=total)
