"""JSON log lines for services: one parseable object per record, exceptions included."""

from __future__ import annotations

import json
import logging

import pytest

from etchacell_loop.cli.logs import LogFormat, configure_logging


def test_json_lines_carry_time_level_logger_message_and_the_exception(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(verbose=False, log_format=LogFormat.JSON)
    log = logging.getLogger("etchacell_loop.loop.jobs")
    log.info("job %s done", "ingest")
    try:
        raise RuntimeError("a multi\nline failure")
    except RuntimeError:
        log.exception("job failed")
    logging.getLogger("apscheduler.scheduler").info("library chatter stays out")
    logging.getLogger("apscheduler.scheduler").warning("a coalesced run was skipped: stays out too")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["logger"], e["message"]) for e in lines] == [
        ("info", "etchacell_loop.loop.jobs", "job ingest done"),
        ("error", "etchacell_loop.loop.jobs", "job failed"),
    ]
    assert "RuntimeError: a multi\nline failure" in lines[1]["exception"]
    assert lines[0]["time"].endswith("+00:00")
    configure_logging(verbose=False, log_format=LogFormat.TEXT)
