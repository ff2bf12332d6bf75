"""Start and drive a sandbox in a child process: for tests, benchmarks and the demo.

A real process on a real port, so the client under test speaks HTTP over loopback exactly as it
would to Zooniverse, and the sandbox can be killed and restarted on the same state folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from etchacell_loop.sandbox.config import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SandboxProcess:
    """A running sandbox: its address, state folder, and the control API as methods."""

    state_dir: Path
    port: int
    serve_args: Sequence[str] = ()
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SandboxProcess:
        command = [
            sys.executable, "-m", "etchacell_loop", "sandbox", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--state", str(self.state_dir), *self.serve_args,
        ]  # fmt: skip
        log = (self.log_path or self.state_dir.parent / f"sandbox-{self.port}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"sandbox exited with status {self.process.returncode}; see its log")
            try:
                if httpx.get(f"{self.url}/_sandbox/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"sandbox on port {self.port} did not start within {STARTUP_TIMEOUT_S} s")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, kill: bool = False) -> None:
        """Stop and start again on the same state: nothing stored may be lost."""
        self.stop(kill=kill)
        self.start()

    # --- the control API ------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", 60)
        return httpx.request(method, f"{self.url}{path}", **kwargs)

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        response = self.request(method, f"/_sandbox{path}", content=json.dumps(body) if body is not None else None)
        response.raise_for_status()
        return response.json()

    def seed(self, display_name: str = "", retirement_count: int = 30) -> dict[str, int]:
        result: dict[str, int] = self._control(
            "POST", "/seed", {"display_name": display_name, "retirement_count": retirement_count}
        )
        return result

    def set_faults(self, **plan: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._control("PUT", "/faults", plan)
        return result

    def clear_faults(self) -> None:
        self._control("DELETE", "/faults")

    def create_user(self, login: str, password: str) -> int:
        return int(self._control("POST", "/users", {"login": login, "password": password})["id"])

    def bulk_classifications(
        self,
        workflow_id: int,
        subject_ids: Sequence[int],
        per_subject: int = 1,
        annotations: list[Any] | None = None,
        metadata: dict[str, Any] | None = None,
        ids: Sequence[int] | None = None,
    ) -> dict[str, int]:
        """Classifications stored at once; ``ids`` (from :meth:`reserve_classification_ids`) commits
        them under ids handed out earlier, below those of classifications stored since."""
        body: dict[str, Any] = {
            "workflow_id": workflow_id,
            "subject_ids": list(subject_ids),
            "per_subject": per_subject,
            "annotations": annotations or [],
            "metadata": metadata or {},
        }
        if ids is not None:
            body["ids"] = list(ids)
        result: dict[str, int] = self._control("POST", "/classifications/bulk", body)
        return result

    def reserve_classification_ids(self, count: int = 1) -> list[int]:
        """Ids taken as a starting insert takes them, nothing stored yet (a transaction still open)."""
        return [int(i) for i in self._control("POST", "/classifications/reserve", {"count": count})["ids"]]

    def inventory(self, project_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", f"/inventory?project_id={project_id}")
        return result


@contextmanager
def running_sandbox(
    state_dir: Path, serve_args: Sequence[str] = (), port: int | None = None
) -> Iterator[SandboxProcess]:
    """A sandbox for the duration of a ``with`` block."""
    sandbox = SandboxProcess(state_dir=state_dir, port=port or free_port(), serve_args=serve_args).start()
    try:
        yield sandbox
    finally:
        sandbox.stop()
