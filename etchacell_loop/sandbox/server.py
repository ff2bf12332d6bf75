"""Running the sandbox: uvicorn on a host and port, state in a folder, faults from the start."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from etchacell_loop.sandbox.app import create_app
from etchacell_loop.sandbox.config import SandboxConfig


def serve(state_dir: Path, host: str, port: int, config: SandboxConfig) -> None:
    """Serve until interrupted; the state folder keeps everything across restarts."""
    app, runtime = create_app(state_dir, config)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        runtime.store.close()
