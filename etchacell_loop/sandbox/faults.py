"""Fault injection as ASGI middleware: errors, lost responses, latency, stalls, failing blob PUTs,
poisoned classification pages.

Why middleware: faults must hit every route the same way a flaky network or proxy would, without
each route knowing. The plan lives in a mutable holder so tests can change it at run time through
``PUT /_sandbox/faults``; the control API itself is never faulted.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from etchacell_loop.sandbox.config import FaultPlan
from etchacell_loop.sandbox.poison import poison_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class FaultState:
    """The current plan and its random stream, shared between the middleware and the control API."""

    def __init__(self, plan: FaultPlan) -> None:
        self._lock = threading.Lock()
        self.set(plan)

    def set(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)

    def draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def pick_status(self) -> int:
        with self._lock:
            return self._rng.choice(self.plan.error_statuses)


class FaultMiddleware:
    """Wraps the app; decides per request whether to misbehave and how."""

    def __init__(self, app: ASGIApp, state: FaultState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plan = self.state.plan
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(plan.path_prefixes):
            await self.app(scope, receive, send)
            return
        if plan.latency_ms:
            await asyncio.sleep(plan.latency_ms / 1000)
        if plan.stall_rate and self.state.draw() < plan.stall_rate:
            await asyncio.sleep(plan.stall_s)
        is_blob_put = scope["method"] == "PUT" and path.startswith("/_blobs/")
        if is_blob_put and plan.blob_put_failure_rate and self.state.draw() < plan.blob_put_failure_rate:
            await _drain(receive)
            await _answer(send, 500, {"error": "injected blob upload failure"})
            return
        if plan.error_rate and self.state.draw() < plan.error_rate:
            await _drain(receive)
            status = self.state.pick_status()
            headers = [(b"retry-after", str(plan.retry_after_s).encode())] if status == 429 else []
            await _answer(send, status, {"errors": [{"message": f"injected fault: HTTP {status}"}]}, headers)
            return
        if plan.lost_response_rate and self.state.draw() < plan.lost_response_rate:
            await self.app(scope, receive, _swallow)
            await _answer(send, 502, {"errors": [{"message": "injected fault: response lost after processing"}]})
            return
        if plan.poisons and scope["method"] == "GET" and path.startswith("/api/classifications"):
            await self.app(scope, receive, _Poisoning(send, plan))
            return
        await self.app(scope, receive, send)


class _Poisoning:
    """A ``send`` that holds the answer back, damages its classifications, then sends it whole."""

    def __init__(self, send: Send, plan: FaultPlan) -> None:
        self._send = send
        self._plan = plan
        self._start: Message | None = None
        self._body = bytearray()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            return
        if message["type"] != "http.response.body" or self._start is None:
            await self._send(message)
            return
        self._body.extend(message.get("body", b""))
        if message.get("more_body"):
            return
        body = bytes(self._body)
        if self._start["status"] == 200:
            body = poison_body(body, self._plan)
        headers = [(k, v) for k, v in self._start["headers"] if k.lower() != b"content-length"]
        await self._send({**self._start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await self._send({"type": "http.response.body", "body": body})


async def _swallow(message: Message) -> None:
    """Discard the real answer: the request was processed but the client never hears of it."""


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _answer(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/vnd.api+json; version=1; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
