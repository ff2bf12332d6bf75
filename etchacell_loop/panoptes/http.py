"""Timeouts, retries and credential errors for every HTTP request the gateway makes.

Why an adapter on the ``requests.Session``: panoptes-client sends everything through
``Panoptes.session`` but sets no timeout (a stalled socket hangs forever), retries only some 5xx
(five times, five seconds apart, and only for some calls), ignores 429 and ``Retry-After``, lets
connection errors escape raw, and dies with ``KeyError: 'access_token'`` when the credentials are
wrong. Mounting :class:`RetryingAdapter` on that session fixes all of this underneath the client,
so the gateway can keep using the client as its users do.

Only requests that are safe to send twice are repeated. ``POST /api/subjects`` and
``POST /api/classifications`` create a new resource each time; repeating one after a lost
response would duplicate it, so they get one attempt and the upload layer (which can find what a
lost POST created, by its upload key) decides what to do.

When the adapter gives up it raises :class:`PanoptesUnavailable` instead of handing back the last
5xx: the client would otherwise start its own five-times-five-seconds loop on top of ours.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest, Response

from etchacell_loop.config import PanoptesSettings
from etchacell_loop.panoptes.errors import PanoptesAuthError, PanoptesUnavailable

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
AUTH_FAILURE_STATUSES = frozenset({400, 401, 403, 422})
REPEATABLE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# POSTs that change nothing when sent twice: token grants, link changes, retirements, exports.
REPEATABLE_POSTS = (
    re.compile(r"/oauth/token$"),
    re.compile(r"/links/"),
    re.compile(r"/workflows/\d+/retired_subjects$"),
    re.compile(r"/classifications_export$"),
)
TOKEN_PATH = re.compile(r"/oauth/token$")

Sleep = Callable[[float], None]
Timeout = float | tuple[float, float] | tuple[float, None] | None


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait for Panoptes and how often to try again.

    ``attempts`` counts the first try. Waits grow as ``base_s * 2**n`` with full jitter, never
    above ``max_s``; a ``Retry-After`` answer is honoured, also capped by ``max_s``.
    """

    attempts: int = 6
    base_s: float = 0.5
    max_s: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_s < 0 or self.max_s < 0:
            raise ValueError("base_s and max_s must not be negative")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")

    @classmethod
    def from_settings(cls, settings: PanoptesSettings) -> RetryPolicy:
        """The production policy: the configured request timeout, default backoff."""
        timeout = settings.request_timeout_s
        return cls(connect_timeout_s=min(10.0, timeout), read_timeout_s=timeout)

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)

    def delay(self, failures: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1-based)."""
        ceiling = min(self.max_s, self.base_s * (2 ** (failures - 1)))
        wait = rng.uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.max_s)


def is_repeatable(method: str, url: str) -> bool:
    """Whether sending this request a second time is harmless."""
    verb = method.upper()
    if verb in REPEATABLE_METHODS:
        return True
    path = urlsplit(url).path
    return verb == "POST" and any(pattern.search(path) for pattern in REPEATABLE_POSTS)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: either a number of seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class RetryingAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` with default timeouts, retries with backoff, and credential errors."""

    def __init__(
        self,
        policy: RetryPolicy,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
        pool_maxsize: int = 16,
    ) -> None:
        super().__init__(pool_connections=4, pool_maxsize=pool_maxsize)
        self.policy = policy
        self._sleep = sleep
        self._rng = rng or random.Random()

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Timeout = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> Response:
        method = (request.method or "GET").upper()
        url = request.url or ""
        attempts = self.policy.attempts if is_repeatable(method, url) else 1
        effective_timeout = self.policy.timeout if timeout is None else timeout
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                response = super().send(request, stream, effective_timeout, verify, cert, proxies)
            except (requests.ConnectionError, requests.Timeout) as exc:
                failure = _describe_exception(exc)
            else:
                _raise_for_credentials(request, response)
                if response.status_code not in RETRY_STATUSES:
                    return response
                failure = f"HTTP {response.status_code}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                _discard(response)
            if attempt == attempts:
                tries = f"{attempts} attempt" + ("s" if attempts > 1 else "")
                raise PanoptesUnavailable(
                    f"{method} {_safe_path(url)} failed: {failure} after {tries}", retry_after=retry_after
                )
            wait = self.policy.delay(attempt, retry_after, self._rng)
            log.info(
                "Panoptes %s %s: %s; retry %d/%d in %.2f s",
                method,
                _safe_path(url),
                failure,
                attempt,
                attempts - 1,
                wait,
            )
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def pause(self, failures: int, retry_after: float | None = None) -> None:
        """Sleep as this policy says after ``failures`` failed attempts of some operation."""
        self._sleep(self.policy.delay(failures, retry_after, self._rng))


def mount(session: requests.Session, adapter: RetryingAdapter) -> None:
    """Route every http:// and https:// request of ``session`` through ``adapter``."""
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def _raise_for_credentials(request: PreparedRequest, response: Response) -> None:
    """A refused token grant becomes a clear error instead of the client's ``KeyError``."""
    if response.status_code not in AUTH_FAILURE_STATUSES:
        return
    if (request.method or "").upper() != "POST" or not TOKEN_PATH.search(urlsplit(request.url or "").path):
        return
    client_id = _form_field(request.body, "client_id")
    description = _error_description(response)
    response.close()
    raise PanoptesAuthError(client_id, f"{description} (HTTP {response.status_code})")


def _form_field(body: object, name: str) -> str | None:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if not isinstance(body, str):
        return None
    values = parse_qs(body).get(name)
    return values[0] if values else None


def _error_description(response: Response) -> str:
    """Doorkeeper's ``error_description`` (or ``error``), or Panoptes' ``errors[0].message``."""
    try:
        payload = json.loads(response.content or b"null")
    except (ValueError, requests.RequestException):
        return "no reason given"
    if not isinstance(payload, dict):
        return "no reason given"
    for key in ("error_description", "error"):
        if isinstance(payload.get(key), str):
            return str(payload[key])
    errors = payload.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("message", "no reason given"))
    return "no reason given"


def _discard(response: Response) -> None:
    """Read and drop a failed answer so its connection goes back to the pool."""
    try:
        _ = response.content
    except requests.RequestException:
        pass
    finally:
        response.close()


def _describe_exception(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, requests.ReadTimeout):
        return "read timeout"
    if isinstance(exc, requests.Timeout):
        return "timeout"
    return "connection error"


def _safe_path(url: str) -> str:
    """The URL's path only: query strings of signed blob URLs carry their signature."""
    return urlsplit(url).path or "/"
