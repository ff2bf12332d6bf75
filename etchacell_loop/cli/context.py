"""What every command needs: the settings, an engine, and one way to report a failure.

Commands stay thin: they parse options, call one library function and print. Errors an operator
can fix (bad configuration, unknown query, database not migrated) become one red line on stderr
and exit status 2, never a traceback.

Why nothing heavy is imported here: every command imports this module, and ``etchacell --help``,
``status``, ``query`` and ``config`` must answer within a second. The settings, the database layer
and the libraries a command needs are imported when it runs.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer
from rich.console import Console, ConsoleDimensions

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
    from sqlalchemy.engine import Engine

    from etchacell_loop.config import PanoptesSettings, Settings
    from etchacell_loop.panoptes.gateway import PanoptesGateway

P = ParamSpec("P")
R = TypeVar("R")

EXIT_USER_ERROR = 2
# Wide enough that no table or line of a report wraps when stdout is a pipe or a file.
UNWRAPPED_WIDTH = 10_000
SCHEMA_MISSING = "the database schema is not up to date: run `etchacell db upgrade` first"


class StdoutConsole(Console):
    """The console of stdout: a terminal's width at a terminal; piped or redirected, lines as long
    as their content, so a table keeps whole timestamps, version names and variable names for
    ``grep``, ``cut`` and the next command (Rich would otherwise wrap everything at 80 columns)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNWRAPPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self.width, self.height = new_size


console = StdoutConsole()
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
            from etchacell_loop.config import load_settings

            self._settings = load_settings(self.config_path)
        return self._settings

    @contextmanager
    def engine(self, *, create: bool = False) -> Iterator[Engine]:
        """An engine on the configured database, disposed when the command is done with it.

        Only ``create`` (``etchacell db upgrade``) may bring a new SQLite file into being: a command
        that reads, pointed at the wrong data directory, says so instead of leaving an empty
        database behind."""
        from etchacell_loop.db.engine import make_engine

        if not create:
            require_database(self.settings)
        engine = make_engine(self.settings.effective_database_url)
        try:
            yield engine
        finally:
            engine.dispose()


def sqlite_file(settings: Settings) -> Path | None:
    """The file of a SQLite database (None: another backend, in memory, or a ``file:`` URI)."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.effective_database_url)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def database_exists(settings: Settings) -> bool:
    """Whether the configured database is there to open (a server database always counts as there)."""
    path = sqlite_file(settings)
    return path is None or path.is_file()


def require_database(settings: Settings) -> None:
    """A one-line error when the SQLite file is missing, naming where it was looked for."""
    if not database_exists(settings):
        raise CommandError(
            f"no database at {sqlite_file(settings)}: run `etchacell db upgrade` to create it, or point "
            "ETCHACELL_DATA_DIR (or ETCHACELL_DATABASE_URL) at the data directory you meant"
        )


def require_schema(engine: Engine) -> None:
    """The schema at the newest revision, or the one line that says how to get there."""
    from etchacell_loop.db import migrate

    if not migrate.is_up_to_date(engine):
        raise CommandError(SCHEMA_MISSING)


def missing_panoptes_credentials(settings: PanoptesSettings) -> str | None:
    """What is missing to sign in to Panoptes, as a setting and its variable (None: nothing): the
    gateway's own check (:func:`etchacell_loop.panoptes.gateway.missing_credentials`), so the CLI and
    the library say it alike. Only commands about to connect ask, so the import costs nothing extra."""
    from etchacell_loop.panoptes.gateway import missing_credentials

    return missing_credentials(settings)


def require_panoptes_credentials(settings: PanoptesSettings) -> None:
    """Name the missing credential before anything is sent (Panoptes cannot have rejected it)."""
    missing = missing_panoptes_credentials(settings)
    if missing is not None:
        raise CommandError(f"cannot sign in to Panoptes: {missing}")


def connect_panoptes(settings: PanoptesSettings) -> PanoptesGateway:
    """Sign in to Panoptes with the configured client credentials (checked first)."""
    require_panoptes_credentials(settings)
    from etchacell_loop.panoptes.gateway import connect

    return connect(settings)


def state(ctx: typer.Context) -> CliState:
    """The CLI state of this invocation (made by the root callback)."""
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        obj = CliState()
        ctx.find_root().obj = obj
    return obj


# Errors an operator can fix, named by the module that defines them. An error whose module was never
# imported cannot have been raised, so recognising one imports nothing.
_OPERATOR_ERRORS: tuple[tuple[str, str], ...] = (
    ("builtins", "FileNotFoundError"),
    ("etchacell_loop.config", "ConfigError"),
    ("etchacell_loop.db.queries", "QueryError"),
    ("etchacell_loop.panoptes.errors", "PanoptesError"),
    ("etchacell_loop.loop.project", "RegistrationError"),
)
_DATABASE_ERROR = ("sqlalchemy.exc", "DBAPIError")


def operator_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn errors an operator can fix into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            message = operator_message(exc)
            if message is None:
                raise
            _fail(message)
        raise AssertionError("unreachable")

    return wrapper


def operator_message(exc: Exception) -> str | None:
    """The one line to show for an error an operator can fix; None for a bug (its traceback shows)."""
    if isinstance(exc, CommandError) or _is_instance(exc, *_OPERATOR_ERRORS):
        return str(exc)
    if _is_instance(exc, _DATABASE_ERROR):
        return f"database error: {_first_line(exc)}"
    return None


def _is_instance(exc: Exception, *names: tuple[str, str]) -> bool:
    for module_name, class_name in names:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _first_line(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail(message: str) -> Any:
    err_console.print(f"[bold red]etchacell:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USER_ERROR)


def describe_database(settings: Settings) -> str:
    """The database URL as it may be shown: password hidden."""
    from etchacell_loop.config import masked_database_url

    return masked_database_url(settings.effective_database_url)


class PhaseBars:
    """One progress bar per phase of a long command, on stderr (stdout stays for the report).

    ``labels`` names the phases a library reports by key; ``count`` is the text beside each bar,
    a rich template such as ``"{task.percentage:>5.1f}%"`` or ``"{task.completed}/{task.total} chunks"``.
    The bars show only at a terminal: redrawn in place, they mean nothing in a log file or a pipe,
    where stderr is kept for the one line that says what went wrong.
    """

    def __init__(self, labels: Mapping[str, str], count: str = "{task.percentage:>5.1f}%", width: int = 32) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._labels = labels
        self._progress: Progress = Progress(
            TextColumn(f"{{task.description:<{width}}}"),
            BarColumn(),
            TextColumn(count),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
            disable=not err_console.is_terminal,
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
