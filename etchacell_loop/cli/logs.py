"""How the commands log: readable lines for a person at a terminal, JSON lines for a service.

Why JSON for services: the daemon and the worker run under systemd (or a container runtime) whose
log collectors index one JSON object per line — time, level, logger, message — without parsing
free text. ``--log-format json`` (or ``ETCHACELL_LOG_FORMAT=json``) picks it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from enum import StrEnum

from rich.logging import RichHandler

from etchacell_loop.cli.context import err_console

QUIET_LIBRARIES = ("alembic", "httpx", "urllib3", "panoptes_client", "apscheduler")
# The scheduler warns each time a job's period comes round while the one worker thread is busy with
# another job; that is the coalescing the daemon asks for, so it is not worth a warning line.
ERRORS_ONLY = ("apscheduler.scheduler",)


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class JsonLines(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(verbose: bool, log_format: LogFormat = LogFormat.TEXT) -> None:
    """Logs go to stderr, so stdout stays clean for csv/json output; libraries stay quiet."""
    handler: logging.Handler
    if log_format is LogFormat.JSON:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLines())
    else:
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler], force=True
    )
    for noisy in QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    for chatty in ERRORS_ONLY:
        logging.getLogger(chatty).setLevel(logging.INFO if verbose else logging.ERROR)
