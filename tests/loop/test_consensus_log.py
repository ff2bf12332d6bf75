"""The aggregate job's log names a slice's consensus kind by its value, as the events do."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from sqlmodel import Session

from etchacell_loop.db.models import ConsensusKind, Event
from etchacell_loop.loop.consensus_job import _record_skip


class _Added:
    """A stand-in session that keeps what is added (the event is not what this test is about)."""

    def __init__(self) -> None:
        self.rows: list[Any] = []

    def add(self, row: Any) -> None:
        self.rows.append(row)


def test_a_skipped_slice_is_logged_with_its_kind_value_not_the_enum(caplog: pytest.LogCaptureFixture) -> None:
    session = _Added()
    with caplog.at_level(logging.INFO, logger="etchacell_loop.loop.consensus_job"):
        _record_skip(cast(Session, session), (3, 12, ConsensusKind.CORRECTED), 7, 99, "too few drawers")
    assert "ROI 3 slice 12 (corrected) not aggregated: too few drawers" in caplog.text
    assert "ConsensusKind" not in caplog.text and "<" not in caplog.text
    (event,) = session.rows
    assert isinstance(event, Event) and event.payload["kind"] == "corrected"
