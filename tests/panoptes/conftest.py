"""Fixtures for the gateway tests: a gateway signed in to the shared sandbox, sleeps recorded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from etchacell_loop.panoptes.gateway import PanoptesGateway, connect
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.panoptes.support import FAST_POLICY, panoptes_settings


@pytest.fixture
def gateway(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> Iterator[PanoptesGateway]:
    """A gateway on the shared sandbox with short backoff (faults are cleared around each test)."""
    with connect(panoptes_settings(sandbox), FAST_POLICY) as gw:
        yield gw
