"""What every sandbox route needs: the store, the configuration and the fault state.

Held on ``app.state`` and handed to routes through a dependency, so several sandboxes (each with
its own state folder) can run in one process, as tests do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from etchacell_loop.sandbox.config import SandboxConfig
from etchacell_loop.sandbox.faults import FaultState
from etchacell_loop.sandbox.store import Store


@dataclass
class Runtime:
    store: Store
    config: SandboxConfig
    faults: FaultState

    @staticmethod
    def base_url(request: Request) -> str:
        """The sandbox's own address as the client reached it (blob and export URLs point here)."""
        return str(request.base_url).rstrip("/")


def runtime(request: Request) -> Runtime:
    rt = request.app.state.runtime
    assert isinstance(rt, Runtime)
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]
